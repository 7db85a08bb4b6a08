"""Neutron's L3 API (routers, interfaces, extra routes, external gateways, floating IPs,
port forwardings, IP availability) through the real `openstack` CLI, as a user sees it.
Expected outputs and error texts are what a real neutron-server 29 prints for the same
commands. Each test makes its own projects, networks and CIDRs (external ones included),
so that tests can run in parallel, and the admin deletes what it made afterwards."""

import ipaddress
import re
import time

import pytest
import requests

from cloud import osc, token_for, unique


# Helpers --------------------------------------------------------------------

class Made:
    """What a test made, removed by the admin over the API afterwards in dependency
    order: floating IPs (port forwardings first), routers (routes, interfaces and
    gateway first), then networks (ports first)."""

    def __init__(self, admin, network_url):
        self.admin, self.url = admin, network_url
        self.fips, self.routers, self.networks = [], [], []

    def fip(self, f):
        self.fips.append(f["id"])
        return f

    def router(self, r):
        self.routers.append(r["id"])
        return r

    def network(self, n):
        self.networks.append(n["id"])
        return n

    def cleanup(self):
        h = {"X-Auth-Token": token_for(self.admin)}

        def call(method, path, body=None, **params):
            r = requests.request(method, self.url + path, json=body, params=params, headers=h,
                                 timeout=30)
            return r.json() if r.status_code == 200 and r.content else None

        for f in reversed(self.fips):
            for pf in (call("GET", f"/floatingips/{f}/port_forwardings") or {}).get(
                    "port_forwardings", []):
                call("DELETE", f"/floatingips/{f}/port_forwardings/{pf['id']}")
            call("DELETE", f"/floatingips/{f}")
        for r in reversed(self.routers):
            call("PUT", f"/routers/{r}", {"router": {"routes": []}})
            for p in (call("GET", "/ports", device_id=r) or {}).get("ports", []):
                if p["device_owner"] == "network:router_interface":
                    call("PUT", f"/routers/{r}/remove_router_interface", {"port_id": p["id"]})
            call("PUT", f"/routers/{r}", {"router": {"external_gateway_info": None}})
            call("DELETE", f"/routers/{r}")
        for n in reversed(self.networks):
            for p in (call("GET", "/ports", network_id=n) or {}).get("ports", []):
                call("DELETE", f"/ports/{p['id']}")
            call("DELETE", f"/networks/{n}")


@pytest.fixture
def made(admin, network_url):
    m = Made(admin, network_url)
    yield m
    m.cleanup()


def wait_for(what, check, timeout=60):
    """Polls `check` until it returns something true, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.5)


def external_network(admin, made, cidr):
    """An external (vxlan) network of the admin's with one IPv4 subnet."""
    net = made.network(osc(admin, "network", "create", unique("ext"), "--external"))
    assert net["router:external"] is True
    sub = osc(admin, "subnet", "create", unique("ext-s"), "--network", net["id"],
              "--subnet-range", cidr, "--no-dhcp")
    return net, sub


def private_network(creds, made, cidr, *subnet_args):
    net = made.network(osc(creds, "network", "create", unique("net")))
    sub = osc(creds, "subnet", "create", unique("sub"), "--network", net["id"],
              "--subnet-range", cidr, *subnet_args)
    return net, sub


def router(creds, made, *args):
    return made.router(osc(creds, "router", "create", unique("r"), *args))


def fails(creds, *args):
    """Runs a command that must fail; returns what the CLI printed on stderr. A usage
    error (a mistake in the test's arguments) does not count as the expected failure."""
    err = osc(creds, *args, fmt=None, expect_fail=True)
    assert "usage: openstack" not in err, err
    return err


def ids(rows):
    return {row["ID"] for row in rows}


def interface_ports(creds, router_id):
    return osc(creds, "port", "list", "--router", router_id,
               "--device-owner", "network:router_interface")


def rest(creds, network_url):
    """Straight to the API with the user's token, for the error bodies the CLI hides
    behind its own name lookup."""
    h = {"X-Auth-Token": token_for(creds)}

    def call(method, path, body=None):
        r = requests.request(method, network_url + path, json=body, headers=h, timeout=30)
        return r.status_code, (r.json() if r.content else None)
    return call


# Routers --------------------------------------------------------------------

def test_router_lifecycle(tenants, made):
    alice, bob, _ = tenants
    name = unique("r")
    r = made.router(osc(alice, "router", "create", name, "--description", "edge one",
                        "--tag", "blue", "--tag", "red"))
    assert r["name"] == name and r["description"] == "edge one"
    assert sorted(r["tags"]) == ["blue", "red"]
    assert r["status"] == "ACTIVE" and r["admin_state_up"] is True
    assert r["external_gateway_info"] is None and r["routes"] == []

    shown = osc(alice, "router", "show", name)
    assert shown["id"] == r["id"] and shown["interfaces_info"] == []
    assert sorted(shown["tags"]) == ["blue", "red"] and shown["status"] == "ACTIVE"
    other = router(alice, made, "--disable")
    assert other["admin_state_up"] is False

    listed = {x["ID"]: x for x in osc(alice, "router", "list")}
    assert set(listed) == {r["id"], other["id"]}
    assert listed[r["id"]]["Name"] == name and listed[r["id"]]["Status"] == "ACTIVE"
    assert listed[r["id"]]["State"] is True and listed[other["id"]]["State"] is False
    assert ids(osc(alice, "router", "list", "--name", name)) == {r["id"]}
    assert ids(osc(alice, "router", "list", "--tags", "red")) == {r["id"]}
    assert ids(osc(alice, "router", "list", "--not-tags", "red")) == {other["id"]}
    assert ids(osc(alice, "router", "list", "--disable")) == {other["id"]}
    assert ids(osc(alice, "router", "list", "--enable")) == {r["id"]}
    assert osc(bob, "router", "list") == []

    osc(alice, "router", "set", name, "--name", name + "b", "--description", "edge two",
        "--disable", fmt=None)
    changed = osc(alice, "router", "show", r["id"])
    assert (changed["name"], changed["description"], changed["admin_state_up"]) == \
        (name + "b", "edge two", False)
    assert changed["status"] == "ACTIVE"
    assert changed["revision_number"] > shown["revision_number"]
    assert ids(osc(alice, "router", "list", "--disable")) == {r["id"], other["id"]}
    osc(alice, "router", "set", r["id"], "--enable", fmt=None)
    enabled = osc(alice, "router", "show", r["id"])
    assert enabled["admin_state_up"] is True
    assert enabled["revision_number"] > changed["revision_number"]

    osc(alice, "router", "delete", r["id"], other["id"], fmt=None)
    assert osc(alice, "router", "list") == []
    err = fails(alice, "router", "show", r["id"])
    assert f"No Router found for {r['id']}" in err


