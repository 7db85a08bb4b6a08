"""Containers on kuryr networks: ports, what the container sees, connectivity,
connect/disconnect, and nothing left behind (SCENARIOS.md B3, B4, B6)."""

from dockerlab import cidr_block


def test_run_with_and_without_ip_gives_the_container_its_port(dlab):
    v4, _ = cidr_block()
    name, did = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1")
    [net] = dlab.neutron_networks_of(did)
    [subnet] = dlab.subnets_of(net["id"])

    c1 = dlab.run("h1", name)
    c2 = dlab.run("h1", name, "--ip", f"{v4}.77")
    ep1, p1 = dlab.assert_port("h1", c1, name, net)
    ep2, p2 = dlab.assert_port("h1", c2, name, net)
    assert ep2["IPAddress"] == f"{v4}.77"
    assert p2["fixed_ips"][0]["subnet_id"] == subnet["id"]
    assert ep1["Gateway"] == f"{v4}.1" and ep1["IPPrefixLen"] == 24

    # Inside the container: the port's address, MAC, MTU 1450 (VXLAN) and default route.
    for c, port in ((c1, p1), (c2, p2)):
        seen = dlab.iface("h1", c)
        assert seen["mac"] == port["mac_address"]
        assert seen["mtu"] == 1450 == net["mtu"]
        assert f"{port['fixed_ips'][0]['ip_address']}/24" in seen["addresses"]
        assert any(r.startswith(f"default via {v4}.1 ") for r in seen["routes4"]), seen
    # The host side is kuryr's: a tap on the network's bridge.
    links = {link["ifname"]: link for link in dlab.links("h1")}
    assert links[f"tap{p1['id'][:11]}"]["master"] == f"brq{net['id'][:11]}"

    # rm -f deletes the port, and only that one.
    dlab.docker("h1", "rm", "-f", c1)
    assert dlab.ports_of_endpoint(ep1["EndpointID"]) == []
    assert dlab.get(f"/ports/{p2['id']}")["port"]["status"] == "ACTIVE"
    dlab.docker("h1", "rm", "-f", c2)
    assert dlab.get("/ports", network_id=net["id"], device_owner="kuryr:container")["ports"] == []

    # Nothing kuryr made is left, in Neutron or on the host.
    dlab.docker("h1", "network", "rm", name)
    assert dlab.neutron_networks_of(did) == []
    dlab.wait_for(lambda: not dlab.leftovers("h1"), 10,
                  "h1 to remove every kuryr link and nft object")


def test_run_with_an_address_in_use_fails_cleanly(dlab):
    v4, _ = cidr_block()
    name, did = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1")
    [net] = dlab.neutron_networks_of(did)
    first = dlab.run("h1", name, "--ip", f"{v4}.9")
    ep, port = dlab.assert_port("h1", first, name, net)
    # A second container asking for the same address is refused; the first keeps its port.
    p = dlab.docker_proc("h1", "run", "-d", "--net", name, "--ip", f"{v4}.9", "kuryr/busybox",
                         "sleep", "3600")
    assert p.returncode != 0, p.stdout
    ports = dlab.get("/ports", network_id=net["id"])["ports"]
    assert [q["id"] for q in ports] == [port["id"]]
    assert ports[0]["device_id"] == ep["EndpointID"] and ports[0]["binding:host_id"] == "h1"


def test_containers_ping_on_one_host_and_across_hosts(dlab):
    v4, _ = cidr_block()
    name, net = dlab.shared_network(v4)
    a = dlab.run("h1", name)
    b = dlab.run("h1", name)
    c = dlab.run("h2", name)
    ep_a, _ = dlab.assert_port("h1", a, name, net)
    ep_b, _ = dlab.assert_port("h1", b, name, net)
    ep_c, _ = dlab.assert_port("h2", c, name, net)
    assert len({ep_a["IPAddress"], ep_b["IPAddress"], ep_c["IPAddress"]}) == 3
    assert dlab.cping_eventually("h1", a, ep_b["IPAddress"])
    assert dlab.cping_eventually("h1", a, ep_c["IPAddress"])
    assert dlab.cping_eventually("h2", c, ep_b["IPAddress"])

    # Removing everything leaves no kuryr link or rule on either host, nothing in Neutron.
    dlab.docker("h1", "rm", "-f", a, b)
    dlab.docker("h2", "rm", "-f", c)
    dlab.docker("h2", "network", "rm", name)
    assert dlab.get(f"/networks/{net['id']}")["network"]["id"] == net["id"]
    dlab.docker("h1", "network", "rm", name)
    assert dlab.api("GET", f"/networks/{net['id']}")[0] == 404
    assert dlab.pools_named(f"kuryrPool-{v4}.0/24") == []
    for h in dlab.hosts:
        dlab.wait_for(lambda h=h: not dlab.leftovers(h), 10, f"{h} to remove every kuryr object")


