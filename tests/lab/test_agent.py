"""The agent in the lab: binding, the VXLAN overlay, agents API, restarts."""

import json
import re
import socket
import subprocess
import threading
import time
import uuid

from prometheus_client.parser import text_string_to_metric_families


def name(kind):
    return f"t-{kind}-{uuid.uuid4().hex[:6]}"


def cidr_block():
    """A /24 of 10.0.0.0/8 that this test alone uses (labs of parallel workers are
    separate, but tests within one lab share it)."""
    n = uuid.uuid4().int
    return f"10.{100 + n % 100}.{(n >> 8) % 250}", f"fd{(n >> 16) % 256:02x}:{(n >> 24) % 65536:x}"


def show_port(lab, port_id):
    return lab.openstack("port", "show", port_id)


def link_info(lab, ns, ifname):
    data = json.loads(lab.exec(ns, "ip", "-j", "-d", "link", "show", "dev", ifname))
    return data[0]


def routes(lab, ns, family="-4"):
    return json.loads(lab.exec(ns, "ip", "-j", family, "route", "show"))


def test_bind_realizes_ports_with_addresses_routes_mtu_and_overlay(lab):
    v4, v6 = cidr_block()
    net, subnets = lab.network(name("net"), f"{v4}.0/24", f"{v6}::/64")
    assert net["mtu"] == 1450
    p1 = lab.port(net, name="p1")
    p2 = lab.port(net, name="p2")
    p3 = lab.port(net, name="p3")
    c1, c2, c3 = name("c1"), name("c2"), name("c3")
    for c in (c1, c2, c3):
        lab.add_container(c)

    r1 = lab.bind("h1", p1, c1)
    lab.bind("h1", p2, c2)
    lab.bind("h2", p3, c3)

    # What the container sees: the port's MAC, addresses with the subnet prefix,
    # MTU of the network, default routes via both gateways.
    eth0 = link_info(lab, c1, "eth0")
    assert eth0["address"] == p1["mac_address"]
    assert eth0["mtu"] == 1450
    assert "UP" in eth0["flags"]
    ips = {f["ip_address"] for f in p1["fixed_ips"]}
    have = set(lab.addresses(c1))
    for ip in ips:
        prefix = 24 if "." in ip else 64
        assert f"{ip}/{prefix}" in have, (ip, have)
    assert sorted(r1["addresses"]) == sorted(f"{ip}/{24 if '.' in ip else 64}" for ip in ips)
    default4 = [r for r in routes(lab, c1, "-4") if r["dst"] == "default"]
    assert default4 and default4[0]["gateway"] == subnets[0]["gateway_ip"]
    default6 = [r for r in routes(lab, c1, "-6") if r["dst"] == "default"]
    assert default6 and default6[0]["gateway"] == subnets[1]["gateway_ip"]

    # The host side: tap<port[:11]> on brq<net[:11]>, vxlan-<vni> with learning off.
    tap = f"tap{p1['id'][:11]}"
    bridge = f"brq{net['id'][:11]}"
    host_links = {l["ifname"]: l for l in lab.links("h1")}
    assert host_links[tap]["master"] == bridge
    vx = link_info(lab, "h1", f"vxlan-{net['provider:segmentation_id']}")
    assert vx["master"] == bridge
    data = vx["linkinfo"]["info_data"]
    assert data["id"] == net["provider:segmentation_id"]
    assert data["local"] == "10.99.0.11"
    assert data.get("learning") is False
    assert data.get("proxy") is True

    # The server: ACTIVE, bound here, vif_type bridge (through the real CLI).
    shown = show_port(lab, p1["id"])
    assert shown["status"] == "ACTIVE"
    assert shown["binding_host_id"] == "h1"
    assert shown["binding_vif_type"] == "bridge"
    assert shown["binding_vif_details"]["bridge_name"] == bridge

    # Same host and across hosts, IPv4 and IPv6.
    ip = {p["name"]: {"4": next(f["ip_address"] for f in p["fixed_ips"] if "." in f["ip_address"]),
                      "6": next(f["ip_address"] for f in p["fixed_ips"] if ":" in f["ip_address"])}
          for p in (p1, p2, p3)}
    assert lab.ping_eventually(c1, ip["p2"]["4"]), lab.logs()
    assert lab.ping_eventually(c1, ip["p3"]["4"]), lab.logs()
    assert lab.ping_eventually(c3, ip["p2"]["6"]), lab.logs()
    listener = lab.tcp_listen(c3, 8080)
    try:
        assert lab.tcp_connects(c1, ip["p3"]["4"], 8080)
    finally:
        listener.kill()

    # Static l2 population on h1 for p3 (on h2): FDB toward h2, a permanent neighbour,
    # and a flood entry only toward h2 (h3 has no port on this network).
    vxname = f"vxlan-{net['provider:segmentation_id']}"
    fdb = json.loads(lab.exec("h1", "bridge", "-j", "fdb", "show", "dev", vxname))
    dsts = {(e["mac"], e.get("dst")) for e in fdb if e.get("dst")}
    assert (p3["mac_address"], "10.99.0.12") in dsts
    assert ("00:00:00:00:00:00", "10.99.0.12") in dsts
    assert not any(d == "10.99.0.13" for _, d in dsts)
    neigh = json.loads(lab.exec("h1", "ip", "-j", "neigh", "show", "dev", vxname))
    assert any(n["dst"] == ip["p3"]["4"] and n["lladdr"] == p3["mac_address"]
               and "PERMANENT" in n["state"] for n in neigh), neigh

    # Binding again to the same place is a no-op; elsewhere is a conflict.
    again = lab.bind("h1", p1, c1)
    assert again["addresses"] == r1["addresses"]
    other = lab.bind("h1", p1, c2, ifname="eth1", check=False)
    assert other.returncode != 0 and "already bound" in other.stderr
    lab.add_container(name("c4"))
    elsewhere = lab.bind("h2", p1, c2, ifname="eth1", check=False)
    # h2's agent may not even read a port bound to h1 (its credential is h2's only).
    assert elsewhere.returncode != 0 and "could not be found" in elsewhere.stderr
    assert lab.api("GET", f"/ports/{p1['id']}", expect=200)[1]["port"]["binding:host_id"] == "h1"

    # Unbind releases the port at once, and the interface goes in the next pass.
    assert f"tap{p2['id'][:11]}" in {l["ifname"] for l in lab.links("h1")}
    lab.unbind("h1", p2)
    lab.wait_for(lambda: f"tap{p2['id'][:11]}" not in {l["ifname"] for l in lab.links("h1")},
                 10, "the unbound port's tap to go")
    assert "eth0" not in {l["ifname"] for l in lab.links(c2)}
    released = show_port(lab, p2["id"])
    assert released["binding_host_id"] in ("", None)
    assert released["status"] == "DOWN"

    # Deleting a bound port removes its interface on its host.
    lab.api("DELETE", f"/ports/{p3['id']}", expect=204)
    lab.wait_for(lambda: f"tap{p3['id'][:11]}" not in {l["ifname"] for l in lab.links("h2")},
                 10, "the deleted port's tap to go")
    assert p3["id"] not in [b["port_id"] for b in lab.agent_call("h2", "GET", "/v1/ports")["bindings"]]
    # ... and h1 forgets h2 for this network (no port there any more).
    lab.wait_for(lambda: not any(
        e.get("dst") == "10.99.0.12"
        for e in json.loads(lab.exec("h1", "bridge", "-j", "fdb", "show", "dev", vxname))),
        10, "h1's FDB entries toward h2 to go")