# External networks and gateways ----------------------------------------------

def test_external_gateway_snat_and_fixed_ip(admin, tenants, made):
    alice, _, _ = tenants
    ext, ext_sub = external_network(admin, made, "198.51.100.0/26")
    plain = made.network(osc(alice, "network", "create", unique("plain")))
    r = router(alice, made)

    # A member can see the external network and plug a router into it.
    assert ext["id"] in ids(osc(alice, "network", "list", "--external"))
    osc(alice, "router", "set", r["id"], "--external-gateway", ext["id"], fmt=None)
    gw = osc(alice, "router", "show", r["id"])
    info = gw["external_gateway_info"]
    assert info["network_id"] == ext["id"] and info["enable_snat"] is True
    [fixed] = info["external_fixed_ips"]
    assert fixed["subnet_id"] == ext_sub["id"]
    assert re.fullmatch(r"198\.51\.100\.\d+", fixed["ip_address"])
    assert gw["revision_number"] > r["revision_number"]
    # The gateway port belongs to no project: the admin sees it, the member does not.
    [gw_port] = osc(admin, "port", "list", "--router", r["id"],
                    "--device-owner", "network:router_gateway")
    assert gw_port["Fixed IP Addresses"] == [fixed]
    assert osc(alice, "port", "list", "--router", r["id"]) == []

    # Mistakes change nothing. (Neutron 29 itself, on a failed gateway update, still resets
    # enable_snat to its default, so these come while SNAT is on.)
    err = fails(alice, "router", "set", r["id"], "--external-gateway", plain["id"])
    assert f"Bad router request: Network {plain['id']} is not an external network." in err
    err = fails(admin, "router", "set", r["id"], "--external-gateway", ext["id"],
                "--fixed-ip", f"subnet={ext_sub['id']},ip-address=198.51.100.1")
    assert "Bad router request: External IP 198.51.100.1 is the same as the gateway IP." in err
    assert osc(alice, "router", "show", r["id"])["external_gateway_info"] == info

    # SNAT and the gateway's address are the admin's to choose ...
    err = fails(alice, "router", "set", r["id"], "--external-gateway", ext["id"], "--disable-snat")
    assert "403" in err and "rule:update_router:external_gateway_info:enable_snat" in err
    assert "is disallowed by policy" in err
    err = fails(alice, "router", "set", r["id"], "--external-gateway", ext["id"],
                "--fixed-ip", f"subnet={ext_sub['id']},ip-address=198.51.100.10")
    assert "rule:update_router:external_gateway_info:external_fixed_ips" in err
    assert osc(alice, "router", "show", r["id"])["external_gateway_info"] == info
    # ... who may.
    osc(admin, "router", "set", r["id"], "--external-gateway", ext["id"], "--disable-snat",
        "--fixed-ip", f"subnet={ext_sub['id']},ip-address=198.51.100.10", fmt=None)
    info = osc(alice, "router", "show", r["id"])["external_gateway_info"]
    assert info == {"network_id": ext["id"], "enable_snat": False, "external_fixed_ips": [
        {"subnet_id": ext_sub["id"], "ip_address": "198.51.100.10"}]}
    [gw_port] = osc(admin, "port", "list", "--router", r["id"])
    assert gw_port["Fixed IP Addresses"] == info["external_fixed_ips"]
    err = fails(admin, "port", "create", unique("p"), "--network", ext["id"],
                "--fixed-ip", "ip-address=198.51.100.10")
    assert f"IP address 198.51.100.10 already allocated in subnet {ext_sub['id']}" in err

    osc(alice, "router", "unset", r["id"], "--external-gateway", fmt=None)
    cleared = osc(alice, "router", "show", r["id"])
    assert cleared["external_gateway_info"] is None
    assert osc(admin, "port", "list", "--router", r["id"]) == []
    # The address went back to the pool.
    taken = osc(admin, "port", "create", unique("p"), "--network", ext["id"],
                "--fixed-ip", "ip-address=198.51.100.10")
    assert taken["fixed_ips"] == [{"subnet_id": ext_sub["id"], "ip_address": "198.51.100.10"}]

    # A gateway given at create time.
    r2 = router(alice, made, "--external-gateway", ext["id"])
    assert r2["external_gateway_info"]["network_id"] == ext["id"]
    assert r2["external_gateway_info"]["enable_snat"] is True


# Interfaces -----------------------------------------------------------------

