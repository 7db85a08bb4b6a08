"""Distributed routers in the lab: subnets of one router reach each other, routed on
the host the traffic starts from; identical CIDRs of two projects stay apart;
security groups still apply; interfaces, routers and agents come and go cleanly."""

import json
import subprocess
import uuid

from lab import sh
from test_agent import cidr_block, name


def router_with_subnets(lab, n_subnets=2):
    """A router (real `openstack` CLI) with n subnets of a fresh /16-ish block
    attached. Returns (router, [(net, subnet)], block)."""
    v4, _ = cidr_block()
    a, b = v4.split(".")[1:3]
    extra = {}
    router = lab.openstack("router", "create", name("r"))
    nets = []
    for i in range(n_subnets):
        net = lab.create("networks", {"name": name("net"), **extra})
        subnet = lab.create("subnets", {"network_id": net["id"], "ip_version": 4,
                                        "cidr": f"10.{a}.{(int(b) + i) % 250}.0/24", **extra})
        lab.openstack("router", "add", "subnet", router["id"], subnet["id"], fmt=None)
        nets.append((net, subnet))
    return router, nets


def container(lab, host, net, **port_extra):
    port = lab.port(net, **port_extra)
    c = name("c")
    lab.add_container(c)
    lab.bind(host, port, c)
    return c, port, port["fixed_ips"][0]["ip_address"]


