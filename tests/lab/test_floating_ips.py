"""North-south through routers in the lab: SNAT through the router's gateway host,
floating IPs on the host of their port, port forwardings, and SNAT moving to another
host when its host dies. The outside is a namespace on the flat segment (physnet1)
at 203.0.113.1, the external subnet's gateway."""

from test_routers import answer_of, answer_with_name, container, router_with_subnets


def gateway_router(lab, n_subnets=1):
    ext, _ = lab.external_network()
    router, nets = router_with_subnets(lab, n_subnets)
    lab.openstack("router", "set", router["id"], "--external-gateway", ext["id"], fmt=None)
    router = lab.openstack("router", "show", router["id"])
    gw_ip = router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
    return router, nets, gw_ip


def open_group(lab, *rules):
    """A security group that lets in (protocol, port) from anywhere (and, as every
    new group, lets everything out)."""
    from test_agent import name
    sg = lab.create("security-groups", {"name": name("open")})
    for proto, port in rules:
        lab.create("security-group-rules", {
            "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4",
            "protocol": proto, "port_range_min": port, "port_range_max": port,
            "remote_ip_prefix": "0.0.0.0/0"})
    return sg["id"]


def snat_host(lab, router_id):
    ports = lab.api("GET", f"/ports?device_id={router_id}&device_owner=network:router_gateway")[1]
    return ports["ports"][0]["binding:host_id"] if ports["ports"] else ""


def test_snat_leaves_with_the_router_gateway_address(lab):
    router, [(net, _)], gw_ip = gateway_router(lab)
    lab.wait_for(lambda: snat_host(lab, router["id"]) != "", 10, "the SNAT to be placed")
    out = lab.outside()
    lab.serve_peer_address(out, 7001)
    c, _, ip = container(lab, "h1", net)
    c2, _, _ = container(lab, "h3", net)
    for src in (c, c2):
        lab.wait_for(lambda: lab.peer_address(src, lab.OUTSIDE_IP, 7001) == gw_ip, 20,
                     f"{src} to reach the outside as {gw_ip}")
    # Without the gateway there is no way out (and the positive control above).
    lab.openstack("router", "unset", router["id"], "--external-gateway", fmt=None)
    lab.wait_for(lambda: lab.peer_address(c, lab.OUTSIDE_IP, 7001) == "", 20,
                 "the way out to close")


def test_floating_ip_moves_with_its_port_and_stops_when_disassociated(lab):
    router, [(net, _)], gw_ip = gateway_router(lab)
    ext, _ = lab.external_network()
    out = lab.outside()
    lab.serve_peer_address(out, 7002)
    web = open_group(lab, ("tcp", 7100))
    a, pa, ip_a = container(lab, "h2", net, security_groups=[web])
    b, pb, ip_b = container(lab, "h1", net, security_groups=[web])
    answer_with_name(lab, a, 7100)
    answer_with_name(lab, b, 7100)
    fip = lab.openstack("floating", "ip", "create", ext["id"], "--port", pa["id"])
    addr = fip["floating_ip_address"]
    # The outside reaches the container at the floating IP (its security group lets
    # 7100 in; see below for one that does not); the container's own
    # traffic leaves as the floating IP, its neighbour's (no floating IP) as the
    # router's gateway address.
    lab.wait_for(lambda: answer_of(lab, out, addr, 7100) == a, 20,
                 "the outside to reach a at the floating IP")
    assert lab.peer_address(a, lab.OUTSIDE_IP, 7002) == addr
    assert lab.peer_address(b, lab.OUTSIDE_IP, 7002) == gw_ip, "no floating IP: SNAT"
    # Security groups apply to NATed traffic: 7101 is not let in.
    answer_with_name(lab, a, 7101)
    assert answer_of(lab, out, addr, 7101) == ""
    assert answer_of(lab, a, ip_a, 7101) == a, "positive control: the listener answers"

    # Moved to b, on another host: the traffic follows.
    lab.openstack("floating", "ip", "set", addr, "--port", pb["id"], fmt=None)
    lab.wait_for(lambda: answer_of(lab, out, addr, 7100) == b, 20,
                 "the floating IP to move to b")
    assert lab.peer_address(b, lab.OUTSIDE_IP, 7002) == addr
    lab.wait_for(lambda: lab.peer_address(a, lab.OUTSIDE_IP, 7002) == gw_ip, 20,
                 "a to be back to SNAT")

    lab.openstack("floating", "ip", "unset", addr, "--port", fmt=None)
    lab.wait_for(lambda: answer_of(lab, out, addr, 7100) == "", 20,
                 "the floating IP to stop answering")
    lab.openstack("floating", "ip", "delete", addr, fmt=None)


def test_port_forwarding_tcp_and_udp(lab):
    router, [(net, _)], _ = gateway_router(lab)
    ext, _ = lab.external_network()
    out = lab.outside()
    sg = open_group(lab, ("tcp", 80), ("udp", 53))
    c, port, ip = container(lab, "h2", net, security_groups=[sg])
    lab.serve_peer_address(c, 80)
    lab.serve_peer_address(c, 53, udp=True)
    fip = lab.openstack("floating", "ip", "create", ext["id"])
    addr = fip["floating_ip_address"]
    for proto, ext_port, int_port in (("tcp", 8080, 80), ("udp", 5353, 53)):
        lab.openstack("floating", "ip", "port", "forwarding", "create", addr,
                      "--internal-ip-address", ip, "--port", port["id"],
                      "--internal-protocol-port", int_port,
                      "--external-protocol-port", ext_port, "--protocol", proto)
    lab.wait_for(lambda: lab.peer_address(out, addr, 8080) == lab.OUTSIDE_IP, 20,
                 "outside -> FIP:8080 -> container:80")
    lab.wait_for(lambda: lab.peer_address(out, addr, 5353, udp=True) == lab.OUTSIDE_IP, 20,
                 "outside -> FIP:5353/udp -> container:53")
    assert lab.peer_address(out, addr, 8081) == "", "only the forwarded port"


def test_snat_moves_when_its_host_dies(fresh_lab):
    lab = fresh_lab
    router, [(net, _)], gw_ip = gateway_router(lab)
    lab.wait_for(lambda: snat_host(lab, router["id"]) != "", 10, "the SNAT to be placed")
    first = snat_host(lab, router["id"])
    others = [h for h in lab.hosts if h != first]
    out = lab.outside()
    lab.serve_peer_address(out, 7003)
    c, _, _ = container(lab, others[0], net)
    lab.wait_for(lambda: lab.peer_address(c, lab.OUTSIDE_IP, 7003) == gw_ip, 20,
                 "the container to reach the outside")
    # The host dies: its agent and its link to the outside go.
    lab.agents[first].kill9()
    lab.exec(first, "ip", "link", "set", "eth2", "down")
    lab.wait_for(lambda: snat_host(lab, router["id"]) not in ("", first), 15,
                 "the SNAT to move to a live host")
    lab.wait_for(lambda: lab.peer_address(c, lab.OUTSIDE_IP, 7003) == gw_ip, 20,
                 "traffic to resume through the new SNAT host")
