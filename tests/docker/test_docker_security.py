"""Security groups on Docker containers, `--expose` and `-p` (SCENARIOS.md B7)."""

import subprocess
import time

from dockerlab import cidr_block, unique


def group(lab, name, ingress=()):
    """A security group with egress open (as Neutron makes it) and the given ingress rules."""
    sg = lab.create("security-groups", {"name": name})
    rules = lab.get("/security-group-rules", security_group_id=sg["id"])["security_group_rules"]
    for eth in ("IPv4", "IPv6"):
        if not any(r["direction"] == "egress" and r["ethertype"] == eth for r in rules):
            lab.create("security-group-rules", {"security_group_id": sg["id"],
                                                "direction": "egress", "ethertype": eth})
    for rule in ingress:
        lab.create("security-group-rules", {"security_group_id": sg["id"],
                                            "direction": "ingress", "ethertype": "IPv4", **rule})
    return sg


def port_of(lab, host, container, net):
    [port] = lab.ports_of_endpoint(lab.endpoint(host, container, net)["EndpointID"])
    return port


def set_groups(lab, port, groups):
    lab.api("PUT", f"/ports/{port['id']}", {"port": {"security_groups": [g["id"] for g in groups]}},
            expect=200)


def fetch(lab, host, container, ip, port, timeout=3):
    """The body of http://ip:port/ fetched from inside a container ('' if it fails)."""
    p = lab.cexec(host, container, "timeout", timeout, "wget", "-q", "-O", "-",
                  f"http://{ip}:{port}/", check=False, timeout=timeout + 30)
    return p.stdout if p.returncode == 0 else ""


def fetch_eventually(lab, host, container, ip, port, timeout=8):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = fetch(lab, host, container, ip, port, timeout=2)
        if body:
            return body
    return ""


def test_a_container_in_another_security_group_cannot_be_reached(dlab):
    v4, _ = cidr_block()
    name, _ = dlab.shared_network(v4)
    c1 = dlab.run("h1", name)
    c2 = dlab.run("h2", name)
    c3 = dlab.run("h2", name)
    ip2 = dlab.endpoint("h2", c2, name)["IPAddress"]
    ip3 = dlab.endpoint("h2", c3, name)["IPAddress"]
    # Docker's containers are in the project's default group: they reach each other.
    p2 = port_of(dlab, "h2", c2, name)
    [default] = dlab.get("/security-groups", name="default",
                         project_id=p2["project_id"])["security_groups"]
    assert p2["security_groups"] == [default["id"]]
    assert dlab.cping_eventually("h1", c1, ip2)

    closed = group(dlab, unique("closed"))
    set_groups(dlab, p2, [closed])
    dlab.wait_for(lambda: not dlab.cping("h1", c1, ip2), 10, "c2 to be cut off")
    assert dlab.cnever_pings("h1", c1, ip2)
    assert dlab.cping("h1", c1, ip3)  # its neighbour in the default group is not
    # A rule in its group opens it again.
    dlab.create("security-group-rules", {"security_group_id": closed["id"],
                                         "direction": "ingress", "ethertype": "IPv4",
                                         "protocol": "icmp"})
    assert dlab.cping_eventually("h1", c1, ip2)


def test_expose_adds_an_ingress_rule_for_the_exposed_ports_only(dlab):
    v4, _ = cidr_block()
    name, _ = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1")
    srv = dlab.run("h1", name, "--expose", "1234/tcp",
                   cmd=("sh", "-c", "httpd -p 1234 -h /www; exec httpd -f -p 1235 -h /www"))
    client = dlab.run("h1", name)
    srv_ip = dlab.endpoint("h1", srv, name)["IPAddress"]
    srv_port = port_of(dlab, "h1", srv, name)

    [sg] = dlab.get("/security-groups", name=f"{srv_port['id']}-exposed_ports")["security_groups"]
    assert sg["id"] in srv_port["security_groups"] and len(srv_port["security_groups"]) == 2
    ingress = [r for r in sg["security_group_rules"] if r["direction"] == "ingress"]
    assert [(r["protocol"], r["port_range_min"], r["port_range_max"]) for r in ingress] == [
        ("tcp", 1234, 1234)]

    # The client leaves the default group: only the exposed port is open to it.
    set_groups(dlab, port_of(dlab, "h1", client, name), [group(dlab, unique("client"))])
    dlab.wait_for(lambda: not dlab.cping("h1", client, srv_ip), 10, "the client to be cut off")
    assert "hello from kuryr" in fetch_eventually(dlab, "h1", client, srv_ip, 1234)
    assert fetch(dlab, "h1", client, srv_ip, 1235) == ""
    assert dlab.cnever_pings("h1", client, srv_ip)

    # rm removes the group with the port.
    dlab.docker("h1", "rm", "-f", srv)
    assert dlab.get("/security-groups", name=f"{srv_port['id']}-exposed_ports")[
        "security_groups"] == []


def host_fetch(lab, host, ip, port):
    """curl from a lab namespace (a host's own, not a container's)."""
    p = subprocess.run(["ip", "netns", "exec", lab.ns(host), "curl", "-s", "-m", "3",
                        f"http://{ip}:{port}/"], capture_output=True, text=True, timeout=30)
    return p.stdout if p.returncode == 0 else ""


def test_publish_maps_a_host_port_to_the_container(dlab):
    v4, _ = cidr_block()
    name, _ = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1")
    srv = dlab.run("h1", name, "-p", "18080:80", cmd=("httpd", "-f", "-p", "80", "-h", "/www"))
    # (docker inspect/port show no mappings for remote drivers: dockerd only reads them
    # from its own drivers' typed endpoint info.)
    assert dlab.inspect("h1", srv)["HostConfig"]["PortBindings"]["80/tcp"] == [
        {"HostIp": "", "HostPort": "18080"}]
    # From another host, to this host's own (underlay) address.
    deadline = time.time() + 10
    body = ""
    while not body and time.time() < deadline:
        body = host_fetch(dlab, "h2", "10.99.0.11", 18080)
    assert "hello from kuryr" in body
    # From outside the hosts (the lab namespace) and from the host itself, too.
    assert "hello from kuryr" in host_fetch(dlab, "lab", "10.99.0.11", 18080)
    assert "hello from kuryr" in host_fetch(dlab, "h1", "10.99.0.11", 18080)
    # -p exposes the container port too.
    srv_port = port_of(dlab, "h1", srv, name)
    [sg] = dlab.get("/security-groups", name=f"{srv_port['id']}-exposed_ports")["security_groups"]
    assert [(r["protocol"], r["port_range_min"]) for r in sg["security_group_rules"]
            if r["direction"] == "ingress"] == [("tcp", 80)]
    # Nothing answers on a port that is not published.
    assert host_fetch(dlab, "h2", "10.99.0.11", 18081) == ""

    dlab.docker("h1", "rm", "-f", srv)
    assert host_fetch(dlab, "h2", "10.99.0.11", 18080) == ""
    assert "18080" not in dlab.exec("h1", "nft", "list", "ruleset")
