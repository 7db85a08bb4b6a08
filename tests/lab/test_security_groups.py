"""Security groups on real traffic in the lab: stateful, per port, remote groups as
live sets, anti-spoofing, port security off."""

from test_agent import cidr_block, name


def sg(lab, label, rules=()):
    """A security group with only the given rules (Neutron's default egress rules removed)."""
    g = lab.create("security-groups", {"name": name(label)})
    for r in g["security_group_rules"]:
        lab.api("DELETE", f"/security-group-rules/{r['id']}", expect=204)
    for r in rules:
        add_rule(lab, g, **r)
    return g


def add_rule(lab, g, **r):
    body = {"security_group_id": g["id"], "ethertype": "IPv4", "direction": "ingress", **r}
    return lab.create("security-group-rules", body)


def ip4(port):
    return next(f["ip_address"] for f in port["fixed_ips"] if "." in f["ip_address"])


def ip6(port):
    return next(f["ip_address"] for f in port["fixed_ips"] if ":" in f["ip_address"])


def setup(lab, v4, v6=None, hosts=("h1", "h2", "h1"), groups=None, **port_extra):
    """One network, a container per host in `hosts`, each port in `groups` (or the
    project's default group). Returns (net, ports, containers)."""
    net, _ = lab.network(name("net"), f"{v4}.0/24", f"{v6}::/64" if v6 else None)
    ports, cs = [], []
    for i, h in enumerate(hosts):
        extra = dict(port_extra)
        if groups is not None:
            extra["security_groups"] = [g["id"] for g in groups[i]]
        p = lab.port(net, name=f"p{i}", **extra)
        c = name(f"c{i}")
        lab.add_container(c)
        lab.bind(h, p, c)
        ports.append(p)
        cs.append(c)
    return net, ports, cs


def test_default_group_allows_members_only_and_is_stateful(lab):
    v4, _ = cidr_block()
    net, (a, b), (ca, cb) = setup(lab, v4, hosts=("h1", "h2"))
    # Default group: ingress from members of the group, all egress.
    assert lab.ping_eventually(ca, ip4(b))
    assert lab.ping_eventually(cb, ip4(a))
    # A port in another (empty-rules) group can neither reach them nor be reached,
    # but its own egress... it has no egress rule either.
    lonely = sg(lab, "lonely")
    p = lab.port(net, security_groups=[lonely["id"]])
    c = name("c")
    lab.add_container(c)
    lab.bind("h2", p, c)
    assert lab.never_pings(ca, ip4(p))
    assert lab.never_pings(c, ip4(a))
    # Egress only for `lonely`: it still cannot reach `a` (a's default group only
    # admits its own members), yet replies to what it starts are admitted.
    add_rule(lab, lonely, direction="egress")
    add_rule(lab, lonely, direction="egress", ethertype="IPv6")
    assert lab.never_pings(c, ip4(a))
    open_sg = sg(lab, "open", [{"protocol": "icmp"}])
    lab.api("PUT", f"/ports/{a['id']}", {"port": {"security_groups": [open_sg["id"]]}},
            expect=200)
    # `a` now admits ICMP from anyone but has no egress rule: the echo reply still
    # flows because the connection is tracked (stateful).
    assert lab.ping_eventually(c, ip4(a))


def test_tcp_port_rule_icmp_rule_and_egress_restriction(lab):
    v4, _ = cidr_block()
    server_sg = sg(lab, "srv", [{"protocol": "tcp", "port_range_min": 8080,
                                 "port_range_max": 8080}])
    client_sg = sg(lab, "cli", [{"direction": "egress", "protocol": "tcp",
                                 "port_range_min": 8080, "port_range_max": 8081},
                                {"direction": "egress", "protocol": "icmp"}])
    net, (srv, cli), (cs, cc) = setup(lab, v4, hosts=("h1", "h2"),
                                      groups=[[server_sg], [client_sg]])
    listener = lab.tcp_listen(cs, 8080)
    try:
        assert lab.tcp_connects(cc, ip4(srv), 8080)
    finally:
        listener.kill()
    listener = lab.tcp_listen(cs, 9090)
    try:
        assert not lab.tcp_connects(cc, ip4(srv), 9090)  # not admitted by srv's ingress
    finally:
        listener.kill()
    assert lab.never_pings(cc, ip4(srv))  # no ICMP rule on srv yet
    add_rule(lab, server_sg, protocol="icmp")
    assert lab.ping_eventually(cc, ip4(srv))
    # Egress restriction: cli may only send tcp 8080-8081 and ICMP.
    listener = lab.tcp_listen(cs, 7070)
    add_rule(lab, server_sg, protocol="tcp", port_range_min=7070, port_range_max=7070)
    try:
        assert not lab.tcp_connects(cc, ip4(srv), 7070)
    finally:
        listener.kill()


