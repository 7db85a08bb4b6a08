"""Neutron API behaviour that neutron-tempest-plugin checks, driven here with raw HTTP
(and the SDK where it can express it) so that a regression shows in the client tests
too. Expected answers are what a real neutron-server 29 gives to the same requests."""

import pytest
import requests

from cloud import make_user, osc, token_for, unique


class Caller:
    def __init__(self, creds, network_url):
        self.creds = creds
        self.token = token_for(creds)
        self.url = network_url

    def call(self, method, path, body=None, params=None):
        r = requests.request(method, self.url + path, json=body, params=params,
                             headers={"X-Auth-Token": self.token}, timeout=30)
        try:
            data = r.json()
        except ValueError:
            data = None
        return r.status_code, data

    def get_url(self, url):
        r = requests.get(url, headers={"X-Auth-Token": self.token}, timeout=30)
        assert r.status_code == 200, f"GET {url}: {r.status_code} {r.text}"
        return r.json()

    def ok(self, method, path, body=None, params=None):
        status, data = self.call(method, path, body, params)
        assert status < 300, f"{method} {path} {body}: {status} {data}"
        return data

    def error(self, method, path, body=None, params=None, status=400, kind=None):
        got, data = self.call(method, path, body, params)
        assert got == status, f"{method} {path} {body}: wanted {status}, got {got} {data}"
        if kind:
            assert data["NeutronError"]["type"] == kind, data
        return data["NeutronError"]["message"]


@pytest.fixture(scope="module")
def admin_caller(admin, network_url):
    return Caller(admin, network_url)


@pytest.fixture(scope="module")
def member(admin, network_url):
    project = unique("proj")
    pid = osc(admin, "project", "create", project)["id"]
    c = Caller(make_user(admin, project), network_url)
    c.project_id = pid
    c.project = project
    return c


def links(body, plural):
    return {link["rel"]: link["href"] for link in body.get(f"{plural}_links", [])}


def test_pagination_links_walk_forward_to_an_empty_page_and_back(member):
    """Neutron gives `next` on every full page (it does not look ahead), so the walk ends
    on an empty page, which has only `previous`; walking `previous` from there gives the
    same resources in reverse."""
    names = [unique("pg") for _ in range(4)]
    tag = unique("tag")
    for n in names:
        net = member.ok("POST", "/networks", {"network": {"name": n}})["network"]
        member.ok("PUT", f"/networks/{net['id']}/tags/{tag}")
    query = {"tags": tag, "sort_key": "name", "sort_dir": "asc", "limit": 1}
    body = member.ok("GET", "/networks", params=query)
    seen = [n["name"] for n in body["networks"]]
    # The first page has a previous link too, as in neutron.
    assert set(links(body, "networks")) == {"next", "previous"}
    while True:
        hrefs = links(body, "networks")
        assert "next" in hrefs, f"page after {seen} has no next link: {body}"
        body = member.get_url(hrefs["next"])
        if not body["networks"]:
            break
        seen.extend(n["name"] for n in body["networks"])
    assert seen == sorted(names)
    assert list(links(body, "networks")) == ["previous"]
    back = []
    for _ in names:
        body = member.get_url(links(body, "networks")["previous"])
        back.extend(n["name"] for n in body["networks"])
    assert back == sorted(names, reverse=True)

    # page_reverse with a marker: the resources before it, in order, and a reverse page
    # that comes out short has no previous link.
    first_three = member.ok("GET", "/networks", params={**query, "limit": 3})["networks"]
    rev = member.ok("GET", "/networks", params={**query, "limit": 5, "page_reverse": "True",
                                                 "marker": first_three[-1]["id"]})
    assert [n["name"] for n in rev["networks"]] == sorted(names)[:2]
    assert list(links(rev, "networks")) == ["next"]
    # Without a limit there are no links at all (positive control of the above).
    assert "networks_links" not in member.ok("GET", "/networks", params={"tags": tag})

    # The SDK follows the links to the end.
    conn_names = [n.name for n in osc_sdk(member).network.networks(tags=tag, limit=1)]
    assert sorted(conn_names) == sorted(names)


def osc_sdk(caller):
    import openstack
    creds = caller.creds
    return openstack.connect(auth_url=creds.server.auth_url, username=creds.username,
                             password=creds.password, project_name=creds.project,
                             user_domain_name="Default", project_domain_name="Default",
                             region_name="RegionOne", interface="public")


