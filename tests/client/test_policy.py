"""Neutron's default policy, tried from every side: the admin, the owner of a shared
network, a member of another project on that network (the attacker), and a reader.
Expected answers are what a real neutron-server 29 (secure RBAC defaults) gives to
the same requests; each refusal has a positive control from a caller who may."""

import pytest
import requests

from cloud import CliError, osc, token_for, unique
from conftest import make_user

MAC = "fa:16:3e:{:02x}:{:02x}:{:02x}"


class Caller:
    def __init__(self, creds, network_url):
        self.creds = creds
        self.token = token_for(creds)
        self.url = network_url

    def call(self, method, path, body=None, **params):
        r = requests.request(method, self.url + path, json=body, params=params,
                             headers={"X-Auth-Token": self.token}, timeout=30)
        try:
            data = r.json()
        except ValueError:
            data = None
        return r.status_code, data

    def ok(self, method, path, body=None, **params):
        status, data = self.call(method, path, body, **params)
        assert status < 300, f"{method} {path} {body}: {status} {data}"
        return data

    def refused(self, method, path, body=None, status=403, kind="PolicyNotAuthorized"):
        got, data = self.call(method, path, body)
        assert got == status, f"{method} {path} {body}: wanted {status}, got {got} {data}"
        assert data["NeutronError"]["type"] == kind, data
        return data["NeutronError"]["message"]


@pytest.fixture(scope="module")
def world(admin, network_url):
    """Project A owns a private network and a network the admin shared for it; project
    B is another tenant; r reads in A."""
    pa, pb = unique("proj-a"), unique("proj-b")
    ida = osc(admin, "project", "create", pa)["id"]
    idb = osc(admin, "project", "create", pb)["id"]
    w = type("World", (), {})()
    w.admin = Caller(admin, network_url)
    w.a = Caller(make_user(admin, pa), network_url)
    w.b = Caller(make_user(admin, pb), network_url)
    w.r = Caller(make_user(admin, pa, role="reader"), network_url)
    w.pa, w.pb = ida, idb
    w.private = w.a.ok("POST", "/networks", {"network": {"name": "a-private"}})["network"]
    w.private_subnet = w.a.ok("POST", "/subnets", {"subnet": {
        "network_id": w.private["id"], "cidr": "10.91.0.0/24", "ip_version": 4}})["subnet"]
    w.shared = w.admin.ok("POST", "/networks", {"network": {
        "name": "a-shared", "shared": True, "project_id": ida}})["network"]
    w.shared_subnet = w.a.ok("POST", "/subnets", {"subnet": {
        "network_id": w.shared["id"], "cidr": "10.92.0.0/24", "ip_version": 4}})["subnet"]
    w.n = 0
    return w


