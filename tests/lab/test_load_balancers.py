"""Load balancers in the lab, made with the real `openstack loadbalancer` CLI:
connections to the VIP are spread over the members (on any host, also behind a
router), follow member changes and health checks at once, are refused when no
member is left, work for a member reaching itself, and survive an agent restart.

Each backend is a small server that answers every connection (or datagram) with
its own name and the client address it saw: the test then knows which member
served it and that the member saw the client itself (no SNAT)."""

import json
import subprocess
import time

from lab import sh  # noqa: F401
from test_agent import cidr_block, name
from test_routers import container, router_with_subnets

SERVER = """
import socket, sys, threading
kind, port, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(100)
        s.sendto(f"{me} {a[0]}".encode(), a)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
def serve(c, a):
    c.sendall(f"{me} {a[0]}\\n".encode())
    while True:
        d = c.recv(100)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"""

# Connects n times (TCP or UDP) and prints one line per attempt: the answer, or
# REFUSED / TIMEOUT, with the time it took.
CLIENT = """
import socket, sys, time
kind, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    t = time.time()
    try:
        if kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(b"x", (ip, port))
            print(s.recv(100).decode(), round(time.time() - t, 3))
        else:
            s = socket.create_connection((ip, port), timeout=3)
            s.settimeout(3)
            print(s.recv(100).decode().strip(), round(time.time() - t, 3))
        s.close()
    except ConnectionRefusedError:
        print("REFUSED", round(time.time() - t, 3))
    except OSError:
        print("TIMEOUT", round(time.time() - t, 3))
"""


