"""SCENARIOS.md A1-A5, A9, A10 with the real `openstack` CLI."""

import datetime
import time

import requests

from cloud import Creds, Server, osc, token_for, unique


# A1 -------------------------------------------------------------------------

def test_login_catalog_and_token_revocation(admin, network_url):
    services = {s["Type"] for s in osc(admin, "catalog", "list")}
    assert {"identity", "network"} <= services
    token = token_for(admin)
    r = requests.get(f"{network_url}/networks", headers={"X-Auth-Token": token})
    assert r.status_code == 200 and "networks" in r.json()
    osc(admin, "token", "revoke", token, fmt=None)
    r = requests.get(f"{network_url}/networks", headers={"X-Auth-Token": token})
    assert r.status_code == 401
    assert requests.get(f"{network_url}/networks").status_code == 401
    wrong = Creds(admin.server, "admin", "not-the-password", "admin")
    err = osc(wrong, "token", "issue", expect_fail=True)
    assert "401" in err or "authentication" in err.lower()


def test_expired_token_is_refused():
    s = Server("--token-ttl", "3")
    try:
        # Straight to the API (the CLI can take longer to start than the token lives).
        r = requests.post(f"{s.auth_url}/auth/tokens", timeout=10, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": s.admin_password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        assert r.status_code == 201, r.text
        token = r.headers["X-Subject-Token"]
        expires = datetime.datetime.fromisoformat(
            r.json()["token"]["expires_at"].replace("Z", "+00:00")).timestamp()
        url = f"{s.url}/networking/v2.0/networks"
        assert requests.get(url, headers={"X-Auth-Token": token}).status_code == 200
        # Wait for the expiry the token states (plus a second of clock granularity).
        while time.time() < expires + 1:
            time.sleep(0.2)
        assert requests.get(url, headers={"X-Auth-Token": token}).status_code == 401
    finally:
        s.stop()


# A2 -------------------------------------------------------------------------

def test_network_lifecycle_filters_and_formats(admin):
    a, b = unique("net"), unique("net")
    n = osc(admin, "network", "create", a, "--tag", "red", "--tag", "blue", "--mtu", "1400",
            "--description", "first")
    assert n["name"] == a and n["mtu"] == 1400 and n["description"] == "first"
    assert sorted(n["tags"]) == ["blue", "red"]
    assert n["provider:network_type"] == "vxlan" and n["provider:segmentation_id"]
    assert n["status"] == "ACTIVE" and n["admin_state_up"] is True
    m = osc(admin, "network", "create", b, "--share", "--external", "--tag", "blue",
            "--provider-network-type", "flat", "--provider-physical-network", unique("phys"))
    assert m["shared"] is True and m["router:external"] is True
    assert m["provider:network_type"] == "flat" and m["provider:segmentation_id"] is None

    names = lambda *f: {x["Name"] for x in osc(admin, "network", "list", *f)}
    assert {a, b} <= names("--tags", "blue")
    assert a in names("--tags", "red,blue") and b not in names("--tags", "red,blue")
    assert {a, b} <= names("--any-tags", "red,blue")
    assert a not in names("--not-tags", "red") and b in names("--not-tags", "red")
    assert names("--name", a) == {a}
    assert osc(admin, "network", "show", a, "-c", "mtu", "-c", "name") == {"mtu": 1400, "name": a}
    assert osc(admin, "network", "show", a, "-c", "name", fmt="value").strip() == a
    assert f"name: {a}" in osc(admin, "network", "show", a, fmt="yaml")

    osc(admin, "network", "set", a, "--name", a + "x", "--description", "second", "--mtu", "1300",
        "--tag", "green", fmt=None)
    n2 = osc(admin, "network", "show", a + "x")
    assert n2["description"] == "second" and n2["mtu"] == 1300
    assert sorted(n2["tags"]) == ["blue", "green", "red"]
    assert n2["revision_number"] > n["revision_number"]
    osc(admin, "network", "unset", a + "x", "--tag", "red", fmt=None)
    assert sorted(osc(admin, "network", "show", a + "x")["tags"]) == ["blue", "green"]
    osc(admin, "network", "delete", a + "x", b, fmt=None)
    assert not names("--name", a + "x")
    err = osc(admin, "network", "show", b, expect_fail=True)
    assert "No Network found" in err or "could not be found" in err


# A3 -------------------------------------------------------------------------

def test_subnets_pools_and_ipv6(admin):
    net = unique("net")
    osc(admin, "network", "create", net)
    s = osc(admin, "subnet", "create", unique("s4"), "--network", net, "--subnet-range", "10.70.0.0/24",
            "--gateway", "10.70.0.254", "--allocation-pool", "start=10.70.0.10,end=10.70.0.20",
            "--allocation-pool", "start=10.70.0.100,end=10.70.0.110", "--dns-nameserver", "10.70.0.2",
            "--host-route", "destination=192.0.2.0/24,gateway=10.70.0.1")
    assert s["gateway_ip"] == "10.70.0.254" and s["cidr"] == "10.70.0.0/24"
    assert s["allocation_pools"] == [{"start": "10.70.0.10", "end": "10.70.0.20"},
                                     {"start": "10.70.0.100", "end": "10.70.0.110"}]
    assert s["dns_nameservers"] == ["10.70.0.2"]
    assert s["host_routes"] == [{"destination": "192.0.2.0/24", "nexthop": "10.70.0.1"}]
    nogw = osc(admin, "subnet", "create", unique("nogw"), "--network", net,
               "--subnet-range", "10.71.0.0/24", "--gateway", "none")
    assert nogw["gateway_ip"] is None
    assert nogw["allocation_pools"] == [{"start": "10.71.0.1", "end": "10.71.0.254"}]
    v6 = osc(admin, "subnet", "create", unique("s6"), "--network", net, "--ip-version", "6",
             "--subnet-range", "fd00:70::/64", "--ipv6-address-mode", "slaac", "--ipv6-ra-mode", "slaac")
    assert v6["ip_version"] == 6 and v6["ipv6_address_mode"] == "slaac" and v6["gateway_ip"] == "fd00:70::1"

    pool = unique("pool")
    p = osc(admin, "subnet", "pool", "create", pool, "--pool-prefix", "10.200.0.0/16",
            "--pool-prefix", "10.202.0.0/16", "--pool-prefix", "10.203.0.0/16", "--default-prefix-length", "26",
            "--share", "--default")
    # Adjacent prefixes are merged, as Neutron does.
    assert sorted(p["prefixes"]) == ["10.200.0.0/16", "10.202.0.0/15"]
    assert p["default_prefixlen"] == 26 and p["shared"] is True and p["is_default"] is True
    got = [osc(admin, "subnet", "create", unique("fp"), "--network", net, "--subnet-pool", pool,
               "--prefix-length", "24")["cidr"] for _ in range(2)]
    got.append(osc(admin, "subnet", "create", unique("fp"), "--network", net, "--subnet-pool", pool)["cidr"])
    assert len(set(got)) == 3 and got[2].endswith("/26")
    assert all(c.startswith("10.20") for c in got)

    osc(admin, "subnet", "set", s["id"], "--name", "renamed", "--dns-nameserver", "10.70.0.3", fmt=None)
    shown = osc(admin, "subnet", "show", s["id"])
    assert shown["name"] == "renamed" and sorted(shown["dns_nameservers"]) == ["10.70.0.2", "10.70.0.3"]
    osc(admin, "subnet", "unset", s["id"], "--dns-nameserver", "10.70.0.2", fmt=None)
    assert osc(admin, "subnet", "show", s["id"])["dns_nameservers"] == ["10.70.0.3"]
    assert {x["ID"] for x in osc(admin, "subnet", "list", "--network", net)} >= {s["id"], v6["id"]}
    osc(admin, "subnet", "delete", s["id"], fmt=None)
    osc(admin, "subnet", "pool", "set", pool, "--no-default", fmt=None)


# A4 -------------------------------------------------------------------------

def test_ports_options_filters_and_bulk_delete(admin):
    net = unique("net")
    osc(admin, "network", "create", net)
    s4 = osc(admin, "subnet", "create", unique("s4"), "--network", net, "--subnet-range", "10.80.0.0/24")
    s6 = osc(admin, "subnet", "create", unique("s6"), "--network", net, "--ip-version", "6",
             "--subnet-range", "fd00:80::/64")
    sg = osc(admin, "security", "group", "create", unique("sg"))
    p = osc(admin, "port", "create", unique("p"), "--network", net,
            "--fixed-ip", f"subnet={s4['id']},ip-address=10.80.0.50", "--mac-address", "fa:16:3e:00:80:50",
            "--device", "dev-1", "--device-owner", "compute:kuryr", "--host", "host-a",
            "--security-group", sg["id"],
            "--allowed-address", "ip-address=10.80.0.200")
    # Without a MAC, the pair takes the port's (Neutron's rule).
    assert p["fixed_ips"] == [{"subnet_id": s4["id"], "ip_address": "10.80.0.50"}]
    assert p["mac_address"] == "fa:16:3e:00:80:50" and p["device_id"] == "dev-1"
    assert p["device_owner"] == "compute:kuryr" and p["binding_host_id"] == "host-a"
    assert p["security_group_ids"] == [sg["id"]]
    assert p["allowed_address_pairs"] == [{"ip_address": "10.80.0.200", "mac_address": "fa:16:3e:00:80:50"}]
    assert p["status"] == "DOWN"

    dual = osc(admin, "port", "create", unique("dual"), "--network", net)
    versions = sorted(":" in f["ip_address"] for f in dual["fixed_ips"])
    assert versions == [False, True], "a dual-stack port gets one IPv4 and one IPv6 address"
    nosg = osc(admin, "port", "create", unique("nosg"), "--network", net, "--no-security-group")
    assert nosg["security_group_ids"] == []
    insecure = osc(admin, "port", "create", unique("ins"), "--network", net, "--no-security-group",
                   "--disable-port-security")
    assert insecure["port_security_enabled"] is False

    ids = lambda *f: {x["ID"] for x in osc(admin, "port", "list", *f)}
    assert ids("--network", net) == {p["id"], dual["id"], nosg["id"], insecure["id"]}
    assert ids("--device-owner", "compute:kuryr") >= {p["id"]}
    assert ids("--network", net, "--device-owner", "compute:kuryr") == {p["id"]}
    assert ids("--fixed-ip", "ip-address=10.80.0.50") == {p["id"]}
    assert ids("--fixed-ip", f"subnet={s6['id']}") == {dual["id"], nosg["id"], insecure["id"]}

    osc(admin, "port", "set", p["id"], "--name", "renamed", "--tag", "t1", "--no-security-group",
        "--fixed-ip", f"subnet={s4['id']},ip-address=10.80.0.51", fmt=None)
    q = osc(admin, "port", "show", p["id"])
    assert q["name"] == "renamed" and q["tags"] == ["t1"] and q["security_group_ids"] == []
    assert {f["ip_address"] for f in q["fixed_ips"]} == {"10.80.0.50", "10.80.0.51"}
    osc(admin, "port", "unset", p["id"], "--fixed-ip", f"subnet={s4['id']},ip-address=10.80.0.50",
        "--allowed-address", "ip-address=10.80.0.200,mac-address=fa:16:3e:00:80:50", "--tag", "t1", fmt=None)
    q = osc(admin, "port", "show", p["id"])
    assert [f["ip_address"] for f in q["fixed_ips"]] == ["10.80.0.51"]
    assert q["allowed_address_pairs"] == [] and q["tags"] == []
    # The freed address can be taken again.
    again = osc(admin, "port", "create", unique("again"), "--network", net,
                "--fixed-ip", f"subnet={s4['id']},ip-address=10.80.0.50")
    osc(admin, "port", "delete", p["id"], dual["id"], nosg["id"], insecure["id"], again["id"], fmt=None)
    assert ids("--network", net) == set()


# A5 -------------------------------------------------------------------------

def test_security_groups_rules_and_default_group(admin, tenants):
    user = tenants[0]
    groups = osc(user, "security", "group", "list")
    defaults = [g for g in groups if g["Name"] == "default"]
    assert len(defaults) == 1, "a project's default group exists on first use"
    rules = osc(user, "security", "group", "rule", "list", defaults[0]["ID"], "--long")
    summary = sorted((r["Direction"], r["Ethertype"], r["Remote Security Group"] is not None) for r in rules)
    assert summary == [("egress", "IPv4", False), ("egress", "IPv6", False),
                       ("ingress", "IPv4", True), ("ingress", "IPv6", True)]

    web, other = unique("web"), unique("other")
    g = osc(user, "security", "group", "create", web, "--description", "web tier")
    assert len(g["rules"]) == 2
    o = osc(user, "security", "group", "create", other)
    r1 = osc(user, "security", "group", "rule", "create", web, "--ingress", "--protocol", "tcp",
             "--dst-port", "80:90", "--remote-ip", "192.0.2.0/24")
    assert (r1["port_range_min"], r1["port_range_max"], r1["protocol"]) == (80, 90, "tcp")
    assert r1["remote_ip_prefix"] == "192.0.2.0/24"
    r2 = osc(user, "security", "group", "rule", "create", web, "--ingress", "--protocol", "udp",
             "--dst-port", "53", "--remote-group", other)
    assert (r2["port_range_min"], r2["port_range_max"]) == (53, 53) and r2["remote_group_id"] == o["id"]
    r3 = osc(user, "security", "group", "rule", "create", web, "--ingress", "--protocol", "icmp")
    assert r3["protocol"] == "icmp"
    r4 = osc(user, "security", "group", "rule", "create", web, "--egress", "--protocol", "any",
             "--ethertype", "IPv6", "--remote-ip", "fd00::/8")
    assert (r4.get("ether_type") or r4.get("ethertype")) == "IPv6" and r4["protocol"] is None
    r5 = osc(user, "security", "group", "rule", "create", web, "--ingress", "--protocol", "132")
    assert r5["protocol"] == "132"
    err = osc(user, "security", "group", "rule", "create", web, "--ingress", "--protocol", "tcp",
              "--dst-port", "80:90", "--remote-ip", "192.0.2.0/24", expect_fail=True)
    assert "already exists" in err
    assert len(osc(user, "security", "group", "rule", "list", web)) == 7
    assert osc(user, "security", "group", "rule", "show", r1["id"])["id"] == r1["id"]
    osc(user, "security", "group", "rule", "delete", r1["id"], fmt=None)
    osc(user, "security", "group", "set", web, "--name", web + "2", fmt=None)
    assert osc(user, "security", "group", "show", web + "2")["description"] == "web tier"
    osc(user, "security", "group", "delete", web + "2", fmt=None)
    assert web + "2" not in {x["Name"] for x in osc(user, "security", "group", "list")}


# A9 -------------------------------------------------------------------------

def test_projects_are_isolated_readers_read_admins_see_all(admin, tenants):
    alice, bob, reader = tenants
    net = unique("anet")
    n = osc(alice, "network", "create", net)
    osc(alice, "subnet", "create", unique("as"), "--network", net, "--subnet-range", "10.90.0.0/24")
    port = osc(alice, "port", "create", unique("ap"), "--network", net)
    sg = osc(alice, "security", "group", "create", unique("asg"))

    assert net not in {x["Name"] for x in osc(bob, "network", "list")}
    assert port["id"] not in {x["ID"] for x in osc(bob, "port", "list")}
    assert sg["id"] not in {x["ID"] for x in osc(bob, "security", "group", "list")}
    for args in (["network", "show", n["id"]], ["port", "show", port["id"]],
                 ["security", "group", "show", sg["id"]]):
        osc(bob, *args, expect_fail=True)
    osc(bob, "network", "set", n["id"], "--name", "stolen", fmt=None, expect_fail=True)
    osc(bob, "network", "delete", n["id"], fmt=None, expect_fail=True)
    osc(bob, "port", "delete", port["id"], fmt=None, expect_fail=True)
    assert osc(alice, "network", "show", n["id"])["name"] == net

    # A reader sees its project's resources but cannot change anything.
    assert net in {x["Name"] for x in osc(reader, "network", "list")}
    err = osc(reader, "network", "create", unique("r"), expect_fail=True)
    assert "403" in err or "disallowed" in err or "Forbidden" in err

    # An admin sees everyone's; a shared network is visible to and usable by others.
    assert n["id"] in {x["ID"] for x in osc(admin, "network", "list")}
    shared = unique("shared")
    osc(admin, "network", "create", shared, "--share")
    osc(admin, "subnet", "create", unique("ss"), "--network", shared, "--subnet-range", "10.91.0.0/24")
    assert shared in {x["Name"] for x in osc(bob, "network", "list")}
    bp = osc(bob, "port", "create", unique("bp"), "--network", shared)
    assert bp["fixed_ips"][0]["ip_address"].startswith("10.91.0.")
    assert bp["id"] not in {x["ID"] for x in osc(alice, "port", "list")}


# A10 ------------------------------------------------------------------------

def test_mistakes_get_neutron_errors(admin, network_url):
    net = unique("net")
    n = osc(admin, "network", "create", net)
    s = osc(admin, "subnet", "create", unique("s"), "--network", net, "--subnet-range", "10.95.0.0/29")
    err = osc(admin, "subnet", "create", unique("o"), "--network", net, "--subnet-range", "10.95.0.0/24",
              expect_fail=True)
    assert "overlaps with another subnet" in err
    err = osc(admin, "port", "create", unique("p"), "--network", net, "--fixed-ip", "ip-address=10.99.0.5",
              expect_fail=True)
    assert "is not a valid IP for any of the subnets" in err
    taken = osc(admin, "port", "create", unique("p"), "--network", net, "--fixed-ip", "ip-address=10.95.0.5",
                "--mac-address", "fa:16:3e:95:00:05")
    err = osc(admin, "port", "create", unique("p"), "--network", net, "--fixed-ip", "ip-address=10.95.0.5",
              expect_fail=True)
    assert "already allocated" in err
    err = osc(admin, "port", "create", unique("p"), "--network", net, "--mac-address", "fa:16:3e:95:00:05",
              expect_fail=True)
    assert "mac address fa:16:3e:95:00:05 is in use" in err
    for _ in range(4):  # a /29 has 5 usable addresses; one is taken above
        osc(admin, "port", "create", unique("fill"), "--network", net)
    err = osc(admin, "port", "create", unique("p"), "--network", net, expect_fail=True)
    assert "No more IP addresses available" in err
    err = osc(admin, "network", "delete", net, fmt=None, expect_fail=True)
    assert "Failed to delete" in err or "failed to delete" in err
    assert osc(admin, "network", "show", net)["id"] == n["id"]

    h = {"X-Auth-Token": token_for(admin), "Content-Type": "application/json"}

    def call(method, path, data, status, kind):
        r = requests.request(method, f"{network_url}{path}", headers=h, data=data)
        assert r.status_code == status, r.text
        assert r.json()["NeutronError"]["type"] == kind, r.text
        return r.json()["NeutronError"]

    call("POST", "/networks", '{"network":', 400, "HTTPBadRequest")
    e = call("POST", "/networks", '{"network": {"name": "x", "admin_state_up": "maybe"}}', 400, "HTTPBadRequest")
    assert "admin_state_up" in e["message"]
    e = call("POST", "/networks", '{"network": {"name": "x", "bogus": 1}}', 400, "HTTPBadRequest")
    assert "Unrecognized attribute(s) 'bogus'" == e["message"]
    call("POST", "/subnets", f'{{"subnet": {{"network_id": "{n["id"]}", "ip_version": 4, "cidr": "10.1.0.300/24"}}}}',
         400, "InvalidInput")
    call("GET", "/ports/00000000-0000-0000-0000-000000000000", None, 404, "PortNotFound")
    call("DELETE", f"/networks/{n['id']}", None, 409, "NetworkInUse")
    call("DELETE", f"/subnets/{s['id']}", None, 409, "SubnetInUse")
    rev = osc(admin, "port", "show", taken["id"])["revision_number"]
    ok = requests.put(f"{network_url}/ports/{taken['id']}", data='{"port": {"name": "v2"}}',
                      headers={**h, "If-Match": f"revision_number={rev}"})
    assert ok.status_code == 200 and ok.json()["port"]["revision_number"] == rev + 1
    r = requests.put(f"{network_url}/ports/{taken['id']}", data='{"port": {"name": "v3"}}',
                     headers={**h, "If-Match": f"revision_number={rev}"})
    assert r.status_code == 412 and r.json()["NeutronError"]["type"] == "RevisionNumberConstraintFailed"
    assert osc(admin, "port", "show", taken["id"])["name"] == "v2", "nothing was half-written"