def test_connect_and_disconnect_a_running_container(dlab):
    v4a, _ = cidr_block()
    v4b, _ = cidr_block()
    na, dida = dlab.kuryr_network("h1", "--subnet", f"{v4a}.0/24", "--gateway", f"{v4a}.1")
    nb, didb = dlab.kuryr_network("h1", "--subnet", f"{v4b}.0/24", "--gateway", f"{v4b}.1")
    [net_b] = dlab.neutron_networks_of(didb)
    c = dlab.run("h1", na)
    peer = dlab.run("h1", nb)
    ep_peer = dlab.endpoint("h1", peer, nb)

    dlab.docker("h1", "network", "connect", "--ip", f"{v4b}.50", nb, c)
    ep, port = dlab.assert_port("h1", c, nb, net_b)
    assert ep["IPAddress"] == f"{v4b}.50"
    seen = dlab.iface("h1", c, "eth1")
    assert seen["mac"] == port["mac_address"] and f"{v4b}.50/24" in seen["addresses"]
    assert dlab.cping_eventually("h1", c, ep_peer["IPAddress"])

    dlab.docker("h1", "network", "disconnect", nb, c)
    assert dlab.ports_of_endpoint(ep["EndpointID"]) == []
    out = dlab.cexec("h1", c, "ip", "-o", "link")
    assert "eth1" not in out and "eth0" in out
    assert nb not in dlab.inspect("h1", c)["NetworkSettings"]["Networks"]
    # Still on the first network.
    assert dlab.ports_of_endpoint(dlab.endpoint("h1", c, na)["EndpointID"])


def test_subnet_host_routes_become_container_routes(dlab):
    v4, _ = cidr_block()
    name, did = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1")
    [net] = dlab.neutron_networks_of(did)
    [subnet] = dlab.subnets_of(net["id"])
    dlab.api("PUT", f"/subnets/{subnet['id']}", {"subnet": {"host_routes": [
        {"destination": "192.168.77.0/24", "nexthop": f"{v4}.254"}]}}, expect=200)
    c = dlab.run("h1", name)
    seen = dlab.iface("h1", c)
    assert any(r.startswith(f"192.168.77.0/24 via {v4}.254 ") for r in seen["routes4"]), seen
    assert any(r.startswith(f"default via {v4}.1 ") for r in seen["routes4"]), seen


def test_stop_and_start_gives_the_container_a_working_port_again(dlab):
    v4, _ = cidr_block()
    name, did = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1")
    [net] = dlab.neutron_networks_of(did)
    c = dlab.run("h1", name)
    peer = dlab.run("h1", name)
    peer_ip = dlab.endpoint("h1", peer, name)["IPAddress"]
    ep_before, _ = dlab.assert_port("h1", c, name, net)

    # A stopped container has no endpoint, so no port.
    dlab.docker("h1", "stop", "-t", "0", c)
    assert dlab.ports_of_endpoint(ep_before["EndpointID"]) == []
    dlab.docker("h1", "start", c)
    ep_after, _ = dlab.assert_port("h1", c, name, net)
    assert dlab.cping_eventually("h1", c, peer_ip)
    dlab.docker("h1", "restart", "-t", "0", c)
    ep_again, _ = dlab.assert_port("h1", c, name, net)
    assert dlab.cping_eventually("h1", c, peer_ip)
    assert len(dlab.get("/ports", network_id=net["id"])["ports"]) == 2
