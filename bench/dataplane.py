#!/usr/bin/env python3
"""Dataplane benchmarks of kuryr in the test lab (see bench/DATAPLANE.md).

    sudo .venv/bin/python bench/dataplane.py [--json FILE]

Builds a two-host lab (tests/lab/lab.py), then measures, all in one run:

  (a) bind latency: port create + bind into a fresh namespace, kuryr vs the CNI
      `bridge` plugin with `host-local` IPAM, sequentially and 2-/8-way concurrent
      (timed by target/release/kuryr-bind-bench running inside host h1);
  (b) cross-host TCP throughput (iperf3) between two kuryr containers on h1/h2 vs
      a hand-made VXLAN between two namespaces hanging off the same hosts;
  (c) security-group propagation: a group with 1,000 members referenced by a
      remote-group rule of a port bound on h1; time until h1's nftables follows a
      member added or deleted, and until the initial 1,000 members are in.

Every namespace is the lab's (its prefix); the lab is closed on any exit. Figures
are printed, never asserted. Needs root and `cargo build --release --bins`.
"""

import argparse
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import lab as labmod  # noqa: E402  (tests/lab/lab.py)

BIND_BENCH = os.environ.get("KURYR_BIND_BENCH",
                            os.path.join(ROOT, "target", "release", "kuryr-bind-bench"))
CNI_DIR = "/usr/lib/cni"

