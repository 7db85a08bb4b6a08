"""Limits and resource hygiene: the request body limit, Neutron's per-resource caps,
the bulk cap, and reservations given back when clients go away mid-request. Each
refusal is next to the largest request that is still accepted."""

import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from cloud import KURYR_BIN, Creds, Server, password, token_for, unique


@pytest.fixture(scope="module")
def small():
    """A server with a small body limit and bulk cap, and an admin token for it."""
    s = Server("--max-request-body", "8192", "--max-bulk", "3")
    admin = Creds(s, "admin", s.admin_password, "admin")
    s.token = token_for(admin)
    s.net = f"{s.url}/networking/v2.0"
    yield s
    s.stop()


def call(s, method, path, body=None, **kw):
    r = requests.request(method, s.net + path, json=body, timeout=30,
                         headers={"X-Auth-Token": s.token}, **kw)
    return r.status_code, (r.json() if r.content else None)


def ok(s, method, path, body=None):
    status, data = call(s, method, path, body)
    assert status < 300, f"{method} {path}: {status} {data}"
    return data


def error(s, method, path, body, status, kind):
    got, data = call(s, method, path, body)
    assert got == status, f"{method} {path}: wanted {status}, got {got} {data}"
    assert data["NeutronError"]["type"] == kind, data
    return data["NeutronError"]["message"]


