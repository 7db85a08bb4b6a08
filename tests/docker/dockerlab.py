"""The Docker test lab: tests/lab's namespaces, plus a real dockerd in every host.

    lab namespace     the underlay bridge and `kuryr server` (as in tests/lab)
    host namespaces   a `kuryr agent` serving the libnetwork plugin `kuryr` on
                      <lab dir>/<host>-d/plugins/kuryr.sock, and a dockerd of its own

Each dockerd runs in its host's network namespace but in a private mount namespace
(`nsenter --net=... unshare -m --propagation private`; `ip netns exec` would mount a
fresh /sys that hides the cgroup mounts dockerd needs), where the host's plugin
directory is bind-mounted on /run/docker/plugins and a tmpfs covers /run/containerd
(containerd's shim sockets). Its data root, exec root, pid file, socket and trust key
live in <lab dir>/<host>-d; its containers' cgroups under /kuryr-<prefix>-<host>.
Nothing is mounted in the machine's own mount namespace: the mounts vanish with the
daemon. `docker(host, ...)` runs /usr/bin/docker against a host's daemon.

A DockerLab whose test process died is swept by the next one: its daemons, their
containerd and shims (found by their command lines, which name the lab's directory)
and its containers (by cgroup) are killed, the cgroups and directories removed.
"""

import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "lab"))

from lab import KURYR_BIN, PIDS_DIR, Lab, Process, sh  # noqa: E402

DOCKER = os.environ.get("DOCKER_BIN", "/usr/bin/docker")
DOCKERD = os.environ.get("DOCKERD_BIN", "/usr/sbin/dockerd")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
IMAGE = "kuryr/busybox"
CGROUP_ROOT = "/sys/fs/cgroup"
# The lab directory is /tmp/kuryr-<prefix>-XXXXXXXX (tempfile); docker dirs are <host>-d.
_OURS = re.compile(r"/kuryr-(kl[0-9a-f]{6})-[^/\s]*/(h\d+)-d/")
_LABDIR = re.compile(r"(/[^\s=]*/kuryr-(kl[0-9a-f]{6})-[^/\s]*)/")