BIND_CIDR = "10.230.0.0/20"     # kuryr network of the bind benchmark
IPERF_CIDR = "10.231.0.0/24"    # kuryr network of the throughput benchmark
SG_CIDR = "10.232.0.0/20"       # 1,000+ members
CNI_SUBNET = "10.250.0.0/16"    # the reference's host-local range
RAW_SUBNET = "10.251.0"         # the hand-made VXLAN's two namespaces
RAW_VNI = 4242
MTU = 1450


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, lab, args):
        self.lab = lab
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="kuryr-dataplane-", dir=lab.dir)
        self.procs = []   # background processes (iperf3 servers) to kill on exit
        self.seq = 0

    # ------------------------------------------------------------ helpers

    def fresh_namespaces(self, tag, n):
        """n new lab namespaces (deleted by drop_namespaces, or lab.close())."""
        names = []
        for _ in range(n):
            self.seq += 1
            names.append(self.lab.add_ns(f"{tag}{self.seq}"))
        return names

    def drop_namespaces(self, names):
        doomed = set(names)
        for ns in names:
            labmod.sh("ip", "netns", "del", ns, check=False)
        self.lab.namespaces = [n for n in self.lab.namespaces if n not in doomed]

    def run_in_h1(self, *cmd, timeout=300):
        """kuryr-bind-bench inside host h1; returns its JSON document."""
        env = dict(os.environ, OS_PASSWORD=self.lab.password)
        full = ["ip", "netns", "exec", self.lab.ns("h1"), BIND_BENCH, "--api", self.lab.url,
                *map(str, cmd)]
        p = subprocess.run(full, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"kuryr-bind-bench {' '.join(map(str, cmd))} exited "
                               f"{p.returncode}:\n{p.stderr}{p.stdout}")
        return json.loads(p.stdout)

    def kill_procs(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs = []

    # ------------------------------------------------------------ (a) bind latency

    def cni_config(self):
        cfg = {
            "cniVersion": "1.0.0",
            "name": "kuryr-bench-ref",
            "type": "bridge",
            "bridge": "cnibench0",
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": CNI_SUBNET}]],
                "dataDir": os.path.join(self.tmp, "cni-ipam"),
            },
        }
        path = os.path.join(self.tmp, "cni.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def bind_run(self, mode, count, concurrency, net_id, cni_cfg):
        names = self.fresh_namespaces(f"b{mode[0]}", count)
        try:
            listing = os.path.join(self.tmp, f"ns-{mode}-{concurrency}.txt")
            with open(listing, "w") as f:
                f.write("\n".join(names) + "\n")
            cmd = ["--mode", mode, "--netns-file", listing, "--concurrency", concurrency,
                   "--verify", self.args.verify]
            if mode == "kuryr":
                cmd += ["--network-id", net_id, "--agent-socket", self.lab.agent_socket("h1")]
            else:
                cmd += ["--cni-config", cni_cfg, "--cni-plugin", os.path.join(CNI_DIR, "bridge"),
                        "--cni-path", CNI_DIR]
            return self.run_in_h1(*cmd)
        finally:
            self.drop_namespaces(names)

    def bind_latency(self):
        net, _ = self.lab.network("bench-bind", BIND_CIDR)
        # The default port quota (500) is below a run of 1,000 binds: lift it.
        self.lab.api("PUT", f"/quotas/{net['project_id']}", {"quota": {"port": -1}}, expect=200)
        cfg = self.cni_config()
        out = {"network_id": net["id"], "count": self.args.binds, "runs": {}}
        # Warm-up (not counted): the first bind creates the bridge (and vxlan).
        for mode in ("kuryr", "cni"):
            self.bind_run(mode, 3, 1, net["id"], cfg)
        for c in self.args.concurrency:
            for mode in ("kuryr", "cni"):
                log(f"bind latency: {mode}, {self.args.binds} binds, concurrency {c}")
                r = self.bind_run(mode, self.args.binds, c, net["id"], cfg)
                out["runs"][f"{mode}/{c}"] = r
                t = r["total_ms"]
                log(f"  p50 {t.get('p50', 0):.1f} ms  p99 {t.get('p99', 0):.1f} ms  "
                    f"ok {r['ok']}/{r['count']}  verified {r['verified']}  "
                    f"errors {len(r['errors'])}")
        return out

    # ------------------------------------------------------------ (b) throughput

    def iperf(self, server_ns, client_ns, ip):
        server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(server)
        try:
            deadline = time.time() + 5
            while time.time() < deadline:
                ss = labmod.sh("ip", "netns", "exec", server_ns, "ss", "-Htln", "sport", "= :5201",
                               check=False)
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
                    "sender_gbps": end["sum_sent"]["bits_per_second"] / 1e9,
                    "retransmits": end["sum_sent"].get("retransmits")}
        finally:
            try:
                server.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    def raw_vxlan(self):
        """h1/h2: bridge rawbr + vxlan rawvx (VNI 4242) + veth into a new namespace."""
        lab = self.lab
        ends = {}
        dstport = None
        for port in (4789, 4790):
            try:
                for i, h in enumerate(("h1", "h2"), start=1):
                    host = lab.ns(h)
                    labmod.sh("ip", "-n", host, "link", "del", "rawvx", check=False)
                    labmod.sh("ip", "-n", host, "link", "add", "rawvx", "type", "vxlan",
                              "id", RAW_VNI, "local", f"{labmod.UNDERLAY}.{10 + i}",
                              "remote", f"{labmod.UNDERLAY}.{13 - i}", "dstport", port,
                              "dev", "eth0")
                dstport = port
                break
            except RuntimeError as e:
                log(f"raw vxlan on dstport {port} refused ({str(e).strip()}); trying the next")
        if dstport is None:
            raise RuntimeError("the kernel refused a raw vxlan on 4789 and 4790")
        for i, h in enumerate(("h1", "h2"), start=1):
            host = lab.ns(h)
            ns = lab.add_ns(f"raw{i}")
            labmod.sh("ip", "-n", host, "link", "add", "rawbr", "type", "bridge")
            labmod.sh("ip", "-n", host, "link", "set", "rawvx", "master", "rawbr", "mtu", MTU,
                      "up")
            labmod.sh("ip", "-n", host, "link", "add", "rawv", "mtu", MTU, "type", "veth",
                      "peer", "name", "eth0", "mtu", MTU, "netns", ns)
            labmod.sh("ip", "-n", host, "link", "set", "rawv", "master", "rawbr", "up")
            labmod.sh("ip", "-n", host, "link", "set", "rawbr", "up")
            labmod.sh("ip", "-n", ns, "addr", "add", f"{RAW_SUBNET}.{i}/24", "dev", "eth0")
            labmod.sh("ip", "-n", ns, "link", "set", "eth0", "up")
            ends[h] = ns
        return ends, dstport

    def throughput(self):
        lab = self.lab
        out = {"time_s": self.args.iperf_time, "mtu": MTU}
        net, _ = lab.network("bench-iperf", IPERF_CIDR)
        p1, p2 = lab.port(net, name="iperf-a"), lab.port(net, name="iperf-b")
        ka, kb = lab.add_container("ipa"), lab.add_container("ipb")
        lab.bind("h1", p1, "ipa")
        lab.bind("h2", p2, "ipb")
        ip_b = p2["fixed_ips"][0]["ip_address"]
        if not lab.ping_eventually("ipa", ip_b, timeout=10):
            raise RuntimeError(f"kuryr containers do not reach each other ({ip_b})")
        out["kuryr_mtu"] = json.loads(lab.exec("ipa", "ip", "-j", "link", "show", "dev",
                                               "eth0"))[0]["mtu"]
        ends, dstport = self.raw_vxlan()
        out["raw_dstport"] = dstport
        ra, rb = ends["h1"], ends["h2"]
        ok = subprocess.run(["ip", "netns", "exec", ra, "ping", "-c", "1", "-W", "2",
                             f"{RAW_SUBNET}.2"], capture_output=True).returncode == 0
        if not ok:
            ok = subprocess.run(["ip", "netns", "exec", ra, "ping", "-c", "3", "-W", "2",
                                 f"{RAW_SUBNET}.2"], capture_output=True).returncode == 0
        if not ok:
            raise RuntimeError("the raw VXLAN namespaces do not reach each other")
        out["h1_bridge_nf_call_iptables"] = lab.exec(
            "h1", "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables", check=False).strip()
        kur, raw = [], []
        for r in range(self.args.iperf_repeat):
            log(f"throughput: round {r + 1}/{self.args.iperf_repeat}, kuryr then raw vxlan")
            kur.append(self.iperf(kb, ka, ip_b))
            raw.append(self.iperf(rb, ra, f"{RAW_SUBNET}.2"))
            log(f"  kuryr {kur[-1]['gbps']:.2f} Gbit/s, raw {raw[-1]['gbps']:.2f} Gbit/s")
        out["kuryr"] = kur
        out["raw"] = raw
        out["kuryr_gbps"] = statistics.median(x["gbps"] for x in kur)
        out["raw_gbps"] = statistics.median(x["gbps"] for x in raw)
        out["ratio"] = out["kuryr_gbps"] / out["raw_gbps"] if out["raw_gbps"] else None
        # Other load on the machine only ever lowers a run: the best runs compared too.
        best_raw = max(x["gbps"] for x in raw)
        out["best_ratio"] = max(x["gbps"] for x in kur) / best_raw if best_raw else None
        return out

    # ------------------------------------------------------------ (c) security groups

    def nft_set_intervals(self, set_name):
        """The set's elements as (first, last) integer intervals; None if no such set."""
        p = subprocess.run(["ip", "netns", "exec", self.lab.ns("h1"), "nft", "-j", "list", "set",
                            "inet", "kuryr", set_name], capture_output=True, text=True,
                           timeout=30)
        if p.returncode != 0:
            return None
        for obj in json.loads(p.stdout).get("nftables", []):
            if "set" in obj:
                return [iv for e in obj["set"].get("elem", []) for iv in element_intervals(e)]
        return []

    def find_set(self, ip, group_id):
        """The inet kuryr set holding `ip` (the one named after the group first)."""
        out = self.lab.exec("h1", "nft", "-j", "list", "table", "inet", "kuryr", check=False)
        if not out.strip():
            return None
        want = int(ipaddress.ip_address(ip))
        found = []
        for obj in json.loads(out).get("nftables", []):
            s = obj.get("set")
            if not s:
                continue
            ivs = [iv for e in s.get("elem", []) for iv in element_intervals(e)]
            if any(a <= want <= b for a, b in ivs):
                found.append(s["name"])
        found.sort(key=lambda n: group_id not in n)
        return found[0] if found else None

    def security_groups(self):
        lab = self.lab
        n = self.args.sg_members
        out = {"members": n}
        net, _ = lab.network("bench-sg", SG_CIDR)
        g = lab.create("security-groups", {"name": "bench-members"})
        r = lab.create("security-groups", {"name": "bench-consumer"})
        lab.create("security-group-rules", {"security_group_id": r["id"], "direction": "ingress",
                                            "ethertype": "IPv4", "remote_group_id": g["id"]})
        out["group_id"] = g["id"]
        # The default port quota (500) is below the group's size: lift it (the lab's own
        # server; everything here runs as its admin project).
        lab.api("PUT", f"/quotas/{g['project_id']}", {"quota": {"port": -1}}, expect=200)

        log(f"security groups: {n} member ports (bulk POST in chunks of {self.args.sg_chunk})")
        t = time.monotonic()
        members = []
        while len(members) < n:
            k = min(self.args.sg_chunk, n - len(members))
            body = {"ports": [{"network_id": net["id"], "security_groups": [g["id"]],
                               "name": f"member-{len(members) + j}"} for j in range(k)]}
            _, data = lab.api("POST", "/ports", body, expect=201)
            members.extend(data["ports"])
        out["bulk_create_s"] = time.monotonic() - t
        ips = sorted(int(ipaddress.ip_address(p["fixed_ips"][0]["ip_address"])) for p in members)

        # The consumer: bound on h1, its group lets the members in. The agent learns
        # the members here (nothing on h1 used the group before).
        consumer = lab.port(net, name="sg-consumer", security_groups=[r["id"]])
        lab.add_container("sgc")
        log(f"security groups: binding the consumer on h1, waiting for the {n} members in nft")
        # Watched from a thread during the bind too (by the set's expected name,
        # g4_<group>), since the agent may well finish the set before bind returns.
        expected = f"g4_{g['id']}"
        seen = {}

        def watch():
            while "stop" not in seen and time.monotonic() < t0 + 120:
                seen["polls"] = seen.get("polls", 0) + 1
                if all_covered(ips, self.nft_set_intervals(expected) or []):
                    seen["at"] = time.monotonic()
                    return
                time.sleep(0.005)

        t0 = time.monotonic()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            lab.bind("h1", consumer, "sgc")
            out["consumer_bind_s"] = time.monotonic() - t0
            watcher.join(timeout=120)
        finally:
            seen["stop"] = True
        if "at" not in seen:
            raise RuntimeError(f"h1's nftables never held all {n} members in {expected}")
        out["initial_apply_s"] = seen["at"] - t0
        out["initial_polls"] = seen["polls"]
        # Which set holds a member, found by its address: the one watched, normally.
        set_name = self.find_set(ipaddress.ip_address(ips[0]).compressed, g["id"])
        if set_name != expected:
            raise RuntimeError(f"members are in nft set {set_name}, not {expected}")
        out["nft_set"] = set_name
        log(f"  all {n} members in {set_name} after {out['initial_apply_s']:.3f} s")

        log(f"security groups: {self.args.sg_rounds} rounds of member add/delete")
        before = self.agent_histogram("h1", "kuryr_agent_event_to_rules_seconds")
        out["changes"] = self.run_in_h1("--mode", "sg", "--network-id", net["id"],
                                        "--security-group", g["id"], "--nft-set", set_name,
                                        "--count", self.args.sg_rounds)
        # The agent's own split: from the watch frame's arrival to the set updated.
        after = self.agent_histogram("h1", "kuryr_agent_event_to_rules_seconds")
        n_obs = after["count"] - before["count"]
        out["agent_event_to_rules"] = {
            "n": n_obs,
            "mean_ms": (after["sum"] - before["sum"]) / n_obs * 1000 if n_obs else None,
            # the bucket bound under which every one of them fell
            "max_bucket_ms": next((le * 1000 for le, c in after["buckets"]
                                   if c - before["buckets_by_le"].get(le, 0) >= n_obs), None)
            if n_obs else None,
        }
        return out

    def agent_histogram(self, host, name):
        """A histogram from an agent's /metrics: count, sum, cumulative buckets."""
        from prometheus_client.parser import text_string_to_metric_families
        text = labmod.sh("curl", "-sf", "--unix-socket", self.lab.agent_socket(host),
                         "http://agent/metrics")
        h = {"count": 0, "sum": 0.0, "buckets": []}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == f"{name}_count":
                    h["count"] = smp.value
                elif smp.name == f"{name}_sum":
                    h["sum"] = smp.value
                elif smp.name == f"{name}_bucket":
                    h["buckets"].append((float(smp.labels["le"]), smp.value))
        h["buckets"].sort()
        h["buckets_by_le"] = dict(h["buckets"])
        return h


