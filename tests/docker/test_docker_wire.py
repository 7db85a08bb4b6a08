"""What Docker 20.10's CLI cannot show, at the protocol level: IPv6-only networks, the
global scope, and the plugin on TCP announced by a spec file.

Docker 20.10 (Debian's) always asks for an IPv4 pool, so it cannot make an IPv6-only
network; newer Docker (`docker network create --ipv4=false --ipv6`) sends what this test
sends: RequestPool(V6) only and a CreateNetwork with empty IPv4Data. The interfaces
are then moved into container namespaces as dockerd does with Join's SrcName."""

import contextlib
import json
import os
import secrets
import subprocess
import tempfile
import time

from dockerlab import KURYR_BIN, sh

PLUGIN_CT = "application/vnd.docker.plugins.v1+json"


def plugin(socket, path, body=None):
    """POST to a plugin socket; (status, parsed body)."""
    data = "" if body is None else json.dumps(body)
    p = subprocess.run(["curl", "-s", "--unix-socket", socket, "-X", "POST", "-H",
                        f"Content-Type: {PLUGIN_CT}", "--data-binary", data, "-w",
                        "\n%{http_code}", f"http://plugin{path}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    text, _, code = p.stdout.rpartition("\n")
    return int(code), json.loads(text) if text.strip() else None


def ok(socket, path, body=None):
    code, reply = plugin(socket, path, body)
    assert code == 200 and not (reply or {}).get("Err"), (path, code, reply)
    return reply


def test_ipv6_only_network_end_to_end(dlab):
    sock = dlab.plugin_socket("h1")
    prefix = f"fd00:{secrets.randbelow(0xffff):x}::/64"
    net_id, eps = secrets.token_hex(32), [secrets.token_hex(32) for _ in range(2)]
    pool = ok(sock, "/IpamDriver.RequestPool", {"AddressSpace": "no_address_space",
              "Pool": prefix, "SubPool": "", "Options": {}, "V6": True})
    assert pool["Pool"] == prefix
    gw = ok(sock, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
    assert gw == prefix.replace("::/64", "::1/64")
    ok(sock, "/NetworkDriver.CreateNetwork", {
        "NetworkID": net_id, "IPv4Data": [],
        "IPv6Data": [{"AddressSpace": "no_address_space", "Pool": prefix, "Gateway": gw}],
        "Options": {"com.docker.network.enable_ipv6": True, "com.docker.network.generic": {}}})
    _, nets = dlab.api("GET", f"/networks?tags=kuryr.net.uuid.lh:{net_id[:32]}")
    assert len(nets["networks"]) == 1
    net = nets["networks"][0]
    _, subs = dlab.api("GET", f"/subnets?network_id={net['id']}")
    assert [s["ip_version"] for s in subs["subnets"]] == [6], subs

    containers, addrs, ports = [], [], []
    try:
        for i, ep in enumerate(eps):
            mac = f"02:42:ac:66:00:0{i + 1}"
            addr = ok(sock, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"],
                      "Address": "", "Options": {"com.docker.network.endpoint.macaddress": mac}})
            addr = addr["Address"]
            reply = ok(sock, "/NetworkDriver.CreateEndpoint", {
                "NetworkID": net_id, "EndpointID": ep, "Options": {},
                "Interface": {"Address": "", "AddressIPv6": addr, "MacAddress": mac}})
            assert reply == {"Interface": {}}
            join = ok(sock, "/NetworkDriver.Join", {"NetworkID": net_id, "EndpointID": ep,
                      "SandboxKey": "/var/run/docker/netns/x", "Options": {}})
            assert join["GatewayIPv6"] == gw.split("/")[0] and "Gateway" not in join, join
            assert join["InterfaceName"]["DstPrefix"] == "eth"
            src = join["InterfaceName"]["SrcName"]
            _, port = dlab.api("GET", f"/ports?tags=kuryr.net.uuid.lh:{ep[:32]}")
            port = port["ports"][0]
            ports.append(port)
            assert port["status"] == "ACTIVE" and port["binding:host_id"] == "h1", port
            assert port["mac_address"] == mac and port["device_id"] == ep
            assert [f["ip_address"] for f in port["fixed_ips"]] == [addr.split("/")[0]]
            assert src == f"t_c{port['id']}"[:14]
            # What dockerd does with SrcName: into the sandbox, renamed, addressed.
            c = dlab.add_container(f"v6c{i}")
            containers.append(c)
            sh("ip", "-n", dlab.ns("h1"), "link", "set", src, "netns", c)
            sh("ip", "-n", c, "link", "set", src, "name", "eth0")
            sh("ip", "-n", c, "addr", "add", addr, "dev", "eth0", "nodad")
            sh("ip", "-n", c, "link", "set", "eth0", "up")
            info = json.loads(sh("ip", "-n", c, "-j", "link", "show", "eth0"))[0]
            assert info["address"] == mac and info["mtu"] == 1450, info
            addrs.append(addr.split("/")[0])
        out = sh("ip", "netns", "exec", containers[0], "ping", "-6", "-c", "3", "-i", "0.2",
                 "-W", "2", addrs[1], check=False)
        assert " 0% packet loss" in out, out
    finally:
        for c in containers:
            sh("ip", "netns", "del", c, check=False)
            dlab.namespaces.remove(c)
    for ep, addr in zip(eps, addrs):
        ok(sock, "/NetworkDriver.Leave", {"NetworkID": net_id, "EndpointID": ep})
        ok(sock, "/NetworkDriver.DeleteEndpoint", {"NetworkID": net_id, "EndpointID": ep})
        ok(sock, "/IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": addr})
    ok(sock, "/IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": gw.split("/")[0]})
    ok(sock, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
    ok(sock, "/NetworkDriver.DeleteNetwork", {"NetworkID": net_id})
    for p in ports:
        assert dlab.api("GET", f"/ports/{p['id']}")[0] == 404
    assert dlab.api("GET", f"/networks/{net['id']}")[0] == 404
    assert dlab.api("GET", f"/subnetpools/{pool['PoolID']}")[0] == 404
    # Repeated (Docker retries after a lost connection): nothing to do, no error.
    ok(sock, "/NetworkDriver.DeleteNetwork", {"NetworkID": net_id})
    ok(sock, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})