def test_router_interfaces(admin, tenants, made, network_url):
    alice, bob, _ = tenants
    net1, sub1 = private_network(alice, made, "10.161.1.0/24")
    net2, sub2 = private_network(alice, made, "10.161.2.0/24")
    _, nogw = private_network(alice, made, "10.161.3.0/24", "--gateway", "none")
    _, overlap = private_network(alice, made, "10.161.1.128/25")
    r = router(alice, made)

    osc(alice, "router", "add", "subnet", r["id"], sub1["id"], fmt=None)
    [iface] = interface_ports(alice, r["id"])
    assert iface["Fixed IP Addresses"] == [{"subnet_id": sub1["id"], "ip_address": "10.161.1.1"}]
    assert ids(osc(alice, "port", "list", "--router", r["id"])) == {iface["ID"]}
    assert iface["ID"] in ids(osc(alice, "port", "list", "--network", net1["id"],
                                  "--device-owner", "network:router_interface"))
    port = osc(alice, "port", "show", iface["ID"])
    assert port["device_id"] == r["id"] and port["device_owner"] == "network:router_interface"
    assert port["project_id"] == r["project_id"]
    wait_for("ACTIVE router interface",
             lambda: osc(alice, "port", "show", iface["ID"])["status"] == "ACTIVE")
    shown = osc(alice, "router", "show", r["id"])
    assert shown["interfaces_info"] == [
        {"port_id": iface["ID"], "ip_address": "10.161.1.1", "subnet_id": sub1["id"]}]
    assert shown["revision_number"] > r["revision_number"]

    err = fails(alice, "router", "add", "subnet", r["id"], sub1["id"])
    assert f"Bad router request: Router already has a port on subnet {sub1['id']}." in err
    err = fails(alice, "router", "add", "subnet", r["id"], overlap["id"])
    assert (f"Bad router request: Cidr 10.161.1.128/25 of subnet {overlap['id']} overlaps with "
            f"cidr 10.161.1.0/24 of subnet {sub1['id']}.") in err
    err = fails(alice, "router", "add", "subnet", r["id"], nogw["id"])
    assert "Bad router request: Subnet for router interface must have a gateway IP." in err
    assert len(interface_ports(alice, r["id"])) == 1

    # A port of the user's own becomes an interface, keeping its address.
    mine = osc(alice, "port", "create", unique("p"), "--network", net2["id"],
               "--fixed-ip", f"subnet={sub2['id']},ip-address=10.161.2.50")
    osc(alice, "router", "add", "port", r["id"], mine["id"], fmt=None)
    owned = osc(alice, "port", "show", mine["id"])
    assert owned["device_id"] == r["id"] and owned["device_owner"] == "network:router_interface"
    assert owned["fixed_ips"] == mine["fixed_ips"]
    assert ids(interface_ports(alice, r["id"])) == {iface["ID"], mine["id"]}
    wait_for("ACTIVE router interface (by port)",
             lambda: osc(alice, "port", "show", mine["id"])["status"] == "ACTIVE")
    err = fails(alice, "router", "add", "port", r["id"], mine["id"])
    assert (f"Unable to complete operation on port {mine['id']} for network {net2['id']}. "
            f"Port already has an attached device {r['id']}.") in err

    # Attached interfaces hold the router, and the ports cannot be deleted on their own.
    err = fails(alice, "router", "delete", r["id"])
    assert f"Router {r['id']} has ports still attached" in err
    assert iface["ID"] in err and mine["id"] in err
    err = fails(alice, "port", "delete", iface["ID"])
    assert (f"Port {iface['ID']} cannot be deleted directly via the port API: "
            "has device owner network:router_interface.") in err
    err = fails(admin, "port", "delete", mine["id"])
    assert "cannot be deleted directly via the port API" in err
    err = fails(alice, "subnet", "delete", sub1["id"])
    assert "One or more ports have an IP allocation from this subnet" in err
    assert osc(alice, "router", "show", r["id"])["id"] == r["id"]

    # Another project can neither use alice's subnet nor touch alice's router.
    theirs = router(bob, made)
    _, bob_sub = private_network(bob, made, "10.161.9.0/24")
    err = fails(bob, "router", "add", "subnet", theirs["id"], sub2["id"])
    assert f"No Subnet found for {sub2['id']}" in err
    status, body = rest(bob, network_url)("PUT", f"/routers/{theirs['id']}/add_router_interface",
                                          {"subnet_id": sub2["id"]})
    assert status == 404 and body["NeutronError"]["type"] == "SubnetNotFound"
    assert body["NeutronError"]["message"] == f"Subnet {sub2['id']} could not be found."
    err = fails(bob, "router", "add", "subnet", r["id"], bob_sub["id"])
    assert f"No Router found for {r['id']}" in err
    osc(bob, "router", "add", "subnet", theirs["id"], bob_sub["id"], fmt=None)  # control
    assert len(interface_ports(bob, theirs["id"])) == 1

    # Removal: by subnet the router's port goes; by port, so does the user's port.
    osc(alice, "router", "remove", "subnet", r["id"], sub1["id"], fmt=None)
    assert ids(interface_ports(alice, r["id"])) == {mine["id"]}
    assert iface["ID"] not in ids(osc(alice, "port", "list", "--network", net1["id"]))
    err = fails(alice, "router", "remove", "subnet", r["id"], sub1["id"])
    assert f"Router {r['id']} has no interface on subnet {sub1['id']}" in err
    osc(alice, "router", "remove", "port", r["id"], mine["id"], fmt=None)
    assert interface_ports(alice, r["id"]) == []
    err = fails(alice, "port", "show", mine["id"])
    assert f"No Port found for {mine['id']}" in err
    assert osc(alice, "router", "show", r["id"])["interfaces_info"] == []
    osc(alice, "subnet", "delete", sub1["id"], fmt=None)
    osc(alice, "router", "delete", r["id"], fmt=None)
    assert r["id"] not in ids(osc(alice, "router", "list"))


# Extra routes ---------------------------------------------------------------

