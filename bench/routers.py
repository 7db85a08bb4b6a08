#!/usr/bin/env python3
"""Distributed-router benchmarks of kuryr in the test lab (see bench/ROUTERS.md).

    sudo .venv/bin/python bench/routers.py [--json FILE]

Builds a two-host lab (tests/lab/lab.py), then measures, all in one run:

  (a) routed cross-host TCP throughput (iperf3): a container on net A on h1 to a
      container on net B on h2 (one router, routed by h1's router namespace), as a
      ratio of same-subnet cross-host throughput (net A on h1 -> net A on h2);
  (b) floating IP associate -> first packet through: `PUT /floatingips/{id}` with a
      port on h2, timed against TCP connects to the floating IP started every 5 ms
      from the outside namespace (one clock: CLOCK_MONOTONIC is machine-wide, so the
      helper doing the PUT in the lab namespace and the prober in the outside
      namespace report comparable timestamps);
  (c) 100 routers on one host: 100 networks with a container each on h1, then 100
      routers with one interface each; how long until h1 has the 100 router
      namespaces, the agent's RSS, the duration of its convergence passes with and
      without the routers, and the kernel memory (machine-wide) they took.

Every namespace is the lab's (its prefix); the lab is closed on any exit, SIGTERM
included, and every helper process is killed. Figures are printed, never asserted.
Needs root and target/release/kuryr.
"""

import argparse
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
from concurrent.futures import ThreadPoolExecutor

from common import fmt, log, pct  # bench/common.py (this script's directory)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

# The agents log their per-pass timing at debug level ("pass timing"): (c) reads it.
os.environ.setdefault("RUST_LOG", "info,kuryr_agent=debug")

import lab as labmod  # noqa: E402  (tests/lab/lab.py)

NET_A = "10.241.1.0/24"       # (a)/(b): the router's two subnets
NET_B = "10.241.2.0/24"
MANY_PREFIX = "10.242"        # (c): 10.242.<i>.0/24, one per router
IPERF_PORT = 5201
PROBE_PORT = 7100


# ---------------------------------------------------------------- helper processes
#
# Both speak one JSON document per line on stdin/stdout and report times from
# time.monotonic() (CLOCK_MONOTONIC: one clock for the whole machine, whatever the
# network namespace), so the orchestrator can subtract one's from the other's.

API_HELPER = r'''
import http.client, json, sys, time
import os
host, port, token = sys.argv[1], int(sys.argv[2]), os.environ["BENCH_TOKEN"]
conn = http.client.HTTPConnection(host, port, timeout=30)
conn.connect()
for line in sys.stdin:
    req = json.loads(line)
    body = json.dumps(req["body"]).encode() if req.get("body") is not None else None
    headers = {"X-Auth-Token": token, "Content-Type": "application/json"}
    if conn.sock is None:
        conn.connect()   # outside the clock
    t0 = time.monotonic()
    try:
        conn.request(req["method"], "/networking/v2.0" + req["path"], body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        status, data = 0, str(e).encode()
    t1 = time.monotonic()
    try:
        doc = json.loads(data) if data.strip() else None
    except ValueError:
        doc = data.decode(errors="replace")
    print(json.dumps({"t0": t0, "t1": t1, "status": status, "body": doc}), flush=True)
'''

PROBER = r'''
import errno, json, select, socket, sys, time

def run(ip, port, interval, att_timeout, mode, limit):
    """TCP connects to ip:port, a new one every `interval` s, each given up after
    `att_timeout` s. mode 'up': until one succeeds; 'down': until the last 5 (in
    start order, all earlier ones finished) failed."""
    poller = select.poll()
    pending = {}   # fd -> [start, sock]
    done = []      # (start, end, ok)
    nxt = time.monotonic()
    deadline = nxt + limit
    n = 0
    try:
        while True:
            now = time.monotonic()
            if now >= nxt:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                start = time.monotonic()
                err = s.connect_ex((ip, port))
                n += 1
                if err in (0, errno.EINPROGRESS):
                    pending[s.fileno()] = [start, s]
                    poller.register(s.fileno(), select.POLLOUT | select.POLLERR | select.POLLHUP)
                else:
                    done.append((start, time.monotonic(), err == 0))
                    s.close()
                nxt = max(nxt + interval, now)
            wait = max(0.0, nxt - time.monotonic())
            events = poller.poll(wait * 1000)
            t = time.monotonic()
            for fd, _ev in events:
                start, s = pending.pop(fd)
                poller.unregister(fd)
                ok = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                done.append((start, t, ok))
                s.close()
            for fd, (start, s) in list(pending.items()):
                if t - start > att_timeout:
                    del pending[fd]
                    poller.unregister(fd)
                    done.append((start, t, False))
                    s.close()
            if mode == "up":
                oks = [d for d in done if d[2]]
                if oks:
                    first = min(oks, key=lambda d: d[1])
                    return {"ok": first[1], "ok_started": first[0], "attempts": n}
            else:
                oldest_pending = min((p[0] for p in pending.values()), default=None)
                fin = sorted(d for d in done if oldest_pending is None or d[0] < oldest_pending)
                run_ = []
                for d in reversed(fin):
                    if d[2]:
                        break
                    run_.append(d)
                if len(run_) >= 5:
                    return {"ok": run_[-1][0], "attempts": n}
            if t > deadline:
                return {"ok": None, "attempts": n}
    finally:
        for start, s in pending.values():
            s.close()

for line in sys.stdin:
    req = json.loads(line)
    print(json.dumps({"started": time.monotonic()}), flush=True)
    out = run(req["ip"], req["port"], req["interval"], req["att_timeout"], req["mode"],
              req["limit"])
    print(json.dumps(out), flush=True)
'''