def test_host_routes_and_ipv6_only_port(lab):
    v4, v6 = cidr_block()
    net = lab.create("networks", {"name": name("net")})
    sub4 = lab.create("subnets", {"network_id": net["id"], "cidr": f"{v4}.0/24", "ip_version": 4,
                                  "host_routes": [{"destination": "192.168.77.0/24",
                                                   "nexthop": f"{v4}.254"}]})
    sub6 = lab.create("subnets", {"network_id": net["id"], "cidr": f"{v6}::/64", "ip_version": 6})
    p = lab.port(net, fixed_ips=[{"subnet_id": sub4["id"]}])
    p6 = lab.port(net, fixed_ips=[{"subnet_id": sub6["id"]}])
    c, c6 = name("c"), name("c6")
    lab.add_container(c)
    lab.add_container(c6)
    lab.bind("h3", p, c)
    lab.bind("h2", p6, c6)
    r = routes(lab, c, "-4")
    assert any(x["dst"] == "192.168.77.0/24" and x["gateway"] == f"{v4}.254" for x in r), r
    assert any(x["dst"] == "default" and x["gateway"] == sub4["gateway_ip"] for x in r), r
    assert [a for a in lab.addresses(c6) if not a.startswith("fe80")] == \
        [f"{p6['fixed_ips'][0]['ip_address']}/64"]
    assert not [x for x in routes(lab, c6, "-4")]


