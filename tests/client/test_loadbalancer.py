"""The Octavia v2 API of kuryr's server through the real `openstack loadbalancer`
CLI (python-octaviaclient) and, where the CLI hides the body, its REST API: the
object lifecycle and Octavia's state machine, the status tree and statistics,
cascade delete leaving nothing behind, the provider's refusals of what an L4
distributed load balancer cannot do, quotas, and other projects and readers seen
from the attacker's side. No agent runs here: the dataplane is the lab's
(tests/lab/test_load_balancers.py)."""

import concurrent.futures
import json

import pytest
import requests

from cloud import osc, token_for, unique


def lb_url(admin):
    catalog = osc(admin, "catalog", "show", "load-balancer")
    public = [e for e in catalog["endpoints"] if e["interface"] == "public"]
    return public[0]["url"].rstrip("/") + "/v2"


def rest(creds, url):
    h = {"X-Auth-Token": token_for(creds)}

    def call(method, path, body=None):
        r = requests.request(method, url + path, json=body, headers=h, timeout=30)
        return r.status_code, (r.json() if r.content else None)
    return call


def fails(creds, *args):
    err = osc(creds, *args, fmt=None, expect_fail=True)
    assert "usage: openstack" not in err, err
    return err


def subnet(creds, cidr):
    net = osc(creds, "network", "create", unique("net"))
    return osc(creds, "subnet", "create", unique("sub"), "--network", net["id"],
               "--subnet-range", cidr)


def stack(creds, sub):
    lb = osc(creds, "loadbalancer", "create", "--name", unique("lb"), "--vip-subnet-id",
             sub["id"], "--wait")
    listener = osc(creds, "loadbalancer", "listener", "create", "--protocol", "TCP",
                   "--protocol-port", "80", lb["id"], "--wait")
    pool = osc(creds, "loadbalancer", "pool", "create", "--protocol", "TCP",
               "--lb-algorithm", "ROUND_ROBIN", "--listener", listener["id"], "--wait")
    return lb, listener, pool