def test_extra_routes(tenants, made):
    alice, _, _ = tenants
    _, sub = private_network(alice, made, "10.162.1.0/24")
    r = router(alice, made)
    rid = r["id"]

    # Before the router is on the nexthop's subnet, the nexthop is unreachable.
    err = fails(alice, "router", "set", rid, "--route", "destination=10.162.100.0/24,gateway=10.162.1.5")
    assert ("Invalid format for routes: [{'destination': '10.162.100.0/24', 'nexthop': '10.162.1.5'}], "
            "the nexthop is not connected with router") in err
    osc(alice, "router", "add", "subnet", rid, sub["id"], fmt=None)
    before = osc(alice, "router", "show", rid)["revision_number"]

    osc(alice, "router", "set", rid, "--route", "destination=10.162.100.0/24,gateway=10.162.1.5",
        fmt=None)
    shown = osc(alice, "router", "show", rid)
    assert shown["routes"] == [{"destination": "10.162.100.0/24", "nexthop": "10.162.1.5"}]
    assert shown["revision_number"] > before

    added = osc(alice, "router", "add", "route", rid,
                "--route", "destination=10.162.101.0/24,gateway=10.162.1.6",
                "--route", "destination=10.162.100.0/24,gateway=10.162.1.5")
    assert sorted(added["routes"], key=lambda x: x["destination"]) == [
        {"destination": "10.162.100.0/24", "nexthop": "10.162.1.5"},
        {"destination": "10.162.101.0/24", "nexthop": "10.162.1.6"}]
    assert added["revision_number"] > shown["revision_number"]

    err = fails(alice, "router", "add", "route", rid,
                "--route", "destination=10.162.102.0/24,gateway=10.99.0.1")
    assert "the nexthop is not connected with router" in err
    assert "{'destination': '10.162.102.0/24', 'nexthop': '10.99.0.1'}" in err
    err = fails(alice, "router", "set", rid, "--route", "destination=10.162.103.0/24,gateway=10.162.1.1")
    assert "the nexthop is used by router" in err
    assert len(osc(alice, "router", "show", rid)["routes"]) == 2

    removed = osc(alice, "router", "remove", "route", rid,
                  "--route", "destination=10.162.100.0/24,gateway=10.162.1.5")
    assert removed["routes"] == [{"destination": "10.162.101.0/24", "nexthop": "10.162.1.6"}]
    osc(alice, "router", "unset", rid, "--route", "destination=10.162.101.0/24,gateway=10.162.1.6",
        fmt=None)
    assert osc(alice, "router", "show", rid)["routes"] == []

    # A route's nexthop keeps its interface in place.
    osc(alice, "router", "set", rid, "--route", "destination=10.162.104.0/24,gateway=10.162.1.7",
        "--route", "destination=10.162.105.0/24,gateway=10.162.1.7", fmt=None)
    assert len(osc(alice, "router", "show", rid)["routes"]) == 2
    err = fails(alice, "router", "remove", "subnet", rid, sub["id"])
    assert (f"Router interface for subnet {sub['id']} on router {rid} cannot be deleted, "
            "as it is required by one or more routes.") in err
    assert len(interface_ports(alice, rid)) == 1
    osc(alice, "router", "set", rid, "--no-route", fmt=None)
    assert osc(alice, "router", "show", rid)["routes"] == []
    osc(alice, "router", "remove", "subnet", rid, sub["id"], fmt=None)
    assert interface_ports(alice, rid) == []


# Floating IPs ---------------------------------------------------------------

