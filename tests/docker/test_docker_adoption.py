"""Existing Neutron resources under Docker networks: networks, subnet pools, subnets
and ports chosen with kuryr-libnetwork's options, and left in Neutron afterwards
(SCENARIOS.md B5)."""

from dockerlab import cidr_block, unique


def subnetpool(lab, name, prefix, version):
    body = {"subnetpool": {"name": name, "prefixes": [prefix],
                           "default_prefixlen": int(prefix.split("/")[1])}}
    pool = lab.api("POST", "/subnetpools", body, expect=201)[1]["subnetpool"]
    assert pool["ip_version"] == version
    return pool


def subnet(lab, net, cidr, version, name=None, **extra):
    return lab.create("subnets", {"network_id": net["id"], "cidr": cidr, "ip_version": version,
                                  "name": name or unique("s"), **extra})


def test_existing_network_by_uuid_and_by_name_is_used_and_left_in_place(dlab):
    v4a, _ = cidr_block()
    v4b, _ = cidr_block()
    # By uuid: a network that has a subnet with the CIDR; that subnet is used.
    net_a = dlab.create("networks", {"name": unique("neta")})
    sub_a = subnet(dlab, net_a, f"{v4a}.0/24", 4)
    da, dida = dlab.kuryr_network("h1", "--subnet", f"{v4a}.0/24", "--gateway", f"{v4a}.1",
                                  "-o", f"neutron.net.uuid={net_a['id']}")
    # By name: a network without subnets; kuryr adds one.
    net_b = dlab.create("networks", {"name": unique("netb")})
    db, didb = dlab.kuryr_network("h1", "--subnet", f"{v4b}.0/24", "--gateway", f"{v4b}.1",
                                  "-o", f"neutron.net.name={net_b['name']}")

    for net, did in ((net_a, dida), (net_b, didb)):
        shown = dlab.get(f"/networks/{net['id']}")["network"]
        assert f"kuryr.net.existing:{did[:12]}" in shown["tags"], shown
        assert f"kuryr.net.uuid.lh:{did[:32]}" in shown["tags"]
        assert [n["id"] for n in dlab.neutron_networks_of(did)] == [net["id"]]
    assert [s["id"] for s in dlab.subnets_of(net_a["id"])] == [sub_a["id"]]
    [sub_b] = dlab.subnets_of(net_b["id"])
    assert sub_b["cidr"] == f"{v4b}.0/24" and sub_b["name"] == f"kuryr-subnet-{v4b}.0/24"

    ca = dlab.run("h1", da)
    cb = dlab.run("h1", db)
    [pa] = dlab.ports_of_endpoint(dlab.endpoint("h1", ca, da)["EndpointID"])
    [pb] = dlab.ports_of_endpoint(dlab.endpoint("h1", cb, db)["EndpointID"])
    assert pa["network_id"] == net_a["id"] and pa["fixed_ips"][0]["subnet_id"] == sub_a["id"]
    assert pb["network_id"] == net_b["id"] and pb["fixed_ips"][0]["subnet_id"] == sub_b["id"]

    dlab.docker("h1", "rm", "-f", ca, cb)
    dlab.docker("h1", "network", "rm", da, db)
    # The networks stay, without kuryr's tags; the user's subnet stays, kuryr's goes.
    for net, did in ((net_a, dida), (net_b, didb)):
        shown = dlab.get(f"/networks/{net['id']}")["network"]
        assert not [t for t in shown["tags"] if t.startswith("kuryr.")], shown
    assert [s["id"] for s in dlab.subnets_of(net_a["id"])] == [sub_a["id"]]
    assert dlab.subnets_of(net_b["id"]) == []
    assert dlab.pools_named(f"kuryrPool-{v4a}.0/24") == []
    assert dlab.pools_named(f"kuryrPool-{v4b}.0/24") == []