@contextlib.contextmanager
def lone_agent(*args, wait_for):
    """A `kuryr agent` alone in a namespace of its own, with no server (the plugin
    calls used here need none); `wait_for(dir)` names the file its readiness shows in."""
    ns = "kdg" + secrets.token_hex(3)
    d = tempfile.mkdtemp(prefix="kuryr-lone-")
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    proc = None
    try:
        env = dict(os.environ, OS_AUTH_URL="http://127.0.0.1:9/identity/v3",
                   OS_USERNAME="nobody", OS_PASSWORD="x", OS_PROJECT_NAME="none")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, KURYR_BIN, "agent", "--host", "g",
                                 "--underlay-ip", "127.0.0.1", "--socket", f"{d}/agent.sock",
                                 "--state-dir", f"{d}/state",
                                 *[a.replace("{dir}", d) for a in args]],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        for _ in range(100):
            if os.path.exists(wait_for(d)):
                break
            time.sleep(0.1)
        yield ns, d
    finally:
        if proc:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
        sh("ip", "netns", "del", ns, check=False)
        subprocess.run(["rm", "-rf", d])


def test_tcp_with_a_spec_file():
    """kuryr-libnetwork's form: the plugin on TCP, announced by a spec file with its URL
    (dockerd reads /usr/lib/docker/plugins/kuryr/kuryr.spec)."""
    with lone_agent("--docker-listen", "127.0.0.1:0", "--docker-spec-file", "{dir}/kuryr.spec",
                    wait_for=lambda d: f"{d}/kuryr.spec") as (ns, d):
        url = open(f"{d}/kuryr.spec").read().strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), url
        out = sh("ip", "netns", "exec", ns, "curl", "-s", "-X", "POST", f"{url}/Plugin.Activate")
        assert sorted(json.loads(out)["Implements"]) == ["IpamDriver", "NetworkDriver"]


def test_global_scope_allocates_networks():
    """`--docker-scope global`: the capability says so, and AllocateNetwork /
    FreeNetwork (called by a swarm manager) answer."""
    with lone_agent("--docker-socket", "{dir}/kuryr.sock", "--docker-scope", "global",
                    wait_for=lambda d: f"{d}/kuryr.sock") as (_, d):
        sock = f"{d}/kuryr.sock"
        assert plugin(sock, "/NetworkDriver.GetCapabilities") == (
            200, {"Scope": "global", "ConnectivityScope": "global"})
        net_id = secrets.token_hex(32)
        opts = {"com.docker.network.generic": "x", "neutron.net.name": "n"}
        assert plugin(sock, "/NetworkDriver.AllocateNetwork", {
            "NetworkID": net_id, "Options": opts, "IPv4Data": [], "IPv6Data": []}) == (
            200, {"Options": opts})
        assert plugin(sock, "/NetworkDriver.FreeNetwork", {"NetworkID": net_id}) == (200, {})
        code, reply = plugin(sock, "/NetworkDriver.FreeNetwork", {"NetworkID": "nope"})
        assert code == 400 and "NetworkID" in reply["Err"], reply
