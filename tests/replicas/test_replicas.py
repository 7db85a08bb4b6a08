"""Several `kuryr server` replicas on one real etcd cluster (three members on loopback):
the unmodified openstack CLI across them, 2,000 concurrent port creates while a replica
and an etcd member are killed, quorum loss, a server started before its etcd, and
`kuryr store migrate`."""

import collections
import concurrent.futures
import ipaddress
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from replicas import KURYR_BIN, Etcd, Replicas, Server, free_port, run_kuryr, wait_for
from cloud import Creds, osc, unique


@pytest.fixture
def cloud():
    # 2,000 ports in one project: more than Neutron's default quota of 500.
    r = Replicas(3, "--default-quota", "port=-1")
    yield r
    r.close()


def token(server, password, project="admin"):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    r = requests.post(f"{server.auth_url}/auth/tokens", json=body, timeout=10)
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def net(server, tok, method, path, body=None, timeout=15):
    return requests.request(method, f"{server.url}/networking/v2.0{path}", json=body,
                            headers={"X-Auth-Token": tok}, timeout=timeout)


def test_the_cli_across_replicas_and_tokens_valid_on_all(cloud):
    r0, r1, r2 = cloud.servers
    admins = [Creds(s, "admin", cloud.admin_password, "admin") for s in cloud.servers]
    # One object per replica, each built on what another replica made just before.
    network = osc(admins[0], "network", "create", unique("net"))
    subnet = osc(admins[1], "subnet", "create", "--network", network["id"],
                 "--subnet-range", "10.20.0.0/24", unique("sub"))
    port = osc(admins[2], "port", "create", "--network", network["id"], unique("port"))
    assert port["fixed_ips"][0]["subnet_id"] == subnet["id"]
    for a in admins:
        shown = osc(a, "port", "show", port["id"])
        assert shown["fixed_ips"] == port["fixed_ips"], a.server.url
    # A token one replica issued is good on every replica (the signing keys are in etcd).
    tok = osc(admins[0], "token", "issue")["id"]
    for s in cloud.servers:
        assert net(s, tok, "GET", f"/ports/{port['id']}").status_code == 200, s.url
    # Control: a token no replica issued is refused by each.
    for s in cloud.servers:
        assert net(s, tok[:-4] + "AAAA", "GET", f"/ports/{port['id']}").status_code == 401

    # Created on one replica, read at once on another: every time, not eventually.
    for i in range(60):
        writer, reader = cloud.servers[i % 3], cloud.servers[(i + 1) % 3]
        made = net(writer, tok, "POST", "/ports", {"port": {"network_id": network["id"]}})
        assert made.status_code == 201, made.text
        pid = made.json()["port"]["id"]
        seen = net(reader, tok, "GET", f"/ports/{pid}")
        assert seen.status_code == 200, f"port {pid} made on {writer.url} unseen on {reader.url}"
        gone = net(reader, tok, "DELETE", f"/ports/{pid}")
        assert gone.status_code == 204
        assert net(writer, tok, "GET", f"/ports/{pid}").status_code == 404


class Load:
    """Clients that create ports over every live replica: a request that fails (refused,
    reset, 503) is sent to the next replica, as a client behind a load balancer would."""

    def __init__(self, cloud, tok, network_id, total, workers=16):
        self.cloud, self.tok, self.network_id = cloud, tok, network_id
        self.total, self.workers = total, workers
        self.acked = {}  # port id -> (ip, mac)
        self.lock = threading.Lock()
        self.next = itertools.count()
        self.retries = collections.Counter()

    def one(self, n):
        for attempt in itertools.count():
            servers = self.cloud.alive()
            s = servers[(n + attempt) % len(servers)]
            try:
                r = net(s, self.tok, "POST", "/ports",
                        {"port": {"network_id": self.network_id, "name": f"load-{n}"}})
            except requests.RequestException as e:
                self.retries[type(e).__name__] += 1
                continue
            if r.status_code == 201:
                p = r.json()["port"]
                with self.lock:
                    self.acked[p["id"]] = (p["fixed_ips"][0]["ip_address"], p["mac_address"])
                return
            assert r.status_code in (502, 503), f"{r.status_code} {r.text}"
            self.retries[r.status_code] += 1
            assert attempt < 200, "a create kept failing"
            time.sleep(0.05)

    def run(self, at=()):
        """Runs the load; `at` holds (acked count, action) pairs run from the side."""
        actions = sorted(at, key=lambda a: a[0])

        def side():
            for count, action in actions:
                wait_for(f"{count} acknowledged creates", lambda: len(self.acked) >= count, 120)
                action()

        with concurrent.futures.ThreadPoolExecutor(self.workers + 1) as pool:
            faults = pool.submit(side)
            list(pool.map(self.one, range(self.total)))
            faults.result()