def plugin_available():
    """True if this kuryr binary serves the Docker plugin (`kuryr agent --docker-socket`)."""
    try:
        out = sh(KURYR_BIN, "agent", "--help", check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--docker-socket" in out


def _listening(path):
    """True if something accepts connections on the unix socket `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _lab_alive(prefix):
    try:
        pid = int(open(os.path.join(PIDS_DIR, prefix)).read().strip())
        os.kill(pid, 0)
        return True
    except PermissionError:
        return True
    except (ValueError, OSError):
        return False


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _our_processes():
    """(pid, prefix, host, cmdline) of every dockerd, containerd and shim of a DockerLab
    (host is None for the lab's kuryr server and agents, which name the lab directory)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmd = _cmdline(entry)
        if re.search(r"(^|/)(dockerd|containerd|containerd-shim\S*)\s", cmd):
            m = _OURS.search(cmd)
            if m:
                out.append((int(entry), m.group(1), m.group(2), cmd))
        elif re.search(r"(^|/)kuryr (server|agent)\s", cmd):
            m = _LABDIR.search(cmd)
            if m:
                out.append((int(entry), m.group(2), None, cmd))
    return out


def _cgroup_dirs(name):
    """The directories of cgroup `name` (a top-level name) in every hierarchy."""
    dirs = []
    try:
        hierarchies = os.listdir(CGROUP_ROOT)
    except OSError:
        return dirs
    for h in hierarchies:
        d = os.path.join(CGROUP_ROOT, h, name)
        if os.path.isdir(d):
            dirs.append(d)
    return dirs


def _kill_cgroup_tree(name):
    """SIGKILLs every process in cgroup `name` (and below), then removes the cgroups."""
    for _ in range(50):
        pids = set()
        for top in _cgroup_dirs(name):
            for root, _dirs, files in os.walk(top):
                if "cgroup.procs" in files:
                    try:
                        pids.update(int(p) for p in open(os.path.join(root, "cgroup.procs"))
                                    .read().split())
                    except (OSError, ValueError):
                        pass
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    for top in _cgroup_dirs(name):
        for root, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(root)
            except OSError:
                pass


def _kill_pids(pids, timeout=5):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.time() + timeout
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and
                                         not _is_zombie(p) for p in pids):
        time.sleep(0.05)


def _is_zombie(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def sweep_stale_dockerlabs():
    """Kills the daemons, shims, containers and kuryr processes of DockerLabs whose test
    process is gone, and removes their cgroups and directories (tests/lab's sweep, which
    runs next, deletes their namespaces)."""
    stale = {}  # prefix -> {"pids": [...], "hosts": set(), "dirs": set()}
    def entry(prefix):
        return stale.setdefault(prefix, {"pids": [], "hosts": set(), "dirs": set()})
    for pid, prefix, host, cmd in _our_processes():
        if _lab_alive(prefix):
            continue
        e = entry(prefix)
        e["pids"].append(pid)
        if host:
            e["hosts"].add(host)
        m = _LABDIR.search(cmd)
        if m:
            e["dirs"].add(m.group(1))
    for h in os.listdir(CGROUP_ROOT) if os.path.isdir(CGROUP_ROOT) else []:
        try:
            names = os.listdir(os.path.join(CGROUP_ROOT, h))
        except OSError:
            continue
        for n in names:
            m = re.match(r"^kuryr-(kl[0-9a-f]{6})-(h\d+)$", n)
            if m and not _lab_alive(m.group(1)):
                entry(m.group(1))["hosts"].add(m.group(2))
    for prefix, e in stale.items():
        _kill_pids(e["pids"])
        for host in e["hosts"]:
            _kill_cgroup_tree(f"kuryr-{prefix}-{host}")
        if not os.environ.get("KURYR_LAB_KEEP"):
            for d in e["dirs"]:
                if any(n.endswith("-d") for n in os.listdir(d) if os.path.isdir(d)):
                    shutil.rmtree(d, ignore_errors=True)


def _is_static(path):
    """True if the ELF file has no program interpreter (a static executable)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def build_image_tar(path):
    """A tarball of a root filesystem holding static busybox and its applets."""
    if not _is_static(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is not a static executable (install busybox-static)")
    applets = sh(BUSYBOX, "--list").split()
    with tarfile.open(path, "w") as tar:
        def add_dir(name, mode=0o755):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, mode
            tar.addfile(ti)
        for d in ("bin", "dev", "etc", "proc", "sys", "root", "var", "www"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for a in applets:
            if a == "busybox":
                continue
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(ti)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n"),
                           ("www/index.html", "hello from kuryr\n")):
            data = text.encode()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tar.addfile(ti, io.BytesIO(data))


class DockerLab(Lab):
    """A Lab whose hosts also run dockerd, with kuryr's agent serving the plugin."""

    def __init__(self, hosts=2, agent_args=(), server_args=(), plugin=True):
        """`plugin=False` starts the agents without the Docker plugin (--no-docker)."""
        sweep_stale_dockerlabs()
        self.dockerds = {}
        self.plugin = plugin
        super().__init__(hosts=hosts, agent_args=agent_args, server_args=server_args)
        try:
            tar = os.path.join(self.dir, "busybox.tar")
            build_image_tar(tar)
            for h in self.hosts:
                self.start_dockerd(h)
            for h in self.hosts:
                self.wait_dockerd(h)
                with open(tar, "rb") as f:
                    self.docker(h, "import", "-c", 'CMD ["sh"]', "-", IMAGE, input=f.read())
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- paths

    def docker_dir(self, host):
        return os.path.join(self.dir, f"{host}-d")

    def plugin_dir(self, host):
        return os.path.join(self.docker_dir(host), "plugins")

    def plugin_socket(self, host):
        return os.path.join(self.plugin_dir(host), "kuryr.sock")

    def docker_socket(self, host):
        return os.path.join(self.docker_dir(host), "docker.sock")

    def cgroup_parent(self, host):
        return f"kuryr-{self.prefix}-{host}"

    # ---------------------------------------------------------------- the agent

    def start_agent(self, host, *extra, plugin_admin=False):
        """The agent with its host-scoped credential; the plugin with a member's of the
        admin project (`plugin_admin`: with the lab's admin credential instead)."""
        os.makedirs(self.plugin_dir(host), exist_ok=True)
        env = self.agent_env(host)
        if self.plugin:
            extra = ("--docker-socket", self.plugin_socket(host), *extra)
            plugin = self.os_env() if plugin_admin else self.credential("plugin", host)
            env.update({f"KURYR_DOCKER_{k}": v for k, v in plugin.items()})
        else:
            extra = ("--no-docker", *extra)
        return super().start_agent(host, *extra, env=env)

    def wait_agent_ready(self, host, timeout=30):
        super().wait_agent_ready(host, timeout)
        if self.plugin:
            # Listening, not just present: a killed agent leaves its socket file behind.
            self.wait_for(lambda: _listening(self.plugin_socket(host)), timeout,
                          f"agent {host} to serve the Docker plugin", self.agents[host])

    # ---------------------------------------------------------------- dockerd

    def start_dockerd(self, host):
        d = self.docker_dir(host)
        # containerd's socket under the exec root is the longest unix socket path (108 max).
        longest = os.path.join(d, "exec", "containerd", "containerd.sock.ttrpc")
        if len(longest) > 100:
            raise RuntimeError(f"{longest} is too long for a unix socket: set TMPDIR to a "
                               "short directory (the lab's directory is made under it)")
        for sub in ("plugins", "root", "exec", "cli"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "daemon.json"), "w") as f:
            json.dump({"deprecated-key-path": os.path.join(d, "key.json"),
                       "shutdown-timeout": 2, "userland-proxy": False,
                       "log-level": "warn"}, f)
        inner = (
            # A /run of its own (private mount namespace): the plugin directory
            # dockerd looks in, containerd's state, nothing made in the machine's /run.
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/docker/plugins /run/containerd; "
            f"mount --bind {d}/plugins /run/docker/plugins; "
            f"exec {DOCKERD} --config-file {d}/daemon.json --data-root {d}/root "
            f"--exec-root {d}/exec --pidfile {d}/docker.pid -H unix://{d}/docker.sock "
            f"--cgroup-parent /{self.cgroup_parent(host)} "
            "--storage-driver=vfs --iptables=false --ip6tables=false --bridge=none "
            "--ip-forward=false --ip-masq=false")
        self.dockerds[host] = Process(
            f"dockerd-{host}",
            ["nsenter", f"--net=/run/netns/{self.ns(host)}", "unshare", "-m",
             "--propagation", "private", "sh", "-c", inner],
            dict(os.environ), os.path.join(self.dir, f"{host}-dockerd.log"))
        return self.dockerds[host]

    def wait_dockerd(self, host, timeout=60):
        def up():
            p = subprocess.run([DOCKER, "-H", f"unix://{self.docker_socket(host)}", "version",
                                "-f", "{{.Server.Version}}"], capture_output=True, text=True,
                               env=self.docker_env(host), timeout=10)
            return p.returncode == 0
        self.wait_for(up, timeout, f"dockerd on {host}", self.dockerds[host])

    def stop_dockerd(self, host, timeout=15):
        """Removes every container, then SIGTERM (SIGKILL after `timeout`) and sweeps
        what may outlive the daemon (shims, container processes, cgroups)."""
        p = self.dockerds.pop(host, None)
        if p is None:
            return
        if p.proc.poll() is None:
            try:
                ids = self.docker_proc(host, "ps", "-aq", timeout=30).stdout.split()
                if ids:
                    self.docker_proc(host, "rm", "-f", *ids, timeout=120)
            except subprocess.TimeoutExpired:
                pass
        p.stop(timeout=timeout)
        leftovers = [pid for pid, prefix, h, _ in _our_processes()
                     if prefix == self.prefix and h == host]
        _kill_pids(leftovers)
        _kill_cgroup_tree(self.cgroup_parent(host))

    def close(self):
        for h in list(getattr(self, "dockerds", {})):
            try:
                self.stop_dockerd(h)
            except Exception as e:  # keep closing the rest
                print(f"stopping dockerd on {h}: {e}", file=sys.stderr)
        if hasattr(self, "prefix") and not os.environ.get("KURYR_LAB_KEEP"):
            for h in self.hosts:
                shutil.rmtree(self.docker_dir(h), ignore_errors=True)
        super().close()

    def logs(self):
        out = [super().logs()]
        for p in getattr(self, "dockerds", {}).values():
            out.append(f"----- {p.name} ({p.log_path}) -----\n{p.log(60)}")
        return "\n".join(out)

    # ---------------------------------------------------------------- the docker CLI

    def docker_env(self, host):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = os.path.join(self.docker_dir(host), "cli")
        return env

    def docker_proc(self, host, *args, timeout=120, input=None):
        """/usr/bin/docker against `host`'s daemon; the CompletedProcess (text)."""
        p = subprocess.run([DOCKER, "-H", f"unix://{self.docker_socket(host)}",
                            *map(str, args)], capture_output=True, timeout=timeout,
                           env=self.docker_env(host), input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        return subprocess.CompletedProcess(p.args, p.returncode,
                                           p.stdout.decode(errors="replace"),
                                           p.stderr.decode(errors="replace"))

    def docker(self, host, *args, timeout=120, input=None):
        """/usr/bin/docker against `host`'s daemon; its stdout, stripped. Raises on failure."""
        p = self.docker_proc(host, *args, timeout=timeout, input=input)
        if p.returncode != 0:
            raise RuntimeError(f"docker {' '.join(map(str, args))} on {host} exited "
                               f"{p.returncode}:\n{p.stderr}{p.stdout}")
        return p.stdout.strip()

    # ---------------------------------------------------------------- containers

    def run(self, host, net, *args, name=None, cmd=("sleep", "3600")):
        """`docker run -d --net NET [args] kuryr/busybox CMD` on host; returns the name."""
        name = name or unique("c")
        net_args = ("--net", net) if net else ()
        self.docker(host, "run", "-d", "--name", name, *net_args, *args, IMAGE, *cmd)
        return name

    def inspect(self, host, *what):
        data = json.loads(self.docker(host, "inspect", *what))
        return data[0] if len(what) == 1 else data

    def endpoint(self, host, container, net):
        """The container's endpoint on `net` as `docker inspect` shows it."""
        return self.inspect(host, container)["NetworkSettings"]["Networks"][net]

    def network_id(self, host, net):
        return self.docker(host, "network", "inspect", "-f", "{{.Id}}", net)

    def cexec(self, host, container, *cmd, check=True, timeout=60):
        """A command inside a container (`docker exec`); its stdout."""
        p = self.docker_proc(host, "exec", container, *cmd, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"docker exec {container} {' '.join(map(str, cmd))} on {host} "
                               f"exited {p.returncode}:\n{p.stderr}{p.stdout}")
        return p.stdout if check else p

    def cping(self, host, container, ip, count=1, wait=1):
        """True if `container` gets an answer from ip (busybox ping inside it)."""
        flag = ["-6"] if ":" in ip else []
        p = self.cexec(host, container, "ping", *flag, "-c", count, "-W", wait, ip,
                       check=False, timeout=30 + count)
        return p.returncode == 0

    def cping_eventually(self, host, container, ip, timeout=8):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.cping(host, container, ip):
                return True
        return False

    def cnever_pings(self, host, container, ip, attempts=3):
        return not any(self.cping(host, container, ip) for _ in range(attempts))

    def iface(self, host, container, ifname="eth0"):
        """What a container sees of one interface: mac, mtu, addresses, routes."""
        out = self.cexec(host, container, "sh", "-c",
                         f"cat /sys/class/net/{ifname}/address /sys/class/net/{ifname}/mtu; "
                         f"echo ---; ip -o addr show dev {ifname}; echo ---; ip route; "
                         "echo ---; ip -6 route")
        head, addrs, r4, r6 = out.split("---\n")
        mac, mtu = head.split()
        found = re.findall(r"\binet6?\s+(\S+)", addrs)
        return {"mac": mac, "mtu": int(mtu), "addresses": found,
                "routes4": [l.strip() for l in r4.splitlines() if l.strip()],
                "routes6": [l.strip() for l in r6.splitlines() if l.strip()]}

    def remove_all(self):
        """Removes every container, then every non-builtin network, on every host (the
        hosts in reverse order: a network adopted on h2 goes before h1's own)."""
        for h in self.hosts:
            if h in self.dockerds:
                ids = self.docker_proc(h, "ps", "-aq").stdout.split()
                if ids:
                    self.docker_proc(h, "rm", "-f", *ids)
        for _ in range(3):
            left = False
            for h in reversed(self.hosts):
                if h not in self.dockerds:
                    continue
                nets = self.docker_proc(h, "network", "ls", "-q", "--filter",
                                        "type=custom").stdout.split()
                for n in nets:
                    left |= self.docker_proc(h, "network", "rm", n).returncode != 0
            if not left:
                return

    def kuryr_network(self, host, *args, name=None):
        """`docker network create -d kuryr --ipam-driver kuryr ARGS NAME`; (name, Docker id)."""
        name = name or unique("n")
        self.docker(host, "network", "create", "-d", "kuryr", "--ipam-driver", "kuryr", *args,
                    name)
        return name, self.network_id(host, name)

    def shared_network(self, cidr_prefix):
        """One Neutron network seen by both hosts' Docker: created on h1, adopted on h2 with
        neutron.net.uuid (a local-scope network exists per daemon). Returns (name, net)."""
        name, did = self.kuryr_network("h1", "--subnet", f"{cidr_prefix}.0/24",
                                       "--gateway", f"{cidr_prefix}.1")
        [net] = self.neutron_networks_of(did)
        self.kuryr_network("h2", "--subnet", f"{cidr_prefix}.0/24",
                           "--gateway", f"{cidr_prefix}.1",
                           "-o", f"neutron.net.uuid={net['id']}", name=name)
        return name, net

    def assert_port(self, host, container, net_name, net):
        """Asserts that the container's (IPv4) endpoint on `net_name` is a kuryr port on
        `net`, bound to `host`, with the endpoint's address and MAC, and ACTIVE.
        Returns (endpoint as Docker shows it, port)."""
        ep = self.endpoint(host, container, net_name)
        [port] = self.ports_of_endpoint(ep["EndpointID"])
        assert port["network_id"] == net["id"]
        assert port["device_owner"] == "kuryr:container"
        assert port["binding:host_id"] == host
        assert f"kuryr.net.uuid.lh:{ep['EndpointID'][:32]}" in port["tags"]
        assert f"kuryr.net.uuid.uh:{ep['EndpointID'][32:]}" in port["tags"]
        assert [f["ip_address"] for f in port["fixed_ips"]] == [ep["IPAddress"]]
        assert port["mac_address"] == ep["MacAddress"]
        self.wait_for(lambda: self.get(f"/ports/{port['id']}")["port"]["status"] == "ACTIVE",
                      10, f"port {port['id']} to be ACTIVE")
        return ep, port

    # ---------------------------------------------------------------- Neutron views

    def get(self, path, **query):
        """GET on the Neutron API with query parameters; the JSON body (raises unless 200)."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return self.api("GET", path, expect=200)[1]

    def neutron_networks_of(self, docker_id):
        """Neutron networks tagged with a Docker network id (both halves)."""
        tags = f"kuryr.net.uuid.lh:{docker_id[:32]},kuryr.net.uuid.uh:{docker_id[32:64]}"
        return self.get("/networks", tags=tags)["networks"]

    def subnets_of(self, net_id):
        return self.get("/subnets", network_id=net_id)["subnets"]

    def pools_named(self, name):
        return self.get("/subnetpools", name=name)["subnetpools"]

    def ports_of_endpoint(self, endpoint_id):
        return self.get("/ports", device_id=endpoint_id)["ports"]

    def kuryr_neutron_objects(self):
        """What kuryr's plugin creates in Neutron, by its names: networks, subnets, pools,
        endpoint ports (or ports it still owns), exposed-ports groups."""
        found = set()
        for n in self.get("/networks")["networks"]:
            if n["name"].startswith("kuryr-net-") or any(
                    t.startswith("kuryr.") for t in n.get("tags", [])):
                found.add(f"network {n['id']} {n['name']} {n.get('tags')}")
        for s in self.get("/subnets")["subnets"]:
            if s["name"].startswith("kuryr-subnet-"):
                found.add(f"subnet {s['id']} {s['name']}")
        for p in self.get("/subnetpools")["subnetpools"]:
            if p["name"].startswith("kuryrPool-") or "kuryr.subnetpool.existing" in p.get(
                    "tags", []):
                found.add(f"subnetpool {p['id']} {p['name']}")
        for p in self.get("/ports")["ports"]:
            if p["device_owner"] == "kuryr:container" or p["binding:host_id"] or any(
                    t.startswith("kuryr.") for t in p.get("tags", [])):
                found.add(f"port {p['id']} owner={p['device_owner']!r} "
                          f"host={p['binding:host_id']!r} tags={p.get('tags')}")
        for g in self.get("/security-groups")["security_groups"]:
            if g["name"].endswith("-exposed_ports"):
                found.add(f"security group {g['id']} {g['name']}")
        return found


def unique(kind):
    return f"t-{kind}-{uuid.uuid4().hex[:6]}"


def cidr_block():
    """A /24 prefix of 10.0.0.0/8 and a /64-able IPv6 prefix that this test alone uses."""
    n = uuid.uuid4().int
    return (f"10.{100 + n % 100}.{(n >> 8) % 250}",
            f"fd{(n >> 16) % 256:02x}:{(n >> 24) % 65536:x}")
