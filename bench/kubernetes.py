#!/usr/bin/env python3
"""Kubernetes benchmarks of kuryr on a real cluster (see bench/KUBERNETES.md).

    sudo .venv/bin/python bench/kubernetes.py [--json FILE] [--burst 50] [--pods 20]
        [--cni-rounds 2]

One two-node cluster of the lab (tests/k8s/cluster.py), measured in one run with the
reference CNI (bridge + host-local, a pod CIDR per node routed over the underlay) and
with kuryr (kuryr-cni, the agents, `kuryr controller` with warm port pools), in
alternating rounds (--cni-rounds) so that drift weighs on both alike:

  (1) pod ADD latency as containerd calls the plugin: each node's plugin binary is
      replaced by the same bash wrapper, which times the real plugin's run with
      $EPOCHREALTIME (no fork of its own in the interval); p50/p99 over --pods pods
      made one after the other, alternating nodes;
  (2) burst: a Deployment scaled 0 -> --burst; the time until all are Running, and
      until every one answers a ping from a prober pod;
  (3) NetworkPolicy convergence (kuryr only): probe pods on both nodes connect to web
      pods on both nodes in a loop and log each attempt with /proc/uptime; a policy
      that admits only role=client is created, and the time to the first refused
      attempt of the other clients (the last of the nodes) is the convergence; p50
      over several rounds (each round deletes it and waits for the connections back).

Figures are printed, never asserted. Needs root and the release binaries.
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import time
import traceback

from common import fmt, log, pct  # bench/common.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "k8s"))

from cluster import KURYR_CNI_BIN, Cluster  # noqa: E402

POD_NET_CIDR = "10.200.0.0/16"
IMAGE = "kuryr.test/busybox:1"
WRAPPER = """#!/bin/bash
t0=$EPOCHREALTIME
{real} "$@"
rc=$?
t1=$EPOCHREALTIME
echo "$CNI_COMMAND $t0 $t1 $rc" >> {log}
exit $rc
"""


def uptime():
    """The clock pods read (/proc/uptime is the machine's, in every container)."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


class Bench:
    def __init__(self, c, args):
        self.c, self.args = c, args
        self.logs = {}

    # ------------------------------------------------------------ plugin timing

    def wrap_plugins(self, name, real):
        """Puts the timing wrapper in place of `name` in every node's CNI bin dir."""
        for h in self.c.hosts:
            d = self.c.cni_bin_dir(h)
            path = os.path.join(d, name)
            logf = os.path.join(self.c.dir, f"cni-times-{name}-{h}.log")
            self.logs.setdefault(name, []).append(logf)
            if os.path.lexists(path):
                os.unlink(path)
            with open(path, "w") as f:
                f.write(WRAPPER.format(real=real, log=logf))
            os.chmod(path, 0o755)

    def add_times(self, name, since):
        """ADD durations (s) logged by `name`'s wrappers after `since` (epoch s)."""
        out = []
        for logf in self.logs.get(name, []):
            if not os.path.exists(logf):
                continue
            for line in open(logf):
                parts = line.split()
                if len(parts) == 4 and parts[0] == "ADD" and parts[3] == "0" \
                        and float(parts[1]) >= since:
                    out.append(float(parts[2]) - float(parts[1]))
        return out

    # ------------------------------------------------------------ pods

    def pod(self, name, node, labels=None, cmd=("sleep", "3600")):
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": labels or {"bench": "seq"}},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": IMAGE,
                                         "imagePullPolicy": "Never", "command": list(cmd)}]}}

    def delete_all(self, selector):
        # Deployments first: pods deleted under a live ReplicaSet come back as
        # replacements, whose sandboxes then wait for ports nobody will assign.
        self.c.kubectl("delete", "deployments", "-l", selector, "--wait=true",
                       "--cascade=foreground", timeout=180, check=False)
        self.c.kubectl("delete", "pods", "-l", selector, "--wait=true",
                       "--grace-period=0", "--force", timeout=180, check=False)
        self.c.wait_for(lambda: not self.c.pods(selector), 120, f"pods {selector} gone")

    def sequential(self, cni, r=0):
        """(1): --pods pods one at a time; the plugin's ADD durations (s)."""
        since = time.time()
        for i in range(self.args.pods):
            node = self.c.hosts[i % len(self.c.hosts)]
            self.c.apply(self.pod(f"seq-{cni}-{r}-{i}", node))
            self.c.wait_pods("bench=seq", count=i + 1, timeout=120)
        name = "kuryr-cni" if cni == "kuryr" else "bridge"
        times = self.add_times(name, since)
        self.delete_all("bench=seq")
        return times

    def burst(self, cni, r=0):
        """(2): a Deployment 0 -> --burst; Running, then every pod answering a ping."""
        n = self.args.burst
        tag = f"{cni}-{r}"  # in the names of this round's objects
        self.c.apply(self.pod(f"prober-{tag}", self.c.hosts[0], labels={"bench": "prober"}))
        self.c.wait_pods("bench=prober", count=1)
        dep = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": f"burst-{tag}", "labels": {"bench": "burst"}},
               "spec": {"replicas": 0, "selector": {"matchLabels": {"app": f"burst-{tag}"}},
                        "template": {"metadata": {"labels": {"app": f"burst-{tag}",
                                                             "bench": "burst"}},
                                     "spec": {"terminationGracePeriodSeconds": 0,
                                              "containers": [{
                                                  "name": "c", "image": IMAGE,
                                                  "imagePullPolicy": "Never",
                                                  "command": ["sleep", "3600"]}]}}}}
        self.c.apply(dep)
        since = time.time()
        t0 = time.monotonic()
        self.c.kubectl("scale", "deployment", f"burst-{tag}", f"--replicas={n}")
        self.c.wait_pods(f"app=burst-{tag}", count=n, timeout=600)
        t_running = time.monotonic() - t0
        ips = list(self.c.pod_ips(f"app=burst-{tag}").values())
        pending = set(ips)
        while pending:
            script = " ".join(f"(ping -c 1 -W 1 {ip} >/dev/null && echo {ip}) &"
                              for ip in sorted(pending)) + " wait"
            out = self.c.pod_exec(f"prober-{tag}", "sh", "-c", script, check=False,
                                  timeout=60).stdout.split()
            pending -= set(out)
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"{len(pending)} pods never answered: {sorted(pending)}")
        t_reachable = time.monotonic() - t0
        name = "kuryr-cni" if cni == "kuryr" else "bridge"
        adds = self.add_times(name, since)
        self.delete_all("bench=burst")
        self.delete_all("bench=prober")
        return {"n": n, "running_s": t_running, "reachable_s": t_reachable,
                "add_p50_ms": pct(adds, 0.5) and pct(adds, 0.5) * 1e3,
                "add_p99_ms": pct(adds, 0.99) and pct(adds, 0.99) * 1e3}

    # ------------------------------------------------------------ policy

    def policy(self, rounds):
        """(3): NetworkPolicy created -> the other clients refused on every node."""
        c = self.c
        web, clients, others = [], [], []
        for i, h in enumerate(c.hosts):
            web.append(self.pod(f"web-{i}", h, {"bench": "pol", "app": "web"},
                                ("sh", "-c", "mkdir -p /w && echo hi > /w/index.html && "
                                             "exec httpd -f -p 8080 -h /w")))
        c.apply(web)
        c.wait_pods("app=web", count=len(c.hosts))
        ips = " ".join(c.pod_ips("app=web").values())
        # One loop per web address, so that a refused (timed out) attempt at one does
        # not delay the attempts at the other.
        loop = ("for ip in %s; do (while :; do t=$(cut -d' ' -f1 /proc/uptime); "
                "if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 $ip 8080 2>/dev/null | grep -q HTTP; "
                "then echo \"$t $ip ok\"; else echo \"$t $ip fail\"; fi; done) & done; wait" % ips)
        for i, h in enumerate(c.hosts):
            clients.append(self.pod(f"client-{i}", h, {"bench": "pol", "role": "client"},
                                    ("sh", "-c", loop)))
            others.append(self.pod(f"other-{i}", h, {"bench": "pol", "role": "other"},
                                   ("sh", "-c", loop)))
        c.apply(clients + others)
        c.wait_pods("bench=pol", count=3 * len(c.hosts))
        pol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "bench-web"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                        "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"podSelector": {
                            "matchLabels": {"role": "client"}}}],
                            "ports": [{"protocol": "TCP", "port": 8080}]}]}}
        names = [p["metadata"]["name"] for p in others]

        def first_after(t0, outcome, pods):
            """The latest, over `pods` and web addresses, of each one's first attempt
            started after t0 with `outcome` (None if one has none yet)."""
            worst = 0.0
            for pod in pods:
                seen = {}
                for line in c.kubectl("logs", pod, "--since=60s", timeout=30).stdout.splitlines():
                    parts = line.split()
                    if len(parts) != 3 or parts[2] not in ("ok", "fail"):
                        continue
                    t, ip, res = float(parts[0]), parts[1], parts[2]
                    if t >= t0 and res == outcome and ip not in seen:
                        seen[ip] = t
                if len(seen) < len(c.hosts):
                    return None
                worst = max(worst, max(seen.values()) - t0)
            return worst

        samples, reopen = [], []
        for r in range(rounds):
            t0 = uptime()
            c.apply(pol)
            c.wait_for(lambda: first_after(t0, "fail", names) is not None, 30,
                       "the policy to refuse the other clients")
            samples.append(first_after(t0, "fail", names))
            # The allowed clients still get through (checked on the last round's logs).
            t1 = uptime()
            c.kubectl("delete", "networkpolicy", "bench-web", "--wait=true")
            c.wait_for(lambda: first_after(t1, "ok", names) is not None, 30,
                       "the connections to come back")
            reopen.append(first_after(t1, "ok", names))
        allowed_ok = first_after(0.0, "ok", [p["metadata"]["name"] for p in clients])
        self.delete_all("bench=pol")
        return {"rounds": rounds, "p50_ms": pct(samples, 0.5) * 1e3,
                "max_ms": max(samples) * 1e3, "reopen_p50_ms": pct(reopen, 0.5) * 1e3,
                "allowed_clients_connected": allowed_ok is not None}