def test_lifecycle_status_tree_stats_and_cascade(tenants):
    alice, _, _ = tenants
    sub = subnet(alice, "10.61.1.0/24")
    lb = osc(alice, "loadbalancer", "create", "--name", "web", "--vip-subnet-id", sub["id"],
             "--vip-address", "10.61.1.50", "--tag", "k8s", "--wait")
    assert lb["provisioning_status"] == "ACTIVE" and lb["operating_status"] == "ONLINE"
    assert lb["vip_address"] == "10.61.1.50" and lb["provider"] == "kuryr"
    # The VIP is a Neutron port of Octavia's, in a group of its own.
    port = osc(alice, "port", "show", lb["vip_port_id"])
    assert port["device_owner"] == "Octavia" and port["device_id"] == f"lb-{lb['id']}"
    assert port["fixed_ips"][0]["ip_address"] == "10.61.1.50"
    sg = osc(alice, "security", "group", "show", port["security_group_ids"][0])
    assert sg["name"] == f"lb-{lb['id']}"

    listener = osc(alice, "loadbalancer", "listener", "create", "--name", "http",
                   "--protocol", "TCP", "--protocol-port", "80",
                   "--allowed-cidr", "192.0.2.0/24", lb["id"], "--wait")
    # The group now lets the listener's port in from its allowed CIDR only.
    rules = osc(alice, "security", "group", "rule", "list", sg["id"], "--long")
    ingress = [(r["IP Protocol"], r["Port Range"], r["IP Range"]) for r in rules
               if r["Direction"] == "ingress"]
    assert ingress == [("tcp", "80:80", "192.0.2.0/24")], ingress
    pool = osc(alice, "loadbalancer", "pool", "create", "--protocol", "TCP",
               "--lb-algorithm", "SOURCE_IP_PORT", "--listener", listener["id"], "--wait")
    m1 = osc(alice, "loadbalancer", "member", "create", "--address", "10.61.1.11",
             "--protocol-port", "8080", "--subnet-id", sub["id"], "--weight", "3",
             pool["id"], "--wait")
    osc(alice, "loadbalancer", "member", "create", "--address", "10.61.1.12",
        "--protocol-port", "8080", "--subnet-id", sub["id"], "--enable-backup", pool["id"],
        "--wait")
    hm = osc(alice, "loadbalancer", "healthmonitor", "create", "--type", "HTTP",
             "--delay", "5", "--timeout", "3", "--max-retries", "2", "--url-path", "/healthz",
             "--expected-codes", "200-204", pool["id"], "--wait")
    assert hm["http_method"] == "GET" and hm["max_retries_down"] == 3
    assert m1["weight"] == 3 and m1["operating_status"] in ("NO_MONITOR", "OFFLINE")

    # The status tree: what `openstack loadbalancer status show` prints (JSON).
    tree = json.loads(osc(alice, "loadbalancer", "status", "show", lb["id"], fmt=None))
    t = tree["loadbalancer"]
    assert t["provisioning_status"] == "ACTIVE"
    [tl] = t["listeners"]
    assert tl["id"] == listener["id"]
    [tp] = tl["pools"]
    assert tp["id"] == pool["id"] and tp["health_monitor"]["id"] == hm["id"]
    assert sorted(m["address"] for m in tp["members"]) == ["10.61.1.11", "10.61.1.12"]
    # Monitored, not checked yet (no agent here): OFFLINE, not ONLINE.
    assert {m["operating_status"] for m in tp["members"]} == {"OFFLINE"}
    stats = osc(alice, "loadbalancer", "stats", "show", lb["id"])
    assert stats["total_connections"] == 0 and "bytes_in" in stats

    # Lists with filters as the CLI sends them.
    assert [x["id"] for x in osc(alice, "loadbalancer", "list", "--name", "web")] == [lb["id"]]
    assert [x["id"] for x in osc(alice, "loadbalancer", "list", "--tags", "k8s")] == [lb["id"]]
    assert osc(alice, "loadbalancer", "list", "--name", "nope") == []

    # Not without cascade; with it, nothing is left (the VIP port and group neither).
    err = fails(alice, "loadbalancer", "delete", lb["id"])
    assert f"Cannot delete Load Balancer {lb['id']} - it has children" in err
    osc(alice, "loadbalancer", "delete", "--cascade", lb["id"], "--wait", fmt=None)
    for kind in ("listener", "pool", "healthmonitor"):
        assert osc(alice, "loadbalancer", kind, "list") == [], kind
    assert osc(alice, "loadbalancer", "list") == []
    assert lb["vip_port_id"] not in {p["ID"] for p in osc(alice, "port", "list")}
    assert sg["id"] not in {g["ID"] for g in osc(alice, "security", "group", "list")}
    err = fails(alice, "loadbalancer", "show", lb["id"])
    assert "Unable to locate" in err or "not found" in err, err