def leg_counters(lab, host, router_id, port_id):
    """rx/tx packets of a router leg (`qr-<port>`) in `host`'s router namespace."""
    ns = lab.router_ns(host, router_id)
    out = json.loads(sh("ip", "-j", "-s", "-n", ns, "link", "show", "dev", f"qr-{port_id[:11]}"))
    stats = out[0]["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


def interface_port(lab, router_id, subnet_id):
    ports = lab.openstack("port", "list", "--router", router_id, "--long")
    for p in ports:
        if any(ip["subnet_id"] == subnet_id for ip in p["Fixed IP Addresses"]):
            return p
    raise AssertionError(f"no interface of {router_id} on {subnet_id}: {ports}")


def test_east_west_routed_on_the_source_host(lab):
    router, [(net_a, sub_a), (net_b, sub_b)] = router_with_subnets(lab)
    ca, _, ip_a = container(lab, "h1", net_a)
    cb1, _, ip_b1 = container(lab, "h1", net_b)
    cb2, _, ip_b2 = container(lab, "h2", net_b)
    lab.tcp_listen(cb2, 8080)
    # Same host, and across hosts.
    assert lab.ping_eventually(ca, ip_b1, timeout=10)
    assert lab.ping_eventually(ca, ip_b2, timeout=10)
    assert lab.tcp_connects(ca, ip_b2, 8080)
    # The gateway the container resolved is the interface port's own MAC.
    gw_a = sub_a["gateway_ip"]
    leg_a = interface_port(lab, router["id"], sub_a["id"])
    neigh = json.loads(lab.exec(ca, "ip", "-j", "neigh", "show", gw_a))
    assert neigh and neigh[0]["lladdr"] == leg_a["MAC Address"]

    # Requests from h1 are routed by h1's router, replies from h2 by h2's: h1's leg
    # on B never sees the replies, and h3 (no ports there) has no router at all.
    leg_b = interface_port(lab, router["id"], sub_b["id"])
    # (A few IPv6 control packets of the containers' own reach the legs meanwhile:
    # hence 300 pings in quick succession against a margin.)
    h1_a_rx0, _ = leg_counters(lab, "h1", router["id"], leg_a["ID"])
    h1_b_rx0, _ = leg_counters(lab, "h1", router["id"], leg_b["ID"])
    h2_b_rx0, _ = leg_counters(lab, "h2", router["id"], leg_b["ID"])
    lab.exec(ca, "ping", "-q", "-c", "300", "-i", "0.005", "-W", "2", ip_b2, timeout=60)
    h1_a_rx1, _ = leg_counters(lab, "h1", router["id"], leg_a["ID"])
    h1_b_rx1, _ = leg_counters(lab, "h1", router["id"], leg_b["ID"])
    h2_b_rx1, _ = leg_counters(lab, "h2", router["id"], leg_b["ID"])
    assert h1_a_rx1 - h1_a_rx0 >= 300, "requests routed on h1"
    assert h2_b_rx1 - h2_b_rx0 >= 300, "replies routed on h2"
    assert h1_b_rx1 - h1_b_rx0 < 100, "replies never reach h1's router"
    assert lab.router_ns("h3", router["id"]) not in lab.router_namespaces("h3")
    assert lab.router_ns("h1", router["id"]) in lab.router_namespaces("h1"), "positive control"


def test_security_groups_apply_to_routed_traffic(lab):
    router, [(net_a, _), (net_b, _)] = router_with_subnets(lab)
    closed = lab.create("security-groups", {"name": name("closed")})
    for rule in lab.api("GET", f"/security-group-rules?security_group_id={closed['id']}")[1][
            "security_group_rules"]:
        if rule["direction"] == "ingress":
            lab.api("DELETE", f"/security-group-rules/{rule['id']}", expect=204)
    lab.create("security-group-rules", {"security_group_id": closed["id"], "direction": "ingress",
                                        "ethertype": "IPv4", "protocol": "tcp",
                                        "port_range_min": 8080, "port_range_max": 8080})
    ca, _, _ = container(lab, "h1", net_a)
    cb, _, ip_b = container(lab, "h2", net_b, security_groups=[closed["id"]])
    open_c, _, ip_open = container(lab, "h2", net_b)
    lab.tcp_listen(cb, 8080)
    lab.tcp_listen(cb, 8081)
    assert lab.ping_eventually(ca, ip_open, timeout=10), "positive control: routed ping"
    assert lab.tcp_connects(ca, ip_b, 8080)
    assert not lab.tcp_connects(ca, ip_b, 8081)
    assert lab.never_pings(ca, ip_b)


def answer_with_name(lab, c, port):
    """A listener in container `c` that answers each connection with its own name."""
    p = subprocess.Popen(["ip", "netns", "exec", lab.ns(c), "busybox", "nc", "-ll", "-p",
                          str(port), "-e", "echo", c],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    lab.spawned.append(p)
    lab.wait_for(lambda: lab.exec(c, "ss", "-Hltn", f"sport = :{port}").strip() != "",
                 10, f"nc to listen in {c}")
    return p


def answer_of(lab, src, ip, port):
    p = subprocess.run(["ip", "netns", "exec", lab.ns(src), "busybox", "nc", "-w", "2", ip,
                        str(port)], capture_output=True, text=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    return p.stdout.strip()


def test_identical_cidrs_of_two_projects_stay_apart(lab):
    p1, p2 = uuid.uuid4().hex, uuid.uuid4().hex
    v4, _ = cidr_block()
    a, b = v4.split(".")[1:3]
    first, second = f"10.{a}.{int(b) % 250}", f"10.{a}.{(int(b) + 1) % 250}"
    made = {}
    for proj in (p1, p2):
        # (The CLI's --project wants a Keystone project: these are bare ids.)
        router = lab.api("POST", "/routers", {"router": {"name": name("r"), "project_id": proj}},
                         expect=201)[1]["router"]
        nets = []
        for prefix in (first, second):
            net = lab.create("networks", {"name": name("net"), "project_id": proj})
            sub = lab.create("subnets", {"network_id": net["id"], "ip_version": 4,
                                         "cidr": f"{prefix}.0/24", "project_id": proj})
            lab.openstack("router", "add", "subnet", router["id"], sub["id"], fmt=None)
            nets.append(net)
        made[proj] = nets
    # The same addresses in both projects; only project 2 has .30 on its second subnet.
    (n1a, n1b), (n2a, n2b) = made[p1], made[p2]
    c1, _, _ = container(lab, "h1", n1a, project_id=p1, fixed_ips=[{"ip_address": f"{first}.10"}])
    d1, _, _ = container(lab, "h2", n1b, project_id=p1, fixed_ips=[{"ip_address": f"{second}.20"}])
    c2, _, _ = container(lab, "h1", n2a, project_id=p2, fixed_ips=[{"ip_address": f"{first}.10"}])
    d2, _, _ = container(lab, "h2", n2b, project_id=p2, fixed_ips=[{"ip_address": f"{second}.20"}])
    e2, _, _ = container(lab, "h2", n2b, project_id=p2, fixed_ips=[{"ip_address": f"{second}.30"}])
    for c in (d1, d2, e2):
        answer_with_name(lab, c, 7000)
    lab.wait_for(lambda: answer_of(lab, c1, f"{second}.20", 7000) == d1, 15, "c1 to reach d1")
    lab.wait_for(lambda: answer_of(lab, c2, f"{second}.20", 7000) == d2, 15, "c2 to reach d2")
    assert answer_of(lab, c2, f"{second}.30", 7000) == e2, "positive control"
    assert answer_of(lab, c1, f"{second}.30", 7000) == "", "project 2's .30 is not project 1's"
    assert lab.never_pings(c1, f"{second}.30")


def test_interface_removal_router_delete_and_restart_leave_nothing(lab):
    router, [(net_a, sub_a), (net_b, sub_b)] = router_with_subnets(lab)
    ca, pa, _ = container(lab, "h1", net_a)
    cb, pb, ip_b = container(lab, "h2", net_b)
    assert lab.ping_eventually(ca, ip_b, timeout=10)

    # The agent restarts with the router in place: traffic goes on, nothing doubles.
    legs_before = sorted(l["ifname"] for l in lab.links("h1") if l["ifname"].startswith("tap"))
    lab.agents["h1"].kill9()
    assert lab.ping(ca, ip_b, count=3, wait=2), "dataplane outlives the agent"
    lab.start_agent("h1")
    lab.wait_agent_ready("h1")
    assert lab.ping_eventually(ca, ip_b, timeout=10)
    legs_after = sorted(l["ifname"] for l in lab.links("h1") if l["ifname"].startswith("tap"))
    assert legs_after == legs_before

    # Taking B off the router cuts A from B, and its leg goes.
    leg_a = interface_port(lab, router["id"], sub_a["id"])["ID"]
    leg_b_id = interface_port(lab, router["id"], sub_b["id"])["ID"]
    lab.openstack("router", "remove", "subnet", router["id"], sub_b["id"], fmt=None)

    def b_gone():
        return all(not lab.ping(ca, ip_b) for _ in range(2))
    lab.wait_for(b_gone, 15, "A to lose its route to B")
    ns = lab.router_ns("h1", router["id"])

    def legs():
        return sorted(l["ifname"] for l in json.loads(sh("ip", "-j", "-n", ns, "link", "show"))
                      if l["ifname"].startswith("qr-"))
    lab.wait_for(lambda: legs() == [f"qr-{leg_a[:11]}"], 15, "only A's leg to stay")

    # The router goes once its last interface does, and with it the namespaces.
    lab.openstack("router", "remove", "subnet", router["id"], sub_a["id"], fmt=None)
    lab.openstack("router", "delete", router["id"], fmt=None)
    for h in ("h1", "h2"):
        lab.wait_for(lambda: lab.router_ns(h, router["id"]) not in lab.router_namespaces(h),
                     15, f"{h}'s router namespace to go")
    # Nothing of it is left: no leg on any bridge, none in the containment rules
    # (other tests' routers may keep the table itself on these shared hosts).
    taps = [f"tap{leg_a[:11]}", f"tap{leg_b_id[:11]}"]

    def no_trace(h):
        links = [l["ifname"] for l in lab.links(h)]
        rules = lab.exec(h, "nft", "list", "ruleset")
        return not any(t in links or t in rules for t in taps)
    for h in ("h1", "h2"):
        lab.wait_for(lambda: no_trace(h), 15, f"{h} to hold no trace of the router")
    lab.unbind("h1", pa)
    lab.unbind("h2", pb)


def test_ipv6_subnets_are_routed(lab):
    _, v6 = cidr_block()
    router = lab.openstack("router", "create", name("r"))
    nets = []
    for i in range(2):
        net = lab.create("networks", {"name": name("net")})
        sub = lab.create("subnets", {"network_id": net["id"], "ip_version": 6,
                                     "cidr": f"{v6}:{i + 1}::/64"})
        lab.openstack("router", "add", "subnet", router["id"], sub["id"], fmt=None)
        nets.append(net)
    a, _, _ = container(lab, "h1", nets[0])
    b, _, ip_b = container(lab, "h2", nets[1])
    c, _, ip_c = container(lab, "h1", nets[1])
    assert lab.ping_eventually(a, ip_c, timeout=10), "same host"
    assert lab.ping_eventually(a, ip_b, timeout=10), "across hosts"


def test_extra_route_through_a_container(lab):
    router, [(net_a, _), (net_b, _)] = router_with_subnets(lab)
    v4, _ = cidr_block()
    a, b = v4.split(".")[1:3]
    behind = f"10.{a}.{(int(b) + 7) % 250}"
    # x routes for `behind` (it holds .1 there): its port may send from that range.
    x, _, ip_x = container(lab, "h1", net_a,
                           allowed_address_pairs=[{"ip_address": f"{behind}.0/24"}])
    lab.exec(x, "ip", "addr", "add", f"{behind}.1/32", "dev", "lo")
    c, _, _ = container(lab, "h2", net_b)
    assert lab.ping_eventually(c, ip_x, timeout=10), "positive control: x is reachable"
    assert lab.never_pings(c, f"{behind}.1"), "no route to it yet"
    lab.openstack("router", "add", "route", router["id"], "--route",
                  f"destination={behind}.0/24,gateway={ip_x}", fmt=None)
    assert lab.ping_eventually(c, f"{behind}.1", timeout=10), "routed through x"
    lab.openstack("router", "remove", "route", router["id"], "--route",
                  f"destination={behind}.0/24,gateway={ip_x}", fmt=None)
    lab.wait_for(lambda: lab.never_pings(c, f"{behind}.1", attempts=2), 15,
                 "the route to go")