def element_intervals(e):
    """nft JSON set element -> [(first, last)] as integers."""
    if isinstance(e, dict) and "elem" in e:
        e = e["elem"].get("val", e["elem"])
    if isinstance(e, str):
        v = int(ipaddress.ip_address(e))
        return [(v, v)]
    if isinstance(e, dict) and "prefix" in e:
        net = ipaddress.ip_network(f"{e['prefix']['addr']}/{e['prefix']['len']}", strict=False)
        return [(int(net.network_address), int(net.broadcast_address))]
    if isinstance(e, dict) and "range" in e:
        a, b = e["range"]
        return [(int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b)))]
    return []


def all_covered(sorted_ips, intervals):
    ivs = sorted(intervals)
    j = 0
    for ip in sorted_ips:
        while j < len(ivs) and ivs[j][1] < ip:
            j += 1
        if j == len(ivs) or ivs[j][0] > ip:
            return False
    return True


# ---------------------------------------------------------------- the report

def fmt(v, unit="", digits=1):
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def report(res):
    lines = ["", "=" * 72, "kuryr dataplane benchmarks", "=" * 72]
    env = res.get("environment", {})
    lines.append(f"kernel {env.get('kernel')}, {env.get('cpus')} CPUs, "
                 f"run took {fmt(res.get('duration_s'), ' s')}, load average "
                 f"{fmt(env.get('load_before'), '', 2)} before, "
                 f"{fmt(res.get('load_after'), '', 2)} after (1 min)")
    a = res.get("bind")
    if a and "runs" in a:
        lines += ["", f"(a) Bind latency: API port create -> interface up with its IP in a fresh "
                  f"namespace, {a['count']} binds per run",
                  "    (reference: CNI bridge + host-local, exec'ed; both from inside h1; ms)",
                  "",
                  f"    {'conc':>4} | {'kuryr p50':>9} {'p99':>7} {'mean':>7} | "
                  f"{'CNI p50':>8} {'p99':>7} {'mean':>7} | {'p50 ratio':>9} | target"]
        for c in a["concurrency"]:
            k = a["runs"].get(f"kuryr/{c}", {}).get("total_ms", {})
            r = a["runs"].get(f"cni/{c}", {}).get("total_ms", {})
            ratio = (k["p50"] / r["p50"]) if k.get("p50") and r.get("p50") else None
            met = ratio is not None and ratio <= 0.5 and k.get("p99", 1e9) < 50
            lines.append(
                f"    {c:>4} | {fmt(k.get('p50')):>9} {fmt(k.get('p99')):>7} "
                f"{fmt(k.get('mean')):>7} | {fmt(r.get('p50')):>8} {fmt(r.get('p99')):>7} "
                f"{fmt(r.get('mean')):>7} | {fmt(ratio, 'x', 2):>9} | "
                f"{'met' if met else 'NOT met'}")
        lines.append("    target: kuryr p50 <= 0.5x reference p50 and kuryr p99 < 50 ms")
        lines.append("    kuryr split (p50, ms): " + ", ".join(
            f"conc {c}: create {fmt(a['runs'][f'kuryr/{c}']['create_ms'].get('p50'))}"
            f" + bind {fmt(a['runs'][f'kuryr/{c}']['bind_ms'].get('p50'))}"
            for c in a["concurrency"] if f"kuryr/{c}" in a["runs"]))
        lines.append("    mean of the first / last 20 binds of a run (ms; the earlier binds stay in "
                     "place until the run ends):")
        for c in a["concurrency"]:
            parts = []
            for mode in ("kuryr", "cni"):
                s = a["runs"].get(f"{mode}/{c}", {}).get("total_ms", {}).get("samples", [])
                if len(s) >= 40:
                    parts.append(f"{mode} {statistics.mean(s[:20]):.1f} / "
                                 f"{statistics.mean(s[-20:]):.1f}")
            if parts:
                lines.append(f"      conc {c}: " + ", ".join(parts))
        lines.append("    unbind (kuryr: the agent's unbind call; reference: CNI DEL exec), "
                     "p50 ms, as many in flight as the binds:")
        for c in a["concurrency"]:
            k = a["runs"].get(f"kuryr/{c}", {}).get("unbind_ms", {})
            r = a["runs"].get(f"cni/{c}", {}).get("unbind_ms", {})
            ratio = (k["p50"] / r["p50"]) if k.get("p50") and r.get("p50") else None
            lines.append(f"      conc {c}: kuryr {fmt(k.get('p50'))} (p99 {fmt(k.get('p99'))}), "
                         f"cni {fmt(r.get('p50'))} (p99 {fmt(r.get('p99'))}), ratio "
                         f"{fmt(ratio, 'x', 2)}  target <= 0.2x: "
                         f"{'met' if ratio is not None and ratio <= 0.2 else 'NOT met'}")
        errs = sum(len(r.get("errors", [])) for r in a["runs"].values())
        ver = sum(r.get("verified", 0) for r in a["runs"].values())
        lines.append(f"    samples verified with `ip -n NS addr`: {ver}; errors: {errs}")
        for name, r in a["runs"].items():
            for e in r.get("errors", [])[:3]:
                lines.append(f"      {name}: {e[:200]}")
    b = res.get("throughput")
    if b and "kuryr_gbps" in b:
        lines += ["", f"(b) Cross-host TCP throughput, iperf3 -t {b['time_s']}, MTU {b['mtu']} "
                  f"(median of {len(b['kuryr'])})",
                  f"    kuryr (h1 -> h2 containers)         {b['kuryr_gbps']:7.2f} Gbit/s  "
                  f"(runs: {', '.join(fmt(x['gbps'], '', 2) for x in b['kuryr'])})",
                  f"    raw VXLAN {RAW_VNI} (dstport {b['raw_dstport']})       "
                  f"{b['raw_gbps']:7.2f} Gbit/s  "
                  f"(runs: {', '.join(fmt(x['gbps'], '', 2) for x in b['raw'])})",
                  f"    ratio {fmt(b['ratio'] * 100 if b['ratio'] else None, ' %')} of the "
                  f"medians  target >= 95 %: {'met' if (b['ratio'] or 0) >= 0.95 else 'NOT met'}"
                  f"  (best run vs best run: "
                  f"{fmt(b['best_ratio'] * 100 if b.get('best_ratio') else None, ' %')})"]
    c = res.get("security_groups")
    if c and "changes" in c:
        ch = c["changes"]
        add, dele = ch["add_ms"], ch["delete_ms"]
        lines += ["", f"(c) Security group with {c['members']} members, remote-group rule of a "
                  f"port on h1 (nft set {c['nft_set'][:14]}...)",
                  f"    {c['members']} member ports created (bulk POST): "
                  f"{c['bulk_create_s']:.2f} s",
                  f"    consumer bind returned after {c['consumer_bind_s'] * 1000:.0f} ms; "
                  f"all {c['members']} members in h1's nft after "
                  f"{c['initial_apply_s'] * 1000:.0f} ms (from the bind call; "
                  f"{c['initial_polls']} checks of the set meanwhile)",
                  f"    member added   -> in the set:   p50 {fmt(add.get('p50'))} ms, "
                  f"max {fmt(add.get('max'))} ms  (API create p50 "
                  f"{fmt(ch['add_api_ms'].get('p50'))} ms)",
                  f"    member deleted -> out of set:   p50 {fmt(dele.get('p50'))} ms, "
                  f"max {fmt(dele.get('max'))} ms  (API delete p50 "
                  f"{fmt(ch['delete_api_ms'].get('p50'))} ms)",
                  f"    {ch['rounds']} rounds; one nft poll costs {fmt(ch['poll_ms'])} ms "
                  f"(the resolution); errors: {len(ch['errors'])}"]
        ev = c.get("agent_event_to_rules", {})
        lines.append(f"    the agent's share (watch frame arrived -> set updated in the kernel): "
                     f"mean {fmt(ev.get('mean_ms'), ' ms', 2)} over {ev.get('n')} changes, all "
                     f"under {fmt(ev.get('max_bucket_ms'), ' ms', 2)}  target < 2 ms: "
                     f"{'met' if (ev.get('max_bucket_ms') or 1e9) <= 2 else 'NOT met'}")
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
    ap.add_argument("--binds", type=int, default=1000, help="binds per run (default 1000)")
    ap.add_argument("--concurrency", default="1,2,8", help="comma-separated (default 1,2,8)")
    ap.add_argument("--verify", type=int, default=5, help="binds checked with ip addr per run")
    ap.add_argument("--iperf-time", type=int, default=5)
    ap.add_argument("--iperf-repeat", type=int, default=3,
                    help="alternating kuryr/raw rounds (median reported)")
    ap.add_argument("--sg-members", type=int, default=1000)
    ap.add_argument("--sg-chunk", type=int, default=100)
    ap.add_argument("--sg-rounds", type=int, default=10)
    ap.add_argument("--only", default="a,b,c", help="sections to run (default a,b,c)")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    only = set(args.only.split(","))

    if os.geteuid() != 0:
        sys.exit("run as root (the lab creates namespaces)")
    for path in (labmod.KURYR_BIN, BIND_BENCH):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} missing: cargo build --release --bins")

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the lab is always closed.
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
        sections = [("a", "bind", bench.bind_latency), ("b", "throughput", bench.throughput),
                    ("c", "security_groups", bench.security_groups)]
        for key, name, fn in sections:
            if key not in only:
                continue
            try:
                res[name] = fn()
                if name == "bind":
                    res[name]["concurrency"] = args.concurrency
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
        # A second Ctrl-C must not cut the cleanup short.
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