def waited_adds(c):
    """ADDs, over the nodes, whose pod's port was not there yet when they came."""
    return sum(int(c.metric(h, "kuryr_agent_cni_pod_ports_total", port="waited"))
               for h in c.hosts)


def pool_size(c, host):
    """Ports of `host`'s pool (made ahead of demand by the controller)."""
    _, data = c.api("GET", f"/ports?tags=kuryr.k8s.pool&binding:host_id={host}")
    return len((data or {}).get("ports", []))


def summary(rounds, bursts):
    """One CNI's figures: ADD samples (s) per round, pooled, and the rounds' bursts."""
    ms = [t * 1e3 for r in rounds for t in r]
    return {"sequential": {"n": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99),
                           "rounds_p50_ms": [pct(r, 0.5) and pct(r, 0.5) * 1e3
                                             for r in rounds]},
            "burst": {"n": bursts[0]["n"], "rounds": bursts,
                      **{k: statistics.median(b[k] for b in bursts if b[k] is not None)
                         for k in ("running_s", "reachable_s", "add_p50_ms")}}}


def run(args):
    res = {"environment": {"cpus": os.cpu_count(), "kernel": os.uname().release},
           "rounds": args.cni_rounds}
    started = time.monotonic()
    c = Cluster(hosts=2, cni="reference")
    try:
        b = Bench(c, args)
        b.wrap_plugins("bridge", "/usr/lib/cni/bridge")
        b.wrap_plugins("kuryr-cni", KURYR_CNI_BIN)
        c.network("pods", POD_NET_CIDR)
        times = {"reference": [], "kuryr": []}
        bursts = {"reference": [], "kuryr": []}
        waited = []
        # Rounds alternate the two CNIs on the same cluster, so that the machine's
        # drift (caches, etcd's size, other load) weighs on both alike. The controller
        # runs only in kuryr's rounds (a reference cluster has none); kuryr's rounds
        # start from warm pools, as the design intends.
        for r in range(args.cni_rounds):
            for cni in ("reference", "kuryr"):
                if cni == "kuryr":
                    c.start_controller("--pod-network", "pods", "--cluster-name", c.prefix,
                                       "--leader-elect", "false", "--ports-pool-min",
                                       str(args.pool_min), "--ports-pool-batch", "10")
                    c.wait_for(lambda: all(pool_size(c, h) >= args.pool_min
                                           for h in c.hosts), 120, "the port pools to fill")
                    before = waited_adds(c)
                c.set_cni(cni)
                log(f"round {r + 1}/{args.cni_rounds}, {cni}: sequential pods")
                t = b.sequential(cni, r)
                times[cni].append(t)
                note = ""
                if cni == "kuryr":
                    waited.append(waited_adds(c) - before)
                    note = f" ({waited[-1]} of {len(t)} waited for their port)"
                log(f"  ADD p50 {fmt(pct(t, 0.5) and pct(t, 0.5) * 1e3, ' ms')}{note}; burst")
                bursts[cni].append(b.burst(cni, r))
                log(f"  reachable in {fmt(bursts[cni][-1]['reachable_s'], ' s')}")
                if cni == "kuryr" and r + 1 < args.cni_rounds:
                    c.controller.stop()
        res["reference"] = summary(times["reference"], bursts["reference"])
        res["kuryr"] = summary(times["kuryr"], bursts["kuryr"])
        res["kuryr_adds_that_waited"] = waited
        log("kuryr: NetworkPolicy convergence")
        res["kuryr"]["policy"] = b.policy(args.rounds)
    finally:
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for f in glob.glob(os.path.join(c.dir, "*.log")):
                shutil.copy(f, args.keep_logs)
        c.close()
    res["duration_s"] = time.monotonic() - started
    return res