def test_floating_ips(admin, tenants, made, network_url):
    alice, _, _ = tenants
    ext, ext_sub = external_network(admin, made, "198.51.100.64/26")
    net, sub = private_network(alice, made, "10.163.1.0/24")
    lone_net, lone_sub = private_network(alice, made, "10.163.2.0/24")
    r = router(alice, made, "--external-gateway", ext["id"])
    osc(alice, "router", "add", "subnet", r["id"], sub["id"], fmt=None)
    p1 = osc(alice, "port", "create", unique("p1"), "--network", net["id"],
             "--fixed-ip", f"subnet={sub['id']},ip-address=10.163.1.11")
    p2 = osc(alice, "port", "create", unique("p2"), "--network", net["id"],
             "--fixed-ip", f"subnet={sub['id']},ip-address=10.163.1.12")
    lone = osc(alice, "port", "create", unique("lone"), "--network", lone_net["id"])

    f1 = made.fip(osc(alice, "floating", "ip", "create", ext["id"], "--description", "web"))
    assert f1["floating_network_id"] == ext["id"] and f1["description"] == "web"
    assert re.fullmatch(r"198\.51\.100\.\d+", f1["floating_ip_address"])
    assert 64 < int(f1["floating_ip_address"].rsplit(".", 1)[1]) < 127
    assert (f1["port_id"], f1["fixed_ip_address"], f1["router_id"]) == (None, None, None)
    assert f1["port_details"] is None
    assert f1["project_id"] == r["project_id"]

    osc(alice, "floating", "ip", "set", f1["id"], "--port", p1["id"], fmt=None)
    s1 = osc(alice, "floating", "ip", "show", f1["id"])
    assert (s1["port_id"], s1["fixed_ip_address"], s1["router_id"]) == (p1["id"], "10.163.1.11", r["id"])
    details = s1["port_details"]
    assert details["name"] == p1["name"] and details["network_id"] == net["id"]
    assert details["mac_address"] == p1["mac_address"] and details["admin_state_up"] is True
    assert set(details) >= {"name", "network_id", "mac_address", "admin_state_up", "status",
                            "device_id", "device_owner"}
    assert s1["revision_number"] > f1["revision_number"]
    # Found by address too.
    assert osc(alice, "floating", "ip", "show", f1["floating_ip_address"])["id"] == f1["id"]

    f2 = made.fip(osc(alice, "floating", "ip", "create", ext["id"], "--port", p2["id"]))
    assert (f2["port_id"], f2["fixed_ip_address"], f2["router_id"]) == (p2["id"], "10.163.1.12", r["id"])
    assert f2["floating_ip_address"] != f1["floating_ip_address"]

    assert ids(osc(alice, "floating", "ip", "list")) == {f1["id"], f2["id"]}
    assert ids(osc(alice, "floating", "ip", "list", "--port", p1["id"])) == {f1["id"]}
    assert ids(osc(alice, "floating", "ip", "list", "--network", ext["id"])) == {f1["id"], f2["id"]}
    assert ids(osc(alice, "floating", "ip", "list", "--router", r["id"])) == {f1["id"], f2["id"]}
    assert ids(osc(alice, "floating", "ip", "list", "--fixed-ip-address", "10.163.1.12")) == {f2["id"]}
    row = {x["ID"]: x for x in osc(alice, "floating", "ip", "list")}[f1["id"]]
    assert (row["Floating IP Address"], row["Fixed IP Address"], row["Port"]) == \
        (f1["floating_ip_address"], "10.163.1.11", p1["id"])

    # One floating IP per fixed IP and external network.
    err = fails(alice, "floating", "ip", "set", f2["id"], "--port", p1["id"])
    assert "409" in err
    assert (f"Cannot associate floating IP {f2['floating_ip_address']} ({f2['id']}) with port "
            f"{p1['id']} using fixed IP 10.163.1.11, as that fixed IP already has a floating IP "
            f"on external network {ext['id']}.") in err
    err = fails(alice, "floating", "ip", "create", ext["id"], "--port", p1["id"])
    assert "409" in err and "as that fixed IP already has a floating IP" in err
    assert ids(osc(alice, "floating", "ip", "list")) == {f1["id"], f2["id"]}
    assert osc(alice, "floating", "ip", "show", f2["id"])["port_id"] == p2["id"]

    # No router between the port's subnet and the external network.
    err = fails(alice, "floating", "ip", "set", f1["id"], "--port", lone["id"])
    assert (f"External network {ext['id']} is not reachable from subnet {lone_sub['id']}.  "
            f"Therefore, cannot associate Port {lone['id']} with a Floating IP.") in err
    assert osc(alice, "floating", "ip", "show", f1["id"])["port_id"] == p1["id"]

    # What the association holds in place.
    err = fails(alice, "router", "remove", "subnet", r["id"], sub["id"])
    assert (f"Router interface for subnet {sub['id']} on router {r['id']} cannot be deleted, "
            "as it is required by one or more floating IPs.") in err
    err = fails(alice, "router", "unset", r["id"], "--external-gateway")
    assert (f"Gateway cannot be updated for router {r['id']}, since a gateway to external network "
            f"{ext['id']} is required by one or more floating IPs.") in err

    osc(alice, "floating", "ip", "unset", f1["id"], "--port", fmt=None)
    u1 = osc(alice, "floating", "ip", "show", f1["id"])
    assert (u1["port_id"], u1["fixed_ip_address"], u1["router_id"]) == (None, None, None)
    assert not u1["port_details"]  # the CLI's show prints a null port_details as {}
    assert u1["floating_ip_address"] == f1["floating_ip_address"]
    assert ids(osc(alice, "floating", "ip", "list", "--router", r["id"])) == {f2["id"]}
    # Now p1's fixed IP is free for another floating IP (the control of the 409 above).
    osc(alice, "floating", "ip", "set", f2["id"], "--port", p1["id"], fmt=None)
    assert osc(alice, "floating", "ip", "show", f2["id"])["fixed_ip_address"] == "10.163.1.11"

    # Deleting the port lets go of its floating IP.
    osc(alice, "port", "delete", p1["id"], fmt=None)
    gone = osc(alice, "floating", "ip", "show", f2["id"])
    assert (gone["port_id"], gone["fixed_ip_address"], gone["router_id"]) == (None, None, None)

    # A chosen address is for the admin.
    err = fails(alice, "floating", "ip", "create", ext["id"], "--floating-ip-address", "198.51.100.70")
    assert "403" in err and "rule:create_floatingip:floating_ip_address" in err
    f3 = made.fip(osc(admin, "floating", "ip", "create", ext["id"],
                      "--floating-ip-address", "198.51.100.70", "--project", alice.project))
    assert f3["floating_ip_address"] == "198.51.100.70" and f3["project_id"] == r["project_id"]
    assert f3["id"] in ids(osc(alice, "floating", "ip", "list"))
    err = fails(admin, "floating", "ip", "create", ext["id"], "--floating-ip-address", "198.51.100.70")
    assert f"IP address 198.51.100.70 already allocated in subnet {ext_sub['id']}" in err

    # The pools a user may allocate from (no CLI command for this one).
    status, body = rest(alice, network_url)("GET", "/floatingip_pools")
    assert status == 200
    [pool] = [x for x in body["floatingip_pools"] if x["subnet_id"] == ext_sub["id"]]
    assert pool["network_id"] == ext["id"] and pool["cidr"] == "198.51.100.64/26"
    assert pool["subnet_name"] == ext_sub["name"]
    assert lone_sub["id"] not in {x["subnet_id"] for x in body["floatingip_pools"]}

    osc(alice, "floating", "ip", "delete", f1["id"], f3["floating_ip_address"], fmt=None)
    assert ids(osc(alice, "floating", "ip", "list")) == {f2["id"]}
    err = fails(alice, "floating", "ip", "show", f1["id"])
    assert f"No FloatingIP found for {f1['id']}" in err
    # With no floating IP left on it, the gateway can go.
    osc(alice, "floating", "ip", "delete", f2["id"], fmt=None)
    osc(alice, "router", "unset", r["id"], "--external-gateway", fmt=None)
    assert osc(alice, "router", "show", r["id"])["external_gateway_info"] is None


# Port forwardings -----------------------------------------------------------