def test_existing_subnet_pools_by_uuid_and_name_v4_and_v6(dlab):
    v4a, v6a = cidr_block()
    v4b, v6b = cidr_block()
    pools = {
        "a4": subnetpool(dlab, unique("pa4"), f"{v4a}.0/24", 4),
        "a6": subnetpool(dlab, unique("pa6"), f"{v6a}::/64", 6),
        "b4": subnetpool(dlab, unique("pb4"), f"{v4b}.0/24", 4),
        "b6": subnetpool(dlab, unique("pb6"), f"{v6b}::/64", 6),
    }
    # Network a: v4 pool by uuid, v6 pool by name; network b the other way round. The
    # options go to both drivers, as kuryr-libnetwork documents (-o and --ipam-opt).
    def opts(**kv):
        out = []
        for k, v in kv.items():
            key = "neutron." + k.replace("_", ".")
            out += ["-o", f"{key}={v}", "--ipam-opt", f"{key}={v}"]
        return out
    na, dida = dlab.kuryr_network(
        "h1", "--ipv6", "--subnet", f"{v4a}.0/24", "--subnet", f"{v6a}::/64",
        *opts(pool_uuid=pools["a4"]["id"], pool_v6_name=pools["a6"]["name"]))
    nb, didb = dlab.kuryr_network(
        "h1", "--ipv6", "--subnet", f"{v4b}.0/24", "--subnet", f"{v6b}::/64",
        *opts(pool_name=pools["b4"]["name"], pool_v6_uuid=pools["b6"]["id"]))

    for did, p4, p6 in ((dida, pools["a4"], pools["a6"]), (didb, pools["b4"], pools["b6"])):
        [net] = dlab.neutron_networks_of(did)
        subs = {s["ip_version"]: s for s in dlab.subnets_of(net["id"])}
        assert subs[4]["subnetpool_id"] == p4["id"] and subs[4]["cidr"] == p4["prefixes"][0]
        assert subs[6]["subnetpool_id"] == p6["id"] and subs[6]["cidr"] == p6["prefixes"][0]
    c = dlab.run("h1", na)
    ep = dlab.endpoint("h1", c, na)
    assert ep["IPAddress"].startswith(f"{v4a}.") and ep["GlobalIPv6Address"].startswith(v6a)
    [port] = dlab.ports_of_endpoint(ep["EndpointID"])
    assert len(port["fixed_ips"]) == 2

    dlab.docker("h1", "rm", "-f", c)
    dlab.docker("h1", "network", "rm", na, nb)
    # The pools are the user's: they stay, now without subnets.
    for p in pools.values():
        assert dlab.get(f"/subnetpools/{p['id']}")["subnetpool"]["id"] == p["id"]
        assert dlab.get("/subnets", subnetpool_id=p["id"])["subnets"] == []
    assert dlab.neutron_networks_of(dida) == [] and dlab.neutron_networks_of(didb) == []


def test_existing_subnets_by_uuid_and_name_let_docker_networks_overlap(dlab):
    v4, v6 = cidr_block()
    cidr4, cidr6 = f"{v4}.0/24", f"{v6}::/64"
    # Two Neutron networks with the same CIDRs (v4 and v6).
    nets, subs = {}, {}
    for k in ("x", "y"):
        nets[k] = dlab.create("networks", {"name": unique(f"net{k}")})
        subs[k, 4] = subnet(dlab, nets[k], cidr4, 4)
        subs[k, 6] = subnet(dlab, nets[k], cidr6, 6)
    # x by uuids, y by names.
    dx, didx = dlab.kuryr_network(
        "h1", "--ipv6", "--subnet", cidr4, "--subnet", cidr6,
        "-o", f"neutron.net.uuid={nets['x']['id']}",
        "-o", f"neutron.subnet.uuid={subs['x', 4]['id']}",
        "--ipam-opt", f"neutron.subnet.uuid={subs['x', 4]['id']}",
        "-o", f"neutron.subnet.v6.uuid={subs['x', 6]['id']}",
        "--ipam-opt", f"neutron.subnet.v6.uuid={subs['x', 6]['id']}")
    dy, didy = dlab.kuryr_network(
        "h1", "--ipv6", "--subnet", cidr4, "--subnet", cidr6,
        "-o", f"neutron.net.name={nets['y']['name']}",
        "-o", f"neutron.subnet.name={subs['y', 4]['name']}",
        "--ipam-opt", f"neutron.subnet.name={subs['y', 4]['name']}",
        "-o", f"neutron.subnet.v6.name={subs['y', 6]['name']}",
        "--ipam-opt", f"neutron.subnet.v6.name={subs['y', 6]['name']}")
    assert [n["id"] for n in dlab.neutron_networks_of(didx)] == [nets["x"]["id"]]
    assert [n["id"] for n in dlab.neutron_networks_of(didy)] == [nets["y"]["id"]]

    # The same address in both Docker networks, each on its own Neutron subnets.
    cx = dlab.run("h1", dx, "--ip", f"{v4}.10")
    cy = dlab.run("h1", dy, "--ip", f"{v4}.10")
    cx2 = dlab.run("h1", dx, "--ip", f"{v4}.11")
    for c, dn, k in ((cx, dx, "x"), (cy, dy, "y")):
        ep = dlab.endpoint("h1", c, dn)
        assert ep["IPAddress"] == f"{v4}.10"
        [port] = dlab.ports_of_endpoint(ep["EndpointID"])
        assert port["network_id"] == nets[k]["id"]
        assert {f["subnet_id"] for f in port["fixed_ips"]} == {subs[k, 4]["id"], subs[k, 6]["id"]}
    # Same network reaches, the other (overlapping) one does not.
    assert dlab.cping_eventually("h1", cx, f"{v4}.11")
    assert dlab.cnever_pings("h1", cy, f"{v4}.11")

    dlab.docker("h1", "rm", "-f", cx, cy, cx2)
    dlab.docker("h1", "network", "rm", dx, dy)
    for k in ("x", "y"):
        assert {s["id"] for s in dlab.subnets_of(nets[k]["id"])} == {subs[k, 4]["id"],
                                                                     subs[k, 6]["id"]}
    assert dlab.get("/ports", device_owner="kuryr:container")["ports"] == []
    assert dlab.pools_named(f"kuryrPool-{cidr4}") == []
    assert dlab.pools_named(f"kuryrPool-{cidr6}") == []