def test_overlapping_cidrs_of_two_projects_stay_apart(lab):
    v4, _ = cidr_block()
    project_a, project_b = uuid.uuid4().hex, uuid.uuid4().hex
    nets = {}
    for proj in (project_a, project_b):
        net = lab.create("networks", {"name": name("net"), "project_id": proj})
        lab.create("subnets", {"network_id": net["id"], "cidr": f"{v4}.0/24", "ip_version": 4,
                               "project_id": proj})
        nets[proj] = net
    # Same addresses in both networks; B also has .30, which A lacks.
    a1 = lab.port(nets[project_a], project_id=project_a, fixed_ips=[{"ip_address": f"{v4}.10"}])
    a2 = lab.port(nets[project_a], project_id=project_a, fixed_ips=[{"ip_address": f"{v4}.20"}])
    b1 = lab.port(nets[project_b], project_id=project_b, fixed_ips=[{"ip_address": f"{v4}.10"}])
    b2 = lab.port(nets[project_b], project_id=project_b, fixed_ips=[{"ip_address": f"{v4}.20"}])
    b3 = lab.port(nets[project_b], project_id=project_b, fixed_ips=[{"ip_address": f"{v4}.30"}])
    cs = {}
    for key, port, host in (("a1", a1, "h1"), ("a2", a2, "h2"), ("b1", b1, "h1"),
                            ("b2", b2, "h2"), ("b3", b3, "h2")):
        cs[key] = name(key)
        lab.add_container(cs[key])
        lab.bind(host, port, cs[key])
    assert lab.ping_eventually(cs["a1"], f"{v4}.20")
    assert lab.ping_eventually(cs["b1"], f"{v4}.20")
    # The reply must come from the right network: A's .20 has A's MAC.
    neigh = json.loads(lab.exec(cs["a1"], "ip", "-j", "neigh", "show", f"{v4}.20"))
    assert neigh and neigh[0]["lladdr"] == a2["mac_address"]
    neigh = json.loads(lab.exec(cs["b1"], "ip", "-j", "neigh", "show", f"{v4}.20"))
    assert neigh and neigh[0]["lladdr"] == b2["mac_address"]
    assert lab.never_pings(cs["a1"], f"{v4}.30")


