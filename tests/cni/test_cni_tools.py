"""kuryr-cni driven by real CNI runtimes: `cnitool` (the CNI project's own, built from
its Go module by scripts/k8s-build.sh) and Podman with its CNI backend (Debian
`podman`), each on a lab host, against that host's agent."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from cnilab import KURYR_CNI_BIN

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "docker"))

from dockerlab import _kill_cgroup_tree, build_image_tar  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST, OTHER = "h1", "h2"


@pytest.fixture(scope="module")
def net(cnilab):
    network, _ = cnilab.network(f"tools-{uuid.uuid4().hex[:6]}", "10.62.0.0/24")
    return network


@pytest.fixture(scope="module")
def cnitool():
    """The cnitool binary (built and cached by scripts/k8s-build.sh)."""
    p = subprocess.run([os.path.join(ROOT, "scripts", "k8s-build.sh")], capture_output=True,
                       text=True, timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    return os.path.join(p.stdout.strip().splitlines()[-1], "cnitool")


def plugin_dir(tmp):
    """A CNI_PATH holding only kuryr-cni."""
    d = os.path.join(tmp, "bin")
    os.makedirs(d, exist_ok=True)
    os.symlink(KURYR_CNI_BIN, os.path.join(d, "kuryr-cni"))
    return d


def conflist(cnilab, host, net, name, version="1.1.0"):
    return {"cniVersion": version, "name": name,
            "plugins": [{"type": "kuryr-cni", "network": net["name"],
                         "daemon_socket": cnilab.agent_socket(host)}]}


# ---------------------------------------------------------------- cnitool


def test_cnitool_add_check_status_gc_del(cnilab, net, cnitool, tmp_path):
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    (confdir / "10-kuryr.conflist").write_text(json.dumps(conflist(cnilab, HOST, net, "tool")))
    env = dict(os.environ, NETCONFPATH=str(confdir), CNI_PATH=plugin_dir(str(tmp_path)))

    def tool(*args, check=True):
        p = subprocess.run(["nsenter", f"--net=/run/netns/{cnilab.ns(HOST)}", cnitool, *args],
                           capture_output=True, text=True, env=env, timeout=120)
        if check:
            assert p.returncode == 0, f"cnitool {args}: {p.stdout}{p.stderr}\n{cnilab.logs()}"
        return p

    a, b = "toola", "toolb"
    cnilab.add_container(a)
    cnilab.add_container(b)
    res = json.loads(tool("add", "tool", cnilab.netns_path(a)).stdout)
    assert res["cniVersion"] == "1.1.0"
    assert res["ips"][0]["address"] in cnilab.addresses(a)
    tool("add", "tool", cnilab.netns_path(b))
    ip_b = cnilab.addresses(b)[0].split("/")[0]
    assert cnilab.ping_eventually(a, ip_b)
    tool("check", "tool", cnilab.netns_path(a))
    tool("status", "tool", cnilab.netns_path(a))
    ports = cnilab.api("GET", "/ports?device_owner=kuryr:container")[1]["ports"]
    mine = [p for p in ports if p["device_id"].startswith("cnitool-")
            and p["network_id"] == net["id"]]
    assert len(mine) == 2
    # cnitool's gc names no valid attachment: everything of this configuration goes.
    tool("gc", "tool", cnilab.netns_path(a))
    assert cnilab.addresses_or_none(a) is None and cnilab.addresses_or_none(b) is None
    for p in mine:
        assert cnilab.api("GET", f"/ports/{p['id']}")[0] == 404
    # CHECK now fails (nothing there), DEL still succeeds.
    assert tool("check", "tool", cnilab.netns_path(a), check=False).returncode != 0
    tool("del", "tool", cnilab.netns_path(a))
    tool("del", "tool", cnilab.netns_path(b))

    # STATUS of a host whose agent is down.
    cnilab.agents[HOST].stop()
    try:
        p = tool("status", "tool", cnilab.netns_path(a), check=False)
        assert p.returncode != 0 and "not available" in (p.stdout + p.stderr).lower(), p
    finally:
        cnilab.start_agent(HOST)
        cnilab.wait_agent_ready(HOST)
    tool("status", "tool", cnilab.netns_path(a))


# ---------------------------------------------------------------- Podman


class Podman:
    """A rootful Podman of its own on a lab host: its storage, run and config dirs
    under `d`, the CNI backend with kuryr's conflist only, cgroups under a parent
    of its own. It runs in the host's network namespace and the machine's mount
    namespace, where the agent can open the namespaces Podman makes."""

    def __init__(self, cnilab, host, d, net):
        self.lab, self.host, self.d = cnilab, host, d
        self.cgroup = f"kuryr-{cnilab.prefix}-{host}-podman"
        for sub in ("net.d", "root", "runroot", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        bindir = plugin_dir(d)
        with open(os.path.join(d, "net.d", "kuryr.conflist"), "w") as f:
            json.dump(conflist(cnilab, host, net, "kuryr", version="1.0.0"), f)
        with open(os.path.join(d, "containers.conf"), "w") as f:
            f.write(
                # Podman raises the open-files and processes limits to its own defaults,
                # above what this machine's processes may hold.
                "[containers]\n"
                'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                "[network]\n"
                'network_backend = "cni"\n'
                f'cni_plugin_dirs = ["{bindir}"]\n'
                f'network_config_dir = "{d}/net.d"\n'
                'default_network = "kuryr"\n'
                "[engine]\n"
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
                f'events_logfile_path = "{d}/events.log"\n'
                f'tmp_dir = "{d}/tmp"\n'
                'runtime = "runc"\n')
        with open(os.path.join(d, "storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{d}/root"\n'
                    f'runroot = "{d}/runroot"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=f"{d}/containers.conf",
                        CONTAINERS_STORAGE_CONF=f"{d}/storage.conf")
        tar = os.path.join(d, "busybox.tar")
        build_image_tar(tar)
        self("import", tar, "localhost/kuryr-busybox")

    def __call__(self, *args, check=True, timeout=120):
        p = subprocess.run(["nsenter", f"--net=/run/netns/{self.lab.ns(self.host)}", "podman",
                            *args], capture_output=True, text=True, env=self.env,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {p.returncode}: "
                                 f"{p.stdout}{p.stderr}\n{self.lab.logs()}")
        return p.stdout

    def run(self, name):
        return self("run", "-d", "--name", name, "--network", "kuryr",
                    "--cgroup-parent", f"/{self.cgroup}", "localhost/kuryr-busybox",
                    "sleep", "3600").strip()

    def ip(self, name):
        out = self("exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
        return out.split()[3].split("/")[0]

    def close(self):
        self("rm", "-af", "-t", "0", check=False)
        self("system", "reset", "-f", check=False)
        _kill_cgroup_tree(self.cgroup)
        shutil.rmtree(self.d, ignore_errors=True)


@pytest.fixture(scope="module")
def podmen(cnilab, net, tmp_path_factory):
    made = []
    try:
        for h in (HOST, OTHER):
            made.append(Podman(cnilab, h, str(tmp_path_factory.mktemp(f"podman-{h}")), net))
        yield made
    finally:
        for p in made:
            p.close()


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_podman_containers_get_neutron_ports_and_reach_each_other(cnilab, net, podmen):
    p1, p2 = podmen
    id1 = p1.run("c1")
    id2 = p2.run("c2")
    ip1, ip2 = p1.ip("c1"), p2.ip("c2")
    for cid, ip, host in ((id1, ip1, HOST), (id2, ip2, OTHER)):
        _, data = cnilab.api("GET", f"/ports?device_id={cid}")
        assert len(data["ports"]) == 1, data
        port = data["ports"][0]
        assert port["fixed_ips"][0]["ip_address"] == ip
        assert port["binding:host_id"] == host and port["network_id"] == net["id"]
    wait_for(lambda: subprocess.run(
        ["nsenter", f"--net=/run/netns/{cnilab.ns(HOST)}", "podman", "exec", "c1", "ping",
         "-c", "1", "-W", "1", ip2], env=p1.env, capture_output=True).returncode == 0,
        10, "c1 to ping c2 across hosts")
    # Removing a container deletes its port (DEL), and the other stops answering.
    p2("rm", "-f", "-t", "0", "c2")
    wait_for(lambda: cnilab.api("GET", f"/ports?device_id={id2}")[1]["ports"] == [],
             10, "c2's port to be deleted")
    assert subprocess.run(
        ["nsenter", f"--net=/run/netns/{cnilab.ns(HOST)}", "podman", "exec", "c1", "ping",
         "-c", "2", "-W", "1", ip2], env=p1.env, capture_output=True).returncode != 0
    p1("rm", "-f", "-t", "0", "c1")
    wait_for(lambda: cnilab.api("GET", f"/ports?device_id={id1}")[1]["ports"] == [],
             10, "c1's port to be deleted")
