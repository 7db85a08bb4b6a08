#!/usr/bin/env python3
"""Kubernetes Service benchmarks of kuryr on a real cluster with no kube-proxy (see
bench/KUBERNETES.md).

    sudo .venv/bin/python bench/services.py [--json FILE] [--rounds 12] [--scale 1000]

One two-node cluster of the lab (tests/k8s/cluster.py) with kuryr-cni, the agents and
`kuryr controller` balancing Services:

  (1) Service readiness: a Service (its clusterIP given, over 3 ready replicas) is
      created while a client pod on a node tries to connect to it every 20 ms; the time
      from the create (the API call's start) to the first connection that succeeds
      (read on /proc/uptime, the clock pods and this script share); p50/p99;
  (2) endpoint change: an address is added to a hand-written EndpointSlice; the time
      until the member is in both nodes' nftables maps (polled there); p50/p99;
  (3) throughput: one TCP stream (busybox dd | nc into nc -e dd) from a pod to
      a pod on the other node, straight to the pod and through the Service's ClusterIP,
      in alternating rounds; MB/s and the ratio;
  (4) scale: --scale Services of 5 endpoints each (selector-less, hand-written
      slices): the time until all have their load balancer, the controller's memory,
      the agents' pass durations meanwhile and an endpoint change at that scale, then
      a controller restart and the time its full resync takes.

API writes go through a small HTTPS client inside the lab namespace (kubectl's own
start-up would be most of the figure). Figures are printed, never asserted. Needs root
and the release binaries.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback

from common import finish, fmt, log, pct  # bench/common.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "k8s"))

from cluster import APISERVER, Cluster, busybox_deployment, busybox_pod  # noqa: E402

LB_ROOT = "/load-balancer/v2"
WEB_CMD = ["sh", "-c",
           "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && "
           "(nc -ll -p 5001 -e dd of=/dev/null 2>/dev/null) & "
           "trap 'exit 0' TERM; sleep 1000000 & wait"]

# Writes to the apiserver from inside the lab namespace: one JSON request per line
# on stdin ({"method", "path", "body", "ctype"}), one line back with the status and
# /proc/uptime just before the request was sent.
DRIVER = r"""
import http.client, json, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
host, port = sys.argv[1].split("//")[1].split(":")
conn = http.client.HTTPSConnection(host, int(port), context=ctx)
for line in sys.stdin:
    r = json.loads(line)
    body = json.dumps(r["body"]) if r.get("body") is not None else None
    for attempt in (0, 1):
        t0 = float(open("/proc/uptime").read().split()[0])
        try:
            conn.request(r["method"], r["path"], body=body,
                         headers={"Content-Type": r.get("ctype", "application/json")})
            resp = conn.getresponse()
            break
        except (OSError, http.client.HTTPException):
            # The apiserver closes idle connections: a new one, once.
            conn.close()
            conn = http.client.HTTPSConnection(host, int(port), context=ctx)
    data = resp.read()
    print(json.dumps({"status": resp.status, "t0": t0, "body": data[:300].decode(errors="replace")}), flush=True)
"""


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


class Api:
    """The driver above, in the lab namespace."""

    def __init__(self, c):
        self.lock = threading.Lock()
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", c.ns("lab"), sys.executable, "-u", "-c", DRIVER,
             APISERVER, c.pki.ca, c.pki.path("admin.crt"), c.pki.path("admin.key")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, method, path, body=None, ctype="application/json"):
        with self.lock:
            self.p.stdin.write(json.dumps({"method": method, "path": path, "body": body,
                                           "ctype": ctype}) + "\n")
            self.p.stdin.flush()
            r = json.loads(self.p.stdout.readline())
        if r["status"] >= 300:
            raise RuntimeError(f"{method} {path}: {r['status']} {r['body']}")
        return r["t0"]

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def until(c, cond, timeout, what):
    """c.wait_for(cond), returning cond's last (true) value."""
    last = []
    c.wait_for(lambda: last.append(cond()) or last[-1], timeout, what)
    return last[-1]


