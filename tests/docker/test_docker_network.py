"""`docker network create/rm -d kuryr`: the Neutron objects behind a Docker network
(SCENARIOS.md B1, B2)."""

import json

from dockerlab import cidr_block, unique


def test_network_create_and_rm_map_to_neutron_network_pool_and_subnet(dlab):
    v4, _ = cidr_block()
    cidr = f"{v4}.0/24"
    name, did = dlab.kuryr_network("h1", "--subnet", cidr, "--gateway", f"{v4}.1")
    assert len(did) == 64

    # What Docker shows: the kuryr drivers and the requested subnet.
    shown = json.loads(dlab.docker("h1", "network", "inspect", name))[0]
    assert shown["Driver"] == "kuryr" and shown["IPAM"]["Driver"] == "kuryr"
    assert shown["IPAM"]["Config"] == [{"Subnet": cidr, "Gateway": f"{v4}.1"}]
    assert shown["Scope"] == "local"

    # Neutron: one network tagged with both halves of the Docker id.
    nets = dlab.neutron_networks_of(did)
    assert len(nets) == 1, nets
    net = nets[0]
    assert net["name"] == f"kuryr-net-{did[:8]}"
    assert f"kuryr.net.uuid.lh:{did[:32]}" in net["tags"]
    assert f"kuryr.net.uuid.uh:{did[32:]}" in net["tags"]
    assert net["mtu"] == 1450 and net["shared"] is False
    # ... a subnet pool for the CIDR and a subnet carved from it, with the gateway.
    pools = dlab.pools_named(f"kuryrPool-{cidr}")
    assert len(pools) == 1 and pools[0]["prefixes"] == [cidr], pools
    subnets = dlab.subnets_of(net["id"])
    assert len(subnets) == 1, subnets
    sub = subnets[0]
    assert sub["name"] == f"kuryr-subnet-{cidr}"
    assert sub["cidr"] == cidr and sub["gateway_ip"] == f"{v4}.1" and sub["ip_version"] == 4
    assert sub["subnetpool_id"] == pools[0]["id"]

    # The same name twice is two Docker networks, two Neutron networks.
    v4b, _ = cidr_block()
    _, did2 = dlab.kuryr_network("h1", "--subnet", f"{v4b}.0/24", "--gateway", f"{v4b}.1",
                        name=name + "-2")
    assert len(dlab.neutron_networks_of(did2)) == 1

    # rm removes all three.
    dlab.docker("h1", "network", "rm", name)
    assert dlab.neutron_networks_of(did) == []
    assert dlab.api("GET", f"/networks/{net['id']}")[0] == 404
    assert dlab.api("GET", f"/subnets/{sub['id']}")[0] == 404
    assert dlab.pools_named(f"kuryrPool-{cidr}") == []
    assert len(dlab.neutron_networks_of(did2)) == 1
    dlab.docker("h1", "network", "rm", name + "-2")
    assert dlab.neutron_networks_of(did2) == []
    assert dlab.pools_named(f"kuryrPool-{v4b}.0/24") == []


def test_shared_option_makes_a_shared_network(dlab):
    v4, _ = cidr_block()
    # Sharing a network is an admin's act in Neutron: the plugin's member credential is
    # refused, with Neutron's reason in Docker's error.
    p = dlab.docker_proc("h1", "network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                         "--subnet", f"{v4}.0/24", "-o", "neutron.net.shared=true", unique("n"))
    assert p.returncode != 0 and "shared" in p.stderr.lower(), p.stderr + p.stdout
    # Given an admin credential, the plugin makes it.
    dlab.agents["h1"].stop(timeout=10)
    dlab.start_agent("h1", plugin_admin=True)
    try:
        dlab.wait_agent_ready("h1")
        _, did = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24",
                                    "-o", "neutron.net.shared=true")
        [net] = dlab.neutron_networks_of(did)
        assert net["shared"] is True
    finally:
        dlab.agents["h1"].stop(timeout=10)
        dlab.start_agent("h1")
        dlab.wait_agent_ready("h1")