def test_filter_names_are_validated_even_when_the_list_is_empty(member):
    msg = member.error("GET", "/subnets", params={"foo": "x", "name": unique("none"),
                                                  "bar": "y"}, kind="HTTPBadRequest")
    assert msg == "['foo', 'bar'] is invalid attribute for filtering"
    # Attributes shown but not filters in neutron.
    msg = member.error("GET", "/networks", params={"subnets": "x"})
    assert msg == "['subnets'] is invalid attribute for filtering"
    msg = member.error("GET", "/ports", params={"allowed_address_pairs": "x"})
    assert msg == "['allowed_address_pairs'] is invalid attribute for filtering"
    # Positive controls: real filters on an empty result, and an empty value (which
    # filters nothing, neutron has no `empty-string-filtering`).
    assert member.ok("GET", "/subnets", params={"name": unique("none")})["subnets"] == []
    net = member.ok("POST", "/networks", {"network": {"name": unique("ev")}})["network"]
    listed = member.ok("GET", "/networks", params={"name": "", "id": net["id"]})
    assert [n["id"] for n in listed["networks"]] == [net["id"]]


def test_subnets_filter_on_shared_which_they_do_not_show(admin_caller, member):
    shared = admin_caller.ok("POST", "/networks", {"network": {
        "name": unique("shared"), "shared": True}})["network"]
    private = member.ok("POST", "/networks", {"network": {"name": unique("priv")}})["network"]
    s_shared = admin_caller.ok("POST", "/subnets", {"subnet": {
        "network_id": shared["id"], "cidr": "10.71.0.0/24", "ip_version": 4}})["subnet"]
    s_private = member.ok("POST", "/subnets", {"subnet": {
        "network_id": private["id"], "cidr": "10.72.0.0/24", "ip_version": 4}})["subnet"]
    assert "shared" not in s_shared
    for caller in (admin_caller, member):
        on = {s["id"] for s in caller.ok("GET", "/subnets", params={"shared": "True"})["subnets"]}
        off = {s["id"] for s in caller.ok("GET", "/subnets", params={"shared": "false"})["subnets"]}
        assert s_shared["id"] in on and s_shared["id"] not in off
        assert s_private["id"] in off and s_private["id"] not in on
    listed = member.ok("GET", "/subnets", params={"shared": "False", "id": s_private["id"]})
    assert listed["subnets"] and all("shared" not in s for s in listed["subnets"])
    # Not a filter of ports (the network's is).
    msg = member.error("GET", "/ports", params={"shared": "True"})
    assert msg == "['shared'] is invalid attribute for filtering"


def test_subnet_pool_prefix_lengths_show_as_neutron_shows_them(admin, member):
    """Neutron shows prefix lengths as strings; the CLI (and kuryr's own client, through
    the Docker IPAM) read them either way."""
    pool = member.ok("POST", "/subnetpools", {"subnetpool": {
        "name": unique("pool"), "prefixes": ["10.81.0.0/16"], "min_prefixlen": 29}})["subnetpool"]
    assert (pool["min_prefixlen"], pool["default_prefixlen"], pool["max_prefixlen"]) == \
        ("29", "29", "32")
    shown = member.ok("GET", f"/subnetpools/{pool['id']}")["subnetpool"]
    assert shown["min_prefixlen"] == "29"
    member.ok("PUT", f"/subnetpools/{pool['id']}", {"subnetpool": {
        "min_prefixlen": "28", "max_prefixlen": 30}})
    listed = member.ok("GET", "/subnetpools", params={"min_prefixlen": "28", "id": pool["id"]})
    assert [(p["min_prefixlen"], p["max_prefixlen"]) for p in listed["subnetpools"]] == \
        [("28", "30")]
    cli = osc(member.creds, "subnet", "pool", "show", pool["id"])
    assert cli["min_prefixlen"] in (28, "28") and cli["max_prefixlen"] in (30, "30")
    # Neutron's bounds checks, in its order and words.
    msg = member.error("PUT", f"/subnetpools/{pool['id']}", {"subnetpool": {"min_prefixlen": 30}},
                       kind="IllegalSubnetPoolPrefixBounds")
    assert msg == "Illegal prefix bounds: default_prefixlen=29, min_prefixlen=30."