def test_bad_binds_get_clear_errors_and_leave_nothing(lab):
    v4, _ = cidr_block()
    net, _ = lab.network(name("net"), f"{v4}.0/24")
    p = lab.port(net)
    c = name("c")
    lab.add_container(c)
    r = lab.bind("h1", str(uuid.uuid4()), c, check=False)
    assert r.returncode != 0 and "could not be found" in r.stderr
    r = lab.bind("h1", "not-a-uuid", c, check=False)
    assert r.returncode != 0 and "not a port id" in r.stderr
    r = subprocess.run([lab_kuryr(), "port", "bind", p["id"], "--netns", "/run/netns/nope-" + c,
                        "--socket", lab.agent_socket("h1")], capture_output=True, text=True)
    assert r.returncode != 0 and "not a network namespace" in r.stderr
    r = lab.bind("h1", p, c, ifname="much-too-long-name", check=False)
    assert r.returncode != 0 and "invalid interface name" in r.stderr
    # The interface name is taken inside the namespace: the bind fails and is undone.
    lab.exec(c, "ip", "link", "add", "eth0", "type", "dummy", check=False)
    if "eth0" in {l["ifname"] for l in lab.links(c)}:
        r = lab.bind("h1", p, c, check=False)
        assert r.returncode != 0 and "already exists" in r.stderr
        assert f"tap{p['id'][:11]}" not in {l["ifname"] for l in lab.links("h1")}
        assert show_port(lab, p["id"])["binding_host_id"] in ("", None)
    # No agent at that socket.
    r = subprocess.run([lab_kuryr(), "port", "unbind", p["id"], "--socket", "/nonexistent.sock"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "is `kuryr agent` running" in r.stderr


def lab_kuryr():
    from lab import KURYR_BIN
    return KURYR_BIN


def test_agent_list_shows_hosts_and_a_stopped_agent_goes_dead(fresh_lab):
    lab = fresh_lab
    agents = lab.openstack("network", "agent", "list")
    by_host = {a["Host"]: a for a in agents}
    assert set(by_host) == {"h1", "h2", "h3"}
    assert all(a["Alive"] is True for a in agents), agents
    assert all(a["Agent Type"] == "Kuryr agent" for a in agents)
    shown = lab.openstack("network", "agent", "show", by_host["h1"]["ID"])
    assert shown["configuration"]["tunneling_ip"] == "10.99.0.11"
    assert lab.agents["h2"].stop(timeout=10), "agent did not stop on SIGTERM"
    lab.wait_for(lambda: {a["Host"]: a["Alive"] for a in
                          lab.openstack("network", "agent", "list")}["h2"] is False,
                 15, "h2 to be shown dead")
    assert {a["Host"]: a["Alive"] for a in lab.openstack("network", "agent", "list")}["h1"] is True


def pinging_across_hosts(lab):
    """A network with a container on h1 and one on h2 that ping each other:
    (network, port 1, port 2, container 1, container 2, container 2's address)."""
    v4, _ = cidr_block()
    net, _ = lab.network(name("net"), f"{v4}.0/24")
    p1, p2 = lab.port(net), lab.port(net)
    c1, c2 = name("c1"), name("c2")
    lab.add_container(c1)
    lab.add_container(c2)
    lab.bind("h1", p1, c1)
    lab.bind("h2", p2, c2)
    dst = p2["fixed_ips"][0]["ip_address"]
    assert lab.ping_eventually(c1, dst)
    return net, p1, p2, c1, c2, dst


def test_kill9_agent_during_pings_then_nothing_left(fresh_lab):
    lab = fresh_lab
    net, p1, p2, c1, c2, dst = pinging_across_hosts(lab)
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.ns(c1), "ping", "-i", "0.05", "-c", "200",
                               "-W", "1", dst], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    lab.agents["h1"].kill9()
    lab.agents["h2"].kill9()
    # While h1's agent is down, things appear that no port owns: the restarted
    # agent removes them (and nothing else).
    lab.exec("h1", "ip", "link", "add", "brqdeadbeef000", "type", "bridge")
    lab.exec("h1", "ip", "link", "add", "tapdeadbeef000", "type", "veth", "peer", "name", "xpeer")
    lab.exec("h1", "nft", "add", "chain", "inet", "kuryr", "in_stray")
    lab.exec("h1", "ip", "link", "add", "keepme0", "type", "bridge")
    time.sleep(1)
    lab.agents["h1"].start()
    lab.agents["h2"].start()
    lab.wait_agent_ready("h1")
    lab.wait_agent_ready("h2")
    out, _ = pinger.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, got = int(m.group(1)), int(m.group(2))
    print(f"\nping across an agent kill -9 + restart: {sent} sent, {got} received, "
          f"{100 * (sent - got) / sent:.1f}% loss")
    assert got >= sent * 0.95, out
    # After the restart the state is the same: still bound, still pinging.
    assert lab.ping(c1, dst)
    lab.wait_for(lambda: not {"brqdeadbeef000", "tapdeadbeef000"} & {
        l["ifname"] for l in lab.links("h1")}, 10, "stray kuryr-named links to be removed")
    assert "in_stray" not in lab.exec("h1", "nft", "list", "table", "inet", "kuryr")
    assert "keepme0" in {l["ifname"] for l in lab.links("h1")}
    # Delete everything: nothing kuryr made is left on either host (while ports
    # exist, the same check does see their objects).
    assert lab.leftovers("h1") and lab.leftovers("h2")
    for p in (p1, p2):
        lab.api("DELETE", f"/ports/{p['id']}", expect=204)
    lab.api("DELETE", f"/networks/{net['id']}", expect=204)
    for h in ("h1", "h2"):
        lab.wait_for(lambda h=h: not lab.leftovers(h), 10, f"{h} to remove every kuryr object")


def test_server_down_keeps_dataplane_and_agents_resume(fresh_lab):
    lab = fresh_lab
    net, p1, p2, c1, c2, dst = pinging_across_hosts(lab)
    # SIGTERM with agents watching: the server ends their streams and exits.
    assert lab.server.stop(timeout=10), "kuryr server did not stop on SIGTERM:\n" + lab.server.log()
    # No server: traffic flows, the agents keep running and retry.
    assert lab.ping(c1, dst, count=10)
    time.sleep(3)
    for h in ("h1", "h2"):
        assert lab.agents[h].proc.poll() is None, lab.agents[h].log()
    lab.server.start()
    lab.wait_for(lambda: lab.curl_status("GET", "/identity/v3") == 200, 30,
                 "the server to come back", lab.server)
    # The agents resume their watch from the revision they had (not from 0) and work.
    lab.wait_for(lambda: re.search(r"watching this host's view since=[1-9]", lab.agents["h2"].log())
                 is not None and lab.agent_call("h2", "GET", "/v1/health")["synced"], 30,
                 "h2 to resume its watch")
    p3 = lab.port(net)
    c3 = name("c3")
    lab.add_container(c3)
    lab.bind("h2", p3, c3)
    assert lab.ping_eventually(c1, p3["fixed_ips"][0]["ip_address"])


def test_flat_network_bridges_the_mapped_host_interface(lab):
    v4, _ = cidr_block()
    net, _ = lab.network(name("flat"), f"{v4}.0/24", **{
        "provider:network_type": "flat", "provider:physical_network": "physnet1"})
    assert net["mtu"] == 1500
    p1, p2 = lab.port(net), lab.port(net)
    c1, c2 = name("c1"), name("c2")
    lab.add_container(c1)
    lab.add_container(c2)
    lab.bind("h1", p1, c1)
    lab.bind("h3", p2, c2)
    bridge = f"brq{net['id'][:11]}"
    assert {l["ifname"]: l for l in lab.links("h1")}["eth1"].get("master") == bridge
    assert not [l for l in lab.links("h1") if l["ifname"].startswith("vxlan-")
                and l.get("master") == bridge]
    assert lab.ping_eventually(c1, p2["fixed_ips"][0]["ip_address"])
    for p in (p1, p2):
        lab.api("DELETE", f"/ports/{p['id']}", expect=204)
    # The bridge goes; the host interface stays, released.
    lab.wait_for(lambda: bridge not in {l["ifname"] for l in lab.links("h1")}, 10,
                 "the flat network's bridge to go")
    assert "master" not in {l["ifname"]: l for l in lab.links("h1")}["eth1"]


def race_binds(lab, host, port_id, containers):
    """Binds one port into each container at the same moment, straight on the agent's
    socket (connected first, sent together); the HTTP status of each."""
    barrier = threading.Barrier(len(containers))
    statuses = {}

    def bind(c):
        body = json.dumps({"netns": f"/run/netns/{lab.ns(c)}", "ifname": "eth0"}).encode()
        request = (f"POST /v1/ports/{port_id}/bind HTTP/1.1\r\nHost: agent\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode() + body
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(lab.agent_socket(host))
            barrier.wait()
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        statuses[c] = int(answer.split(b" ", 2)[1])

    threads = [threading.Thread(target=bind, args=(c,)) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_concurrent_binds_of_one_port_to_two_places_never_both_succeed(lab):
    v4, v6 = cidr_block()
    net, _ = lab.network(name("net"), f"{v4}.0/24", f"{v6}::/64")
    a, b = name("ra"), name("rb")
    for c in (a, b):
        lab.add_container(c)
    for i in range(6):
        port = lab.port(net, name=f"race{i}")
        statuses = race_binds(lab, "h1", port["id"], [a, b])
        assert sorted(statuses.values()) == [200, 409], statuses
        winner = next(c for c, code in statuses.items() if code == 200)
        loser = b if winner == a else a
        assert "eth0" in {l["ifname"] for l in lab.links(winner)}
        assert "eth0" not in {l["ifname"] for l in lab.links(loser)}
        lab.unbind("h1", port)
        lab.wait_for(lambda: "eth0" not in {l["ifname"] for l in lab.links(winner)}, 10,
                     f"eth0 to leave {winner}")


def agent_metrics(lab, host):
    """The agent's /metrics on its local socket, parsed by prometheus_client: samples by
    name (labels dropped; the agent's metrics have none)."""
    p = subprocess.run(["curl", "-sf", "--unix-socket", lab.agent_socket(host),
                        "http://agent/metrics"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return {s.name: s.value for f in text_string_to_metric_families(p.stdout) for s in f.samples}


def test_agent_metrics_follow_binds_and_passes(lab):
    before = agent_metrics(lab, "h1")
    v4, v6 = cidr_block()
    net, _ = lab.network(name("net"), f"{v4}.0/24", f"{v6}::/64")
    port = lab.port(net, name="m1")
    c = name("cm")
    lab.add_container(c)
    lab.bind("h1", port, c)
    after = agent_metrics(lab, "h1")
    assert after["kuryr_agent_ports_bound"] == before["kuryr_agent_ports_bound"] + 1
    assert after["kuryr_agent_ports_realized"] >= 1
    assert after["kuryr_agent_pass_seconds_count"] > before["kuryr_agent_pass_seconds_count"]
    # The port's group brought rules: at least one nft transaction, timed.
    assert after["kuryr_agent_nft_apply_seconds_count"] >= 1
    assert after["kuryr_agent_nft_apply_seconds_sum"] > 0
    assert "kuryr_agent_watch_reconnects_total" in after
    lab.unbind("h1", port)
    assert agent_metrics(lab, "h1")["kuryr_agent_ports_bound"] == before["kuryr_agent_ports_bound"]

