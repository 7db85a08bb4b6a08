#!/usr/bin/env python3
"""Benchmarks of kuryr server replicas on etcd against one server on the embedded store,
side by side in one run (see bench/REPLICAS.md).

    .venv/bin/python bench/replicas.py [--json FILE] [--creates 1000] [--clients 16]

  (1) creates: --creates port creates from --clients concurrent clients, against one
      `kuryr server` on the embedded store, then spread over three replicas on a
      three-member etcd cluster; creates/s and latency p50/p99;
  (2) watch latency: a port bound to a host is created through replica A; the time from
      the create request until the port is in a host watch (what an agent reads) opened on
      replica B, whose view comes from etcd's watch; p50/p99 (the embedded reference: the
      same server's own watch);
  (3) failover: clients create ports through one address (HAProxy, health-checked on
      /readyz) while one replica is killed (kill -9): the longest any client went without
      a successful create, and how many requests failed and were sent again.

Everything runs on this one 2-core machine, etcd members included (no fsync: the figure
is the ratio, not the absolute). Processes listen on loopback only. Figures are printed,
never asserted. Needs the release binary built with `--features kuryr/etcd` and etcd
($KURYR_ETCD_BIN, else scripts/k8s-build.sh's).
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import requests

from common import finish, fmt, log, pct  # bench/common.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "replicas"))

from replicas import Replicas, Server, free_port, haproxy_config, wait_for  # noqa: E402


def token(server, password):
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
    r = requests.post(f"{server.auth_url}/auth/tokens", json=body, timeout=10)
    r.raise_for_status()
    return r.headers["X-Subject-Token"]


class Api:
    """Neutron calls with one keep-alive session per thread and base URL."""

    def __init__(self, tok):
        self.tok = tok
        self.local = threading.local()

    def call(self, base, method, path, body=None, timeout=30, stream=False):
        s = getattr(self.local, "s", None)
        if s is None:
            s = self.local.s = requests.Session()
            s.headers["X-Auth-Token"] = self.tok
        return s.request(method, f"{base}/networking/v2.0{path}", json=body, timeout=timeout,
                         stream=stream)


def network(api, base, cidr):
    n = api.call(base, "POST", "/networks", {"network": {"name": "bench"}}).json()["network"]
    r = api.call(base, "POST", "/subnets", {"subnet": {"network_id": n["id"], "ip_version": 4,
                                                       "cidr": cidr}})
    r.raise_for_status()
    return n["id"]


def creates(api, bases, nid, total, clients):
    """`total` creates from `clients` threads, request i to bases[i % len]; (seconds,
    latencies)."""
    lat = [None] * total

    def one(i):
        t0 = time.perf_counter()
        r = api.call(bases[i % len(bases)], "POST", "/ports", {"port": {"network_id": nid}})
        if r.status_code != 201:
            raise RuntimeError(f"create {i}: {r.status_code} {r.text[:200]}")
        lat[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    return time.perf_counter() - t0, lat


def watch_latency(api, writer, reader, nid, host, rounds):
    """Creates through `writer` ports bound to `host`; the time from each request until
    the port is in `host`'s watch opened on `reader`."""
    seen = {}
    ready = threading.Event()
    stop = threading.Event()

    def follow():
        r = api.call(reader, "GET", f"/kuryr/hosts/{host}/watch?since=0", timeout=120, stream=True)
        r.raise_for_status()
        ready.set()
        try:
            for line in r.iter_lines():
                if stop.is_set():
                    return
                if not line:
                    continue
                frame = json.loads(line)
                now = time.perf_counter()
                for p in (frame.get("put") or {}).get("ports", []):
                    seen.setdefault(p["id"], now)
        except requests.RequestException:
            if not stop.is_set():
                raise

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    ready.wait(30)
    out = []
    for _ in range(rounds):
        sent = time.perf_counter()
        r = api.call(writer, "POST", "/ports", {"port": {"network_id": nid,
                                                         "binding:host_id": host}})
        pid = r.json()["port"]["id"]
        wait_for("the port in the watch", lambda: pid in seen, 10, interval=0.001)
        # From the create's request (its answer can come after the frame).
        out.append(seen[pid] - sent)
    stop.set()
    return out


