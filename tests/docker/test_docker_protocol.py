"""The plugin socket spoken to directly, as dockerd does and as a broken client might:
the handshake, capabilities, and bad requests that get an Err and change nothing."""

import json
import os
import subprocess

import pytest

from dockerlab import _listening, cidr_block
from lab import KURYR_BIN, UNDERLAY

PLUGIN_CT = "application/vnd.docker.plugins.v1+json"


def call(lab, path, data, host="h1", content_type=PLUGIN_CT):
    """POST to the plugin's unix socket; (status, parsed body or raw text, content type)."""
    if not isinstance(data, str):
        data = json.dumps(data)
    p = subprocess.run(["curl", "-s", "--unix-socket", lab.plugin_socket(host), "-X", "POST",
                        "-H", f"Content-Type: {content_type}", "--data-binary", data,
                        "-w", "\n%{http_code} %{content_type}", f"http://plugin{path}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"curl to the plugin socket failed: {p.stderr}"
    body, _, tail = p.stdout.rpartition("\n")
    code, _, ctype = tail.partition(" ")
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body
    return int(code), parsed, ctype


def test_handshake_and_capabilities(dlab):
    code, body, ctype = call(dlab, "/Plugin.Activate", "")
    assert code == 200 and ctype.startswith(PLUGIN_CT), (code, ctype)
    assert sorted(body["Implements"]) == ["IpamDriver", "NetworkDriver"]
    code, body, _ = call(dlab, "/NetworkDriver.GetCapabilities", "")
    assert code == 200 and body["Scope"] == "local", body
    code, body, _ = call(dlab, "/IpamDriver.GetCapabilities", "")
    assert code == 200 and isinstance(body, dict), body
    code, body, _ = call(dlab, "/IpamDriver.GetDefaultAddressSpaces", "")
    assert code == 200 and {"LocalDefaultAddressSpace", "GlobalDefaultAddressSpace"} <= set(body)


def test_a_taken_plugin_socket_stops_a_second_agent_at_once(dlab):
    """Another agent pointed at a plugin socket that one already serves exits by
    itself, saying why, and leaves the serving one alone."""
    host = "h1"
    assert _listening(dlab.plugin_socket(host))
    second = ["ip", "netns", "exec", dlab.ns(host), KURYR_BIN, "agent", "--host", host,
              "--underlay-ip", f"{UNDERLAY}.{10 + dlab.hosts.index(host) + 1}",
              "--socket", os.path.join(dlab.dir, "second.sock"),
              "--state-dir", os.path.join(dlab.dir, "second-state"),
              "--docker-socket", dlab.plugin_socket(host)]
    # No signal is ever sent: before the fix it ran until one came, and this timed out.
    p = subprocess.run(second, env=dlab.agent_env(host), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert "in use by another Docker plugin" in p.stderr + p.stdout, p.stderr + p.stdout
    code, body, _ = call(dlab, "/Plugin.Activate", "")
    assert code == 200 and "NetworkDriver" in body["Implements"]


def counts(lab):
    return {kind: len(lab.get(f"/{kind}")[kind.replace("-", "_")])
            for kind in ("networks", "subnets", "subnetpools", "ports", "security-groups")}


NET_ID = "f" * 64
EP_ID = "e" * 64


def bad_requests(v4):
    ipv4 = [{"AddressSpace": "", "Pool": f"{v4}.0/24", "Gateway": f"{v4}.1/24"}]
    return [
        ("/NetworkDriver.CreateNetwork", "garbage"),
        ("/NetworkDriver.CreateNetwork", "{}"),
        ("/NetworkDriver.CreateNetwork", "[1, 2]"),
        ("/NetworkDriver.CreateNetwork", {"NetworkID": 7, "IPv4Data": ipv4, "IPv6Data": [],
                                          "Options": {}}),
        ("/NetworkDriver.CreateNetwork",
         {"NetworkID": NET_ID, "IPv4Data": [{"AddressSpace": "", "Pool": "not-a-cidr"}],
          "IPv6Data": [], "Options": {}}),
        ("/NetworkDriver.CreateNetwork",
         {"NetworkID": NET_ID, "IPv4Data": ipv4, "IPv6Data": [],
          "Options": {"com.docker.network.generic": {
              "neutron.net.uuid": "00000000-0000-0000-0000-000000000000"}}}),
        ("/NetworkDriver.CreateNetwork",
         {"NetworkID": NET_ID, "IPv4Data": ipv4, "IPv6Data": [],
          "Options": {"com.docker.network.generic": {"neutron.pool.name": "no-such-pool"}}}),
        ("/NetworkDriver.CreateEndpoint", "garbage"),
        ("/NetworkDriver.CreateEndpoint",
         {"NetworkID": NET_ID, "EndpointID": EP_ID,
          "Interface": {"Address": f"{v4}.5/24", "AddressIPv6": "", "MacAddress": ""},
          "Options": {}}),
        ("/NetworkDriver.Join",
         {"NetworkID": NET_ID, "EndpointID": EP_ID, "SandboxKey": "/nonexistent/netns",
          "Options": {}}),
        ("/NetworkDriver.Join", "{\"NetworkID\": "),
        ("/NetworkDriver.DeleteEndpoint", "garbage"),
        ("/NetworkDriver.EndpointOperInfo", "garbage"),
        ("/IpamDriver.RequestPool", "garbage"),
        ("/IpamDriver.RequestPool", {"AddressSpace": "", "Pool": "10.0.0.0/33", "SubPool": "",
                                     "Options": {}, "V6": False}),
        ("/IpamDriver.RequestPool", {"AddressSpace": "", "Pool": f"{v4}.0/24", "SubPool": "",
                                     "Options": {"neutron.pool.uuid": "nope"}, "V6": False}),
        ("/IpamDriver.RequestAddress", {"PoolID": "no-such-pool", "Address": "",
                                        "Options": {}}),
        ("/IpamDriver.RequestAddress", "garbage"),
        ("/IpamDriver.ReleasePool", "garbage"),
        ("/IpamDriver.ReleaseAddress", {"PoolID": 3}),
    ]


def test_bad_requests_get_an_err_and_create_nothing(dlab):
    v4, _ = cidr_block()
    before = counts(dlab)
    failures = []
    for path, data in bad_requests(v4):
        code, body, _ = call(dlab, path, data)
        ok = (not 200 <= code < 300 and isinstance(body, dict)
              and isinstance(body.get("Err"), str) and body["Err"].strip())
        if not ok:
            failures.append(f"{path} {str(data)[:80]} -> {code} {body}")
    assert not failures, "\n".join(failures)
    assert counts(dlab) == before
    assert dlab.pools_named(f"kuryrPool-{v4}.0/24") == []
    # An unknown route is an error too, and the plugin still serves Docker afterwards.
    code, _, _ = call(dlab, "/NetworkDriver.NoSuchThing", "{}")
    assert not 200 <= code < 300
    name, did = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24")
    assert len(dlab.neutron_networks_of(did)) == 1
    dlab.docker("h1", "network", "rm", name)


@pytest.mark.parametrize("path", ["/NetworkDriver.DiscoverNew", "/NetworkDriver.DiscoverDelete"])
def test_discovery_notifications_are_accepted(dlab, path):
    code, body, _ = call(dlab, path, {"DiscoveryType": 1, "DiscoveryData": {}})
    assert code == 200 and body == {}, (code, body)


def test_calls_repeated_as_docker_retries_them_are_idempotent(dlab):
    """Docker repeats a call whose answer it did not get: each repeat answers the same
    and creates nothing twice."""
    v4, _ = cidr_block()
    net_id, ep_id = "a" * 63 + "1", "b" * 63 + "2"
    pool_req = {"AddressSpace": "no_address_space", "Pool": f"{v4}.0/24", "SubPool": "",
                "Options": {}, "V6": False}
    pools = [call(dlab, "/IpamDriver.RequestPool", pool_req) for _ in range(2)]
    assert [c for c, _, _ in pools] == [200, 200], pools
    pool_id = pools[0][1]["PoolID"]
    assert pools[1][1]["PoolID"] == pool_id and pools[0][1]["Pool"] == f"{v4}.0/24"
    gw = call(dlab, "/IpamDriver.RequestAddress", {
        "PoolID": pool_id, "Address": "",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert gw[0] == 200 and gw[1]["Address"] == f"{v4}.1/24", gw
    create = {"NetworkID": net_id, "Options": {"com.docker.network.generic": {}},
              "IPv4Data": [{"AddressSpace": "no_address_space", "Pool": f"{v4}.0/24",
                            "Gateway": f"{v4}.1/24"}], "IPv6Data": []}
    for _ in range(2):
        code, body, _ = call(dlab, "/NetworkDriver.CreateNetwork", create)
        assert code == 200, body
    [net] = dlab.neutron_networks_of(net_id)
    assert len(dlab.subnets_of(net["id"])) == 1

    mac = "02:42:0a:0b:0c:0d"
    addrs = [call(dlab, "/IpamDriver.RequestAddress", {
        "PoolID": pool_id, "Address": f"{v4}.20",
        "Options": {"com.docker.network.endpoint.macaddress": mac}}) for _ in range(2)]
    assert [(c, b.get("Address")) for c, b, _ in addrs] == [(200, f"{v4}.20/24")] * 2, addrs
    endpoint = {"NetworkID": net_id, "EndpointID": ep_id, "Options": {},
                "Interface": {"Address": f"{v4}.20/24", "AddressIPv6": "", "MacAddress": mac}}
    for _ in range(2):
        code, body, _ = call(dlab, "/NetworkDriver.CreateEndpoint", endpoint)
        assert code == 200, body
    ports = dlab.get("/ports", network_id=net["id"])["ports"]
    assert len(ports) == 1 and ports[0]["device_id"] == ep_id, ports

    for path, body in (("/NetworkDriver.DeleteEndpoint", {"NetworkID": net_id,
                                                          "EndpointID": ep_id}),
                       ("/IpamDriver.ReleaseAddress", {"PoolID": pool_id,
                                                       "Address": f"{v4}.20"}),
                       ("/NetworkDriver.DeleteNetwork", {"NetworkID": net_id}),
                       ("/IpamDriver.ReleasePool", {"PoolID": pool_id})):
        for attempt in range(2):
            code, answer, _ = call(dlab, path, body)
            assert code == 200, f"{path} (attempt {attempt + 1}) -> {code} {answer}"
    assert dlab.neutron_networks_of(net_id) == []
    assert dlab.pools_named(f"kuryrPool-{v4}.0/24") == []
