#!/usr/bin/env python3
"""Load-balancer benchmarks of kuryr in the test lab (see bench/LOADBALANCERS.md).

    sudo .venv/bin/python bench/loadbalancers.py [--json FILE]

Builds a three-host lab (tests/lab/lab.py), then measures, all in one run:

  (1) TCP throughput through a VIP (iperf3) as a ratio of TCP straight to the same
      member, client on h1, member on h2;
  (2) new TCP connections per second through the VIP against straight to the member
      (the same client, connect/recv/close in a loop, against a threaded server);
  (3) time to ACTIVE: load balancer -> listener -> pool -> member over the REST API,
      each step once the load balancer is ACTIVE again, to the last ACTIVE and to the
      first TCP connection through the VIP answered (client on h1, member on h2);
  (4) member change: a member added to a pool -> the first connection it serves, for
      a client on each of the three hosts (and removed -> the last);
  (5a) one pool of 1,000 (fake) members: the nft map, how long the agents take, the
      agent's memory and idle pass;
  (5b) 1,000 load balancers (listener, pool, member each) on a network of h1 only:
      creation over the API with a thread pool, until all are in h1's kernel, the
      agent's memory, idle pass and the size of `table inet kuryr_lb`.

Every namespace is the lab's (its prefix); the lab is closed on any exit, SIGTERM
included, and every helper process is killed. Figures are printed, never asserted.
Needs root, iperf3 and the release binary (KURYR_BIN or target/release/kuryr).
"""

import argparse
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# bench/routers.py: the lab import, its helper-process plumbing, the TCP prober and
# the agent readings (RSS, /metrics, `pass timing` lines). It also sets
# RUST_LOG=info,kuryr_agent=debug (unless set) so that passes can be timed.
import routers as rb  # noqa: E402
from routers import PROBER, Helper, fmt, log, pct  # noqa: E402

labmod = rb.labmod
# tests/lab/test_load_balancers.py: the threaded backend that answers each
# connection with "<its name> <the client address it saw>".
from test_load_balancers import SERVER as BACKEND  # noqa: E402

NET = "10.243.0.0/20"          # (1)-(5a): clients c1..c3, members m1 (h2), m2 (h3)
FAKE_MEMBERS = "10.243.8.0"    # (5a): 1,000 member addresses from here, nobody behind
NET_MANY = "10.245.0.0/21"     # (5b): the 1,000 VIPs, client s1 and member s2 on h1
IPERF_PORT = 5201
BACKEND_PORT = 8080
LB = "/load-balancer/v2/lbaas"


# ---------------------------------------------------------------- helper processes
#
# As in routers.py: one JSON document per line each way, times from time.monotonic()
# (CLOCK_MONOTONIC, one clock machine-wide whatever the network namespace).

API_HELPER = r'''
import http.client, json, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
HOST, PORT, TOKEN = sys.argv[1], int(sys.argv[2]), os.environ["BENCH_TOKEN"]
LB = "/load-balancer/v2/lbaas"

class Conn:
    def __init__(self):
        self.c = http.client.HTTPConnection(HOST, PORT, timeout=60)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"X-Auth-Token": TOKEN, "Content-Type": "application/json"}
        if self.c.sock is None:
            self.c.connect()   # outside the clock
        t0, w0 = time.monotonic(), time.time()
        try:
            self.c.request(method, path, body=data, headers=headers)
            r = self.c.getresponse()
            raw, status = r.read(), r.status
        except (OSError, http.client.HTTPException) as e:
            self.c.close()
            status, raw = 0, str(e).encode()
        t1 = time.monotonic()
        try:
            doc = json.loads(raw) if raw.strip() else None
        except ValueError:
            doc = raw.decode(errors="replace")
        return {"t0": t0, "w0": w0, "t1": t1, "status": status, "body": doc}

    def wait_active(self, lb_id, interval, timeout):
        """Polls the load balancer until ACTIVE: the time of the answer that said so."""
        end = time.monotonic() + timeout
        polls = 0
        while True:
            r = self.call("GET", f"{LB}/loadbalancers/{lb_id}")
            polls += 1
            st = (r["body"] or {}).get("loadbalancer", {}).get("provisioning_status") \
                if isinstance(r["body"], dict) else None
            if st == "ACTIVE":
                return {"t": r["t1"], "polls": polls, "status": st}
            if st == "ERROR" or time.monotonic() > end:
                return {"t": None, "polls": polls, "status": st or r["status"]}
            time.sleep(interval)

    def post(self, path, kind, body):
        r = self.call("POST", path, {kind: body})
        if r["status"] != 201:
            raise RuntimeError(f"POST {path} -> {r['status']}: {r['body']}")
        return r, r["body"][kind]

def stack(conn, req, i):
    """One load balancer with a listener, a pool and one member, each made once the
    load balancer is ACTIVE again."""
    poll = req.get("poll", 0.02)
    r, lb = conn.post(f"{LB}/loadbalancers", "loadbalancer",
                      {"name": f"{req['prefix']}{i}", "vip_subnet_id": req["subnet_id"]})
    out = {"i": i, "id": lb["id"], "vip": lb["vip_address"], "t_start": r["t0"]}
    for path, kind, body in (
            ("listeners", "listener", lambda: {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                               "protocol_port": req["port"]}),
            ("pools", "pool", lambda: {"listener_id": out["listener_id"], "protocol": "TCP",
                                       "lb_algorithm": "ROUND_ROBIN"}),
            (None, "member", lambda: dict(req["member"]))):
        w = conn.wait_active(lb["id"], poll, 120)
        if w["t"] is None:
            raise RuntimeError(f"load balancer {lb['id']} not ACTIVE: {w['status']}")
        p = f"{LB}/{path}" if path else f"{LB}/pools/{out['pool_id']}/members"
        _, obj = conn.post(p, kind, body())
        out[f"{kind}_id"] = obj["id"]
    w = conn.wait_active(lb["id"], poll, 120)
    out["t_active"] = w["t"]
    return out

local = threading.local()

def conn():
    if not hasattr(local, "c"):
        local.c = Conn()
    return local.c

main = Conn()
for line in sys.stdin:
    req = json.loads(line)
    op = req.get("op", "req")
    if op == "req":
        out = main.call(req["method"], req["path"], req.get("body"))
    elif op == "wait_active":
        out = main.wait_active(req["id"], req.get("interval", 0.002), req.get("timeout", 60))
    elif op == "bulk":
        done, errors = [], []
        def one(i):
            try:
                done.append(stack(conn(), req, i))
            except Exception as e:
                errors.append(f"{i}: {e}")
        t0 = time.monotonic()
        with ThreadPoolExecutor(req["threads"]) as pool:
            list(pool.map(one, range(req["n"])))
        out = {"t0": t0, "t1": time.monotonic(), "stacks": sorted(done, key=lambda s: s["i"]),
               "errors": errors}
    print(json.dumps(out), flush=True)
'''