def test_port_forwardings(admin, tenants, made):
    alice, _, reader = tenants
    ext, _ = external_network(admin, made, "198.51.100.128/26")
    net, sub = private_network(alice, made, "10.164.1.0/24")
    r = router(alice, made, "--external-gateway", ext["id"])
    osc(alice, "router", "add", "subnet", r["id"], sub["id"], fmt=None)
    p = osc(alice, "port", "create", unique("p"), "--network", net["id"],
            "--fixed-ip", f"subnet={sub['id']},ip-address=10.164.1.20")
    other = osc(alice, "port", "create", unique("p"), "--network", net["id"],
                "--fixed-ip", f"subnet={sub['id']},ip-address=10.164.1.21")
    f = made.fip(osc(alice, "floating", "ip", "create", ext["id"]))
    fid = f["id"]
    pf = ["floating", "ip", "port", "forwarding"]

    ssh = osc(alice, *pf, "create", fid, "--port", p["id"], "--internal-ip-address", "10.164.1.20",
              "--internal-protocol-port", "22", "--external-protocol-port", "2222",
              "--protocol", "tcp", "--description", "ssh")
    assert (ssh["internal_port"], ssh["external_port"], ssh["protocol"]) == (22, 2222, "tcp")
    assert ssh["internal_port_id"] == p["id"] and ssh["internal_ip_address"] == "10.164.1.20"
    assert ssh["description"] == "ssh"
    dns = osc(alice, *pf, "create", fid, "--port", p["id"], "--internal-ip-address", "10.164.1.20",
              "--internal-protocol-port", "53", "--external-protocol-port", "2222", "--protocol", "udp")
    assert (dns["protocol"], dns["external_port"]) == ("udp", 2222)
    rng = osc(alice, *pf, "create", fid, "--port", p["id"], "--internal-ip-address", "10.164.1.20",
              "--internal-protocol-port", "9000:9010", "--external-protocol-port", "19000:19010",
              "--protocol", "tcp")
    assert (rng["internal_port_range"], rng["external_port_range"]) == ("9000:9010", "19000:19010")

    # The floating IP now goes through the router and shows its forwardings.
    fs = osc(alice, "floating", "ip", "show", fid)
    assert fs["router_id"] == r["id"] and fs["port_id"] is None
    assert {x["id"] for x in fs["port_forwardings"]} == {ssh["id"], dns["id"], rng["id"]}

    listed = {x["ID"]: x for x in osc(alice, *pf, "list", fid)}
    assert set(listed) == {ssh["id"], dns["id"], rng["id"]}
    assert listed[ssh["id"]]["Internal Port ID"] == p["id"]
    assert listed[ssh["id"]]["Internal IP Address"] == "10.164.1.20"
    assert ids(osc(alice, *pf, "list", fid, "--protocol", "udp")) == {dns["id"]}
    assert ids(osc(alice, *pf, "list", fid, "--external-protocol-port", "2222")) == {ssh["id"], dns["id"]}
    assert ids(osc(alice, *pf, "list", fid, "--port", other["id"])) == set()
    shown = osc(alice, *pf, "show", fid, rng["id"])
    assert shown["internal_port_range"] == "9000:9010" and shown["external_port_range"] == "19000:19010"
    assert osc(reader, *pf, "show", fid, ssh["id"])["external_port"] == 2222

    osc(alice, *pf, "set", fid, ssh["id"], "--external-protocol-port", "2223",
        "--description", "ssh two", fmt=None)
    moved = osc(alice, *pf, "show", fid, ssh["id"])
    assert (moved["external_port"], moved["internal_port"], moved["description"]) == (2223, 22, "ssh two")
    assert ids(osc(alice, *pf, "list", fid, "--external-protocol-port", "2222")) == {dns["id"]}

    # Collisions: an external port the floating IP already forwards ...
    err = fails(alice, *pf, "create", fid, "--port", other["id"], "--internal-ip-address", "10.164.1.21",
                "--internal-protocol-port", "80", "--external-protocol-port", "2223", "--protocol", "tcp")
    assert ("Bad port_forwarding request: There is a port collision with the external_port_range. "
            "The following ranges collide: 2223:2223 and 2223:2223.") in err
    err = fails(alice, *pf, "create", fid, "--port", other["id"], "--internal-ip-address", "10.164.1.21",
                "--internal-protocol-port", "80", "--external-protocol-port", "19005", "--protocol", "tcp")
    assert ("There is a port collision with the external_port_range. "
            "The following ranges collide: 19000:19010 and 19005:19005.") in err
    # ... (the same port for the other protocol is free) ...
    web = osc(alice, *pf, "create", fid, "--port", other["id"], "--internal-ip-address", "10.164.1.21",
              "--internal-protocol-port", "80", "--external-protocol-port", "2223", "--protocol", "udp")
    assert web["internal_port_id"] == other["id"]
    # ... and an address that is not the port's.
    err = fails(alice, *pf, "create", fid, "--port", other["id"], "--internal-ip-address", "10.164.1.99",
                "--internal-protocol-port", "81", "--external-protocol-port", "8081", "--protocol", "tcp")
    assert (f"Bad port_forwarding request: Requested internal IP address 10.164.1.99 is not suitable "
            f"for internal neutron port {other['id']}, as its fixed_ips are "
            f"[{{'subnet_id': '{sub['id']}', 'ip_address': '10.164.1.21'}}].") in err

    # A floating IP with forwardings is not associated to a port, nor deleted.
    err = fails(alice, "floating", "ip", "set", fid, "--port", other["id"])
    assert f"Floating IP {fid} in use by Port Forwarding resources." in err
    err = fails(alice, "floating", "ip", "delete", fid)
    assert f"Floating IP {fid} in use by Port Forwarding resources." in err
    # An associated floating IP takes no forwardings.
    g = made.fip(osc(alice, "floating", "ip", "create", ext["id"], "--port", other["id"]))
    err = fails(alice, *pf, "create", g["id"], "--port", p["id"], "--internal-ip-address", "10.164.1.20",
                "--internal-protocol-port", "443", "--external-protocol-port", "443", "--protocol", "tcp")
    assert "409" in err and (
        f"Cannot associate floating IP {g['floating_ip_address']} ({g['id']}) with port {p['id']} "
        f"using fixed IP 10.164.1.20, as that fixed IP already has a floating IP on external "
        f"network {ext['id']}.") in err
    assert osc(alice, *pf, "list", g["id"]) == []
    # Nor does a port that has a floating IP of its own get forwardings.
    err = fails(alice, *pf, "create", fid, "--port", other["id"], "--internal-ip-address", "10.164.1.21",
                "--internal-protocol-port", "8443", "--external-protocol-port", "8443", "--protocol", "tcp")
    assert "409" in err and (
        f"Cannot create port forwarding to floating IP {g['floating_ip_address']} ({g['id']}) with port "
        f"{other['id']} using fixed IP 10.164.1.21, as that port already has a binding floating IP.") in err

    # The reader may look but not change.
    err = fails(reader, *pf, "delete", fid, ssh["id"])
    assert "rule:delete_floatingip_port_forwarding is disallowed by policy" in err
    for x in (ssh, dns, rng, web):
        osc(alice, *pf, "delete", fid, x["id"], fmt=None)
    assert osc(alice, *pf, "list", fid) == []
    assert f"No PortForwarding found for {ssh['id']}" in fails(alice, *pf, "show", fid, ssh["id"])
    err = fails(alice, *pf, "delete", fid, ssh["id"])
    assert f"Port Forwarding {ssh['id']} could not be found." in err
    freed = osc(alice, "floating", "ip", "show", fid)
    assert freed["router_id"] is None and freed["port_forwardings"] == []
    osc(alice, "floating", "ip", "delete", fid, fmt=None)
    assert fid not in ids(osc(alice, "floating", "ip", "list"))