def report(res):
    ref, k = res["reference"], res["kuryr"]
    lines = ["", "=" * 72, "kuryr on Kubernetes: benchmarks", "=" * 72,
             f"kernel {res['environment']['kernel']}, {res['environment']['cpus']} CPUs, "
             f"run took {fmt(res.get('duration_s'), ' s')}; 2 nodes, one cluster, "
             f"{res['rounds']} rounds of each CNI in turn"]

    def ratio(a, b):
        return "-" if not a or not b else f"{a / b:.2f}x"

    def add_line(label, s):
        return f"    {label:<29}p50 {fmt(s['p50_ms'], ' ms')}  p99 {fmt(s['p99_ms'], ' ms')}"

    def burst_line(label, b):
        return (f"    {label:<11}all Running {fmt(b['running_s'], ' s')}, all reachable "
                f"{fmt(b['reachable_s'], ' s')} (ADD p50 {fmt(b['add_p50_ms'], ' ms')})")
    rs, ks = ref["sequential"], k["sequential"]
    lines += ["", f"(1) pod ADD as containerd calls the plugin ({ks['n']} pods one at a time, "
              f"all rounds)",
              add_line("reference bridge+host-local", rs),
              add_line("kuryr-cni", ks),
              f"    kuryr / reference            p50 {ratio(ks['p50_ms'], rs['p50_ms'])}  "
              f"(target <= 0.5x)",
              "    rounds' p50: reference " + " / ".join(fmt(x) for x in rs["rounds_p50_ms"])
              + " ms, kuryr " + " / ".join(fmt(x) for x in ks["rounds_p50_ms"]) + " ms; "
              + f"kuryr ADDs that waited for their port: {res.get('kuryr_adds_that_waited')}"]
    rb, kb = ref["burst"], k["burst"]
    each = " / ".join(f"{x['reachable_s']:.1f}" for x in kb["rounds"])
    each_ref = " / ".join(f"{x['reachable_s']:.1f}" for x in rb["rounds"])
    lines += ["", f"(2) burst: Deployment 0 -> {kb['n']} (median of the rounds; reachable in "
              f"{each_ref} s with the reference, {each} s with kuryr)",
              burst_line("reference", rb),
              burst_line("kuryr", kb),
              f"    kuryr / reference (reachable) {ratio(kb['reachable_s'], rb['reachable_s'])} "
              f"(target <= 1.1x; kuryr-kubernetes took 103 s)"]
    p = k["policy"]
    lines += ["", f"(3) NetworkPolicy created -> enforced on every node ({p['rounds']} rounds)",
              f"    p50 {fmt(p['p50_ms'], ' ms')}, max {fmt(p['max_ms'], ' ms')}; deleted -> "
              f"open again p50 {fmt(p['reopen_p50_ms'], ' ms')} (target < 1 s; "
              f"probe resolution ~10 ms + one probe cycle)",
              f"    allowed clients kept connecting: {p['allowed_clients_connected']}"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pool-min", type=int, default=30)
    ap.add_argument("--keep-logs", metavar="DIR",
                    help="copy the cluster's logs (server, agents, controller, ...) here")
    ap.add_argument("--cni-rounds", type=int, default=2,
                    help="rounds of (1) and (2), alternating the reference CNI and kuryr")
    args = ap.parse_args()
    try:
        res = run(args)
    except Exception:
        traceback.print_exc()
        return 1
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