def test_subnet_pool_prefixes_only_grow_and_shared_is_read_only(admin_caller, member):
    pool = member.ok("POST", "/subnetpools", {"subnetpool": {
        "name": unique("pool"), "prefixes": ["10.82.0.0/16"], "min_prefixlen": 24}})["subnetpool"]
    path = f"/subnetpools/{pool['id']}"
    for smaller in (["10.82.0.0/17"], ["10.82.0.0/17", "10.82.128.0/18"], ["fd00:82::/64"]):
        msg = member.error("PUT", path, {"subnetpool": {"prefixes": smaller}},
                           kind="IllegalSubnetPoolPrefixUpdate")
        assert msg == ("Illegal update to prefixes: Existing prefixes must be a subset of "
                       "the new prefixes.")
    # Positive controls: the same prefix split in two, and growing.
    grown = member.ok("PUT", path, {"subnetpool": {
        "prefixes": ["10.82.0.0/17", "10.82.128.0/17", "10.84.0.0/16"]}})["subnetpool"]
    assert sorted(grown["prefixes"]) == ["10.82.0.0/16", "10.84.0.0/16"]

    msg = member.error("PUT", path, {"subnetpool": {"shared": True}}, kind="HTTPBadRequest")
    assert msg == "Cannot update read-only attribute shared"
    # Unknown attributes are named first, as in neutron.
    msg = member.error("PUT", path, {"subnetpool": {"shared": True, "bogus": 1}})
    assert msg == "Unrecognized attribute(s) 'bogus'"
    assert member.ok("PUT", path, {"subnetpool": {"name": "renamed"}})["subnetpool"]["shared"] \
        is False


def test_bulk_items_may_be_wrapped_as_single_bodies(member):
    """neutron-tempest-plugin's bulk security group create sends each item wrapped."""
    names = [unique("bulk") for _ in range(3)]
    body = {"security_groups": [{"security_group": {"name": names[0]}},
                                {"security_group": {"name": names[1], "stateful": False}},
                                {"name": names[2]}]}
    created = member.ok("POST", "/security-groups", body)["security_groups"]
    assert [g["name"] for g in created] == names
    assert [g["stateful"] for g in created] == [True, False, True]
    msg = member.error("POST", "/security-groups", {"security_groups": [{"security_group": 1}]})
    assert msg == "Object 'security_group' contains invalid data"
    assert member.error("POST", "/security-groups", {"security_groups": []}) == \
        "Resources required"


def rule_body(sg, **attrs):
    return {"security_group_rule": {"security_group_id": sg["id"], "direction": "ingress", **attrs}}


def test_security_group_rule_protocols_as_neutron_takes_them(member):
    sg = member.ok("POST", "/security-groups", {"security_group": {"name": unique("p")}})[
        "security_group"]
    # Every name neutron knows, by the real CLI (dccp takes ports, rsvp does not).
    r = osc(member.creds, "security", "group", "rule", "create", sg["id"], "--ingress",
            "--protocol", "dccp", "--dst-port", "5:6")
    assert (r["protocol"], r["port_range_min"], r["port_range_max"]) == ("dccp", 5, 6)
    for name in ("rsvp", "ipip", "hopopt", "RSVP"):
        got = member.call("POST", "/security-group-rules", rule_body(sg, protocol=name))
        if name == "RSVP":
            assert got[0] == 409 and got[1]["NeutronError"]["type"] == "SecurityGroupRuleExists"
        else:
            assert got[0] == 201 and got[1]["security_group_rule"]["protocol"] == name, got
    msg = member.error("POST", "/security-group-rules", rule_body(sg, protocol="bogus"),
                       kind="SecurityGroupRuleInvalidProtocol")
    assert msg.startswith("Security group rule protocol bogus not supported. Only protocol "
                          "values (None, 'any', 'ah', 'dccp',")
    member.error("POST", "/security-group-rules", rule_body(sg, protocol=256),
                 kind="SecurityGroupRuleInvalidProtocol")
    # IPv6-only protocols, by name and number, need the IPv6 ethertype.
    for p in ("ipv6-frag", "41", 43, "ipv6-icmp", "icmpv6", "58"):
        msg = member.error("POST", "/security-group-rules", rule_body(sg, protocol=p),
                           kind="SecurityGroupEthertypeConflictWithProtocol")
        assert msg == f"Invalid ethertype IPv4 for protocol {'icmpv6' if p == 'icmpv6' else p}."
        created = member.ok("POST", "/security-group-rules",
                            rule_body(sg, protocol=p, ethertype="IPv6"))["security_group_rule"]
        member.ok("DELETE", f"/security-group-rules/{created['id']}")
    # Legacy ICMPv6 spellings in an IPv6 rule are ipv6-icmp, and so one rule.
    r6 = member.ok("POST", "/security-group-rules",
                   rule_body(sg, protocol="icmp", ethertype="IPv6"))["security_group_rule"]
    assert r6["protocol"] == "ipv6-icmp"
    dup = member.error("POST", "/security-group-rules",
                       rule_body(sg, protocol="1", ethertype="IPv6"), status=409)
    assert dup == f"Security group rule already exists. Rule id is {r6['id']}."


