"""The same core flow through openstacksdk, as programs (kuryr-kubernetes,
Magnum) use it: password login, CRUD, tags, filters, pagination, isolation."""

import openstack
import pytest

from cloud import unique


def connect(creds):
    return openstack.connect(
        auth_url=creds.server.auth_url, username=creds.username, password=creds.password,
        project_name=creds.project, user_domain_name="Default", project_domain_name="Default",
        region_name="RegionOne", identity_api_version="3")


def test_sdk_core_flow(admin, tenants):
    alice, bob, _ = tenants
    conn = connect(alice)
    net = conn.network.create_network(name=unique("sdk"), description="via sdk")
    assert net.status == "ACTIVE" and net.mtu == 1450
    conn.network.set_tags(net, ["k8s", "ns-default"])
    assert sorted(conn.network.get_network(net.id).tags) == ["k8s", "ns-default"]
    assert [n.id for n in conn.network.networks(tags="k8s")] == [net.id]
    assert net.id not in [n.id for n in conn.network.networks(not_tags="k8s")]

    v4 = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.60.0.0/24", name="v4")
    v6 = conn.network.create_subnet(network_id=net.id, ip_version=6, cidr="fd00:60::/64", name="v6")
    assert v4.gateway_ip == "10.60.0.1" and v6.gateway_ip == "fd00:60::1"

    sg = conn.network.create_security_group(name=unique("sg"))
    rule = conn.network.create_security_group_rule(
        security_group_id=sg.id, direction="ingress", protocol="tcp", port_range_min=8080,
        port_range_max=8080, ethertype="IPv4")
    assert rule.port_range_min == 8080

    ports = [conn.network.create_port(network_id=net.id, name=f"p{i}", security_group_ids=[sg.id],
                                      device_owner="kuryr:container") for i in range(5)]
    assert all(len(p.fixed_ips) == 2 for p in ports), "dual stack"
    addresses = {f["ip_address"] for p in ports for f in p.fixed_ips}
    assert len(addresses) == 10
    # Pagination: the SDK follows ports_links page by page.
    paged = list(conn.network.ports(network_id=net.id, limit=2))
    assert sorted(p.id for p in paged) == sorted(p.id for p in ports)
    found = list(conn.network.ports(fixed_ips=[f"ip_address={ports[0].fixed_ips[0]['ip_address']}"]))
    assert [p.id for p in found] == [ports[0].id]

    rev = ports[0].revision_number
    updated = conn.network.update_port(ports[0].id, name="renamed", if_revision=rev)
    assert updated.name == "renamed" and updated.revision_number == rev + 1
    with pytest.raises(openstack.exceptions.PreconditionFailedException):
        conn.network.update_port(ports[0].id, name="stale", if_revision=rev)
    assert conn.network.get_port(ports[0].id).name == "renamed"

    # Another project sees none of it.
    other = connect(bob)
    assert other.network.find_network(net.id) is None
    assert net.id not in [n.id for n in other.network.networks()]
    with pytest.raises(openstack.exceptions.ResourceNotFound):
        other.network.get_port(ports[1].id)

    with pytest.raises(openstack.exceptions.ConflictException):
        conn.network.delete_network(net.id, ignore_missing=False)
    for p in ports:
        conn.network.delete_port(p, ignore_missing=False)
    conn.network.delete_network(net.id, ignore_missing=False)
    assert conn.network.find_network(net.id) is None
    assert conn.network.find_subnet(v4.id) is None, "a network's subnets go with it"