def service(name, ip=None, selector=None, port=80, target=8080):
    spec = {"ports": [{"name": "p", "port": port, "targetPort": target}]}
    if ip:
        spec["clusterIP"] = ip
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def slice_(name, svc, addresses, port=8080):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}}
                          for a in addresses]}


class Bench:
    def __init__(self, c, args):
        self.c, self.args = c, args
        self.api = Api(c)

    def lbs(self, name=None):
        q = f"?tags=kuryr.k8s.service.name={name}" if name else \
            f"?tags=kuryr.k8s.cluster={self.c.prefix}"
        _, data = self.c.api("GET", f"/lbaas/loadbalancers{q}", expect=200, root=LB_ROOT)
        return data["loadbalancers"]

    def listener(self, svc):
        _, data = self.c.api("GET", f"/lbaas/listeners?tags=kuryr.k8s.service.name={svc}",
                             expect=200, root=LB_ROOT)
        return data["listeners"][0]["id"] if data["listeners"] else None

    def nft_has(self, host, ip, listener):
        """Whether `ip` is a backend in the listener's map on `host` (one map is listed:
        the whole table is large at scale)."""
        out = self.c.exec(host, "nft", "list", "map", "inet", "kuryr_lb", f"m_{listener}",
                          check=False)
        return f"{ip} . " in out

    # ------------------------------------------------------------ (1)

    def readiness(self):
        times = []
        for i in range(self.args.rounds):
            client = f"client-{self.c.hosts[i % 2]}"
            ip = f"10.96.77.{10 + i}"
            # Attempts every 20 ms, each in the background (a SYN to a VIP nobody
            # serves yet is lost; its retransmission would come a second later).
            script = (f"rm -f /tmp/ok; i=0; while [ ! -s /tmp/ok ] && [ $i -lt 500 ]; do "
                      f"(nc -w 1 {ip} 80 </dev/null >/dev/null 2>&1 && "
                      f"cut -d' ' -f1 /proc/uptime >> /tmp/ok) & usleep 20000; i=$((i+1)); "
                      f"done; head -n1 /tmp/ok")
            p = subprocess.Popen(self.c.kubectl_cmd() + ["exec", client, "--", "sh", "-c",
                                                         script],
                                 stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)  # the loop runs before the Service exists
            t0 = self.api.call("POST", "/api/v1/namespaces/default/services",
                               service(f"ready-{i}", ip, {"app": "web"}))
            out, _ = p.communicate(timeout=60)
            try:
                times.append(float(out.strip()) - t0)
            except ValueError:
                log(f"readiness round {i}: no connection ({out!r})")
        return times

    # ------------------------------------------------------------ (2)

    def endpoint_changes(self, tag, n):
        svc = f"ep-{tag}"
        base = [f"10.245.250.{i}" for i in range(1, 6)]
        self.c.apply([service(svc), slice_(svc, svc, base)])
        lid = until(self.c, lambda: self.listener(svc), 30, "the listener")
        self.c.wait_for(lambda: all(self.nft_has(h, base[-1], lid) for h in self.c.hosts), 30,
                        "the first members in both nodes' maps")
        times = []
        for i in range(n):
            new = f"10.245.251.{(i % 250) + 1}"
            path = f"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{svc}"
            t0 = self.api.call("PUT", path, slice_(svc, svc, base + [new]))
            seen = {}

            def poll(h):
                while uptime() - t0 < 20:
                    if self.nft_has(h, new, lid):
                        seen[h] = uptime()
                        return
            threads = [threading.Thread(target=poll, args=(h,)) for h in self.c.hosts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(seen) == len(self.c.hosts):
                times.append(max(seen.values()) - t0)
            # Back to the base set (its member leaves).
            self.api.call("PUT", path, slice_(svc, svc, base))
            self.c.wait_for(lambda: not any(self.nft_has(h, new, lid) for h in self.c.hosts), 30,
                            "the member gone")
        return times

    # ------------------------------------------------------------ (3)

    def throughput(self):
        pods = self.c.pods("app=web")
        server = next(p for p in pods if p["spec"]["nodeName"] == self.c.hosts[1])
        ip = server["status"]["podIP"]
        self.c.apply([service("tput", "10.96.78.1", {"statefulset.kubernetes.io/pod-name":
                                                     "none"}, port=5001, target=5001)])
        # One member only: the server pod (a hand-written slice, the selector matches none).
        self.c.apply([slice_("tput-1", "tput", [ip], port=5001)])
        lid = until(self.c, lambda: self.listener("tput"), 30, "the listener")
        self.c.wait_for(lambda: all(self.nft_has(h, ip, lid) for h in self.c.hosts), 30,
                        "the throughput member in the maps")
        mb = 100
        script = ("t0=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=64k count={n} 2>/dev/null"
                  " | nc -w 5 {dst} {port}; t1=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1")
        res = {"direct": [], "service": []}
        for r in range(3):
            for kind, dst, port in (("direct", ip, 5001), ("service", "10.96.78.1", 5001)):
                raw = self.c.pod_exec("client-" + self.c.hosts[0], "sh", "-c",
                                      script.format(n=mb * 16, dst=dst, port=port),
                                      timeout=120)
                log(f"throughput {kind}: {raw.stdout.strip()!r} {raw.stderr.strip()[:200]!r}")
                out = raw.stdout.split()
                secs = float(out[1]) - float(out[0])
                res[kind].append(mb / secs if secs > 0 else 0)
        return res

    # ------------------------------------------------------------ (4)

    def agent_pass(self):
        total, count = 0.0, 0.0
        for h in self.c.hosts:
            total += self.c.metric(h, "kuryr_agent_pass_seconds_sum")
            count += self.c.metric(h, "kuryr_agent_pass_seconds_count")
        return total, count

    def controller_rss_mb(self):
        """The controller's resident memory (nsenter execs it: the pid is its own)."""
        try:
            status = open(f"/proc/{self.c.controller.proc.pid}/status").read()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def scale(self):
        n = self.args.scale
        out = {"services": n}
        rss0 = self.controller_rss_mb()
        p0 = self.agent_pass()
        t0 = time.monotonic()
        for i in range(n):
            name = f"scale-{i}"
            addrs = [f"10.246.{i // 50}.{(i % 50) * 5 + k + 1}" for k in range(5)]
            self.api.call("POST", "/api/v1/namespaces/default/services", service(name))
            self.api.call("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                          slice_(name, name, addrs))
        out["created_s"] = time.monotonic() - t0
        self.c.wait_for(lambda: len(self.lbs()) >= n + 4, 600, f"{n} load balancers")
        out["all_balanced_s"] = time.monotonic() - t0
        last = f"10.246.{(n - 1) // 50}.{((n - 1) % 50) * 5 + 5}"
        lid = until(self.c, lambda: self.listener(f"scale-{n - 1}"), 120, "the last listener")
        self.c.wait_for(lambda: all(self.nft_has(h, last, lid) for h in self.c.hosts), 300,
                        "the last members in both nodes' maps")
        out["all_in_maps_s"] = time.monotonic() - t0
        p1 = self.agent_pass()
        out["agent_passes"] = p1[1] - p0[1]
        out["agent_pass_mean_ms"] = (p1[0] - p0[0]) / max(1, p1[1] - p0[1]) * 1000
        out["controller_rss_mb_before"] = rss0
        out["controller_rss_mb"] = self.controller_rss_mb()
        out["endpoint_change_at_scale_s"] = self.endpoint_changes("scale", 5)
        # A restart: the full resync (every Service read back from Octavia and checked).
        self.c.controller.stop()
        m = self.c.controller_metrics_addr
        t1 = time.monotonic()
        self.c.start_controller(extra=("--metrics-listen", m))

        def resynced():
            out_ = self.c.exec("lab", "curl", "-s", "-m", "2", f"http://{m}/metrics",
                               check=False)
            done = depth = None
            for line in out_.splitlines():
                if line.startswith('kuryr_controller_reconciles_total{kind="service"}'):
                    done = float(line.split()[-1])
                if line.startswith("kuryr_controller_queue_depth "):
                    depth = float(line.split()[-1])
            log(f"resync: {done} service reconciles, queue {depth}")
            return done is not None and done >= n and depth == 0
        self.c.wait_for(resynced, 600, "the restarted controller's resync")
        out["resync_s"] = time.monotonic() - t1
        out["controller_rss_mb_after_restart"] = self.controller_rss_mb()
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--scale", type=int, default=1000)
    args = ap.parse_args()
    metrics = "10.99.0.1:9797"
    c = Cluster(hosts=2, cni="kuryr", probe=False)
    report = {}
    try:
        # A VIP port per Service: past Neutron's default of 500 ports at --scale 1000.
        project = c.openstack("token", "issue")["project_id"]
        c.api("PUT", f"/quotas/{project}", {"quota": {"port": -1}}, expect=200)
        c.controller_metrics_addr = metrics
        c.start_controller(extra=("--metrics-listen", metrics))
        b = Bench(c, args)
        c.apply([busybox_deployment("web", 3, command=WEB_CMD),
                 busybox_pod("client-h1", node="h1"), busybox_pod("client-h2", node="h2")])
        c.wait_pods(count=5, timeout=120)
        log("(1) Service created -> reachable")
        r = b.readiness()
        report["service_ready_ms"] = {"p50": pct(r, .5) * 1000, "p99": pct(r, .99) * 1000,
                                      "n": len(r)} if r else None
        log("(2) endpoint change -> member in effect on both nodes")
        e = b.endpoint_changes("bench", args.rounds)
        report["endpoint_change_ms"] = {"p50": pct(e, .5) * 1000, "p99": pct(e, .99) * 1000,
                                        "n": len(e)} if e else None
        log("(3) TCP through the ClusterIP vs straight to the pod")
        t = b.throughput()
        d, s = statistics.median(t["direct"]), statistics.median(t["service"])
        report["throughput"] = {"direct_mb_s": d, "service_mb_s": s,
                                "ratio": s / d if d else None, "rounds": t}
        log(f"(4) {args.scale} Services of 5 endpoints")
        sc = b.scale()
        sc["endpoint_change_at_scale_ms"] = [x * 1000 for x in sc.pop("endpoint_change_at_scale_s")]
        report["scale"] = sc
        b.api.close()
    except Exception:
        traceback.print_exc()
        report["error"] = traceback.format_exc()
    finally:
        c.close()
    rs, ec, tp = report.get("service_ready_ms"), report.get("endpoint_change_ms"), \
        report.get("throughput")
    print("\nkuryr Services (no kube-proxy), 2 nodes on one 2-core machine")
    if rs:
        print(f"  Service created -> reachable from a pod: p50 {fmt(rs['p50'], ' ms', 0)}, "
              f"p99 {fmt(rs['p99'], ' ms', 0)} (n={rs['n']}; target p50 < 300 ms)")
    if ec:
        print(f"  endpoint change -> member on both nodes: p50 {fmt(ec['p50'], ' ms', 0)}, "
              f"p99 {fmt(ec['p99'], ' ms', 0)} (n={ec['n']}; target p50 < 500 ms)")
    if tp:
        print(f"  TCP through the ClusterIP: {fmt(tp['service_mb_s'], ' MB/s', 0)} vs straight "
              f"to the pod {fmt(tp['direct_mb_s'], ' MB/s', 0)} = "
              f"{fmt(tp['ratio'] * 100 if tp['ratio'] else None, ' %', 0)} (target >= 95 %)")
    sc = report.get("scale")
    if sc:
        print(f"  {sc['services']} Services x 5 endpoints: all balanced in "
              f"{fmt(sc['all_balanced_s'], ' s')}, in both nodes' maps in "
              f"{fmt(sc['all_in_maps_s'], ' s')}; controller RSS "
              f"{fmt(sc['controller_rss_mb_before'], ' MB')} -> "
              f"{fmt(sc['controller_rss_mb'], ' MB')}; agent passes "
              f"{sc['agent_passes']:.0f}, mean {fmt(sc['agent_pass_mean_ms'], ' ms')}; "
              f"endpoint change at that scale {', '.join(fmt(x, '', 0) for x in sc['endpoint_change_at_scale_ms'])} ms; "
              f"full resync after a controller restart {fmt(sc['resync_s'], ' s')}")
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