def test_remote_group_membership_is_live(lab):
    v4, _ = cidr_block()
    web = sg(lab, "web")
    clients = sg(lab, "clients", [{"direction": "egress"}])
    add_rule(lab, web, protocol="icmp", remote_group_id=clients["id"])
    outsider_sg = sg(lab, "outsider", [{"direction": "egress"}])
    net, (w, c1, c2), (cw, cc1, cc2) = setup(
        lab, v4, hosts=("h1", "h2", "h3"), groups=[[web], [clients], [outsider_sg]])
    assert lab.ping_eventually(cc1, ip4(w))
    assert lab.never_pings(cc2, ip4(w))
    # c2 joins `clients`: one set element on h1, and the ping goes through.
    lab.api("PUT", f"/ports/{c2['id']}",
            {"port": {"security_groups": [clients["id"]]}}, expect=200)
    assert lab.ping_eventually(cc2, ip4(w))
    # c1 leaves it: once h1 has applied that (tens of ms later; a ping sent at once
    # may still pass, CI saw one), cut off.
    lab.api("PUT", f"/ports/{c1['id']}",
            {"port": {"security_groups": [outsider_sg["id"]]}}, expect=200)
    lab.wait_for(lambda: ip4(c1) not in lab.exec("h1", "nft", "list", "table", "inet", "kuryr"),
                 10, "h1 to drop c1 from the clients set")
    assert lab.never_pings(cc1, ip4(w))
    rules = lab.exec("h1", "nft", "list", "table", "inet", "kuryr")
    assert ip4(c2) in rules and ip4(c1) not in rules


def test_ipv6_rule(lab):
    v4, v6 = cidr_block()
    g6 = sg(lab, "v6", [{"ethertype": "IPv6", "protocol": "ipv6-icmp"},
                        {"ethertype": "IPv6", "direction": "egress"},
                        {"direction": "egress"}])
    net, (a, b), (ca, cb) = setup(lab, v4, v6, hosts=("h1", "h2"), groups=[[g6], [g6]])
    assert lab.ping_eventually(ca, ip6(b))
    assert lab.never_pings(ca, ip4(b))  # no IPv4 ingress rule


def test_anti_spoofing_and_port_security_disabled(lab):
    v4, _ = cidr_block()
    net, (a, b, c), (ca, cb, cc) = setup(lab, v4, hosts=("h1", "h2", "h1"))
    assert lab.ping_eventually(ca, ip4(b))
    assert lab.ping_eventually(cc, ip4(b))
    # a takes another address: cut off.
    lab.exec(ca, "ip", "addr", "flush", "dev", "eth0")
    lab.exec(ca, "ip", "addr", "add", f"{v4}.200/24", "dev", "eth0")
    lab.exec(ca, "ip", "route", "replace", "default", "via", f"{v4}.1", check=False)
    assert lab.never_pings(ca, ip4(b))
    # c takes another MAC: cut off.
    lab.exec(cc, "ip", "link", "set", "eth0", "address", "fa:16:3e:99:99:99")
    assert lab.never_pings(cc, ip4(b))
    # A port with port security off may use any address and MAC (b's default group
    # lets b start the exchange; the replies come back as an established flow).
    free = lab.port(net, port_security_enabled=False, security_groups=[])
    cf = name("cf")
    lab.add_container(cf)
    lab.bind("h2", free, cf)
    lab.exec(cf, "ip", "addr", "add", f"{v4}.201/24", "dev", "eth0")
    lab.exec(cf, "ip", "link", "set", "eth0", "address", "fa:16:3e:99:99:98")
    assert lab.ping_eventually(cb, f"{v4}.201")
    # b sending from an extra address is spoofing until an allowed address pair says
    # otherwise.
    lab.exec(cb, "ip", "addr", "add", f"{v4}.202/24", "dev", "eth0")
    assert not lab.ping_eventually(cb, f"{v4}.201", src_ip=f"{v4}.202", timeout=2)
    lab.api("PUT", f"/ports/{b['id']}",
            {"port": {"allowed_address_pairs": [{"ip_address": f"{v4}.202"}]}}, expect=200)
    assert lab.ping_eventually(cb, f"{v4}.201", src_ip=f"{v4}.202")


def test_stateless_group_needs_rules_both_ways_and_is_not_tracked(lab):
    """A stateless group (`stateful: false`) is not tracked on its port's host: the
    same egress-only rules that let a stateful port's pings come back (by conntrack)
    do not for a stateless one, until a rule admits the replies."""
    v4, _ = cidr_block()
    srv_sg = sg(lab, "srv", [{"protocol": "icmp"}, {"direction": "egress"}])
    # New groups come with egress-anywhere rules and nothing else.
    full = lab.create("security-groups", {"name": name("full")})
    less = lab.create("security-groups", {"name": name("less"), "stateful": False})
    assert less["stateful"] is False
    net, (s, c1, c2), (cs, cc1, cc2) = setup(
        lab, v4, hosts=("h1", "h2", "h2"), groups=[[srv_sg], [full], [less]])
    assert lab.ping_eventually(cc1, ip4(s))
    assert lab.never_pings(cc2, ip4(s))
    add_rule(lab, less, protocol="icmp", remote_ip_prefix=f"{ip4(s)}/32")
    assert lab.ping_eventually(cc2, ip4(s))
    # c2's host has no conntrack entry of its traffic; c1's is there (positive
    # control). (h1 tracks both: the server's port is stateful.)
    table = lab.exec("h2", "cat", "/proc/net/nf_conntrack")
    assert f"src={ip4(c1)} " in table, table
    assert f"src={ip4(c2)} " not in table and f"dst={ip4(c2)} " not in table, table
    assert f"src={ip4(c2)} " in lab.exec("h1", "cat", "/proc/net/nf_conntrack")
    # Its statefulness cannot change while the port uses it.
    lab.api("PUT", f"/security-groups/{less['id']}", {"security_group": {"stateful": True}},
            expect=409)