def test_security_group_rule_ports_as_neutron_checks_them(member):
    sg = member.ok("POST", "/security-groups", {"security_group": {"name": unique("p")}})[
        "security_group"]
    cases = [
        ({"protocol": "tcp", "port_range_min": 22}, "SecurityGroupInvalidPortRange",
         "For TCP/UDP protocols, port_range_min must be <= port_range_max"),
        ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 5},
         "SecurityGroupInvalidPortValue", "Invalid value for port 0"),
        ({"protocol": "tcp", "port_range_min": "x"}, "SecurityGroupInvalidPortValue",
         "Invalid value for port x"),
        ({"protocol": "gre", "port_range_min": 5}, "SecurityGroupInvalidProtocolForPort",
         "Ports cannot be specified for protocol 47. Ports are only supported for DCCP, SCTP, "
         "TCP, UDP, UDPLITE."),
        ({"port_range_min": 5}, "SecurityGroupProtocolRequiredWithPorts",
         "Must also specify protocol if port range is given."),
        ({"protocol": "icmp", "port_range_min": 256}, "SecurityGroupInvalidIcmpValue",
         "Invalid value for ICMP type (port_range_min) 256. It must be 0 to 255."),
        ({"protocol": "icmp", "port_range_max": 3}, "SecurityGroupMissingIcmpType",
         "ICMP code (port-range-max) 3 is provided but ICMP type (port-range-min) is missing."),
        ({"protocol": "tcp", "remote_ip_prefix": "::/0"}, "SecurityGroupRuleParameterConflict",
         "Conflicting value ethertype IPv4 for CIDR ::/0"),
        ({"ethertype": "IPv5"}, "SecurityGroupRuleInvalidEtherType",
         "Security group rule for ethertype 'IPv5' not supported. Allowed values are "
         "['IPv4', 'IPv6']."),
    ]
    for attrs, kind, message in cases:
        assert member.error("POST", "/security-group-rules", rule_body(sg, **attrs),
                            kind=kind) == message
    # Positive controls: the whole range is no range; ICMP type alone.
    whole = member.ok("POST", "/security-group-rules", rule_body(
        sg, protocol="tcp", port_range_min=1, port_range_max=65535))["security_group_rule"]
    assert (whole["port_range_min"], whole["port_range_max"]) == (None, None)
    icmp = member.ok("POST", "/security-group-rules", rule_body(
        sg, protocol="icmp", port_range_min=8))["security_group_rule"]
    assert (icmp["port_range_min"], icmp["port_range_max"]) == (8, None)


def test_statefulness_of_a_group_in_use_cannot_change(member):
    net = member.ok("POST", "/networks", {"network": {"name": unique("n")}})["network"]
    used = osc(member.creds, "security", "group", "create", unique("used"), "--stateless")
    assert used["stateful"] is False
    free = osc(member.creds, "security", "group", "create", unique("free"))
    member.ok("POST", "/ports", {"port": {"network_id": net["id"],
                                          "security_groups": [used["id"]]}})
    msg = member.error("PUT", f"/security-groups/{used['id']}",
                       {"security_group": {"stateful": True}}, status=409, kind="SecurityGroupInUse")
    assert msg == f"Security Group {used['id']} in use."
    err = osc(member.creds, "security", "group", "set", used["id"], "--stateful",
              fmt=None, expect_fail=True)
    assert "in use" in err
    # Positive controls: the same value, other attributes, and a group no port uses.
    member.ok("PUT", f"/security-groups/{used['id']}",
              {"security_group": {"stateful": False, "description": "still stateless"}})
    osc(member.creds, "security", "group", "set", free["id"], "--stateless", fmt=None)
    assert osc(member.creds, "security", "group", "show", free["id"])["stateful"] is False


