"""Drift: what kuryr made on a host, changed behind its back, is put back within a few
seconds, and traffic is then allowed and denied exactly as before. Each test checks
the traffic first (both the allowed and the denied case), changes something, waits
for the agent's repair counter of that kind, and checks the kernel and the traffic
again. The counter only counts what was found missing or changed on a port, network
or table already in place, so its increase is the proof that the change happened
(checking the kernel right after the change would race with the repair)."""

import json
import re
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_agent import cidr_block, name
from test_security_groups import ip4, setup, sg

REPAIR_TIMEOUT = 8  # seconds: the agent verifies every 2 s, nftables on each event


def repairs(lab, host):
    """kuryr_agent_drift_repairs_total by kind, from the agent's /metrics."""
    p = subprocess.run(["curl", "-sf", "--unix-socket", lab.agent_socket(host),
                        "http://agent/metrics"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return {s.labels["kind"]: s.value
            for f in text_string_to_metric_families(p.stdout) for s in f.samples
            if s.name == "kuryr_agent_drift_repairs_total"}


def wait_repaired(lab, host, kind, before):
    lab.wait_for(lambda: repairs(lab, host).get(kind, 0) > before.get(kind, 0),
                 REPAIR_TIMEOUT, f"a {kind} repair on {host}")


@pytest.fixture(scope="module")
def groups(lab):
    """A server group admitting TCP 8080 only and a client group with all egress,
    shared by this module's tests (the lab's project has a group quota)."""
    web = sg(lab, "web", [{"protocol": "tcp", "port_range_min": 8080, "port_range_max": 8080}])
    client = sg(lab, "cli", [{"direction": "egress"}])
    return web, client


def web_pair(lab, groups):
    """Two containers on h1, the server's admitting TCP 8080 only; the positive and
    the negative control hold before anything is changed. Returns (srv, cs, cc)."""
    v4, _ = cidr_block()
    web, client = groups
    _, (srv, _cli), (cs, cc) = setup(lab, v4, hosts=("h1", "h1"), groups=[[web], [client]])
    check_filtering(lab, srv, cs, cc)
    return srv, cs, cc


def check_filtering(lab, srv, cs, cc):
    for port, admitted in ((8080, True), (9090, False)):
        listener = lab.tcp_listen(cs, port)
        try:
            assert lab.tcp_connects(cc, ip4(srv), port) is admitted, (port, admitted)
        finally:
            listener.kill()


def nft_rules(lab, host, *what):
    return lab.exec(host, "nft", "list", *what)


def port_chain(lab, host, ip):
    """The chain the ingress map sends traffic to `ip` to."""
    listing = nft_rules(lab, host, "map", "inet", "kuryr", "ingress4")
    m = re.search(rf'\. {re.escape(ip)} : jump (\S+)', listing)
    assert m, listing
    return m.group(1).rstrip(",")


def test_flushed_table_is_put_back(lab, groups):
    srv, cs, cc = web_pair(lab, groups)
    before = repairs(lab, "h1")
    lab.exec("h1", "nft", "flush", "table", "inet", "kuryr")
    wait_repaired(lab, "h1", "nftables", before)
    lab.wait_for(lambda: ip4(srv) in nft_rules(lab, "h1", "map", "inet", "kuryr", "ingress4"),
                 REPAIR_TIMEOUT, "the ingress map back")
    check_filtering(lab, srv, cs, cc)


def test_flushed_port_chain_is_put_back(lab, groups):
    srv, cs, cc = web_pair(lab, groups)
    chain = port_chain(lab, "h1", ip4(srv))
    before = repairs(lab, "h1")
    lab.exec("h1", "nft", "flush", "chain", "inet", "kuryr", chain)
    wait_repaired(lab, "h1", "nftables", before)
    lab.wait_for(lambda: "dport 8080" in nft_rules(lab, "h1", "chain", "inet", "kuryr", chain),
                 REPAIR_TIMEOUT, f"chain {chain} refilled")
    check_filtering(lab, srv, cs, cc)


def test_deleted_container_address_is_put_back(lab, groups):
    srv, cs, cc = web_pair(lab, groups)
    address = next(a for a in lab.addresses(cs) if a.startswith(ip4(srv) + "/"))
    before = repairs(lab, "h1")
    lab.exec(cs, "ip", "addr", "del", address, "dev", "eth0")
    wait_repaired(lab, "h1", "address", before)
    assert address in lab.addresses(cs)
    check_filtering(lab, srv, cs, cc)


def test_deleted_tap_is_put_back(lab, groups):
    srv, cs, cc = web_pair(lab, groups)
    tap = f"tap{srv['id'][:11]}"
    before = repairs(lab, "h1")
    lab.exec("h1", "ip", "link", "del", tap)
    wait_repaired(lab, "h1", "link", before)
    lab.wait_for(lambda: any(a.startswith(ip4(srv) + "/") for a in lab.addresses(cs)),
                 REPAIR_TIMEOUT, "the container's eth0 and address back")
    assert tap in {l["ifname"] for l in lab.links("h1")}
    check_filtering(lab, srv, cs, cc)


def test_deleted_fdb_entry_is_put_back(lab):
    v4, _ = cidr_block()
    net, (a, b), (ca, cb) = setup(lab, v4, hosts=("h1", "h2"))
    assert lab.ping_eventually(ca, ip4(b))
    vx = f"vxlan-{net['provider:segmentation_id']}"

    def entries():
        fdb = json.loads(lab.exec("h1", "bridge", "-j", "fdb", "show", "dev", vx))
        return {(e["mac"], e.get("dst")) for e in fdb if e.get("dst")}

    entry = (b["mac_address"], "10.99.0.12")
    assert entry in entries()
    before = repairs(lab, "h1")
    lab.exec("h1", "bridge", "fdb", "del", b["mac_address"], "dev", vx, "dst", "10.99.0.12")
    wait_repaired(lab, "h1", "fdb", before)
    assert entry in entries()
    assert lab.ping_eventually(ca, ip4(b))


def test_port_set_down_is_reported_active_again(lab):
    v4, _ = cidr_block()
    _, (a,), _ = setup(lab, v4, hosts=("h1",))

    def status():
        return lab.api("GET", f"/ports/{a['id']}", expect=200)[1]["port"]["status"]

    assert status() == "ACTIVE"
    before = repairs(lab, "h1")
    _, put = lab.api("PUT", f"/ports/{a['id']}", {"port": {"status": "DOWN"}}, expect=200)
    assert put["port"]["status"] == "DOWN"
    wait_repaired(lab, "h1", "status", before)
    lab.wait_for(lambda: status() == "ACTIVE", REPAIR_TIMEOUT, "the port ACTIVE again")


def test_nothing_is_repaired_when_nothing_drifted(lab, groups):
    """The agent's own changes (binds, rule and member updates, whole-table replaces)
    are never taken for drift: across binds, traffic and two verification passes, no
    repair is counted (the tests above show the counter moves when it should)."""
    before = repairs(lab, "h1")
    srv, cs, cc = web_pair(lab, groups)
    passes = pass_count(lab, "h1")
    lab.wait_for(lambda: pass_count(lab, "h1") >= passes + 2, 10, "two more passes on h1")
    check_filtering(lab, srv, cs, cc)
    assert repairs(lab, "h1") == before


def pass_count(lab, host):
    p = subprocess.run(["curl", "-sf", "--unix-socket", lab.agent_socket(host),
                        "http://agent/metrics"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return next(s.value for f in text_string_to_metric_families(p.stdout) for s in f.samples
                if s.name == "kuryr_agent_pass_seconds_count")