def serve(lab, c, port, me, udp=False):
    p = subprocess.Popen(["ip", "netns", "exec", lab.ns(c), "python3", "-c", SERVER,
                          "udp" if udp else "tcp", str(port), me],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    lab.spawned.append(p)
    flag = "-Hlun" if udp else "-Hltn"
    lab.wait_for(lambda: lab.exec(c, "ss", flag, f"sport = :{port}").strip() != "",
                 10, f"a server on port {port} in {c}")
    return p


def stop(p):
    import os
    import signal
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def connect(lab, c, ip, port, n=1, udp=False):
    """[(answer or REFUSED/TIMEOUT, seconds)] of n connections from container c."""
    p = subprocess.run(["ip", "netns", "exec", lab.ns(c), "python3", "-c", CLIENT,
                        "udp" if udp else "tcp", ip, str(port), str(n)],
                       capture_output=True, text=True, timeout=20 + 4 * n,
                       stdin=subprocess.DEVNULL)
    out = []
    for line in p.stdout.splitlines():
        *answer, took = line.split(" ")
        out.append((" ".join(answer), float(took)))
    return out


def served_by(results):
    return [a.split(" ")[0] for a, _ in results]


def lb_stack(lab, subnet, protocol="TCP", port=80, algorithm="ROUND_ROBIN"):
    """A load balancer with one listener and its pool (CLI `--wait`)."""
    lb = lab.openstack("loadbalancer", "create", "--name", name("lb"),
                       "--vip-subnet-id", subnet["id"], "--wait")
    listener = lab.openstack("loadbalancer", "listener", "create", "--name", name("l"),
                             "--protocol", protocol, "--protocol-port", port, lb["id"],
                             "--wait")
    pool = lab.openstack("loadbalancer", "pool", "create", "--name", name("p"),
                         "--protocol", protocol, "--lb-algorithm", algorithm,
                         "--listener", listener["id"], "--wait")
    return lb, listener, pool


def add_member(lab, pool, subnet, ip, port, **opts):
    args = ["loadbalancer", "member", "create", "--address", ip, "--protocol-port", port,
            "--subnet-id", subnet["id"]]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", v] if v is not True else [f"--{k}"]
    return lab.openstack(*args, pool["id"], "--wait")


def wait_served(lab, client, vip, port, want, udp=False, timeout=10, n=12):
    """Waits until n connections to the VIP are served by exactly the set `want`."""
    seen = {}

    def ok():
        seen["last"] = served_by(connect(lab, client, vip, port, n=n, udp=udp))
        return set(seen["last"]) == set(want)
    try:
        lab.wait_for(ok, timeout, f"connections served by {sorted(want)}")
    except RuntimeError as e:
        raise AssertionError(f"{e}; last served by {seen.get('last')}") from None
    return seen["last"]


def net_with_subnet(lab):
    v4, _ = cidr_block()
    net = lab.create("networks", {"name": name("net")})
    sub = lab.create("subnets", {"network_id": net["id"], "ip_version": 4,
                                 "cidr": f"{v4}.0/24"})
    return net, sub


def test_distribution_stickiness_and_udp(lab):
    net, sub = net_with_subnet(lab)
    backends = {}
    for host, me in [("h1", "m1"), ("h1", "m2"), ("h2", "m3")]:
        c, _, ip = container(lab, host, net)
        serve(lab, c, 8080, me)
        serve(lab, c, 5353, me, udp=True)
        backends[me] = (c, ip)
    client, _, client_ip = container(lab, "h3", net)
    lb, listener, pool = lb_stack(lab, sub)
    vip = lb["vip_address"]
    for me, (_, ip) in backends.items():
        add_member(lab, pool, sub, ip, 8080)
    # ROUND_ROBIN: every member serves; each saw the client itself (no SNAT); the
    # answer came back from the VIP (the client's socket is connected to it).
    served = wait_served(lab, client, vip, 80, {"m1", "m2", "m3"})
    answers = connect(lab, client, vip, 80, n=9)
    assert all(a.endswith(client_ip) for a, _ in answers), answers
    counts = {m: served.count(m) for m in {"m1", "m2", "m3"}}
    assert min(counts.values()) >= 2, counts

    # SOURCE_IP: one client sticks to one member.
    lab.openstack("loadbalancer", "pool", "set", "--lb-algorithm", "SOURCE_IP", pool["id"],
                  "--wait", fmt=None)
    lab.wait_for(lambda: len(set(served_by(connect(lab, client, vip, 80, n=10)))) == 1, 10,
                 "SOURCE_IP to stick")
    # Session persistence SOURCE_IP on ROUND_ROBIN sticks too; back without it spreads.
    lab.openstack("loadbalancer", "pool", "set", "--lb-algorithm", "ROUND_ROBIN",
                  "--session-persistence", "type=SOURCE_IP", pool["id"], "--wait", fmt=None)
    lab.wait_for(lambda: len(set(served_by(connect(lab, client, vip, 80, n=10)))) == 1, 10,
                 "session persistence to stick")
    lab.openstack("loadbalancer", "pool", "unset", "--session-persistence", pool["id"],
                  "--wait", fmt=None)
    wait_served(lab, client, vip, 80, {"m1", "m2", "m3"})

    # UDP: a listener of its own on the same VIP.
    ul = lab.openstack("loadbalancer", "listener", "create", "--protocol", "UDP",
                       "--protocol-port", "53", lb["id"], "--wait")
    up = lab.openstack("loadbalancer", "pool", "create", "--protocol", "UDP",
                       "--lb-algorithm", "ROUND_ROBIN", "--listener", ul["id"], "--wait")
    for me, (_, ip) in backends.items():
        add_member(lab, up, sub, ip, 5353)
    # Each datagram is its own flow (a new source port each time).
    wait_served(lab, client, vip, 53, {"m1", "m2", "m3"}, udp=True)


def test_member_changes_take_effect_at_once(lab):
    net, sub = net_with_subnet(lab)
    c1, _, ip1 = container(lab, "h1", net)
    c2, _, ip2 = container(lab, "h2", net)
    serve(lab, c1, 8080, "m1")
    serve(lab, c2, 8080, "m2")
    client, _, _ = container(lab, "h3", net)
    lb, _, pool = lb_stack(lab, sub)
    vip = lb["vip_address"]
    m1 = add_member(lab, pool, sub, ip1, 8080)
    wait_served(lab, client, vip, 80, {"m1"})
    # Added: served at once.
    m2 = add_member(lab, pool, sub, ip2, 8080)
    wait_served(lab, client, vip, 80, {"m1", "m2"})
    # admin_state_up false: out of rotation; back in.
    lab.openstack("loadbalancer", "member", "set", "--disable", pool["id"], m1["id"],
                  "--wait", fmt=None)
    wait_served(lab, client, vip, 80, {"m2"})
    lab.openstack("loadbalancer", "member", "set", "--enable", pool["id"], m1["id"],
                  "--wait", fmt=None)
    wait_served(lab, client, vip, 80, {"m1", "m2"})
    # Weight 0: no new connections.
    lab.openstack("loadbalancer", "member", "set", "--weight", "0", pool["id"], m2["id"],
                  "--wait", fmt=None)
    wait_served(lab, client, vip, 80, {"m1"})
    lab.openstack("loadbalancer", "member", "set", "--weight", "1", pool["id"], m2["id"],
                  "--wait", fmt=None)
    wait_served(lab, client, vip, 80, {"m1", "m2"})
    # Removed.
    lab.openstack("loadbalancer", "member", "delete", pool["id"], m1["id"], "--wait", fmt=None)
    wait_served(lab, client, vip, 80, {"m2"})
    # The last one removed: refused at once (no black hole).
    lab.openstack("loadbalancer", "member", "delete", pool["id"], m2["id"], "--wait", fmt=None)
    lab.wait_for(lambda: connect(lab, client, vip, 80)[0][0] == "REFUSED", 10,
                 "connections to the empty pool to be refused")
    answer, took = connect(lab, client, vip, 80)[0]
    assert answer == "REFUSED" and took < 1.0, (answer, took)


def member_status(lab, pool, member):
    return lab.openstack("loadbalancer", "member", "show", pool["id"], member["id"])[
        "operating_status"]


def test_health_checks_follow_the_members(lab):
    net, sub = net_with_subnet(lab)
    c1, _, ip1 = container(lab, "h1", net)
    c2, _, ip2 = container(lab, "h2", net)
    s1 = serve(lab, c1, 8080, "m1")
    s2 = serve(lab, c2, 8080, "m2")
    client, _, _ = container(lab, "h3", net)
    lb, _, pool = lb_stack(lab, sub)
    vip = lb["vip_address"]
    m1 = add_member(lab, pool, sub, ip1, 8080)
    m2 = add_member(lab, pool, sub, ip2, 8080)
    assert member_status(lab, pool, m1) == "NO_MONITOR"
    lab.openstack("loadbalancer", "healthmonitor", "create", "--type", "TCP", "--delay", "1",
                  "--timeout", "1", "--max-retries", "1", "--max-retries-down", "2",
                  pool["id"], "--wait")
    lab.wait_for(lambda: member_status(lab, pool, m1) == "ONLINE"
                 and member_status(lab, pool, m2) == "ONLINE", 15, "members ONLINE")
    wait_served(lab, client, vip, 80, {"m1", "m2"})
    # m1's server stops: ERROR within delay × max_retries_down (+ the report), out of
    # every host's maps, and every connection still succeeds (served by m2).
    stop(s1)
    t = time.time()
    lab.wait_for(lambda: member_status(lab, pool, m1) == "ERROR", 15, "m1 ERROR")
    down_after = time.time() - t
    assert down_after < 6, down_after
    assert set(served_by(connect(lab, client, vip, 80, n=10))) == {"m2"}
    # (`status show` prints JSON of its own.)
    status = json.loads(lab.openstack("loadbalancer", "status", "show", lb["id"],
                                      fmt=None).stdout)
    pool_status = status["loadbalancer"]["listeners"][0]["pools"][0]
    assert pool_status["operating_status"] == "DEGRADED", status
    # Back: ONLINE and in rotation again.
    s1 = serve(lab, c1, 8080, "m1")
    lab.wait_for(lambda: member_status(lab, pool, m1) == "ONLINE", 15, "m1 ONLINE again")
    wait_served(lab, client, vip, 80, {"m1", "m2"})
    # Every member down: refused at once, and the pool is in ERROR.
    stop(s1)
    stop(s2)
    lab.wait_for(lambda: member_status(lab, pool, m1) == "ERROR"
                 and member_status(lab, pool, m2) == "ERROR", 15, "both members ERROR")
    lab.wait_for(lambda: connect(lab, client, vip, 80)[0][0] == "REFUSED", 10,
                 "refusal with every member down")
    answer, took = connect(lab, client, vip, 80)[0]
    assert answer == "REFUSED" and took < 1.0, (answer, took)
    assert lab.openstack("loadbalancer", "pool", "show", pool["id"])["operating_status"] == "ERROR"


def test_hairpin_and_members_behind_a_router(lab):
    router, [(net_a, sub_a), (net_b, sub_b)] = router_with_subnets(lab)
    ca, _, ip_a = container(lab, "h1", net_a)
    cb, _, ip_b = container(lab, "h2", net_b)
    serve(lab, ca, 8080, "ma")
    serve(lab, cb, 8080, "mb")
    client_a, _, _ = container(lab, "h3", net_a)
    client_b, _, _ = container(lab, "h3", net_b)
    lb, _, pool = lb_stack(lab, sub_a)
    vip = lb["vip_address"]
    add_member(lab, pool, sub_a, ip_a, 8080)
    add_member(lab, pool, sub_b, ip_b, 8080)
    # From the VIP's network and from the other one (routed on the client's host).
    wait_served(lab, client_a, vip, 80, {"ma", "mb"})
    wait_served(lab, client_b, vip, 80, {"ma", "mb"})
    # Hairpin: the member on A reaches the VIP, itself included.
    wait_served(lab, ca, vip, 80, {"ma", "mb"}, timeout=15)


def test_agent_restart_keeps_connections(lab):
    net, sub = net_with_subnet(lab)
    c1, _, ip1 = container(lab, "h1", net)
    c2, _, ip2 = container(lab, "h2", net)
    serve(lab, c1, 8080, "m1")
    serve(lab, c2, 8080, "m2")
    client, _, _ = container(lab, "h3", net)
    lb, _, pool = lb_stack(lab, sub)
    vip = lb["vip_address"]
    add_member(lab, pool, sub, ip1, 8080)
    add_member(lab, pool, sub, ip2, 8080)
    wait_served(lab, client, vip, 80, {"m1", "m2"})
    # A long-lived connection through the VIP, held by a client process.
    held = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns(client), "python3", "-u", "-c",
         "import socket, sys\n"
         f"s = socket.create_connection(('{vip}', 80), timeout=5)\n"
         "print(s.recv(100).decode().strip())\n"
         "for line in sys.stdin:\n"
         "    s.sendall(line.encode())\n"
         "    print(s.recv(100).decode().strip())\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    lab.spawned.append(held)
    first = held.stdout.readline().strip()
    assert first.split(" ")[0] in ("m1", "m2"), first
    held.stdin.write("before\n")
    held.stdin.flush()
    assert held.stdout.readline().strip() == "before"
    lab.agents["h3"].stop()
    lab.start_agent("h3")
    lab.wait_agent_ready("h3")
    # The same connection goes on, and new ones are still balanced.
    held.stdin.write("after\n")
    held.stdin.flush()
    assert held.stdout.readline().strip() == "after"
    wait_served(lab, client, vip, 80, {"m1", "m2"})


def test_floating_ip_on_the_vip_is_balanced_where_it_enters(lab):
    from test_floating_ips import gateway_router, open_group, snat_host
    router, [(net, sub)], _ = gateway_router(lab)
    ext, _ = lab.external_network()
    web = open_group(lab, ("tcp", 8080))
    c1, _, ip1 = container(lab, "h1", net, security_groups=[web])
    c2, _, ip2 = container(lab, "h2", net, security_groups=[web])
    serve(lab, c1, 8080, "m1")
    serve(lab, c2, 8080, "m2")
    lb, _, pool = lb_stack(lab, sub)
    add_member(lab, pool, sub, ip1, 8080)
    add_member(lab, pool, sub, ip2, 8080)
    fip = lab.openstack("floating", "ip", "create", ext["id"])
    lab.openstack("floating", "ip", "set", "--port", lb["vip_port_id"], fip["id"], fmt=None)
    lab.wait_for(lambda: snat_host(lab, router["id"]) != "", 10, "the SNAT to be placed")
    out = lab.outside()
    # From the outside: every member serves, and each saw the outside client itself.
    served = wait_served(lab, out, fip["floating_ip_address"], 80, {"m1", "m2"}, timeout=20)
    assert served
    answers = connect(lab, out, fip["floating_ip_address"], 80, n=4)
    assert all(a.endswith(lab.OUTSIDE_IP) for a, _ in answers), answers
    # Disassociated: no longer reachable there (positive control above).
    lab.openstack("floating", "ip", "unset", "--port", fip["id"], fmt=None)
    lab.wait_for(lambda: connect(lab, out, fip["floating_ip_address"], 80)[0][0]
                 in ("TIMEOUT", "REFUSED"), 20, "the floating IP to stop answering")