def test_group_quota_counts_before_the_default_group_and_rules_count(admin, admin_caller):
    """Neutron checks the group quota before it makes the project's default group, then
    the rule quota for the new group's two egress rules."""
    pid = osc(admin, "project", "create", unique("q"))["id"]
    admin_caller.ok("PUT", f"/quotas/{pid}", {"quota": {"security_group": 1}})
    first = admin_caller.ok("POST", "/security-groups", {"security_group": {
        "name": unique("g"), "project_id": pid}})["security_group"]
    groups = admin_caller.ok("GET", "/security-groups", params={"project_id": pid})
    assert sorted(g["name"] for g in groups["security_groups"]) == sorted(
        ["default", first["name"]])
    msg = admin_caller.error("POST", "/security-groups", {"security_group": {
        "name": unique("g"), "project_id": pid}}, status=409, kind="OverQuota")
    assert msg == "Quota exceeded for resources: ['security_group']."

    # Rules: 4 of the default group + 2 of the first; a new group needs 2 more.
    admin_caller.ok("PUT", f"/quotas/{pid}", {"quota": {"security_group": 10,
                                                         "security_group_rule": 7}})
    msg = admin_caller.error("POST", "/security-groups", {"security_group": {
        "name": unique("g"), "project_id": pid}}, status=409, kind="OverQuota")
    assert msg == "Quota exceeded for resources: ['security_group_rule']."
    admin_caller.ok("PUT", f"/quotas/{pid}", {"quota": {"security_group_rule": 8}})
    admin_caller.ok("POST", "/security-groups", {"security_group": {
        "name": unique("g"), "project_id": pid}})


def test_quota_below_usage_needs_force(admin, admin_caller):
    project = unique("q")
    pid = osc(admin, "project", "create", project)["id"]
    for _ in range(2):
        admin_caller.ok("POST", "/networks", {"network": {"name": unique("n"), "project_id": pid}})
    for body in ({"network": 1}, {"network": 1, "check_limit": True}, {"network": 1, "force": "true"}):
        msg = admin_caller.error("PUT", f"/quotas/{pid}", {"quota": body}, kind="HTTPBadRequest")
        assert msg == "Quota limit 1 for network must be greater than or equal to already used 2"
    err = osc(admin, "quota", "set", "--networks", "1", project, fmt=None, expect_fail=True)
    assert "must be greater than or equal to already used 2" in err
    assert admin_caller.ok("GET", f"/quotas/{pid}")["quota"]["network"] == 100
    # Positive controls: at usage, unlimited, and forced below it.
    assert admin_caller.ok("PUT", f"/quotas/{pid}", {"quota": {"network": 2}})["quota"]["network"] == 2
    assert admin_caller.ok("PUT", f"/quotas/{pid}", {"quota": {"network": -1}})["quota"]["network"] == -1
    forced = admin_caller.ok("PUT", f"/quotas/{pid}", {"quota": {"network": 0, "force": True}})
    assert forced["quota"]["network"] == 0
    msg = admin_caller.error("PUT", f"/quotas/{pid}", {"quota": {"network": "many"}},
                             kind="InvalidInput")
    assert msg == "Invalid input for operation: 'many' is not an integer."
    msg = admin_caller.error("PUT", f"/quotas/{pid}", {"quota": {"network": -2}})
    assert msg == "Invalid input for network. Reason: '-2' is too small - must be at least '-1'."


def test_user_names_up_to_255_characters(admin):
    """Keystone's limit (tempest's users are named after long test class names);
    project names stay at Keystone's 64."""
    project = unique("proj")
    osc(admin, "project", "create", project)
    name = ("tempest-" + "x" * 300)[:255]
    user = osc(admin, "user", "create", "--project", project, "--password", "pw-long-1", name)
    assert user["name"] == name
    err = osc(admin, "user", "create", "--password", "pw-long-1", name + "y", fmt=None,
              expect_fail=True)
    assert "1 to 255 characters" in err
    err = osc(admin, "project", "create", "p" * 65, fmt=None, expect_fail=True)
    assert "1 to 64 characters" in err
    long_project = (unique("p") + "p" * 64)[:64]
    assert osc(admin, "project", "create", long_project)["name"] == long_project