# Tenant isolation -----------------------------------------------------------

def test_other_projects_and_readers_cannot_touch_routers_or_floating_ips(
        admin, tenants, made, network_url):
    alice, bob, reader = tenants
    ext, _ = external_network(admin, made, "198.51.100.192/26")
    net, sub = private_network(alice, made, "10.165.1.0/24")
    _, bob_sub = private_network(bob, made, "10.165.2.0/24")
    r = router(alice, made, "--external-gateway", ext["id"])
    osc(alice, "router", "add", "subnet", r["id"], sub["id"], fmt=None)
    f = made.fip(osc(alice, "floating", "ip", "create", ext["id"]))
    rid, fid = r["id"], f["id"]

    # The attacker (another project) sees neither ...
    assert rid not in ids(osc(bob, "router", "list"))
    assert fid not in ids(osc(bob, "floating", "ip", "list"))
    assert f"No Router found for {rid}" in fails(bob, "router", "show", rid)
    assert f"No FloatingIP found for {fid}" in fails(bob, "floating", "ip", "show", fid)
    # ... nor changes them.
    err = fails(bob, "router", "set", rid, "--name", "stolen")
    assert f"No Router found for {rid}" in err
    err = fails(bob, "router", "delete", rid)
    assert f"No Router found for {rid}" in err
    err = fails(bob, "router", "add", "subnet", rid, bob_sub["id"])
    assert f"No Router found for {rid}" in err
    err = fails(bob, "floating", "ip", "delete", fid)
    assert f"No FloatingIP found for {fid}" in err
    # Straight to the API, the answers are neutron's 404s, whatever the method.
    call = rest(bob, network_url)
    for method, path, body in [
            ("GET", f"/routers/{rid}", None),
            ("PUT", f"/routers/{rid}", {"router": {"name": "stolen"}}),
            ("DELETE", f"/routers/{rid}", None),
            ("PUT", f"/routers/{rid}/add_router_interface", {"subnet_id": bob_sub["id"]}),
            ("PUT", f"/routers/{rid}/remove_router_interface", {"subnet_id": sub["id"]}),
            ("PUT", f"/routers/{rid}/add_extraroutes", {"router": {"routes": []}})]:
        status, data = call(method, path, body)
        assert status == 404, (method, path, data)
        assert data["NeutronError"]["type"] == "RouterNotFound"
        assert data["NeutronError"]["message"] == f"Router {rid} could not be found"
    for method, body in [("GET", None), ("PUT", {"floatingip": {"description": "x"}}),
                         ("DELETE", None)]:
        status, data = call(method, f"/floatingips/{fid}", body)
        assert status == 404, (method, data)
        assert data["NeutronError"]["type"] == "FloatingIPNotFound"
        assert data["NeutronError"]["message"] == f"Floating IP {fid} could not be found"
    # Alice's subnet is not the attacker's to plug into its own router.
    theirs = router(bob, made)
    err = fails(bob, "router", "add", "subnet", theirs["id"], sub["id"])
    assert f"No Subnet found for {sub['id']}" in err
    # Alice's port is not the attacker's to point a floating IP at.
    alice_port = osc(alice, "port", "create", unique("p"), "--network", net["id"])
    mine = made.fip(osc(bob, "floating", "ip", "create", ext["id"]))
    err = fails(bob, "floating", "ip", "set", mine["id"], "--port", alice_port["id"])
    assert f"No Port found for {alice_port['id']}" in err

    # The reader of alice's project reads ...
    assert osc(reader, "router", "show", rid)["name"] == r["name"]
    assert rid in ids(osc(reader, "router", "list"))
    assert osc(reader, "floating", "ip", "show", fid)["floating_ip_address"] == f["floating_ip_address"]
    # ... and changes nothing.
    err = fails(reader, "router", "set", rid, "--name", "by-reader")
    assert "rule:update_router is disallowed by policy" in err
    err = fails(reader, "router", "delete", rid)
    assert "rule:delete_router is disallowed by policy" in err
    err = fails(reader, "router", "remove", "subnet", rid, sub["id"])
    assert "rule:remove_router_interface" in err and "is disallowed by policy" in err
    err = fails(reader, "router", "add", "route", rid,
                "--route", "destination=10.165.9.0/24,gateway=10.165.1.9")
    assert "rule:add_extraroutes is disallowed by policy" in err
    err = fails(reader, "floating", "ip", "set", fid, "--description", "by-reader")
    assert "rule:update_floatingip is disallowed by policy" in err
    err = fails(reader, "floating", "ip", "delete", fid)
    assert "rule:delete_floatingip is disallowed by policy" in err
    err = fails(reader, "floating", "ip", "create", ext["id"])
    assert "rule:create_floatingip is disallowed by policy" in err
    assert osc(reader, "router", "show", rid)["name"] == r["name"]
    assert fid in ids(osc(alice, "floating", "ip", "list"))

    # Positive controls: the owner may do all of it.
    osc(alice, "router", "set", rid, "--name", "renamed", fmt=None)
    osc(alice, "router", "add", "route", rid, "--route", "destination=10.165.9.0/24,gateway=10.165.1.9")
    osc(alice, "router", "set", rid, "--no-route", fmt=None)
    osc(alice, "floating", "ip", "set", fid, "--description", "by-alice", fmt=None)
    assert osc(reader, "floating", "ip", "show", fid)["description"] == "by-alice"
    osc(alice, "floating", "ip", "delete", fid, fmt=None)
    osc(alice, "router", "remove", "subnet", rid, sub["id"], fmt=None)
    osc(alice, "router", "delete", rid, fmt=None)
    assert rid not in ids(osc(admin, "router", "list"))