def test_provider_refuses_what_an_l4_balancer_cannot_do(tenants, admin):
    alice, _, _ = tenants
    sub = subnet(alice, "10.61.2.0/24")
    lb, listener, pool = stack(alice, sub)
    cases = [
        (("loadbalancer", "listener", "create", "--protocol", "HTTP", "--protocol-port", "81",
          lb["id"]), "HTTP listeners are not supported"),
        (("loadbalancer", "listener", "create", "--protocol", "TERMINATED_HTTPS",
          "--protocol-port", "443", "--default-tls-container-ref", "http://x/c", lb["id"]),
         "TERMINATED_HTTPS listeners are not supported"),
        (("loadbalancer", "pool", "create", "--protocol", "TCP", "--lb-algorithm",
          "LEAST_CONNECTIONS", "--loadbalancer", lb["id"]), "LEAST_CONNECTIONS is not supported"),
        (("loadbalancer", "pool", "create", "--protocol", "HTTP", "--lb-algorithm",
          "ROUND_ROBIN", "--loadbalancer", lb["id"]), "HTTP pools are not supported"),
        (("loadbalancer", "pool", "set", "--session-persistence", "type=HTTP_COOKIE",
          pool["id"]), "session persistence HTTP_COOKIE is not supported"),
        (("loadbalancer", "l7policy", "create", "--action", "REJECT", listener["id"]),
         "L7 policies are not supported"),
    ]
    for args, text in cases:
        err = fails(alice, *args)
        assert f"Provider 'kuryr' does not support a requested option: " in err, err
        assert text in err and "(HTTP 501)" in err, err
    # Validation (400) comes before the provider's say, as in Octavia.
    err = fails(alice, "loadbalancer", "listener", "create", "--protocol", "TCP",
                "--protocol-port", "80", lb["id"])
    assert "already using protocol TCP and protocol_port 80" in err and "409" in err, err
    code, body = rest(alice, lb_url(admin))("POST", "/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "FTP", "protocol_port": 21}})
    assert code == 400 and body["faultcode"] == "Client", body
    assert "Invalid input for field/attribute protocol. Value: 'FTP'." in body["faultstring"]
    code, body = rest(alice, lb_url(admin))("POST", "/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 0}})
    assert code == 400 and "protocol_port" in body["faultstring"], body
    code, body = rest(alice, lb_url(admin))("POST", "/lbaas/healthmonitors", {"healthmonitor": {
        "pool_id": pool["id"], "type": "TCP", "delay": 1, "timeout": 1, "max_retries": 11}})
    assert code == 400 and "max_retries" in body["faultstring"], body
    # Nothing of the refused requests was kept (positive control: the stack is there).
    assert [x["id"] for x in osc(alice, "loadbalancer", "listener", "list")] == [listener["id"]]
    assert [x["id"] for x in osc(alice, "loadbalancer", "pool", "list")] == [pool["id"]]
    osc(alice, "loadbalancer", "delete", "--cascade", lb["id"], "--wait", fmt=None)


def test_changes_while_pending_are_immutable(tenants, admin):
    """Octavia's lock: while a change of a tree is pending, another one is refused
    with 409 ImmutableObject; the load balancer ends ACTIVE with one change applied
    per success."""
    alice, _, _ = tenants
    sub = subnet(alice, "10.61.3.0/24")
    lb, listener, _ = stack(alice, sub)
    call = rest(alice, lb_url(admin))

    def rename(i):
        return call("PUT", f"/lbaas/listeners/{listener['id']}",
                    {"listener": {"name": f"n{i}"}})
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(rename, range(48)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 409}, codes
    assert 200 in codes and 409 in codes, codes
    refused = [b for c, b in results if c == 409]
    assert all(b["faultstring"] in (
        f"Load Balancer {lb['id']} is immutable and cannot be updated.",
        f"Listener {listener['id']} is immutable and cannot be updated.")
        for b in refused), refused[:3]
    final = osc(alice, "loadbalancer", "listener", "show", listener["id"])
    names = {b["listener"]["name"] for c, b in results if c == 200}
    assert final["name"] in names
    lb_now = osc(alice, "loadbalancer", "show", lb["id"])
    assert lb_now["provisioning_status"] in ("ACTIVE", "PENDING_UPDATE")
    osc(alice, "loadbalancer", "delete", "--cascade", lb["id"], "--wait", fmt=None)


def test_other_projects_and_readers(tenants, admin):
    alice, bob, reader = tenants
    sub = subnet(alice, "10.61.4.0/24")
    lb, listener, pool = stack(alice, sub)
    member = osc(alice, "loadbalancer", "member", "create", "--address", "10.61.4.9",
                 "--protocol-port", "80", pool["id"], "--wait")
    url = lb_url(admin)
    # Bob sees none of it, and cannot change or delete it.
    assert osc(bob, "loadbalancer", "list") == []
    assert osc(bob, "loadbalancer", "pool", "list") == []
    for method, path, body in [
        ("GET", f"/lbaas/loadbalancers/{lb['id']}", None),
        ("PUT", f"/lbaas/loadbalancers/{lb['id']}", {"loadbalancer": {"name": "x"}}),
        ("DELETE", f"/lbaas/loadbalancers/{lb['id']}?cascade=true", None),
        ("PUT", f"/lbaas/listeners/{listener['id']}", {"listener": {"name": "x"}}),
        ("DELETE", f"/lbaas/pools/{pool['id']}/members/{member['id']}", None),
        ("GET", f"/lbaas/loadbalancers/{lb['id']}/status", None),
        ("GET", f"/lbaas/loadbalancers/{lb['id']}/stats", None),
    ]:
        code, resp = rest(bob, url)(method, path, body)
        assert code == 403, (method, path, code, resp)
        assert resp["faultstring"] == "Policy does not allow this request to be performed."
    # Bob cannot put a listener or a member on Alice's load balancer either.
    code, _ = rest(bob, url)("POST", "/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 81}})
    assert code in (400, 403), code
    code, _ = rest(bob, url)("POST", f"/lbaas/pools/{pool['id']}/members", {"member": {
        "address": "10.61.4.10", "protocol_port": 80}})
    assert code == 403, code
    # Nor a load balancer on Alice's subnet.
    code, resp = rest(bob, url)("POST", "/lbaas/loadbalancers", {"loadbalancer": {
        "vip_subnet_id": sub["id"]}})
    assert code == 400 and "Invalid subnet id" in resp["faultstring"], resp
    # A reader of Alice's project reads, and writes nothing.
    assert [x["id"] for x in osc(reader, "loadbalancer", "list")] == [lb["id"]]
    err = fails(reader, "loadbalancer", "set", "--name", "x", lb["id"])
    assert "Policy does not allow" in err and "403" in err, err
    # The positive control: Alice's own changes go through, and everything is intact.
    osc(alice, "loadbalancer", "set", "--name", "mine", lb["id"], "--wait", fmt=None)
    assert osc(alice, "loadbalancer", "show", lb["id"])["name"] == "mine"
    assert [m["id"] for m in osc(alice, "loadbalancer", "member", "list", pool["id"])] == \
        [member["id"]]
    osc(alice, "loadbalancer", "delete", "--cascade", lb["id"], "--wait", fmt=None)


def test_quotas_and_providers(tenants, admin):
    alice, _, _ = tenants
    project = osc(admin, "project", "show", alice.project)["id"]
    providers = osc(alice, "loadbalancer", "provider", "list")
    assert [p["name"] for p in providers] == ["kuryr"]
    osc(admin, "loadbalancer", "quota", "set", "--loadbalancer", "1", "--listener", "1",
        project, fmt=None)
    q = osc(admin, "loadbalancer", "quota", "show", project)
    assert q["load_balancer"] == 1 and q["listener"] == 1 and q["member"] == -1
    sub = subnet(alice, "10.61.5.0/24")
    lb = osc(alice, "loadbalancer", "create", "--vip-subnet-id", sub["id"], "--wait")
    err = fails(alice, "loadbalancer", "create", "--vip-subnet-id", sub["id"])
    assert "Quota has been met for resources: Load Balancer" in err and "403" in err, err
    osc(alice, "loadbalancer", "listener", "create", "--protocol", "TCP",
        "--protocol-port", "80", lb["id"], "--wait")
    err = fails(alice, "loadbalancer", "listener", "create", "--protocol", "UDP",
                "--protocol-port", "53", lb["id"])
    assert "Quota has been met for resources: Listener" in err, err
    # Users do not set quotas.
    err = fails(alice, "loadbalancer", "quota", "set", "--loadbalancer", "5", project)
    assert "403" in err, err
    osc(admin, "loadbalancer", "quota", "reset", project, fmt=None)
    assert osc(admin, "loadbalancer", "quota", "show", project)["load_balancer"] == -1
    lb2 = osc(alice, "loadbalancer", "create", "--vip-subnet-id", sub["id"], "--wait")
    for x in (lb, lb2):
        osc(alice, "loadbalancer", "delete", "--cascade", x["id"], "--wait", fmt=None)


@pytest.mark.parametrize("kind", ["loadbalancer", "listener", "pool", "healthmonitor"])
def test_not_found_in_octavias_words(admin, kind):
    call = rest(admin, lb_url(admin))
    code, body = call("GET", f"/lbaas/{kind}s/00000000-0000-0000-0000-000000000000")
    display = {"loadbalancer": "Load Balancer", "listener": "Listener", "pool": "Pool",
               "healthmonitor": "Health Monitor"}[kind]
    assert code == 404 and body == {
        "faultcode": "Client", "debuginfo": None,
        "faultstring": f"{display} 00000000-0000-0000-0000-000000000000 not found."}, body