# Connections in a loop until one is served by (mode 'up') / no longer by (mode
# 'down': `k` in a row served by another) the backend named `want`; one every
# `interval` s, each connect/recv given `att_timeout` s.
SERVED = r'''
import json, socket, sys, time

def one(ip, port, t):
    s = socket.socket()
    s.settimeout(t)
    try:
        s.connect((ip, port))
        d = s.recv(100).decode(errors="replace")
        return d.split(" ")[0].strip() or None
    except OSError:
        return None
    finally:
        s.close()

for line in sys.stdin:
    r = json.loads(line)
    print(json.dumps({"started": time.monotonic()}), flush=True)
    n, run, run_start = 0, 0, None
    nxt = time.monotonic()
    deadline = nxt + r["limit"]
    out = {"ok": None}
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now < nxt:
            time.sleep(nxt - now)
        nxt = max(nxt + r["interval"], time.monotonic())
        t0 = time.monotonic()
        who = one(r["ip"], r["port"], r["att_timeout"])
        t1 = time.monotonic()
        n += 1
        if r["mode"] == "up":
            if who == r["want"]:
                out = {"ok": t1, "ok_started": t0}
                break
        elif who is not None and who != r["want"]:
            if run == 0:
                run_start = t0
            run += 1
            if run >= r["k"]:
                out = {"ok": run_start}
                break
        else:
            run = 0
    out["attempts"] = n
    print(json.dumps(out), flush=True)
'''

# New connections for `seconds`: connect, read the backend's line, close; sequential.
RATE = r'''
import json, socket, sys, time
for line in sys.stdin:
    r = json.loads(line)
    ok = fail = 0
    lat = []
    start = time.monotonic()
    end = start + r["seconds"]
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((r["ip"], r["port"]))
            if s.recv(100):
                ok += 1
            else:
                fail += 1
        except OSError:
            fail += 1
        finally:
            s.close()
        lat.append(time.monotonic() - t0)
    el = time.monotonic() - start
    lat.sort()
    print(json.dumps({"ok": ok, "fail": fail, "seconds": el, "rate": ok / el,
                      "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
                      "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None}), flush=True)
'''