def test_run_with_ip_reuses_an_unbound_port(dlab):
    v4, _ = cidr_block()
    net = dlab.create("networks", {"name": unique("net")})
    sub = subnet(dlab, net, f"{v4}.0/24", 4)
    existing = dlab.port(net, name=unique("p"),
                         fixed_ips=[{"subnet_id": sub["id"], "ip_address": f"{v4}.50"}])
    dn, _ = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1",
                               "-o", f"neutron.net.uuid={net['id']}")
    c = dlab.run("h1", dn, "--ip", f"{v4}.50")
    ep = dlab.endpoint("h1", c, dn)
    # The container has the existing port (no second one): bound here, ACTIVE, tagged,
    # with the container's MAC (kuryr-libnetwork sets Docker's MAC on a reused port).
    assert [p["id"] for p in dlab.get("/ports", network_id=net["id"])["ports"]] == [
        existing["id"]]
    dlab.wait_for(lambda: dlab.get(f"/ports/{existing['id']}")["port"]["status"] == "ACTIVE",
                  10, "the adopted port to be ACTIVE")
    port = dlab.get(f"/ports/{existing['id']}")["port"]
    assert port["binding:host_id"] == "h1"
    assert port["device_id"] == ep["EndpointID"]
    assert "kuryr.port.existing" in port["tags"]
    assert port["fixed_ips"] == existing["fixed_ips"]
    assert dlab.iface("h1", c)["mac"] == port["mac_address"] == ep["MacAddress"]
    other = dlab.run("h1", dn)
    assert dlab.cping_eventually("h1", other, f"{v4}.50")

    # Removing the container leaves the port, unbound, with its address.
    dlab.docker("h1", "rm", "-f", c)
    port = dlab.get(f"/ports/{existing['id']}")["port"]
    assert port["binding:host_id"] == ""
    assert port["fixed_ips"] == existing["fixed_ips"]
    # ... and it can be used again.
    c2 = dlab.run("h1", dn, "--ip", f"{v4}.50")
    assert dlab.get(f"/ports/{existing['id']}")["port"]["device_id"] == dlab.endpoint(
        "h1", c2, dn)["EndpointID"]


def test_an_existing_subnet_selected_without_subnet_flag(dlab):
    # kuryr's IPAM takes the CIDR from the selected subnet when --subnet is not given.
    v4, _ = cidr_block()
    net = dlab.create("networks", {"name": unique("net")})
    sub = subnet(dlab, net, f"{v4}.0/24", 4, gateway_ip=f"{v4}.254")
    dn, _ = dlab.kuryr_network("h1", "-o", f"neutron.net.uuid={net['id']}",
                               "-o", f"neutron.subnet.uuid={sub['id']}",
                               "--ipam-opt", f"neutron.subnet.uuid={sub['id']}")
    config = dlab.inspect("h1", dn)["IPAM"]["Config"]
    assert config[0]["Subnet"] == f"{v4}.0/24", config
    c = dlab.run("h1", dn)
    ep = dlab.endpoint("h1", c, dn)
    assert ep["IPAddress"].startswith(f"{v4}.") and ep["Gateway"] == f"{v4}.254"
    [port] = dlab.ports_of_endpoint(ep["EndpointID"])
    assert port["fixed_ips"][0]["subnet_id"] == sub["id"]