def test_2000_concurrent_creates_lose_nothing_through_a_replica_and_a_member_killed(cloud):
    tok = token(cloud.servers[0], cloud.admin_password)
    network = net(cloud.servers[0], tok, "POST", "/networks", {"network": {"name": unique("load")}})
    nid = network.json()["network"]["id"]
    sub = net(cloud.servers[1], tok, "POST", "/subnets", {"subnet": {
        "network_id": nid, "ip_version": 4, "cidr": "10.30.0.0/20"}})
    assert sub.status_code == 201, sub.text
    killed = []
    load = Load(cloud, tok, nid, 2000)
    load.run(at=[(500, lambda: (cloud.servers[0].kill(), killed.append("replica 0"))),
                 (1000, lambda: (cloud.etcd.kill(2), killed.append("etcd member 2")))])
    assert killed == ["replica 0", "etcd member 2"], "both faults happened during the load"
    assert len(load.acked) == 2000
    print(f"retries: {dict(load.retries)}")

    # Every acknowledged port is there, read through each surviving replica.
    for s in cloud.alive():
        r = net(s, tok, "GET", f"/ports?network_id={nid}&fields=id&fields=fixed_ips"
                               "&fields=mac_address", timeout=60)
        assert r.status_code == 200
        ports = r.json()["ports"]
        ids = {p["id"] for p in ports}
        missing = set(load.acked) - ids
        assert not missing, f"{len(missing)} acknowledged ports lost on {s.url}"
        # No two ports share an address or a MAC (acknowledged or not: a create that
        # failed in flight may have committed, and it too must be unique).
        ips = [ip["ip_address"] for p in ports for ip in p["fixed_ips"]]
        macs = [p["mac_address"] for p in ports]
        assert len(ips) == len(set(ips)), "duplicate IP"
        assert len(macs) == len(set(macs)), "duplicate MAC"
        assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.30.0.0/20") for ip in ips)
        # Each acknowledged port still has the address and MAC its create answered.
        listed = {p["id"]: (p["fixed_ips"][0]["ip_address"], p["mac_address"]) for p in ports}
        changed = [pid for pid, got in load.acked.items() if listed[pid] != got]
        assert not changed, f"{len(changed)} ports differ from their acknowledgement"
        # Control: the check above does see ports (2,000 of them at least).
        assert len(ports) >= 2000


def test_lost_quorum_is_503_and_passes_by_itself(cloud):
    s = cloud.servers[1]
    tok = token(s, cloud.admin_password)
    ok = net(s, tok, "POST", "/networks", {"network": {"name": unique("before")}})
    assert ok.status_code == 201, "control: a healthy cloud writes"
    assert requests.get(f"{s.url}/readyz", timeout=10).status_code == 200
    cloud.etcd.kill(0)
    cloud.etcd.kill(1)
    started = time.time()
    r = net(s, tok, "POST", "/networks", {"network": {"name": unique("during")}}, timeout=30)
    assert r.status_code == 503, r.text
    assert r.json()["NeutronError"]["type"] == "ServiceUnavailable"
    assert time.time() - started < 15, "a clear error, not a hang"
    assert requests.get(f"{s.url}/readyz", timeout=30).status_code == 503
    cloud.etcd.start(1)
    wait_for("writes to succeed again", lambda: net(
        s, tok, "POST", "/networks", {"network": {"name": unique("after")}}).status_code == 201, 60)
    wait_for("/readyz to say ready", lambda: requests.get(f"{s.url}/readyz", timeout=10)
             .status_code == 200, 30)
    names = {n["name"] for n in net(s, tok, "GET", "/networks").json()["networks"]}
    assert not any(n.startswith("during") for n in names), "a refused write left nothing"


def test_migrate_the_embedded_store_to_etcd_and_back(cloud):
    # A cloud on the embedded store, with something in it.
    first = Server()
    data_dir = os.path.join(first.dir, "data")
    tok = token(first, first.admin_password)
    made = net(first, tok, "POST", "/networks", {"network": {"name": unique("moved")}})
    assert made.status_code == 201
    nid = made.json()["network"]["id"]
    first.proc.terminate()
    first.proc.wait(timeout=30)
    try:
        args = ["--etcd-endpoints", cloud.etcd.endpoints(), "--etcd-prefix", "/moved"]
        p = run_kuryr("store", "migrate", "--to", "etcd", "--data-dir", data_dir, *args)
        assert p.returncode == 0, p.stderr
        assert "copied" in p.stdout
        # Control for the refusal below: the same copy again finds a non-empty destination.
        again = run_kuryr("store", "migrate", "--to", "etcd", "--data-dir", data_dir, *args)
        assert again.returncode != 0 and "not empty" in again.stderr, again.stderr
        # A replica on the copy: same cloud, same admin password, same network.
        moved = Server("--store", "etcd", *args, admin_password="not-used-any-more")
        try:
            tok = token(moved, first.admin_password)
            assert net(moved, tok, "GET", f"/networks/{nid}").status_code == 200
        finally:
            moved.stop()
        # And back into a new embedded store.
        back_dir = tempfile.mkdtemp(prefix="kuryr-back-")
        try:
            p = run_kuryr("store", "migrate", "--to", "embedded", "--data-dir", back_dir, *args)
            assert p.returncode == 0, p.stderr
            back = Server(admin_password="not-used-either", data_dir=back_dir)
            try:
                tok = token(back, first.admin_password)
                assert net(back, tok, "GET", f"/networks/{nid}").status_code == 200
            finally:
                back.stop()
        finally:
            shutil.rmtree(back_dir, ignore_errors=True)
    finally:
        first.stop()


def test_a_server_started_before_etcd_waits_for_it():
    etcd = Etcd(3)
    for i in range(3):
        etcd.kill(i)
    port = free_port()
    log_path = os.path.join(etcd.dir, "server.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [KURYR_BIN, "server", "--listen", f"127.0.0.1:{port}", "--data-dir",
             os.path.join(etcd.dir, "data"), "--store", "etcd",
             "--etcd-endpoints", etcd.endpoints()],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # Alive and saying why it is not ready, while it waits with backoff.
        wait_for("/healthz", lambda: requests.get(f"{url}/healthz", timeout=2).status_code == 200)
        wait_for("a 'waiting for etcd' log line",
                 lambda: open(log_path).read().count("waiting for etcd") >= 2, 30)
        assert server.poll() is None, "it waits rather than exits"
        assert requests.get(f"{url}/readyz", timeout=5).status_code == 503
        for i in range(3):
            etcd.start(i)
        wait_for("/readyz once etcd is up",
                 lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200, 60)
        assert "connected to etcd" in open(log_path).read()
    finally:
        server.kill()
        server.wait()
        etcd.close()