def log_time(line):
    """Wall-clock time of a tracing line (`2026-01-01T12:00:00.123456Z  INFO ...`)."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if not m:
        return None
    return datetime.fromisoformat(m.group(1) + "+00:00").timestamp()


class Bench(rb.Bench):
    def __init__(self, lab, args):
        super().__init__(lab, args)
        self._api = None

    # ------------------------------------------------------------ plumbing

    def api_helper(self):
        if self._api is None or self._api.proc.poll() is not None:
            self._api = Helper(self, "api", self.lab.ns("lab"), API_HELPER,
                               f"{labmod.UNDERLAY}.1", 9696,
                               env={"BENCH_TOKEN": self.lab.token()})
        return self._api

    def call(self, method, path, body=None, expect=None):
        api = self.api_helper()
        api.send({"op": "req", "method": method, "path": path, "body": body})
        r = api.recv()
        if expect is not None and r["status"] != expect:
            raise RuntimeError(f"{method} {path} -> {r['status']}, expected {expect}: "
                               f"{r['body']}")
        return r

    def wait_active(self, lb_id, interval=0.002, timeout=60):
        api = self.api_helper()
        api.send({"op": "wait_active", "id": lb_id, "interval": interval, "timeout": timeout})
        w = api.recv()
        if w["t"] is None:
            raise RuntimeError(f"load balancer {lb_id} not ACTIVE: {w['status']}")
        return w

    def create(self, kind, path, body):
        """POST, then wait for the load balancer to be ACTIVE again."""
        r = self.call("POST", f"{LB}/{path}", {kind: body}, expect=201)
        return r["body"][kind]

    def lb_stack(self, subnet, port, members, name):
        lb = self.create("loadbalancer", "loadbalancers",
                         {"name": name, "vip_subnet_id": subnet["id"]})
        self.wait_active(lb["id"])
        listener = self.create("listener", "listeners",
                               {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                "protocol_port": port, "name": name})
        self.wait_active(lb["id"])
        pool = self.create("pool", "pools", {"listener_id": listener["id"], "protocol": "TCP",
                                              "lb_algorithm": "ROUND_ROBIN", "name": name})
        self.wait_active(lb["id"])
        out = []
        for m in members:
            out.append(self.create("member", f"pools/{pool['id']}/members", m))
            self.wait_active(lb["id"])
        return lb, listener, pool, out

    def delete_lb(self, lb_id):
        self.call("DELETE", f"{LB}/loadbalancers/{lb_id}?cascade=true", expect=204)

    def wait_lbs_gone(self, ids, timeout=60):
        ids = set(ids)
        self.lab.wait_for(
            lambda: not ids.intersection(
                lb["id"] for lb in self.call("GET", f"{LB}/loadbalancers",
                                             expect=200)["body"]["loadbalancers"]),
            timeout, "the deleted load balancers to go")

    def serve(self, c, me):
        p = subprocess.Popen(["ip", "netns", "exec", self.lab.ns(c), "python3", "-c", BACKEND,
                              "tcp", str(BACKEND_PORT), me],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.lab.spawned.append(p)
        self.lab.wait_for(lambda: self.lab.exec(c, "ss", "-Hltn",
                                                f"sport = :{BACKEND_PORT}").strip() != "",
                          10, f"a backend in {c}")

    def served_by(self, c, ip, port):
        code = ("import socket\n"
                f"s = socket.create_connection(('{ip}', {port}), timeout=2)\n"
                "print(s.recv(100).decode().split(' ')[0])\n")
        p = subprocess.run(["ip", "netns", "exec", self.lab.ns(c), "python3", "-c", code],
                           capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        return p.stdout.strip()

    def nft(self, host, *args, check=True):
        return labmod.sh("ip", "netns", "exec", self.lab.ns(host), "nft", *args, check=check)

    def map_size(self, host, listener_id):
        """Elements of a listener's backend map on `host` (None: no such map)."""
        p = subprocess.run(["ip", "netns", "exec", self.lab.ns(host), "nft", "-j", "list", "map",
                            "inet", "kuryr_lb", f"m_{listener_id}"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            return None
        for o in json.loads(p.stdout)["nftables"]:
            if "map" in o:
                return len(o["map"].get("elem", []))
        return None

    def live_vips(self, host):
        """VIPs of `host`'s listeners with backends (`set live4`)."""
        p = subprocess.run(["ip", "netns", "exec", self.lab.ns(host), "nft", "-j", "list", "set",
                            "inet", "kuryr_lb", "live4"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            return set()
        out = set()
        for o in json.loads(p.stdout)["nftables"]:
            for e in o.get("set", {}).get("elem", []):
                try:
                    out.add(e["concat"][1])
                except (TypeError, KeyError, IndexError):
                    pass
        return out

    def converged_lines(self, host, offset):
        """The agent's `load balancer converged` lines since `offset`: (wall time, line)."""
        out = []
        with open(self.lab.agents[host].log_path, errors="replace") as f:
            f.seek(offset)
            for line in f:
                if "load balancer converged" in line:
                    out.append((log_time(line), line.strip()))
        return out

    def container(self, host, net, name, sg):
        port = self.lab.port(net, name=name, security_groups=[sg["id"]])
        self.lab.add_container(name)
        self.lab.bind(host, port, name)
        return port["fixed_ips"][0]["ip_address"]

    # ------------------------------------------------------------ the lab's setup

    def setup(self):
        lab = self.lab
        project = lab.openstack("token", "issue")["project_id"]
        self.api("PUT", f"/quotas/{project}", {"quota": {
            "network": -1, "subnet": -1, "port": -1, "security_group": -1,
            "security_group_rule": -1}}, expect=200)
        sg = lab.create("security-groups", {"name": "bench-lb-open"})
        for proto, port in (("tcp", IPERF_PORT), ("tcp", BACKEND_PORT), ("icmp", None)):
            rule = {"security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4",
                    "protocol": proto, "remote_ip_prefix": "0.0.0.0/0"}
            if port:
                rule.update(port_range_min=port, port_range_max=port)
            lab.create("security-group-rules", rule)
        net, [sub] = lab.network("bench-lb", NET)
        ips = {}
        for c, host in (("c1", "h1"), ("c2", "h2"), ("c3", "h3"), ("m1", "h2"), ("m2", "h3")):
            ips[c] = self.container(host, net, c, sg)
        for c in ("c1", "c2", "c3"):
            # A client making thousands of connections a second: its TIME_WAIT ports
            # may be reused, and it has the whole port range (its namespace only).
            lab.exec(c, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
            lab.exec(c, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535")
        self.serve("m1", "m1")
        self.serve("m2", "m2")
        for c in ("c1", "c2", "c3"):
            for m in ("m1", "m2"):
                if not lab.ping_eventually(c, ips[m], timeout=15):
                    raise RuntimeError(f"{c} does not reach {m} ({ips[m]})")
        self.shared.update(sg=sg, net=net, sub=sub, ips=ips, project=project)
        # The load balancer of (1), (2) and (4): TCP 5201 -> m1:5201 (iperf3) and
        # TCP 80 -> m1:8080 (the backend), one pool each.
        lb, l_iperf, _, _ = self.lb_stack(sub, IPERF_PORT, [
            {"address": ips["m1"], "protocol_port": IPERF_PORT, "subnet_id": sub["id"]}],
            "bench-main")
        l80 = self.create("listener", "listeners", {"loadbalancer_id": lb["id"],
                                                    "protocol": "TCP", "protocol_port": 80})
        self.wait_active(lb["id"])
        p80 = self.create("pool", "pools", {"listener_id": l80["id"], "protocol": "TCP",
                                            "lb_algorithm": "ROUND_ROBIN"})
        self.wait_active(lb["id"])
        self.create("member", f"pools/{p80['id']}/members",
                    {"address": ips["m1"], "protocol_port": BACKEND_PORT,
                     "subnet_id": sub["id"]})
        self.wait_active(lb["id"])
        vip = lb["vip_address"]
        lab.wait_for(lambda: self.served_by("c1", vip, 80) == "m1", 15,
                     "c1 to be served by m1 through the VIP")
        self.shared.update(lb=lb, vip=vip, pool80=p80)

    # ------------------------------------------------------------ (1) throughput

    def throughput(self):
        vip, ips = self.shared["vip"], self.shared["ips"]
        out = {"time_s": self.args.iperf_time}
        out["mtu"] = json.loads(self.lab.exec("c1", "ip", "-j", "link", "show", "dev",
                                              "eth0"))[0]["mtu"]
        c1, m1 = self.lab.ns("c1"), self.lab.ns("m1")
        direct, via = [], []
        for r in range(self.args.iperf_repeat):
            log(f"throughput: round {r + 1}/{self.args.iperf_repeat}, straight then via the VIP")
            direct.append(self.iperf(m1, c1, ips["m1"]))
            via.append(self.iperf(m1, c1, vip))
            log(f"  straight {direct[-1]['gbps']:.2f} Gbit/s, VIP {via[-1]['gbps']:.2f} Gbit/s")
        out["direct"], out["vip"] = direct, via
        out["direct_gbps"] = statistics.median(x["gbps"] for x in direct)
        out["vip_gbps"] = statistics.median(x["gbps"] for x in via)
        out["ratio"] = out["vip_gbps"] / out["direct_gbps"] if out["direct_gbps"] else None
        best = max(x["gbps"] for x in direct)
        out["best_ratio"] = max(x["gbps"] for x in via) / best if best else None
        return out

    # ------------------------------------------------------------ (2) connection rate

    def conn_rate(self):
        vip, ips = self.shared["vip"], self.shared["ips"]
        client = Helper(self, "rate", self.lab.ns("c1"), RATE)
        secs = self.args.rate_time
        out = {"seconds": secs, "direct": [], "vip": []}

        def run(ip, port):
            client.send({"ip": ip, "port": port, "seconds": secs})
            return client.recv()
        run(ips["m1"], BACKEND_PORT)   # warm-up (not counted)
        for r in range(self.args.rate_repeat):
            out["direct"].append(run(ips["m1"], BACKEND_PORT))
            out["vip"].append(run(vip, 80))
            log(f"connection rate: round {r + 1}/{self.args.rate_repeat}: straight "
                f"{out['direct'][-1]['rate']:.0f}/s, VIP {out['vip'][-1]['rate']:.0f}/s")
        for k in ("direct", "vip"):
            out[f"{k}_rate"] = statistics.median(x["rate"] for x in out[k])
            out[f"{k}_p50_ms"] = statistics.median(x["p50_ms"] for x in out[k])
            out[f"{k}_p99_ms"] = statistics.median(x["p99_ms"] for x in out[k])
            out[f"{k}_failed"] = sum(x["fail"] for x in out[k])
        out["ratio"] = out["vip_rate"] / out["direct_rate"] if out["direct_rate"] else None
        return out

    # ------------------------------------------------------------ (3) time to ACTIVE

    def time_to_active(self):
        sub, ips = self.shared["sub"], self.shared["ips"]
        prober = Helper(self, "prober", self.lab.ns("c1"), PROBER)
        api = self.api_helper()
        runs, made = [], []
        log(f"time to ACTIVE: {self.args.active_runs} load balancers (+1 warm-up)")

        def step(path, kind, body):
            api.send({"op": "req", "method": "POST", "path": f"{LB}/{path}",
                      "body": {kind: body}})
            r = api.recv()
            if r["status"] != 201:
                raise RuntimeError(f"POST {path} -> {r['status']}: {r['body']}")
            return r, r["body"][kind]
        try:
            for i in range(self.args.active_runs + 1):
                t = {}
                r, lb = step("loadbalancers", "loadbalancer",
                             {"name": f"bench-t{i}", "vip_subnet_id": sub["id"]})
                made.append(lb["id"])
                t["start"] = r["t0"]
                t["lb"] = self.wait_active(lb["id"])["t"]
                _, listener = step("listeners", "listener",
                                   {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                    "protocol_port": 80})
                t["listener"] = self.wait_active(lb["id"])["t"]
                _, pool = step("pools", "pool", {"listener_id": listener["id"],
                                                 "protocol": "TCP",
                                                 "lb_algorithm": "ROUND_ROBIN"})
                t["pool"] = self.wait_active(lb["id"])["t"]
                # The client on h1 starts trying (a connect every 5 ms) as the member,
                # the last piece, is posted.
                prober.send({"ip": lb["vip_address"], "port": 80,
                             "interval": self.args.probe_interval, "att_timeout": 1.0,
                             "mode": "up", "limit": 20})
                prober.recv()
                r, _ = step(f"pools/{pool['id']}/members", "member",
                            {"address": ips["m1"], "protocol_port": BACKEND_PORT,
                             "subnet_id": sub["id"]})
                t["member_post"] = r["t0"]
                t["active"] = self.wait_active(lb["id"])["t"]
                up = prober.recv()
                if up["ok"] is None:
                    raise RuntimeError(f"run {i}: {lb['vip_address']} never answered")
                rnd = {"to_active_ms": (t["active"] - t["start"]) * 1000,
                       "to_first_conn_ms": (up["ok"] - t["start"]) * 1000,
                       "member_post_to_first_conn_ms": (up["ok"] - t["member_post"]) * 1000,
                       "member_post_to_active_ms": (t["active"] - t["member_post"]) * 1000,
                       "lb_active_ms": (t["lb"] - t["start"]) * 1000,
                       "attempts": up["attempts"]}
                if i == 0:
                    warm = rnd
                else:
                    runs.append(rnd)
                log(f"  run {i}{' (warm-up)' if i == 0 else ''}: ACTIVE after "
                    f"{rnd['to_active_ms']:.1f} ms, first connection after "
                    f"{rnd['to_first_conn_ms']:.1f} ms")
        finally:
            for lb_id in made:
                self.call("DELETE", f"{LB}/loadbalancers/{lb_id}?cascade=true")
        self.wait_lbs_gone(made)
        out = {"runs": len(runs), "warmup": warm, "samples": runs,
               # A client that asked for the VIP's MAC before its host answered for
               # it waits for the ARP retransmission (1 s).
               "over_900ms": sum(r["to_first_conn_ms"] > 900 for r in runs)}
        for k in ("to_active_ms", "to_first_conn_ms", "member_post_to_first_conn_ms",
                  "member_post_to_active_ms", "lb_active_ms"):
            v = [r[k] for r in runs]
            out[k] = {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": max(v), "min": min(v)}
        return out

    # ------------------------------------------------------------ (4) member change

    def member_change(self):
        sub, ips, vip, pool = (self.shared[k] for k in ("sub", "ips", "vip", "pool80"))
        lb_id = self.shared["lb"]["id"]
        clients = {h: Helper(self, f"served-{c}", self.lab.ns(c), SERVED)
                   for h, c in (("h1", "c1"), ("h2", "c2"), ("h3", "c3"))}
        api = self.api_helper()
        rounds = []
        log(f"member change: {self.args.member_rounds} rounds of add / remove m2 (+1 warm-up)")
        for i in range(self.args.member_rounds + 1):
            for cl in clients.values():
                cl.send({"ip": vip, "port": 80, "want": "m2", "mode": "up",
                         "interval": self.args.probe_interval, "att_timeout": 1.0,
                         "limit": 10})
            for cl in clients.values():
                cl.recv()
            api.send({"op": "req", "method": "POST", "path": f"{LB}/pools/{pool['id']}/members",
                      "body": {"member": {"address": ips["m2"], "protocol_port": BACKEND_PORT,
                                          "subnet_id": sub["id"]}}})
            a = api.recv()
            if a["status"] != 201:
                raise RuntimeError(f"member POST -> {a['status']}: {a['body']}")
            ups = {h: cl.recv() for h, cl in clients.items()}
            if any(u["ok"] is None for u in ups.values()):
                raise RuntimeError(f"round {i}: m2 not serving everyone: {ups}")
            self.wait_active(lb_id)
            member = a["body"]["member"]
            for cl in clients.values():
                cl.send({"ip": vip, "port": 80, "want": "m2", "mode": "down", "k": 10,
                         "interval": self.args.probe_interval, "att_timeout": 1.0,
                         "limit": 10})
            for cl in clients.values():
                cl.recv()
            api.send({"op": "req", "method": "DELETE",
                      "path": f"{LB}/pools/{pool['id']}/members/{member['id']}"})
            d = api.recv()
            if d["status"] != 204:
                raise RuntimeError(f"member DELETE -> {d['status']}: {d['body']}")
            downs = {h: cl.recv() for h, cl in clients.items()}
            if any(u["ok"] is None for u in downs.values()):
                raise RuntimeError(f"round {i}: m2 still serving: {downs}")
            self.wait_active(lb_id)
            rnd = {"add_ms": {h: (u["ok"] - a["t0"]) * 1000 for h, u in ups.items()},
                   "add_api_ms": (a["t1"] - a["t0"]) * 1000,
                   # The run's first connection may have started just before the
                   # DELETE (served by m1 anyway): 0 then.
                   "remove_ms": {h: max(0.0, (u["ok"] - d["t0"]) * 1000)
                                 for h, u in downs.items()}}
            if i == 0:
                warm = rnd
            else:
                rounds.append(rnd)
            log(f"  round {i}{' (warm-up)' if i == 0 else ''}: served by m2 after "
                + ", ".join(f"{h} {v:.1f}" for h, v in rnd["add_ms"].items())
                + " ms; gone after "
                + ", ".join(f"{h} {v:.1f}" for h, v in rnd["remove_ms"].items()) + " ms")
        out = {"rounds": len(rounds), "warmup": warm, "samples": rounds}
        for key in ("add_ms", "remove_ms"):
            per = {}
            for h in clients:
                v = [r[key][h] for r in rounds]
                per[h] = {"p50": pct(v, 0.5), "p90": pct(v, 0.9), "max": max(v)}
            allv = [max(r[key].values()) for r in rounds]
            per["all"] = {"p50": pct(allv, 0.5), "p90": pct(allv, 0.9), "max": max(allv)}
            out[key] = per
        out["add_api_ms_p50"] = pct([r["add_api_ms"] for r in rounds], 0.5)
        return out

    # ------------------------------------------------------------ (5a) 1,000 members

    def big_pool(self):
        n = self.args.members
        sub = self.shared["sub"]
        out = {"members": n}
        base = ipaddress.ip_address(FAKE_MEMBERS)
        members = [{"address": str(base + i + 1), "protocol_port": 8080}
                   for i in range(n)]
        # One member first (a listener without any has no map): 64 slots.
        lb, listener, pool, _ = self.lb_stack(sub, 9000, members[:1], "bench-big")
        self.shared["big_lb"] = lb["id"]
        # The agents have the (empty) listener: the baseline.
        self.lab.wait_for(lambda: self.map_size("h1", listener["id"]) is not None, 15,
                          "the empty listener's map on h1")
        time.sleep(1)
        out["agent_before"] = {h: self.agent_status(h) for h in ("h1", "h2")}
        log("1,000 members: idle window before")
        out["idle_before"] = self.idle_window("h1", self.args.idle)
        offs = {h: self.log_offset(h) for h in self.lab.hosts}
        m0 = self.agent_metrics("h1")
        log(f"1,000 members: PUT of {n} members, polling h1's map")
        r = self.call("PUT", f"{LB}/pools/{pool['id']}/members", {"members": members},
                      expect=202)
        slots = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            slots = self.map_size("h1", listener["id"])
            if slots and slots >= n:
                break
            time.sleep(0.05)
        seen = time.monotonic()
        out["put_api_ms"] = (r["t1"] - r["t0"]) * 1000
        out["put_to_map_polled_ms"] = (seen - r["t0"]) * 1000
        out["map_elements"] = slots
        self.wait_active(lb["id"], timeout=120)
        time.sleep(0.5)
        out["converged_ms"] = {}
        for h in self.lab.hosts:
            lines = [t for t, _ in self.converged_lines(h, offs[h]) if t]
            out["converged_ms"][h] = (lines[0] - r["w0"]) * 1000 if lines else None
        out["passes_during"] = self.pass_delta(m0, self.agent_metrics("h1"))
        listing = self.nft("h1", "list", "map", "inet", "kuryr_lb", f"m_{listener['id']}")
        out["map_listing"] = {"lines": listing.count("\n"), "bytes": len(listing)}
        table = self.nft("h1", "list", "table", "inet", "kuryr_lb")
        out["table_listing"] = {"lines": table.count("\n"), "bytes": len(table)}
        # One more member: a map update of 8192 slots (no structure change).
        offs = {h: self.log_offset(h) for h in self.lab.hosts}
        r1 = self.call("POST", f"{LB}/pools/{pool['id']}/members",
                       {"member": {"address": str(base + n + 1), "protocol_port": 8080}},
                       expect=201)
        self.wait_active(lb["id"], timeout=60)
        self.lab.wait_for(lambda: all(self.converged_lines(h, offs[h]) for h in self.lab.hosts),
                          30, "the agents to converge the 1,001st member")
        time.sleep(0.5)
        out["one_more_ms"] = {}
        for h in self.lab.hosts:
            lines = self.converged_lines(h, offs[h])
            out["one_more_ms"][h] = (lines[0][0] - r1["w0"]) * 1000 if lines else None
        out["one_more_line_h1"] = self.converged_lines("h1", offs["h1"])[0][1][-200:]
        time.sleep(2)
        log("1,000 members: idle window with them")
        out["idle_with"] = self.idle_window("h1", self.args.idle)
        out["agent_with"] = {h: self.agent_status(h) for h in ("h1", "h2")}
        # Gone before (5b).
        self.delete_lb(lb["id"])
        self.wait_lbs_gone([lb["id"]])
        self.lab.wait_for(lambda: self.map_size("h1", listener["id"]) is None, 30,
                          "the big pool's map to leave h1")
        return out

    # ------------------------------------------------------------ (5b) 1,000 LBs

    def many_lbs(self):
        lab = self.lab
        n = self.args.lbs
        out = {"lbs": n, "threads": self.args.threads}
        sg = self.shared["sg"]
        net, [sub] = lab.network("bench-many", NET_MANY)
        self.container("h1", net, "s1", sg)
        s2 = self.container("h1", net, "s2", sg)
        self.serve("s2", "s2")
        if not lab.ping_eventually("s1", s2, timeout=15):
            raise RuntimeError("s1 does not reach s2")
        time.sleep(1)
        out["agent_before"] = {h: self.agent_status(h) for h in ("h1", "h2")}
        table0 = self.nft("h1", "list", "table", "inet", "kuryr_lb", check=False)
        out["table_before"] = {"lines": table0.count("\n"), "bytes": len(table0)}
        log(f"1,000 load balancers: idle window before")
        out["idle_before"] = self.idle_window("h1", self.args.idle)

        # A thread watches h1's `live4` set for the VIPs of the new subnet.
        many = ipaddress.ip_network(NET_MANY)
        seen = {}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                now = time.monotonic()
                for v in self.live_vips("h1"):
                    if ipaddress.ip_address(v) in many:
                        seen.setdefault(v, now)
                stop.wait(self.args.watch_interval)
        off = self.log_offset("h1")
        m0 = self.agent_metrics("h1")
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        log(f"1,000 load balancers: creating {n} stacks with {self.args.threads} threads")
        api = self.api_helper()
        api.send({"op": "bulk", "n": n, "threads": self.args.threads, "subnet_id": sub["id"],
                  "port": 80, "prefix": "bench-n", "poll": 0.05,
                  "member": {"address": s2, "protocol_port": BACKEND_PORT,
                             "subnet_id": sub["id"]}})
        try:
            b = api.recv()
            if b["errors"]:
                raise RuntimeError(f"{len(b['errors'])} stacks failed, e.g. {b['errors'][:3]}")
            vips = {s["vip"] for s in b["stacks"]}
            deadline = time.monotonic() + self.args.many_timeout
            while time.monotonic() < deadline and not vips.issubset(seen):
                time.sleep(0.1)
        finally:
            stop.set()
            watcher.join(timeout=30)
        if not vips.issubset(seen):
            raise RuntimeError(f"only {len(vips & set(seen))} of {n} VIPs live on h1 after "
                               f"{self.args.many_timeout} s")
        all_in = max(seen[v] for v in vips)
        stacks = b["stacks"]
        last_active = max(s["t_active"] for s in stacks)
        out["create_s"] = b["t1"] - b["t0"]
        out["stack_ms"] = {"p50": pct([(s["t_active"] - s["t_start"]) * 1000 for s in stacks],
                                      0.5),
                           "p99": pct([(s["t_active"] - s["t_start"]) * 1000 for s in stacks],
                                      0.99)}
        out["first_post_to_all_in_kernel_s"] = all_in - b["t0"]
        out["last_active_to_all_in_kernel_s"] = all_in - last_active
        lags = [(seen[s["vip"]] - s["t_active"]) * 1000 for s in stacks]
        out["lag_active_to_kernel_ms"] = {"p50": pct(lags, 0.5), "p90": pct(lags, 0.9),
                                          "max": max(lags)}
        out["passes_during"] = self.pass_delta(m0, self.agent_metrics("h1"))
        busy = self.pass_timings("h1", off)
        out["passes_during"]["max_ms"] = max((p["total_ms"] for p in busy), default=None)
        out["converged_lines"] = len(self.converged_lines("h1", off))
        # Works: the first and the last load balancers serve s1 (via s2).
        out["first_last_served"] = [self.served_by("s1", stacks[i]["vip"], 80)
                                    for i in (0, -1)]
        time.sleep(2)
        log("1,000 load balancers: idle window with them")
        out["idle_with"] = self.idle_window("h1", self.args.idle)
        out["agent_with"] = {h: self.agent_status(h) for h in ("h1", "h2")}
        table = self.nft("h1", "list", "table", "inet", "kuryr_lb")
        out["table_with"] = {"lines": table.count("\n"), "bytes": len(table),
                             "chains": table.count("\tchain "), "maps": table.count("\tmap ")}
        out["server_rss_kb"] = proc_rss(lab.server.proc.pid)
        return out


def proc_rss(pid):
    """VmRSS (kB) of the kuryr process `pid` is or runs (ip netns exec execs it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- the report

def mib(kb):
    return "-" if kb is None else f"{kb / 1024:.1f} MiB"


def report(res):
    lines = ["", "=" * 72, "kuryr load-balancer benchmarks", "=" * 72]
    env = res.get("environment", {})
    lines.append(f"kernel {env.get('kernel')}, {env.get('cpus')} CPUs, "
                 f"run took {fmt(res.get('duration_s'), ' s')}, load average "
                 f"{fmt(env.get('load_before'), '', 2)} before, "
                 f"{fmt(res.get('load_after'), '', 2)} after (1 min)")
    a = res.get("throughput")
    if a and "ratio" in a:
        ok = (a["ratio"] or 0) >= 0.95
        lines += ["", f"(1) TCP throughput h1 -> h2, iperf3 -t {a['time_s']}, MTU {a['mtu']} "
                  f"(median of {len(a['direct'])})",
                  f"    straight to the member   {a['direct_gbps']:7.2f} Gbit/s  (runs: "
                  f"{', '.join(fmt(x['gbps'], '', 2) for x in a['direct'])})",
                  f"    through the VIP          {a['vip_gbps']:7.2f} Gbit/s  (runs: "
                  f"{', '.join(fmt(x['gbps'], '', 2) for x in a['vip'])})",
                  f"    ratio {fmt(a['ratio'] * 100 if a['ratio'] else None, ' %')} of the "
                  f"medians  target >= 95 %: {'met' if ok else 'NOT met'}  (best vs best: "
                  f"{fmt(a['best_ratio'] * 100 if a.get('best_ratio') else None, ' %')})",
                  f"    retransmits straight/VIP (per run): "
                  f"{', '.join(str(x['retransmits']) for x in a['direct'])} / "
                  f"{', '.join(str(x['retransmits']) for x in a['vip'])}"]
    c = res.get("conn_rate")
    if c and "ratio" in c:
        lines += ["", f"(2) New TCP connections/s, one sequential client on h1 (connect, read "
                  f"the backend's line, close), member on h2, {c['seconds']} s runs, median "
                  f"of {len(c['direct'])}",
                  f"    straight to the member   {c['direct_rate']:7.0f}/s  (connection p50 "
                  f"{fmt(c['direct_p50_ms'], ' ms', 3)}, p99 {fmt(c['direct_p99_ms'], ' ms', 3)}"
                  f"; runs {', '.join(str(round(x['rate'])) for x in c['direct'])})",
                  f"    through the VIP          {c['vip_rate']:7.0f}/s  (connection p50 "
                  f"{fmt(c['vip_p50_ms'], ' ms', 3)}, p99 {fmt(c['vip_p99_ms'], ' ms', 3)}"
                  f"; runs {', '.join(str(round(x['rate'])) for x in c['vip'])})",
                  f"    ratio {fmt(c['ratio'] * 100, ' %')}; failed connections "
                  f"{c['direct_failed']} / {c['vip_failed']}"]
    t = res.get("time_to_active")
    if t and "to_active_ms" in t:
        lines += ["", f"(3) Time to ACTIVE over the REST API ({t['runs']} runs +1 warm-up; "
                  f"LB, listener, pool, member, each once the LB is ACTIVE again)",
                  f"    LB POST -> ACTIVE with its member:     p50 "
                  f"{fmt(t['to_active_ms']['p50'])} ms, p99 {fmt(t['to_active_ms']['p99'])} ms",
                  f"    LB POST -> first connection via VIP:   p50 "
                  f"{fmt(t['to_first_conn_ms']['p50'])} ms, p99 "
                  f"{fmt(t['to_first_conn_ms']['p99'])} ms (client h1, member h2; "
                  f"{t['over_900ms']} runs over 900 ms)",
                  f"    member POST -> first connection:       p50 "
                  f"{fmt(t['member_post_to_first_conn_ms']['p50'])} ms, p99 "
                  f"{fmt(t['member_post_to_first_conn_ms']['p99'])} ms (member POST -> ACTIVE "
                  f"p50 {fmt(t['member_post_to_active_ms']['p50'])} ms)",
                  f"    LB POST -> LB ACTIVE (no listener):    p50 "
                  f"{fmt(t['lb_active_ms']['p50'])} ms",
                  "    reference: Octavia's amphora driver boots a VM per load balancer: a "
                  "minute or more (not measured)"]
    m = res.get("member_change")
    if m and "add_ms" in m:
        ad, rm = m["add_ms"], m["remove_ms"]
        lines += ["", f"(4) Member added -> first connection it serves ({m['rounds']} rounds "
                  f"+1 warm-up; connections every {fmt(res['args']['probe_interval'] * 1000, ' ms', 0)}"
                  f" from a client on each host; member on h3, the other on h2)",
                  "    " + ", ".join(f"{h} p50 {fmt(ad[h]['p50'])} ms (max {fmt(ad[h]['max'])})"
                                     for h in ("h1", "h2", "h3")),
                  f"    all three hosts: p50 {fmt(ad['all']['p50'])} ms, p90 "
                  f"{fmt(ad['all']['p90'])} ms, max {fmt(ad['all']['max'])} ms  target p50 < "
                  f"100 ms: {'met' if ad['all']['p50'] < 100 else 'NOT met'} (the POST itself: "
                  f"p50 {fmt(m['add_api_ms_p50'])} ms)",
                  f"    removed -> no longer served (first of 10 in a row): all three p50 "
                  f"{fmt(rm['all']['p50'])} ms, max {fmt(rm['all']['max'])} ms"]
    b = res.get("big_pool")
    if b and "map_elements" in b:
        cv = b["converged_ms"]
        lines += ["", f"(5a) One pool of {b['members']} members (fake addresses), listener "
                  f"realized on h1, h2, h3",
                  f"    PUT (batch) {fmt(b['put_api_ms'])} ms; PUT -> agents' 'load balancer "
                  f"converged': " + ", ".join(f"{h} {fmt(v)} ms" for h, v in cv.items()),
                  f"    PUT -> h1's map has them (polled every 50 ms): "
                  f"{fmt(b['put_to_map_polled_ms'])} ms; map {b['map_elements']} slots, "
                  f"listing {b['map_listing']['lines']} lines / {b['map_listing']['bytes']} B; "
                  f"table inet kuryr_lb {b['table_listing']['lines']} lines / "
                  f"{b['table_listing']['bytes']} B",
                  f"    a 1,001st member (map update): " + ", ".join(
                      f"{h} {fmt(v)} ms" for h, v in b["one_more_ms"].items()),
                  f"    agent h1 RSS {mib(b['agent_before']['h1'].get('VmRSS'))} -> "
                  f"{mib(b['agent_with']['h1'].get('VmRSS'))} (peak "
                  f"{mib(b['agent_with']['h1'].get('VmHWM'))})",
                  f"    h1 idle passes: p50 {fmt(b['idle_before']['p50_ms'])} ms before, "
                  f"{fmt(b['idle_with']['p50_ms'])} ms with (max "
                  f"{fmt(b['idle_with']['max_ms'])} ms); agent CPU "
                  f"{fmt(b['idle_before'].get('cpu_pct'), ' %', 0)} -> "
                  f"{fmt(b['idle_with'].get('cpu_pct'), ' %', 0)}"]
    n = res.get("many_lbs")
    if n and "create_s" in n:
        pd = n["passes_during"]
        lines += ["", f"(5b) {n['lbs']} load balancers (listener, pool, member each) on a "
                  f"network of h1 only, {n['threads']} API threads",
                  f"    created in {n['create_s']:.1f} s ({n['lbs'] / n['create_s']:.0f} "
                  f"stacks/s; one stack p50 {fmt(n['stack_ms']['p50'])} ms, p99 "
                  f"{fmt(n['stack_ms']['p99'])} ms)",
                  f"    first POST -> all {n['lbs']} live in h1's kernel: "
                  f"{n['first_post_to_all_in_kernel_s']:.1f} s; last ACTIVE -> all: "
                  f"{n['last_active_to_all_in_kernel_s'] * 1000:.0f} ms; per LB ACTIVE -> "
                  f"live: p50 {fmt(n['lag_active_to_kernel_ms']['p50'], ' ms', 0)}, max "
                  f"{fmt(n['lag_active_to_kernel_ms']['max'], ' ms', 0)}",
                  f"    h1 passes meanwhile: {pd.get('n')}, mean {fmt(pd.get('mean_ms'))} ms, "
                  f"max {fmt(pd.get('max_ms'))} ms; {n['converged_lines']} 'load balancer "
                  f"converged' lines; first/last LB served by {n['first_last_served']}",
                  f"    agent RSS h1 {mib(n['agent_before']['h1'].get('VmRSS'))} -> "
                  f"{mib(n['agent_with']['h1'].get('VmRSS'))} (peak "
                  f"{mib(n['agent_with']['h1'].get('VmHWM'))}); h2 (no port on that network) "
                  f"{mib(n['agent_before']['h2'].get('VmRSS'))} -> "
                  f"{mib(n['agent_with']['h2'].get('VmRSS'))}; server "
                  f"{mib(n.get('server_rss_kb'))}",
                  f"    h1 idle passes: p50 {fmt(n['idle_before']['p50_ms'])} ms before, "
                  f"{fmt(n['idle_with']['p50_ms'])} ms with (max {fmt(n['idle_with']['max_ms'])}"
                  f" ms); agent CPU {fmt(n['idle_before'].get('cpu_pct'), ' %', 0)} -> "
                  f"{fmt(n['idle_with'].get('cpu_pct'), ' %', 0)}",
                  f"    table inet kuryr_lb on h1: {n['table_before']['lines']} lines / "
                  f"{n['table_before']['bytes']} B before, {n['table_with']['lines']} lines / "
                  f"{n['table_with']['bytes']} B with ({n['table_with']['chains']} chains, "
                  f"{n['table_with']['maps']} maps)"]
    for sec, err in res.get("errors", {}).items():
        if sec == "interrupted":
            lines += ["", "!! interrupted: the sections above are those that finished"]
            continue
        lines += ["", f"!! {sec} failed: {err.strip().splitlines()[-1] if err.strip() else err}"]
    lines.append("=" * 72)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="FILE", help="also save the results (with samples) here")
    ap.add_argument("--iperf-time", type=int, default=5, help="seconds per iperf3 run")
    ap.add_argument("--iperf-repeat", type=int, default=3)
    ap.add_argument("--rate-time", type=float, default=3, help="seconds per connection-rate run")
    ap.add_argument("--rate-repeat", type=int, default=3)
    ap.add_argument("--active-runs", type=int, default=20)
    ap.add_argument("--member-rounds", type=int, default=20)
    ap.add_argument("--probe-interval", type=float, default=0.005)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--lbs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=16, help="API threads of (5b)")
    ap.add_argument("--watch-interval", type=float, default=0.25,
                    help="seconds between reads of h1's live4 set in (5b)")
    ap.add_argument("--many-timeout", type=float, default=180)
    ap.add_argument("--idle", type=float, default=6, help="seconds of each idle window")
    ap.add_argument("--only", default="1,2,3,4,5a,5b")
    args = ap.parse_args()
    only = set(args.only.split(","))

    if os.geteuid() != 0:
        sys.exit("run as root (the lab creates namespaces)")
    if not os.access(labmod.KURYR_BIN, os.X_OK):
        sys.exit(f"{labmod.KURYR_BIN} missing: cargo build --release --bins")

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    res = {"environment": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                           "load_before": os.getloadavg()[0], "kuryr_bin": labmod.KURYR_BIN},
           "args": vars(args), "errors": {}}
    started = time.monotonic()
    lab = bench = None
    try:
        log("building the lab (3 hosts)")
        lab = labmod.Lab(hosts=3)
        bench = Bench(lab, args)
        bench.setup()
        sections = [("1", "throughput", bench.throughput),
                    ("2", "conn_rate", bench.conn_rate),
                    ("3", "time_to_active", bench.time_to_active),
                    ("4", "member_change", bench.member_change),
                    ("5a", "big_pool", bench.big_pool),
                    ("5b", "many_lbs", bench.many_lbs)]
        for key, name, fn in sections:
            if key not in only:
                continue
            t0 = time.monotonic()
            try:
                res[name] = fn()
            except KeyboardInterrupt:
                raise
            except Exception:
                res["errors"][name] = traceback.format_exc()
                log(f"{name} failed:\n{res['errors'][name]}")
                if os.environ.get("KURYR_BENCH_LOGS"):
                    log(lab.logs())
            finally:
                # The API helper is kept across sections; the others go.
                keep = bench._api.proc if bench._api else None
                for p in bench.procs:
                    if p is not keep and p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                        p.wait()
                bench.procs = [p for p in bench.procs if p is keep]
            log(f"{name}: {time.monotonic() - t0:.1f} s")
    except KeyboardInterrupt:
        log("interrupted; closing the lab")
        res["errors"]["interrupted"] = "interrupted"
    except Exception:
        res["errors"]["setup"] = traceback.format_exc()
        log(f"setup failed:\n{res['errors']['setup']}")
        if lab and os.environ.get("KURYR_BENCH_LOGS"):
            log(lab.logs())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if bench:
            bench.kill_procs()
        if lab:
            lab.close()
    res["duration_s"] = time.monotonic() - started
    res["load_after"] = os.getloadavg()[0]
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        log(f"results saved to {args.json}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