# IP availability ------------------------------------------------------------

def test_ip_availability(admin, tenants, made):
    alice, _, _ = tenants
    net = made.network(osc(admin, "network", "create", unique("avail")))
    sub = osc(admin, "subnet", "create", unique("s"), "--network", net["id"],
              "--subnet-range", "10.166.1.0/24", "--no-dhcp")
    six = osc(admin, "subnet", "create", unique("s6"), "--network", net["id"], "--ip-version", "6",
              "--subnet-range", "fd00:166::/120", "--no-dhcp")
    # A subnet's total is the size of its allocation pools.
    pools = {s["id"]: sum(int(ipaddress.ip_address(p["end"])) - int(ipaddress.ip_address(p["start"])) + 1
                          for p in osc(admin, "subnet", "show", s["id"])["allocation_pools"])
             for s in (sub, six)}
    assert pools[sub["id"]] == 253
    a = osc(admin, "ip", "availability", "show", net["id"])
    assert a["network_name"] == net["name"]
    assert (a["total_ips"], a["used_ips"]) == (pools[sub["id"]] + pools[six["id"]], 0)
    by_subnet = {x["subnet_id"]: x for x in a["subnet_ip_availability"]}
    assert by_subnet[sub["id"]]["cidr"] == "10.166.1.0/24"
    assert (by_subnet[sub["id"]]["total_ips"], by_subnet[sub["id"]]["used_ips"]) == (253, 0)
    assert (by_subnet[six["id"]]["ip_version"], by_subnet[six["id"]]["total_ips"]) == \
        (6, pools[six["id"]])
    osc(admin, "port", "create", unique("p"), "--network", net["id"],
        "--fixed-ip", f"subnet={sub['id']}")
    b = osc(admin, "ip", "availability", "show", net["id"])
    assert b["used_ips"] == a["used_ips"] + 1
    assert {x["subnet_id"]: x["used_ips"] for x in b["subnet_ip_availability"]} == \
        {sub["id"]: 1, six["id"]: 0}
    rows = {x["Network ID"]: x for x in osc(admin, "ip", "availability", "list", "--ip-version", "4")}
    assert (rows[net["id"]]["Network Name"], rows[net["id"]]["Used IPs"],
            rows[net["id"]]["Total IPs"]) == (net["name"], 1, 253)

    # Members get nothing, not even for their own networks.
    own = made.network(osc(alice, "network", "create", unique("own")))
    osc(alice, "subnet", "create", unique("s"), "--network", own["id"], "--subnet-range", "10.166.2.0/24")
    assert osc(alice, "ip", "availability", "list") == []
    err = fails(alice, "ip", "availability", "show", own["id"])
    assert f"No NetworkIPAvailability found for {own['id']}" in err
    assert own["id"] in {x["Network ID"] for x in osc(admin, "ip", "availability", "list")}


# Quotas ---------------------------------------------------------------------

def test_router_and_floating_ip_quotas(admin, tenants, made):
    alice, _, _ = tenants
    ext, _ = external_network(admin, made, "203.0.113.0/26")
    osc(admin, "quota", "set", "--routers", "1", "--floating-ips", "1", alice.project, fmt=None)
    limits = {x["Resource"]: x["Limit"] for x in osc(admin, "quota", "show", alice.project)}
    assert (limits["routers"], limits["floating_ips"]) == (1, 1)

    router(alice, made)
    err = fails(alice, "router", "create", unique("r"))
    assert "Quota exceeded for resources: ['router']." in err
    made.fip(osc(alice, "floating", "ip", "create", ext["id"]))
    err = fails(alice, "floating", "ip", "create", ext["id"])
    assert "Quota exceeded for resources: ['floatingip']." in err
    assert len(osc(alice, "router", "list")) == 1
    assert len(osc(alice, "floating", "ip", "list")) == 1

    osc(admin, "quota", "set", "--routers", "2", alice.project, fmt=None)
    router(alice, made)
    assert len(osc(alice, "router", "list")) == 2