def new_mac(w):
    w.n += 1
    return MAC.format(0x42, w.n // 256, w.n % 256)


def port_body(w, **attrs):
    return {"port": {"network_id": w.shared["id"], **attrs}}


def spoofing_attributes(w):
    """What lets a tenant impersonate others on a shared L2."""
    w.n += 1
    return {
        "mac_address": {"mac_address": new_mac(w)},
        "fixed_ips:ip_address": {"fixed_ips": [{"ip_address": f"10.92.0.{100 + w.n % 100}"}]},
        "port_security_enabled": {"port_security_enabled": False},
        "port_security_enabled=true": {"port_security_enabled": True},
        "allowed_address_pairs": {"allowed_address_pairs": [{"ip_address": "0.0.0.0/0"}]},
        "device_owner": {"device_owner": "network:dhcp"},
        "binding:host_id": {"binding:host_id": "h1"},
    }


def test_another_project_cannot_spoof_on_a_shared_network(world):
    w = world
    for attr, attrs in spoofing_attributes(w).items():
        rule = attr.split("=")[0]
        message = w.b.refused("POST", "/ports", port_body(w, **attrs))
        assert f"rule:create_port:{rule}" in message, message
    # Positive controls: what neutron lets another project do there.
    plain = w.b.ok("POST", "/ports", port_body(w, name="b-plain"))["port"]
    assert plain["project_id"] == w.pb
    by_subnet = w.b.ok("POST", "/ports", port_body(w, fixed_ips=[{"subnet_id": w.shared_subnet["id"]}]))
    compute = w.b.ok("POST", "/ports", port_body(w, device_owner="compute:nova"))
    for p in (plain, by_subnet["port"], compute["port"]):
        w.admin.ok("DELETE", f"/ports/{p['id']}")


def test_the_network_owner_may_set_what_others_may_not(world):
    w = world
    for attr, attrs in spoofing_attributes(w).items():
        status, data = w.a.call("POST", "/ports", port_body(w, **attrs))
        if attr == "binding:host_id":
            assert status == 403, data  # admin or service only, even for the owner
            continue
        assert status == 201, (attr, data)
        w.a.ok("DELETE", f"/ports/{data['port']['id']}")


def test_admin_may_bind_but_only_the_service_role_sets_a_profile(world):
    w = world
    for attrs in spoofing_attributes(w).values():
        p = w.admin.ok("POST", "/ports", port_body(w, **attrs))["port"]
        w.admin.ok("DELETE", f"/ports/{p['id']}")
    message = w.admin.refused("POST", "/ports", port_body(w, **{"binding:profile": {"a": "b"}}))
    assert "rule:create_port:binding:profile" in message


def test_a_tenant_cannot_change_its_own_port_into_a_spoofer(world):
    w = world
    p = w.b.ok("POST", "/ports", port_body(w, name="b-own"))["port"]
    path = f"/ports/{p['id']}"
    for attrs, rule in [
        ({"mac_address": new_mac(w)}, "update_port:mac_address"),
        ({"allowed_address_pairs": [{"ip_address": "10.92.0.0/24"}]},
         "update_port:allowed_address_pairs"),
        ({"port_security_enabled": False}, "update_port:port_security_enabled"),
        ({"fixed_ips": [{"subnet_id": w.shared_subnet["id"]}]}, "update_port:fixed_ips"),
        ({"binding:host_id": "h1"}, "update_port:binding:host_id"),
        ({"status": "ACTIVE"}, "update_port:status"),
    ]:
        message = w.b.refused("PUT", path, {"port": attrs})
        assert f"rule:{rule}" in message, message
    # Positive control: its own name it may change.
    assert w.b.ok("PUT", path, {"port": {"name": "renamed"}})["port"]["name"] == "renamed"
    # The network owner sees the port, so its refusal is a 403, not a 404 ...
    message = w.a.refused("PUT", path, {"port": {"name": "by-a"}})
    assert message == "rule:update_port is disallowed by policy"
    # ... and, owning the network, may delete it.
    status, _ = w.a.call("DELETE", path)
    assert status == 204
    assert w.admin.call("GET", path)[0] == 404


def test_binding_attributes_are_shown_to_admins_only(world):
    w = world
    p = w.admin.ok("POST", "/ports", {"port": {
        "network_id": w.shared["id"], "project_id": w.pb, "binding:host_id": "h7"}})["port"]
    assert p["binding:host_id"] == "h7"
    binding = {"binding:host_id", "binding:profile", "binding:vif_type", "binding:vif_details"}
    mine = w.b.ok("GET", f"/ports/{p['id']}")["port"]
    assert not binding & set(mine), mine
    assert mine["binding:vnic_type"] == "normal"
    listed = [x for x in w.b.ok("GET", "/ports")["ports"] if x["id"] == p["id"]]
    assert len(listed) == 1 and not binding & set(listed[0])
    asked = w.b.ok("GET", f"/ports/{p['id']}", fields=["id", "binding:host_id"])["port"]
    assert asked == {"id": p["id"]}
    # Filtering on a hidden attribute finds nothing rather than revealing it.
    assert w.b.ok("GET", "/ports", **{"binding:host_id": "h7"})["ports"] == []
    assert [x["id"] for x in w.admin.ok("GET", "/ports", **{"binding:host_id": "h7"})["ports"]] == [p["id"]]
    assert binding <= set(w.admin.ok("GET", f"/ports/{p['id']}")["port"])
    w.admin.ok("DELETE", f"/ports/{p['id']}")


def test_readers_read_and_change_nothing(world):
    w = world
    assert w.r.ok("GET", f"/networks/{w.private['id']}")["network"]["id"] == w.private["id"]
    assert w.r.refused("POST", "/networks", {"network": {"name": "x"}}) == \
        "rule:create_network is disallowed by policy"
    w.r.refused("PUT", f"/networks/{w.private['id']}", {"network": {"name": "x"}})
    w.r.refused("DELETE", f"/subnets/{w.private_subnet['id']}")
    w.r.refused("POST", "/security-groups", {"security-group": {"name": "x"}}, status=400,
                kind="HTTPBadRequest")
    w.r.refused("POST", "/security-groups", {"security_group": {"name": "x"}})
    # Positive control: a member of the same project may.
    n = w.a.ok("POST", "/networks", {"network": {"name": "by-member"}})["network"]
    w.a.ok("DELETE", f"/networks/{n['id']}")


def test_only_admins_share_or_externalize_or_pick_segments(world):
    w = world
    for attrs, rule in [
        ({"shared": True}, "create_network:shared"),
        ({"router:external": True}, "create_network:router:external"),
        ({"provider:network_type": "vxlan"}, "create_network:provider:network_type"),
        ({"provider:segmentation_id": 4242}, "create_network:provider:segmentation_id"),
    ]:
        message = w.a.refused("POST", "/networks", {"network": {"name": "x", **attrs}})
        assert message == f"(rule:create_network and rule:{rule}) is disallowed by policy"
    # Defaults need no rule (neutron skips them).
    n = w.a.ok("POST", "/networks", {"network": {"name": "x", "shared": False,
                                                  "router:external": False}})["network"]
    assert "provider:network_type" not in n and "provider:segmentation_id" not in n
    w.a.refused("PUT", f"/networks/{n['id']}", {"network": {"shared": True}})
    w.a.ok("DELETE", f"/networks/{n['id']}")
    pool = {"subnetpool": {"name": "x", "prefixes": ["10.93.0.0/16"], "shared": True}}
    w.a.refused("POST", "/subnetpools", pool)
    status, data = w.a.call("POST", "/networks", {"network": {"name": "y", "project_id": w.pb}})
    assert status == 400 and "other than the authenticated project" in data["NeutronError"]["message"]


def test_cross_project_access_to_every_resource(world):
    w = world
    a = w.a
    sg = a.ok("POST", "/security-groups", {"security_group": {"name": unique("sg")}})["security_group"]
    rule = a.ok("POST", "/security-group-rules", {"security_group_rule": {
        "security_group_id": sg["id"], "direction": "ingress", "protocol": "tcp",
        "port_range_min": 22, "port_range_max": 22}})["security_group_rule"]
    pool = a.ok("POST", "/subnetpools", {"subnetpool": {
        "name": unique("pool"), "prefixes": ["10.94.0.0/16"], "default_prefixlen": 24}})["subnetpool"]
    port = a.ok("POST", "/ports", {"port": {"network_id": w.private["id"]}})["port"]
    private = [
        ("networks", "network", w.private["id"], "NetworkNotFound"),
        ("subnets", "subnet", w.private_subnet["id"], "SubnetNotFound"),
        ("subnetpools", "subnetpool", pool["id"], "SubnetPoolNotFound"),
        ("ports", "port", port["id"], "PortNotFound"),
        ("security-groups", "security_group", sg["id"], "SecurityGroupNotFound"),
        ("security-group-rules", "security_group_rule", rule["id"], "SecurityGroupRuleNotFound"),
    ]
    for path, singular, rid, kind in private:
        # The owner sees it (the positive control) ...
        assert a.ok("GET", f"/{path}/{rid}")[singular]["id"] == rid
        # ... another project does not, whatever it tries.
        for method, body in [("GET", None), ("PUT", {singular: {"name": "x"}}), ("DELETE", None)]:
            if path == "security-group-rules" and method == "PUT":
                continue
            w.b.refused(method, f"/{path}/{rid}", body, status=404, kind=kind)
        assert rid not in [x["id"] for x in w.b.ok("GET", f"/{path}")[path.replace("-", "_")]]
        w.b.refused("PUT", f"/{path}/{rid}/tags/t", status=404, kind=kind)
    # A rule in a group it cannot see: not found.
    w.b.refused("POST", "/security-group-rules", {"security_group_rule": {
        "security_group_id": sg["id"], "direction": "ingress"}}, status=404,
        kind="SecurityGroupNotFound")
    # A port on a network it cannot see: not found; a subnet on it: forbidden (as neutron).
    w.b.refused("POST", "/ports", {"port": {"network_id": w.private["id"]}}, status=404,
                kind="NetworkNotFound")
    assert w.b.refused("POST", "/subnets", {"subnet": {
        "network_id": w.private["id"], "cidr": "10.95.0.0/24", "ip_version": 4}}) == \
        "rule:create_subnet is disallowed by policy"
    # Shared: visible, but only the owner changes it.
    shared = [("networks", "network", w.shared["id"]),
              ("subnets", "subnet", w.shared_subnet["id"])]
    for path, singular, rid in shared:
        assert w.b.ok("GET", f"/{path}/{rid}")[singular]["id"] == rid
        assert w.b.refused("PUT", f"/{path}/{rid}", {singular: {"name": "x"}}) == \
            f"rule:update_{singular} is disallowed by policy"
        w.b.refused("DELETE", f"/{path}/{rid}")
        assert w.b.refused("PUT", f"/{path}/{rid}/tags/t") == \
            f"rule:update_{singular}:tags is disallowed by policy"
    # Quotas: one's own, yes; another project's, no; changing them is for admins.
    assert w.b.ok("GET", f"/quotas/{w.pb}")["quota"]["port"] >= 0
    w.b.refused("GET", f"/quotas/{w.pa}")
    w.b.refused("PUT", f"/quotas/{w.pb}", {"quota": {"port": 1000}})
    w.admin.ok("GET", f"/quotas/{w.pa}")
    # Agents are an admin's business: an empty list, and no agent to show.
    assert w.b.ok("GET", "/agents") == {"agents": []}
    w.b.refused("PUT", "/kuryr/agents/h1", {"agent": {"binary": "x"}})
    for path, _, rid, _ in reversed(private):
        if path != "security-group-rules":
            a.ok("DELETE", f"/{path}/{rid}")


def test_the_cli_meets_the_same_policy(world, admin):
    w = world
    b = w.b.creds
    err = osc(b, "port", "create", unique("p"), "--network", w.shared["id"],
              "--mac-address", "fa:16:3e:99:99:99", expect_fail=True)
    assert "rule:create_port:mac_address" in err and "403" in err
    err = osc(w.a.creds, "network", "create", unique("n"), "--share", expect_fail=True)
    assert "rule:create_network:shared" in err
    p = osc(b, "port", "create", unique("p"), "--network", w.shared["id"])
    shown = osc(b, "port", "show", p["id"])
    assert shown["binding_host_id"] is None and shown["binding_vif_type"] is None
    assert osc(admin, "port", "show", p["id"])["binding_vif_type"] == "unbound"
    with pytest.raises(CliError):
        osc(b, "network", "delete", w.shared["id"], fmt=None)
    osc(b, "port", "delete", p["id"], fmt=None)