def test_dual_stack_network_gives_containers_both_families(dlab):
    v4, v6 = cidr_block()
    cidr4, cidr6 = f"{v4}.0/24", f"{v6}::/64"
    name, did = dlab.kuryr_network("h1", "--ipv6", "--subnet", cidr4, "--gateway", f"{v4}.1",
                          "--subnet", cidr6, "--gateway", f"{v6}::1")
    [net] = dlab.neutron_networks_of(did)
    subnets = {s["ip_version"]: s for s in dlab.subnets_of(net["id"])}
    assert set(subnets) == {4, 6}
    assert subnets[6]["cidr"] == cidr6 and subnets[6]["gateway_ip"] == f"{v6}::1"
    assert subnets[6]["name"] == f"kuryr-subnet-{cidr6}"
    [pool6] = dlab.pools_named(f"kuryrPool-{cidr6}")
    assert subnets[6]["subnetpool_id"] == pool6["id"] and pool6["ip_version"] == 6

    c1 = dlab.run("h1", name)
    c2 = dlab.run("h1", name)
    ep1, ep2 = dlab.endpoint("h1", c1, name), dlab.endpoint("h1", c2, name)
    assert ep1["GlobalIPv6Address"].startswith(f"{v6}:") and ep1["GlobalIPv6PrefixLen"] == 64
    [port] = dlab.ports_of_endpoint(ep1["EndpointID"])
    assert {f["ip_address"] for f in port["fixed_ips"]} == {ep1["IPAddress"],
                                                             ep1["GlobalIPv6Address"]}
    seen = dlab.iface("h1", c1)
    assert f"{ep1['IPAddress']}/24" in seen["addresses"]
    assert f"{ep1['GlobalIPv6Address']}/64" in seen["addresses"]
    assert any(r.startswith(f"default via {v6}::1 ") for r in seen["routes6"]), seen
    assert dlab.cping_eventually("h1", c1, ep2["GlobalIPv6Address"])
    assert dlab.cping_eventually("h1", c1, ep2["IPAddress"])

    dlab.docker("h1", "rm", "-f", c1, c2)
    dlab.docker("h1", "network", "rm", name)
    assert dlab.neutron_networks_of(did) == []
    assert dlab.pools_named(f"kuryrPool-{cidr6}") == []
    assert dlab.pools_named(f"kuryrPool-{cidr4}") == []


def test_a_failed_create_leaves_nothing_behind(dlab):
    v4, _ = cidr_block()
    networks = len(dlab.get("/networks")["networks"])
    # An adopted network that does not exist.
    p = dlab.docker_proc("h1", "network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                         "--subnet", f"{v4}.0/24", "-o",
                         "neutron.net.uuid=6f1b1f5e-0000-4000-8000-000000000000", "bad1")
    assert p.returncode != 0 and "6f1b1f5e-0000-4000-8000-000000000000" in p.stderr, p.stderr
    # A subnet pool that does not exist.
    p = dlab.docker_proc("h1", "network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                         "--subnet", f"{v4}.0/24", "-o", "neutron.pool.name=no-such-pool",
                         "--ipam-opt", "neutron.pool.name=no-such-pool", "bad2")
    assert p.returncode != 0 and "no-such-pool" in p.stderr, p.stderr
    # No subnet at all: kuryr's IPAM says what it needs.
    p = dlab.docker_proc("h1", "network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                         "bad3")
    assert p.returncode != 0 and "--subnet" in p.stderr, p.stderr
    assert dlab.docker("h1", "network", "ls", "-q", "--filter", "driver=kuryr") == ""
    assert len(dlab.get("/networks")["networks"]) == networks
    assert dlab.pools_named(f"kuryrPool-{v4}.0/24") == []
    assert dlab.get("/subnets", cidr=f"{v4}.0/24")["subnets"] == []