def haproxy(servers, directory):
    port = free_port()
    cfg = os.path.join(directory, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(haproxy_config(f"127.0.0.1:{port}", [f"127.0.0.1:{s.port}" for s in servers]))
    p = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for("haproxy", lambda: requests.get(f"{url}/readyz", timeout=2).status_code == 200, 20)
    return p, url


def failover(api, cloud, nid, clients, seconds=6.0, kill_at=2.0):
    """Clients create through one address while replica 0 is killed at `kill_at`."""
    with tempfile.TemporaryDirectory() as d:
        proxy, url = haproxy(cloud.servers, d)
        try:
            start = time.perf_counter()
            gaps, failed = [0.0] * clients, [0] * clients

            def client(c):
                last = time.perf_counter()
                while time.perf_counter() - start < seconds:
                    try:
                        r = api.call(url, "POST", "/ports", {"port": {"network_id": nid}},
                                     timeout=10)
                        ok = r.status_code == 201
                    except requests.RequestException:
                        ok = False
                    now = time.perf_counter()
                    if ok:
                        gaps[c] = max(gaps[c], now - last)
                        last = now
                    else:
                        failed[c] += 1
                        # A new connection for the retry (the old one may be to the dead one).
                        api.local.s = None

            def killer():
                time.sleep(kill_at)
                cloud.servers[0].kill()

            with concurrent.futures.ThreadPoolExecutor(clients + 1) as pool:
                k = pool.submit(killer)
                list(pool.map(client, range(clients)))
                k.result()
            return {"longest_gap_ms": max(gaps) * 1000, "gap_p50_ms": pct(gaps, .5) * 1000,
                    "failed_requests": sum(failed), "clients": clients}
        finally:
            proxy.kill()
            proxy.wait()


def summary(seconds, lat):
    return {"creates": len(lat), "seconds": seconds, "per_s": len(lat) / seconds,
            "p50_ms": pct(lat, .5) * 1000, "p99_ms": pct(lat, .99) * 1000}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--creates", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--watch-rounds", type=int, default=100)
    args = ap.parse_args()
    report = {}
    quota = ("--default-quota", "port=-1")
    try:
        log("one server on the embedded store")
        one = Server(*quota)
        try:
            api = Api(token(one, one.admin_password))
            nid = network(api, one.url, "10.40.0.0/16")
            report["embedded"] = summary(*creates(api, [one.url], nid, args.creates, args.clients))
            report["embedded"]["watch_ms"] = [x * 1000 for x in watch_latency(
                api, one.url, one.url, nid, "bench-host", args.watch_rounds)]
        finally:
            one.stop()
        log("three replicas on a three-member etcd cluster")
        cloud = Replicas(3, *quota)
        try:
            urls = [s.url for s in cloud.servers]
            api = Api(token(cloud.servers[0], cloud.admin_password))
            nid = network(api, urls[0], "10.40.0.0/16")
            report["replicas"] = summary(*creates(api, urls, nid, args.creates, args.clients))
            report["replicas"]["watch_ms"] = [x * 1000 for x in watch_latency(
                api, urls[0], urls[1], nid, "bench-host", args.watch_rounds)]
            log("failover: kill -9 one replica under load")
            report["failover"] = failover(api, cloud, nid, 8)
        finally:
            cloud.close()
    except Exception:
        traceback.print_exc()
        report["error"] = traceback.format_exc()
    print("\nkuryr server replicas on etcd vs one server on the embedded store "
          "(one 2-core machine, etcd without fsync: compare the ratios)")
    e, r = report.get("embedded"), report.get("replicas")
    for name, x in (("1 server, embedded store", e), ("3 replicas, 3-member etcd", r)):
        if x:
            w = x.get("watch_ms") or []
            print(f"  {name}: {x['creates']} port creates from {args.clients} clients in "
                  f"{fmt(x['seconds'], ' s')} = {fmt(x['per_s'], '/s', 0)}, p50 "
                  f"{fmt(x['p50_ms'], ' ms')}, p99 {fmt(x['p99_ms'], ' ms')}; create -> host "
                  f"watch p50 {fmt(pct(w, .5), ' ms')}, p99 {fmt(pct(w, .99), ' ms')}")
    if e and r:
        print(f"  ratio replicas / embedded: creates/s {r['per_s'] / e['per_s']:.2f}x, "
              f"p50 latency {r['p50_ms'] / e['p50_ms']:.2f}x")
    f = report.get("failover")
    if f:
        print(f"  failover (kill -9 of one of 3 replicas behind HAProxy, {f['clients']} clients "
              f"creating): longest time without a successful create {fmt(f['longest_gap_ms'], ' ms', 0)} "
              f"(p50 over clients {fmt(f['gap_p50_ms'], ' ms', 0)}), {f['failed_requests']} "
              f"requests failed and were sent again")
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