class Helper:
    """A helper script running in a lab namespace, one JSON line each way."""

    def __init__(self, bench, name, ns, code, *argv, env=None):
        path = os.path.join(bench.lab.dir, f"bench-{name}.py")
        with open(path, "w") as f:
            f.write(code)
        self.name = name
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", path, *map(str, argv)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(os.path.join(bench.lab.dir, f"bench-{name}.log"), "a"),
            text=True, bufsize=1, start_new_session=True, env=dict(os.environ, **(env or {})))
        bench.procs.append(self.proc)

    def send(self, doc):
        self.proc.stdin.write(json.dumps(doc) + "\n")
        self.proc.stdin.flush()

    def recv(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"helper {self.name} exited ({self.proc.poll()})")
        return json.loads(line)


class Bench:
    def __init__(self, lab, args):
        self.lab = lab
        self.args = args
        self.procs = []   # background processes (iperf3 servers, helpers): killed on exit
        self.shared = {}  # what (a) made and (b) reuses

    def kill_procs(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs = []

    # ------------------------------------------------------------ lab helpers

    def api(self, method, path, body=None, expect=None):
        return self.lab.api(method, path, body, expect=expect)[1]

    def container(self, host, net, name, sgs=None):
        extra = {"security_groups": sgs} if sgs else {}
        port = self.lab.port(net, name=name, **extra)
        self.lab.add_container(name)
        self.lab.bind(host, port, name)
        return port, port["fixed_ips"][0]["ip_address"]

    def add_interface(self, router_id, subnet_id):
        return self.api("PUT", f"/routers/{router_id}/add_router_interface",
                        {"subnet_id": subnet_id}, expect=200)

    def agent_pid(self, host):
        """The kuryr process of `host`'s agent (nsenter execs it; or is its parent)."""
        pid = self.lab.agents[host].proc.pid
        for _ in range(3):
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "kuryr":
                    return pid
            kids = []
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids += [int(k) for k in f.read().split()]
            if not kids:
                break
            pid = kids[0]
        raise RuntimeError(f"no kuryr process under {self.lab.agents[host].proc.pid}")

    def agent_status(self, host):
        out = {}
        with open(f"/proc/{self.agent_pid(host)}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "Threads"):
                    out[k] = int(v.split()[0])   # kB, or a count
        return out

    def agent_metrics(self, host):
        from prometheus_client.parser import text_string_to_metric_families
        text = labmod.sh("curl", "-sf", "--unix-socket", self.lab.agent_socket(host),
                         "http://agent/metrics")
        m = {"buckets": {}}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "kuryr_agent_pass_seconds_bucket":
                    m["buckets"][float(s.labels["le"])] = s.value
                else:
                    m[s.name] = s.value
        return m

    @staticmethod
    def pass_delta(before, after):
        """Passes between two /metrics reads: count, mean, and the bucket bound under
        which all of them fell."""
        n = after["kuryr_agent_pass_seconds_count"] - before["kuryr_agent_pass_seconds_count"]
        if n <= 0:
            return {"n": 0}
        total = after["kuryr_agent_pass_seconds_sum"] - before["kuryr_agent_pass_seconds_sum"]
        bound = next((le for le in sorted(after["buckets"])
                      if after["buckets"][le] - before["buckets"].get(le, 0) >= n), None)
        return {"n": int(n), "mean_ms": total / n * 1000,
                "all_under_ms": bound * 1000 if bound not in (None, float("inf")) else None}

    def log_offset(self, host):
        try:
            return os.path.getsize(self.lab.agents[host].log_path)
        except OSError:
            return 0

    def pass_timings(self, host, offset):
        """The agent's `pass timing` debug lines written since `offset`: per pass, the
        total of its parts (ms) and the number of ports."""
        out = []
        engine = None
        with open(self.lab.agents[host].log_path, errors="replace") as f:
            f.seek(offset)
            for line in f:
                if "convergence pass" in line:
                    # The engine's own split, logged just before its pass's timing.
                    engine = dict(re.findall(r"(\w+_ms)=([0-9.]+)", line))
                    continue
                if "pass timing" not in line:
                    continue
                fields = dict(re.findall(r"(\w+)=([0-9.]+)", line))
                try:
                    parts = [float(fields[k]) for k in ("lock_ms", "desired_ms", "engine_ms",
                                                        "report_ms")]
                except KeyError:
                    continue
                out.append({"total_ms": sum(parts), "engine_ms": float(fields["engine_ms"]),
                            "desired_ms": float(fields["desired_ms"]),
                            "ports": int(float(fields.get("ports", 0))),
                            # links read / rules / the rest (routers among it)
                            **({f"engine_{k}": float(v) for k, v in engine.items()}
                               if engine else {})})
                engine = None
        return out

    def idle_window(self, host, seconds):
        """Passes of an agent left alone for `seconds` (its verification passes, every
        2 s, which read back everything, routers included)."""
        off = self.log_offset(host)
        before = self.agent_metrics(host)
        cpu0, t0 = self.agent_cpu(host), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = self.agent_cpu(host), time.monotonic()
        after = self.agent_metrics(host)
        hist = self.pass_delta(before, after)
        lines = self.pass_timings(host, off)
        totals = [p["total_ms"] for p in lines]
        return {"window_s": seconds, "histogram": hist, "passes": lines,
                "p50_ms": statistics.median(totals) if totals else None,
                "max_ms": max(totals) if totals else None,
                "engine_p50_ms": statistics.median(p["engine_ms"] for p in lines)
                if lines else None,
                "engine_rest_p50_ms": statistics.median(p["engine_rest_ms"] for p in lines)
                if lines and all("engine_rest_ms" in p for p in lines) else None,
                "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100}

    def agent_cpu(self, host):
        """CPU seconds of the agent and its reaped children (the nft it runs)."""
        with open(f"/proc/{self.agent_pid(host)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime: fields 14-17 of stat(5); [0] here is field 3.
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    # ------------------------------------------------------------ (a) throughput

    def iperf(self, server_ns, client_ns, ip):
        server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(server)
        try:
            deadline = time.time() + 5
            while time.time() < deadline:
                ss = labmod.sh("ip", "netns", "exec", server_ns, "ss", "-Htln", "sport",
                               f"= :{IPERF_PORT}", check=False)
                if ss.strip():
                    break
                time.sleep(0.05)
            p = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", ip, "-t",
                                str(self.args.iperf_time), "-J"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=self.args.iperf_time + 30)
            data = json.loads(p.stdout) if p.stdout.strip() else {}
            if p.returncode != 0 or "error" in data:
                raise RuntimeError(f"iperf3 to {ip} failed: {data.get('error')} {p.stderr}")
            end = data["end"]
            return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                    "retransmits": end["sum_sent"].get("retransmits")}
        finally:
            try:
                server.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    def qr_rx_packets(self, host, router_id):
        """rx packets of all qr- legs in `host`'s namespace of the router."""
        ns = self.lab.router_ns(host, router_id)
        links = json.loads(labmod.sh("ip", "-j", "-s", "-n", ns, "link", "show") or "[]")
        return sum(l["stats64"]["rx"]["packets"] for l in links
                   if l["ifname"].startswith("qr-"))

    def throughput(self):
        lab = self.lab
        out = {"time_s": self.args.iperf_time}
        # One group for every container of (a) and (b): iperf3 and the probe let in.
        sg = lab.create("security-groups", {"name": "bench-open"})
        for proto, port in (("tcp", IPERF_PORT), ("tcp", PROBE_PORT), ("icmp", None)):
            rule = {"security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4",
                    "protocol": proto, "remote_ip_prefix": "0.0.0.0/0"}
            if port:
                rule.update(port_range_min=port, port_range_max=port)
            lab.create("security-group-rules", rule)
        router = self.api("POST", "/routers", {"router": {"name": "bench-r"}}, expect=201)["router"]
        net_a, [sub_a] = lab.network("bench-a", NET_A)
        net_b, [sub_b] = lab.network("bench-b", NET_B)
        self.add_interface(router["id"], sub_a["id"])
        self.add_interface(router["id"], sub_b["id"])
        self.shared.update(router=router, sg=sg, net_b=net_b)
        _, ip_a1 = self.container("h1", net_a, "ca1", [sg["id"]])
        _, ip_a2 = self.container("h2", net_a, "ca2", [sg["id"]])
        pb, ip_b2 = self.container("h2", net_b, "cb2", [sg["id"]])
        self.shared.update(port_b=pb, ip_b=ip_b2)
        for ip, what in ((ip_a2, "same subnet"), (ip_b2, "routed")):
            if not lab.ping_eventually("ca1", ip, timeout=15):
                raise RuntimeError(f"ca1 does not reach {ip} ({what})")
        out["mtu"] = json.loads(lab.exec("ca1", "ip", "-j", "link", "show", "dev",
                                         "eth0"))[0]["mtu"]
        ca1, ca2, cb2 = lab.ns("ca1"), lab.ns("ca2"), lab.ns("cb2")
        same, routed = [], []
        h1_legs = []
        for r in range(self.args.iperf_repeat):
            log(f"throughput: round {r + 1}/{self.args.iperf_repeat}, same subnet then routed")
            same.append(self.iperf(ca2, ca1, ip_a2))
            rx0 = self.qr_rx_packets("h1", router["id"])
            routed.append(self.iperf(cb2, ca1, ip_b2))
            h1_legs.append(self.qr_rx_packets("h1", router["id"]) - rx0)
            log(f"  same subnet {same[-1]['gbps']:.2f} Gbit/s, routed {routed[-1]['gbps']:.2f} "
                f"Gbit/s")
        out["same"], out["routed"] = same, routed
        # Evidence of the path: h1's router legs saw the routed run's packets.
        out["h1_router_rx_packets"] = h1_legs
        out["same_gbps"] = statistics.median(x["gbps"] for x in same)
        out["routed_gbps"] = statistics.median(x["gbps"] for x in routed)
        out["ratio"] = out["routed_gbps"] / out["same_gbps"] if out["same_gbps"] else None
        best = max(x["gbps"] for x in same)
        out["best_ratio"] = max(x["gbps"] for x in routed) / best if best else None
        return out

    # ------------------------------------------------------------ (b) floating IPs

    def no_fip_leg(self, router_id):
        ns = self.lab.router_ns("h2", router_id)
        p = subprocess.run(["ip", "-j", "-n", ns, "link", "show"], capture_output=True,
                           text=True, timeout=10)
        if p.returncode != 0:
            return False
        return not any(l["ifname"].startswith("qf-") for l in json.loads(p.stdout or "[]"))

    def floating_ips(self):
        lab = self.lab
        if "port_b" not in self.shared:
            raise RuntimeError("needs (a)'s router and container (run with --only a,b)")
        router, port, ip_b = self.shared["router"], self.shared["port_b"], self.shared["ip_b"]
        ext, _ = lab.external_network()
        out_ns = lab.ns(lab.outside())
        self.api("PUT", f"/routers/{router['id']}",
                 {"router": {"external_gateway_info": {"network_id": ext["id"]}}}, expect=200)
        lab.serve_peer_address("cb2", PROBE_PORT)
        fip = self.api("POST", "/floatingips",
                       {"floatingip": {"floating_network_id": ext["id"]}},
                       expect=201)["floatingip"]
        addr = fip["floating_ip_address"]
        out = {"rounds": self.args.fip_rounds, "floating_ip": addr, "port_host": "h2",
               "probe_interval_ms": self.args.probe_interval * 1000}
        api = Helper(self, "api", lab.ns("lab"), API_HELPER, f"{labmod.UNDERLAY}.1", 9696,
                     env={"BENCH_TOKEN": lab.token()})
        prober = Helper(self, "prober", out_ns, PROBER)

        def put(port_id):
            api.send({"method": "PUT", "path": f"/floatingips/{fip['id']}",
                      "body": {"floatingip": {"port_id": port_id}}})
            r = api.recv()
            if r["status"] != 200:
                raise RuntimeError(f"PUT /floatingips/{fip['id']} -> {r['status']}: {r['body']}")
            return r

        # The helper's own cost of one API call, for scale (a GET of the floating IP).
        gets = []
        for _ in range(5):
            api.send({"method": "GET", "path": f"/floatingips/{fip['id']}"})
            r = api.recv()
            gets.append((r["t1"] - r["t0"]) * 1000)
        out["api_get_ms"] = statistics.median(gets)

        # Warm-up (not counted): the first association also makes the external leg's
        # network here (bridge) on h2; the rounds measure the steady state.
        rounds = []
        log(f"floating IPs: {self.args.fip_rounds} rounds of associate / probe / disassociate "
            f"(+1 warm-up)")
        for i in range(self.args.fip_rounds + 1):
            # The outside forgets the floating IP's MAC: each round resolves it anew.
            labmod.sh("ip", "-n", out_ns, "neigh", "flush", "to", addr, check=False)
            prober.send({"ip": addr, "port": PROBE_PORT, "interval": self.args.probe_interval,
                         "att_timeout": 1.0, "mode": "up", "limit": 10})
            prober.recv()   # started: probing before the PUT goes out
            a = put(port["id"])
            up = prober.recv()
            if up["ok"] is None:
                raise RuntimeError(f"round {i}: {addr} never answered within 10 s")
            d = put(None)
            prober.send({"ip": addr, "port": PROBE_PORT, "interval": 0.01, "att_timeout": 0.3,
                         "mode": "down", "limit": 15})
            prober.recv()
            down = prober.recv()
            if down["ok"] is None:
                raise RuntimeError(f"round {i}: {addr} still answers 15 s after disassociation")
            lab.wait_for(lambda: self.no_fip_leg(router["id"]), 10,
                         "h2's floating IP leg to go")
            rnd = {"assoc_to_first_ms": (up["ok"] - a["t0"]) * 1000,
                   "assoc_api_ms": (a["t1"] - a["t0"]) * 1000,
                   "api_return_to_first_ms": (up["ok"] - a["t1"]) * 1000,
                   "attempts": up["attempts"],
                   "disassoc_to_unreachable_ms": (down["ok"] - d["t0"]) * 1000,
                   "disassoc_api_ms": (d["t1"] - d["t0"]) * 1000}
            if i == 0:
                out["warmup"] = rnd
            else:
                rounds.append(rnd)
            log(f"  round {i}{' (warm-up)' if i == 0 else ''}: first packet through after "
                f"{rnd['assoc_to_first_ms']:.1f} ms (PUT took {rnd['assoc_api_ms']:.1f} ms); "
                f"unreachable {rnd['disassoc_to_unreachable_ms']:.1f} ms after disassociation")
        out["samples"] = rounds
        for key in ("assoc_to_first_ms", "assoc_api_ms", "api_return_to_first_ms",
                    "disassoc_to_unreachable_ms"):
            v = [r[key] for r in rounds]
            out[key] = {"p50": pct(v, 0.5), "p90": pct(v, 0.9), "max": max(v), "min": min(v)}
        return out

    # ------------------------------------------------------------ (c) many routers

    def many_routers(self):
        lab = self.lab
        n = self.args.routers
        out = {"routers": n}
        project = lab.openstack("token", "issue")["project_id"]
        self.api("PUT", f"/quotas/{project}", {"quota": {
            "network": -1, "subnet": -1, "port": -1, "router": -1}}, expect=200)
        out["agent_before"] = self.agent_status("h1")

        log(f"many routers: {n} networks with one container each on h1")
        t = time.monotonic()
        nets = self.api("POST", "/networks", {"networks": [
            {"name": f"bench-m{i}"} for i in range(n)]}, expect=201)["networks"]
        subs = self.api("POST", "/subnets", {"subnets": [
            {"network_id": net["id"], "ip_version": 4, "cidr": f"{MANY_PREFIX}.{i}.0/24"}
            for i, net in enumerate(nets)]}, expect=201)["subnets"]
        sub_of = {s["network_id"]: s for s in subs}
        subs = [sub_of[net["id"]] for net in nets]
        ports = self.api("POST", "/ports", {"ports": [
            {"network_id": net["id"], "name": f"bench-m{i}"} for i, net in enumerate(nets)]},
            expect=201)["ports"]
        by_net = {p["network_id"]: p for p in ports}
        ports = [by_net[net["id"]] for net in nets]
        names = [f"m{i}" for i in range(n)]
        for c in names:
            lab.add_container(c)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda pc: lab.bind("h1", pc[0], pc[1]), zip(ports, names)))
        out["setup_ports_s"] = time.monotonic() - t
        routers = self.api("POST", "/routers", {"routers": [
            {"name": f"bench-m{i}"} for i in range(n)]}, expect=201)["routers"]
        want = {lab.router_ns("h1", r["id"]) for r in routers}
        log("many routers: idle window without routers")
        time.sleep(1)
        out["idle_without"] = self.idle_window("h1", self.args.idle)
        out["agent_without"] = self.agent_status("h1")
        mem0 = meminfo()

        # The interface adds, back to back over one keep-alive connection, while a
        # thread watches /run/netns for the routers' namespaces.
        api = Helper(self, "api-many", lab.ns("lab"), API_HELPER, f"{labmod.UNDERLAY}.1", 9696,
                     env={"BENCH_TOKEN": lab.token()})
        seen = {}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                try:
                    present = want.intersection(os.listdir("/run/netns"))
                except OSError:
                    present = set()
                now = time.monotonic()
                for ns in present:
                    seen.setdefault(ns, now)
                if len(present) == len(want):
                    return
                time.sleep(0.005)

        off = self.log_offset("h1")
        metrics0 = self.agent_metrics("h1")
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        log(f"many routers: {n} interface adds")
        adds = []
        try:
            for r, s in zip(routers, subs):
                api.send({"method": "PUT", "path": f"/routers/{r['id']}/add_router_interface",
                          "body": {"subnet_id": s["id"]}})
                a = api.recv()
                if a["status"] != 200:
                    raise RuntimeError(f"add_router_interface -> {a['status']}: {a['body']}")
                adds.append(a)
            watcher.join(timeout=120)
        finally:
            stop.set()
        if len(seen) < n:
            raise RuntimeError(f"only {len(seen)} of {n} router namespaces on h1 after 120 s")
        first_add, last_add = adds[0]["t0"], adds[-1]["t1"]
        all_there = max(seen.values())
        # The last router works: its container reaches the gateway (the router's leg).
        last_gw = subs[-1]["gateway_ip"]
        lab.wait_for(lambda: lab.ping(names[-1], last_gw, wait=1), 30,
                     "the last container to reach its router")
        gw_ok = time.monotonic()
        metrics1 = self.agent_metrics("h1")
        out["adds_s"] = last_add - first_add
        out["add_api_ms_p50"] = statistics.median((a["t1"] - a["t0"]) * 1000 for a in adds)
        out["last_add_to_all_ns_s"] = all_there - last_add
        out["first_add_to_all_ns_s"] = all_there - first_add
        out["last_add_to_last_gateway_s"] = gw_ok - last_add
        out["lag_ns_after_add_ms"] = {
            "p50": statistics.median((seen[lab.router_ns("h1", r["id"])] - a["t1"]) * 1000
                                     for r, a in zip(routers, adds)),
            "max": max((seen[lab.router_ns("h1", r["id"])] - a["t1"]) * 1000
                       for r, a in zip(routers, adds))}
        out["passes_during_adds"] = self.pass_delta(metrics0, metrics1)
        busy = self.pass_timings("h1", off)
        out["passes_during_adds"]["max_ms"] = max((p["total_ms"] for p in busy), default=None)

        log("many routers: letting the agent settle, then the idle window with routers")
        time.sleep(2)
        out["idle_with"] = self.idle_window("h1", self.args.idle)
        out["agent_with"] = self.agent_status("h1")
        mem1 = meminfo()
        out["meminfo_delta_kb"] = {k: mem1[k] - mem0[k] for k in mem0 if k in mem1}
        out["router_namespaces_h1"] = len(lab.router_namespaces("h1"))

        # Sanity (not timed): every container reaches its gateway, no process lives in
        # a router namespace.
        def reach(i):
            return lab.ping(names[i], subs[i]["gateway_ip"], count=1, wait=2)
        with ThreadPoolExecutor(8) as pool:
            out["gateways_answering"] = sum(pool.map(reach, range(n)))
        out["processes_in_router_namespaces"] = sum(
            len(labmod.sh("ip", "netns", "pids", ns, check=False).split()) for ns in want)
        return out


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("MemAvailable", "Slab", "SUnreclaim", "Percpu", "KernelStack", "Shmem",
                     "MemFree"):
                out[k] = int(v.split()[0])
    return out