def test_bodies_over_the_limit_get_413_in_each_protocols_format(small):
    fits = {"network": {"name": "n", "description": "x" * 200}}
    n = ok(small, "POST", "/networks", fits)["network"]
    too_big = {"network": {"name": "n", "description": "x" * 9000}}
    message = error(small, "POST", "/networks", too_big, 413, "RequestEntityTooLarge")
    assert "8192" in message
    # Chunked, without a Content-Length: refused once it passes the limit.
    chunks = (b"x" * 1024 for _ in range(20))
    r = requests.post(small.net + "/networks", data=chunks, timeout=30,
                      headers={"X-Auth-Token": small.token, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["NeutronError"]["type"] == "RequestEntityTooLarge"
    r = requests.post(f"{small.auth_url}/auth/tokens", data=b"{" + b" " * 9000 + b"}", timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    ok(small, "DELETE", f"/networks/{n['id']}")


def test_neutrons_caps(small):
    net = ok(small, "POST", "/networks", {"network": {"name": unique("caps")}})["network"]
    subnet = {"network_id": net["id"], "ip_version": 4}
    routes = [{"destination": f"10.{i}.0.0/16", "nexthop": "10.99.0.9"} for i in range(21)]
    dns = [f"10.0.0.{i}" for i in range(1, 7)]
    message = error(small, "POST", "/subnets", {"subnet": {
        **subnet, "cidr": "10.99.0.0/24", "host_routes": routes}}, 400, "HostRoutesExhausted")
    assert message.endswith("The number of host routes exceeds the limit 20.")
    error(small, "POST", "/subnets", {"subnet": {**subnet, "cidr": "10.99.0.0/24",
                                                 "dns_nameservers": dns}}, 400, "DNSNameServersExhausted")
    s = ok(small, "POST", "/subnets", {"subnet": {**subnet, "cidr": "10.99.0.0/24",
                                                  "host_routes": routes[:20], "dns_nameservers": dns[:5]}})
    sid = s["subnet"]["id"]
    error(small, "PUT", f"/subnets/{sid}", {"subnet": {"dns_nameservers": dns}}, 400,
          "DNSNameServersExhausted")

    pairs = [{"ip_address": f"10.98.0.{i}"} for i in range(11)]
    error(small, "POST", "/ports", {"port": {"network_id": net["id"], "allowed_address_pairs": pairs}},
          400, "AllowedAddressPairExhausted")
    fixed = [{"subnet_id": sid} for _ in range(6)]
    error(small, "POST", "/ports", {"port": {"network_id": net["id"], "fixed_ips": fixed}},
          400, "InvalidInput")
    p = ok(small, "POST", "/ports", {"port": {"network_id": net["id"], "fixed_ips": fixed[:5],
                                              "allowed_address_pairs": pairs[:10]}})["port"]
    assert len(p["fixed_ips"]) == 5 and len(p["allowed_address_pairs"]) == 10
    sg = p["security_groups"][0]
    message = error(small, "PUT", f"/ports/{p['id']}", {"port": {"security_groups": [sg, sg]}},
                    400, "HTTPBadRequest")
    assert f"Duplicate items in the list: '{sg}'" in message

    tags = [f"t{i}" for i in range(51)]
    error(small, "PUT", f"/networks/{net['id']}/tags", {"tags": tags}, 400, "BadRequest")
    ok(small, "PUT", f"/networks/{net['id']}/tags", {"tags": tags[:50]})
    status, data = call(small, "PUT", f"/networks/{net['id']}/tags/one-more")
    assert status == 400 and data["NeutronError"]["type"] == "BadRequest"
    assert call(small, "PUT", f"/networks/{net['id']}/tags/t1")[0] == 201  # already there: fine

    bulk = {"networks": [{"name": unique("b")} for _ in range(4)]}
    assert "at most 3" in error(small, "POST", "/networks", bulk, 400, "HTTPBadRequest")
    made = ok(small, "POST", "/networks", {"networks": bulk["networks"][:3]})["networks"]
    for n in made:
        ok(small, "DELETE", f"/networks/{n['id']}")
    ok(small, "DELETE", f"/ports/{p['id']}")
    ok(small, "DELETE", f"/networks/{net['id']}")


def abandon(host, port, request, delay):
    """Sends a request and hangs up after `delay` seconds, answered or not."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        sock.settimeout(delay)
        try:
            sock.recv(1)
        except OSError:
            pass
        # An RST rather than a FIN: the server sees the client gone at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


SENT = 400


def test_cancelled_creates_give_their_addresses_back(small):
    net = ok(small, "POST", "/networks", {"network": {"name": unique("cancel")}})["network"]
    ok(small, "PUT", f"/quotas/{net['project_id']}", {"quota": {"port": -1}})
    # 10.97.0.0/22: 1021 allocatable addresses (the gateway takes one).
    sub = ok(small, "POST", "/subnets", {"subnet": {"network_id": net["id"], "ip_version": 4,
                                                    "cidr": "10.97.0.0/22"}})["subnet"]
    body = ('{"port": {"network_id": "%s"}}' % net["id"]).encode()
    request = (f"POST /networking/v2.0/ports HTTP/1.1\r\nHost: x\r\n"
               f"X-Auth-Token: {small.token}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    host, port = small.url.removeprefix("http://").rsplit(":", 1)
    rng = random.Random(7)
    # Hang-ups spread over the few milliseconds a create takes (most of it the
    # store's fsync, when the request holds its addresses).
    threads = [threading.Thread(target=abandon, args=(host, int(port), request, rng.uniform(0, 0.004)))
               for _ in range(SENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Some of them commit even though their client left; the rest must hold nothing:
    # once the subnet is full, every one of its addresses belongs to a real port.
    survivors = ok(small, "GET", f"/ports?network_id={net['id']}")["ports"]
    assert len(survivors) < SENT, "some requests must have been cut off"
    while True:
        status, data = call(small, "POST", "/ports", {"port": {"network_id": net["id"]}})
        if status != 201:
            assert status == 409 and data["NeutronError"]["type"] == "IpAddressGenerationFailure", data
            break
    deadline = time.time() + 20
    while True:
        ports = ok(small, "GET", f"/ports?network_id={net['id']}")["ports"]
        if len(ports) == 1021 or time.time() > deadline:
            break
        time.sleep(0.1)
    assert len(ports) == 1021, f"{1021 - len(ports)} addresses are held by no port"
    survivors, made = ports, []
    for p in survivors:
        ok(small, "DELETE", f"/ports/{p['id']}")
    for pid in made:
        ok(small, "DELETE", f"/ports/{pid}")
    ok(small, "DELETE", f"/subnets/{sub['id']}")
    ok(small, "DELETE", f"/networks/{net['id']}")


def test_a_store_that_fails_a_commit_stops_the_server_for_its_supervisor():
    """The data directory is a 2 MiB tmpfs in a mount namespace of the server's own
    (gone with it): once full, a commit fails, the request gets 503, and the server
    exits non-zero instead of answering 503 forever."""
    work = tempfile.mkdtemp(prefix="kuryr-full-")
    data = os.path.join(work, "data")
    os.mkdir(data)
    log_path = os.path.join(work, "server.log")
    pw = password()
    script = (f'mount -t tmpfs -o size=2m kuryr-test-full "{data}" && '
              f'exec "{KURYR_BIN}" server --listen 127.0.0.1:0 --data-dir "{data}/store" '
              f'--admin-password={pw}')
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while not (m := re.search(r"kuryr server ready.*listen=(\S+)", open(log_path).read())):
            assert proc.poll() is None and time.time() < deadline, open(log_path).read()
            time.sleep(0.05)
        s = type("S", (), {})()
        s.url = f"http://{m.group(1)}"
        s.net = f"{s.url}/networking/v2.0"
        s.token = token_for(Creds(type("Srv", (), {"auth_url": f"{s.url}/identity/v3"})(),
                                  "admin", pw, "admin"))
        first = ok(s, "POST", "/networks", {"network": {"name": "first"}})["network"]
        ok(s, "PUT", f"/quotas/{first['project_id']}", {"quota": {"network": -1}})
        statuses = set()
        while proc.poll() is None and time.time() < deadline + 60:
            batch = {"networks": [{"name": "n" * 255, "description": "d" * 255} for _ in range(300)]}
            try:
                statuses.add(call(s, "POST", "/networks", batch)[0])
            except requests.ConnectionError:
                break
        assert proc.wait(timeout=30) != 0
        text = open(log_path).read()
        assert 201 in statuses and "the store failed a commit" in text, (statuses, text[-2000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