# ---------------------------------------------------------------- the report

def report(res):
    lines = ["", "=" * 72, "kuryr distributed-router benchmarks", "=" * 72]
    env = res.get("environment", {})
    lines.append(f"kernel {env.get('kernel')}, {env.get('cpus')} CPUs, "
                 f"run took {fmt(res.get('duration_s'), ' s')}, load average "
                 f"{fmt(env.get('load_before'), '', 2)} before, "
                 f"{fmt(res.get('load_after'), '', 2)} after (1 min)")
    a = res.get("throughput")
    if a and "ratio" in a:
        ok = (a["ratio"] or 0) >= 0.9
        lines += ["", f"(a) Cross-host TCP throughput, iperf3 -t {a['time_s']}, MTU {a['mtu']} "
                  f"(median of {len(a['same'])})",
                  f"    same subnet  (net A h1 -> net A h2)          {a['same_gbps']:7.2f} Gbit/s"
                  f"  (runs: {', '.join(fmt(x['gbps'], '', 2) for x in a['same'])})",
                  f"    routed       (net A h1 -> router -> net B h2) {a['routed_gbps']:7.2f} "
                  f"Gbit/s  (runs: {', '.join(fmt(x['gbps'], '', 2) for x in a['routed'])})",
                  f"    ratio {fmt(a['ratio'] * 100 if a['ratio'] else None, ' %')} of the "
                  f"medians  target >= 90 %: {'met' if ok else 'NOT met'}  (best run vs best "
                  f"run: {fmt(a['best_ratio'] * 100 if a.get('best_ratio') else None, ' %')})",
                  f"    retransmits same/routed (per run): "
                  f"{', '.join(str(x['retransmits']) for x in a['same'])} / "
                  f"{', '.join(str(x['retransmits']) for x in a['routed'])}; h1's router legs "
                  f"received {', '.join(str(x) for x in a['h1_router_rx_packets'])} packets "
                  f"per routed run"]
    b = res.get("floating_ips")
    if b and "assoc_to_first_ms" in b:
        f = b["assoc_to_first_ms"]
        lines += ["", f"(b) Floating IP associate -> first packet through ({b['rounds']} rounds "
                  f"+1 warm-up; port on h2; TCP connects from the outside every "
                  f"{fmt(b['probe_interval_ms'], ' ms', 0)}; outside's ARP entry flushed "
                  f"before each round)",
                  f"    PUT sent -> first connect answered:  p50 {fmt(f['p50'])} ms, "
                  f"p90 {fmt(f['p90'])} ms, max {fmt(f['max'])} ms, min {fmt(f['min'])} ms  "
                  f"target p50 < 100 ms: {'met' if f['p50'] < 100 else 'NOT met'}",
                  f"    of which the PUT itself:             p50 "
                  f"{fmt(b['assoc_api_ms']['p50'])} ms, max {fmt(b['assoc_api_ms']['max'])} ms "
                  f"(a GET through the same helper: {fmt(b['api_get_ms'], ' ms', 2)})",
                  f"    PUT returned -> first connect:       p50 "
                  f"{fmt(b['api_return_to_first_ms']['p50'])} ms, max "
                  f"{fmt(b['api_return_to_first_ms']['max'])} ms",
                  f"    disassociate PUT -> unreachable:     p50 "
                  f"{fmt(b['disassoc_to_unreachable_ms']['p50'])} ms, max "
                  f"{fmt(b['disassoc_to_unreachable_ms']['max'])} ms (connects every 10 ms)",
                  f"    warm-up round (first association on the router): "
                  f"{fmt(b.get('warmup', {}).get('assoc_to_first_ms'))} ms"]
    c = res.get("many_routers")
    if c and "last_add_to_all_ns_s" in c:
        w0, w1 = c["idle_without"], c["idle_with"]
        ag0, ag1, agb = c["agent_without"], c["agent_with"], c["agent_before"]
        md = c["meminfo_delta_kb"]
        kernel = md.get("Slab", 0) + md.get("Percpu", 0) + md.get("KernelStack", 0)
        pd = c["passes_during_adds"]
        lines += ["", f"(c) {c['routers']} routers on h1, one subnet and one container each",
                  f"    setup: {c['routers']} networks + ports bound on h1 in "
                  f"{c['setup_ports_s']:.1f} s; {c['routers']} interface adds in "
                  f"{c['adds_s']:.2f} s (PUT p50 {fmt(c['add_api_ms_p50'])} ms)",
                  f"    last interface add -> all {c['routers']} router namespaces exist: "
                  f"{c['last_add_to_all_ns_s'] * 1000:.0f} ms (first add -> all: "
                  f"{c['first_add_to_all_ns_s']:.2f} s; per router, add -> its namespace: p50 "
                  f"{fmt(c['lag_ns_after_add_ms']['p50'], ' ms', 0)}, max "
                  f"{fmt(c['lag_ns_after_add_ms']['max'], ' ms', 0)})",
                  f"    last interface add -> its container pings the router: "
                  f"{c['last_add_to_last_gateway_s'] * 1000:.0f} ms; gateways answering "
                  f"afterwards: {c['gateways_answering']}/{c['routers']}",
                  f"    router namespaces on h1: {c['router_namespaces_h1']} (incl. (a)'s router "
                  f"and, if placed on h1, its SNAT namespace); processes in the {c['routers']}: "
                  f"{c['processes_in_router_namespaces']}",
                  f"    agent RSS: {agb.get('VmRSS', 0) / 1024:.1f} MiB before (c), "
                  f"{ag0.get('VmRSS', 0) / 1024:.1f} MiB with {c['routers']} ports, "
                  f"{ag1.get('VmRSS', 0) / 1024:.1f} MiB with {c['routers']} routers too "
                  f"(peak {ag1.get('VmHWM', 0) / 1024:.1f} MiB; threads {ag1.get('Threads')})",
                  f"    convergence passes while idle ({fmt(w1['window_s'], ' s', 0)}; "
                  f"verification passes read everything back):",
                  f"      without routers: {w0['histogram'].get('n')} passes, p50 "
                  f"{fmt(w0['p50_ms'])} ms, max {fmt(w0['max_ms'])} ms (histogram mean "
                  f"{fmt(w0['histogram'].get('mean_ms'))} ms); agent CPU "
                  f"{fmt(w0.get('cpu_pct'), ' %', 0)}",
                  f"      with routers:    {w1['histogram'].get('n')} passes, p50 "
                  f"{fmt(w1['p50_ms'])} ms, max {fmt(w1['max_ms'])} ms (histogram mean "
                  f"{fmt(w1['histogram'].get('mean_ms'))} ms, all under "
                  f"{fmt(w1['histogram'].get('all_under_ms'), ' ms', 1)}); agent CPU "
                  f"{fmt(w1.get('cpu_pct'), ' %', 0)}",
                  f"      engine's 'rest' (routers among it), p50: "
                  f"{fmt(w0.get('engine_rest_p50_ms'))} ms without, "
                  f"{fmt(w1.get('engine_rest_p50_ms'))} ms with",
                  f"      during the adds: {pd.get('n')} passes, mean {fmt(pd.get('mean_ms'))} "
                  f"ms, max {fmt(pd.get('max_ms'))} ms",
                  f"    kernel memory, machine-wide, before -> after the routers: Slab "
                  f"{md.get('Slab', 0) / 1024:+.1f} MiB, Percpu {md.get('Percpu', 0) / 1024:+.1f} "
                  f"MiB, KernelStack {md.get('KernelStack', 0) / 1024:+.1f} MiB "
                  f"(~{kernel / c['routers']:.0f} kB per router; MemAvailable "
                  f"{md.get('MemAvailable', 0) / 1024:+.1f} MiB; other labs on the machine "
                  f"blur these)"]
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
    ap.add_argument("--iperf-repeat", type=int, default=3,
                    help="alternating same-subnet/routed rounds (median reported)")
    ap.add_argument("--fip-rounds", type=int, default=20)
    ap.add_argument("--probe-interval", type=float, default=0.005,
                    help="seconds between the outside's connect attempts (default 0.005)")
    ap.add_argument("--routers", type=int, default=100)
    ap.add_argument("--idle", type=float, default=8,
                    help="seconds of each idle window of (c) (default 8: ~4 passes)")
    ap.add_argument("--only", default="a,b,c", help="sections to run (default a,b,c; b needs a)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "b" in only:
        only.add("a")

    if os.geteuid() != 0:
        sys.exit("run as root (the lab creates namespaces)")
    if not os.access(labmod.KURYR_BIN, os.X_OK):
        sys.exit(f"{labmod.KURYR_BIN} missing: cargo build --release")

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    res = {"environment": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                           "load_before": os.getloadavg()[0]},
           "errors": {}}
    started = time.monotonic()
    lab = bench = None
    try:
        log("building the lab (2 hosts)")
        lab = labmod.Lab(hosts=2)
        bench = Bench(lab, args)
        sections = [("a", "throughput", bench.throughput),
                    ("b", "floating_ips", bench.floating_ips),
                    ("c", "many_routers", bench.many_routers)]
        for key, name, fn in sections:
            if key not in only:
                continue
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
                bench.kill_procs()
    except KeyboardInterrupt:
        log("interrupted; closing the lab")
        res["errors"]["interrupted"] = "interrupted"
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
