#!/usr/bin/env python3
"""Docker benchmark of kuryr's libnetwork plugin (see bench/DOCKER.md).

    sudo .venv/bin/python bench/docker.py [--runs 20] [--warmup 3] [--rotate] [--json]

Builds a one-host Docker lab (tests/docker/dockerlab.py: a `kuryr server`, a host
namespace `h1` running a `kuryr agent` that serves the Docker plugin `kuryr`, and a
dockerd of its own), then times the real docker CLI against that dockerd:

  (1) `docker network create` then `docker network rm`, each timed: kuryr
      (`-d kuryr --ipam-driver kuryr --subnet 10.30.N.0/24`) vs Docker's own bridge
      driver (`-d bridge --subnet 10.40.N.0/24`), alternating;
  (2) `docker run --rm --net X kuryr/busybox true` for X = none, a bridge network, a
      kuryr network, interleaved (none, bridge, kuryr, none, ...) to cancel drift;
      network cost = median(X) - median(none), and kuryr's cost / bridge's cost
      (target <= 1.2); also the paired cost (median over the rounds of X minus that
      round's none), which drift on a busy machine disturbs much less;
  (3) the plugin's own time per call, from the agent's log (`docker call` debug
      lines of kuryr_docker), over the measured runs of (1) and (2).

Figures are printed, never asserted (but a docker command that fails stops the
run). Everything runs in the lab's namespaces; the lab is closed on any exit.
Needs root, Debian's docker.io and busybox-static, and
`cargo build --release --bins`.
"""

import argparse
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "docker"))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

# The plugin's per-call times are debug lines of kuryr_docker: set before the lab
# starts its server and agent (they take RUST_LOG from this environment).
if "kuryr_docker=debug" not in os.environ.get("RUST_LOG", ""):
    os.environ["RUST_LOG"] = "info,kuryr_docker=debug"

import dockerlab  # noqa: E402  (tests/docker/dockerlab.py)
import lab as labmod  # noqa: E402  (tests/lab/lab.py)

HOST = "h1"
KURYR_NET = "10.30"      # 10.30.N.0/24: kuryr networks
BRIDGE_NET = "10.40"     # 10.40.N.0/24: bridge networks
RUN_N = 250              # the /24 of the networks the containers join
CALL_RE = re.compile(r'docker call call="?([A-Za-z.]+)"? ms=([0-9.]+)')
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
# The agent's own split of a bind (kuryr_agent, info): claim the port, see it come
# back on the watch, a convergence pass that realizes it.
BOUND_RE = re.compile(r"port bound.*?claim_ms=([0-9.]+) watch_ms=([0-9.]+) converge_ms=([0-9.]+)")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def p50(xs):
    return statistics.median(xs) if xs else None


def p90(xs):
    """Nearest-rank 90th percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def summary(xs):
    return {"p50": p50(xs), "p90": p90(xs), "min": min(xs) if xs else None,
            "max": max(xs) if xs else None, "n": len(xs), "samples": xs}


class AgentLog:
    """Reads the `docker call` lines the h1 agent wrote since a mark."""

    def __init__(self, path):
        self.path = path

    def mark(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def lines(self, since, until=None):
        with open(self.path, "rb") as f:
            f.seek(since)
            data = f.read(-1 if until is None else max(0, until - since))
        return ANSI_RE.sub("", data.decode(errors="replace")).splitlines()

    def calls(self, since, until=None):
        """[(call, ms)] logged between two marks."""
        return [(m.group(1), float(m.group(2))) for m in map(CALL_RE.search,
                                                             self.lines(since, until)) if m]

    def binds(self, since, until=None):
        """[(claim_ms, watch_ms, converge_ms)] of the agent's `port bound` lines."""
        return [tuple(float(g) for g in m.groups())
                for m in map(BOUND_RE.search, self.lines(since, until)) if m]


class Bench:
    def __init__(self, lab, args):
        self.lab = lab
        self.args = args
        self.alog = AgentLog(lab.agents[HOST].log_path)

    def timed(self, *args):
        """One docker CLI command against h1's dockerd; its wall time in ms."""
        t = time.perf_counter()
        p = self.lab.docker_proc(HOST, *args, timeout=120)
        ms = (time.perf_counter() - t) * 1e3
        if p.returncode != 0:
            raise RuntimeError(f"docker {' '.join(map(str, args))} exited {p.returncode}:\n"
                               f"{p.stderr}{p.stdout}\n{self.lab.logs()}")
        return ms, p.stdout

    # ------------------------------------------------------------ (1) network create/rm

    def create_rm(self, driver, n):
        if driver == "kuryr":
            opts = ("-d", "kuryr", "--ipam-driver", "kuryr", "--subnet", f"{KURYR_NET}.{n}.0/24")
        else:
            opts = ("-d", "bridge", "--subnet", f"{BRIDGE_NET}.{n}.0/24")
        name = f"bench-{driver}-{n}"
        c, _ = self.timed("network", "create", *opts, name)
        r, _ = self.timed("network", "rm", name)
        return c, r

    def networks(self):
        runs, warm = self.args.runs, self.args.warmup
        if runs + warm > RUN_N:
            raise RuntimeError(f"--runs + --warmup must stay below {RUN_N}")
        out = {d: {"create": [], "rm": []} for d in ("kuryr", "bridge")}
        log(f"network create/rm: {warm} warm-up rounds, then {runs} rounds of kuryr, bridge")
        n = 0
        for _ in range(warm):
            for d in ("kuryr", "bridge"):
                self.create_rm(d, n)
            n += 1
        mark = self.alog.mark()
        for i in range(runs):
            for d in ("kuryr", "bridge"):
                c, r = self.create_rm(d, n)
                out[d]["create"].append(c)
                out[d]["rm"].append(r)
            n += 1
        calls = self.alog.calls(mark)
        for d in out:
            out[d] = {k: summary(v) for k, v in out[d].items()}
        out["plugin_calls"] = per_call(calls, runs)
        return out

    # ------------------------------------------------------------ (2) docker run --rm

    def containers(self):
        lab, runs, warm = self.lab, self.args.runs, self.args.warmup
        kuryr_net, bridge_net = "bench-run-kuryr", "bench-run-bridge"
        lab.docker(HOST, "network", "create", "-d", "kuryr", "--ipam-driver", "kuryr",
                   "--subnet", f"{KURYR_NET}.{RUN_N}.0/24", kuryr_net)
        lab.docker(HOST, "network", "create", "-d", "bridge",
                   "--subnet", f"{BRIDGE_NET}.{RUN_N}.0/24", bridge_net)
        nets = {"none": "none", "bridge": bridge_net, "kuryr": kuryr_net}
        out = {"networks": nets}
        try:
            # Warm-up, and a check that each network really gives the container its
            # address (the timed runs only run `true`).
            log(f"docker run: {warm} warm-up rounds (none, bridge, kuryr)")
            seen = {}
            for w in range(warm):
                for k, net in nets.items():
                    _, text = self.timed("run", "--rm", "--net", net, dockerlab.IMAGE,
                                         "ip", "-o", "-4", "addr", "show")
                    seen[k] = sorted(set(re.findall(r"inet (\S+)", text)) - {"127.0.0.1/8"})
            out["addresses_seen"] = seen
            for k, prefix in (("kuryr", f"{KURYR_NET}.{RUN_N}."),
                              ("bridge", f"{BRIDGE_NET}.{RUN_N}.")):
                if not any(a.startswith(prefix) for a in seen[k]):
                    raise RuntimeError(f"a container on the {k} network has no {prefix}x "
                                       f"address: {seen[k]}")
            if seen["none"]:
                raise RuntimeError(f"a --net none container has addresses: {seen['none']}")

            log(f"docker run: {runs} rounds of `docker run --rm --net X {dockerlab.IMAGE} "
                f"true`, X = none, bridge, kuryr")
            samples = {k: [] for k in nets}
            per_run_plugin = []   # the plugin's summed call times during each kuryr run
            mark = self.alog.mark()
            kinds = list(nets)
            for i in range(runs):
                # --rotate: none/bridge/kuryr, then bridge/kuryr/none, ... so that each
                # kind follows each other kind equally often.
                order = kinds[i % 3:] + kinds[:i % 3] if self.args.rotate else kinds
                for k in order:
                    net = nets[k]
                    before = self.alog.mark()
                    ms, _ = self.timed("run", "--rm", "--net", net, dockerlab.IMAGE, "true")
                    samples[k].append(ms)
                    if k == "kuryr":
                        per_run_plugin.append(
                            sum(t for _, t in self.alog.calls(before, self.alog.mark())))
                if (i + 1) % 5 == 0:
                    log(f"  round {i + 1}/{runs}: medians so far " + ", ".join(
                        f"{k} {p50(v):.0f} ms" for k, v in samples.items()))
            calls = self.alog.calls(mark)
        finally:
            for net in (kuryr_net, bridge_net):
                lab.docker_proc(HOST, "network", "rm", net)
        for k, v in samples.items():
            out[k] = summary(v)
        none = out["none"]["p50"]
        out["cost_ms"] = {k: out[k]["p50"] - none for k in ("bridge", "kuryr")}
        b, k = out["cost_ms"]["bridge"], out["cost_ms"]["kuryr"]
        out["ratio"] = k / b if b > 0 else None
        # Paired: each run against the `none` run of the same round (drift cancels
        # within a round), median over the rounds.
        paired = {x: [a - z for a, z in zip(samples[x], samples["none"])]
                  for x in ("bridge", "kuryr")}
        out["paired_cost_ms"] = {x: summary(v) for x, v in paired.items()}
        pb, pk = out["paired_cost_ms"]["bridge"]["p50"], out["paired_cost_ms"]["kuryr"]["p50"]
        out["paired_ratio"] = pk / pb if pb > 0 else None
        out["ratio_interval"] = bootstrap_ratio(samples)
        out["plugin_calls"] = per_call(calls, runs)
        out["plugin_ms_per_run"] = summary(per_run_plugin)
        binds = self.alog.binds(mark)
        out["agent_bind_ms"] = {k: summary([b[i] for b in binds])
                                for i, k in enumerate(("claim", "watch", "converge"))}
        return out

    # ------------------------------------------------------------ after the runs

    def neutron_leftovers(self):
        """Ports kuryr's plugin made that are still in Neutron (should be none)."""
        deadline = time.time() + 10
        while True:
            ports = self.lab.get("/ports", device_owner="compute:kuryr")["ports"]
            if not ports or time.time() > deadline:
                return [p["id"] for p in ports]
            time.sleep(0.2)


def bootstrap_ratio(samples, rounds=2000, seed=4):
    """5th and 95th percentiles of both ratios over the rounds resampled with
    replacement (whole rounds, so the pairing is kept): how much these runs on this
    machine pin the ratios down. {"medians": [lo, hi], "paired": [lo, hi]}."""
    rng = random.Random(seed)
    n = len(samples["none"])
    if n < 2:
        return None
    med, pair = [], []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        none = statistics.median(samples["none"][i] for i in idx)
        b = statistics.median(samples["bridge"][i] for i in idx) - none
        k = statistics.median(samples["kuryr"][i] for i in idx) - none
        if b > 0:
            med.append(k / b)
        pb = statistics.median(samples["bridge"][i] - samples["none"][i] for i in idx)
        pk = statistics.median(samples["kuryr"][i] - samples["none"][i] for i in idx)
        if pb > 0:
            pair.append(pk / pb)

    def interval(xs):
        if len(xs) < rounds // 2:
            return None
        xs.sort()
        return [xs[int(0.05 * len(xs))], xs[int(0.95 * len(xs)) - 1]]
    return {"medians": interval(med), "paired": interval(pair)}


def per_call(calls, runs):
    """{call: {count, per_run, p50, p90, total}} from [(call, ms)]."""
    by = {}
    for c, ms in calls:
        by.setdefault(c, []).append(ms)
    return {c: {"count": len(v), "per_run": len(v) / runs if runs else None,
                "p50": p50(v), "p90": p90(v), "total": sum(v)}
            for c, v in sorted(by.items())}


def leftovers(prefix, labdir):
    """Namespaces and processes of this lab still there after close()."""
    ns = [l.split()[0] for l in labmod.sh("ip", "netns", "list", check=False).splitlines()
          if l.startswith(prefix + "-")]
    procs = []
    for pid, pfx, _host, cmd in dockerlab._our_processes():
        if pfx == prefix:
            procs.append(f"{pid} {cmd[:100]}")
    for entry in os.listdir("/proc"):
        if entry.isdigit() and labdir and labdir in dockerlab._cmdline(entry):
            procs.append(f"{entry} {dockerlab._cmdline(entry)[:100]}")
    return {"namespaces": ns, "processes": sorted(set(procs)),
            "dir_exists": bool(labdir) and os.path.exists(labdir)}


# ---------------------------------------------------------------- the report

def fmt(v, unit="", digits=1):
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def calls_table(lines, calls, indent="    "):
    lines.append(f"{indent}{'call':<44} {'per run':>7} {'p50 ms':>8} {'p90 ms':>8}")
    for c, s in calls.items():
        lines.append(f"{indent}{c:<44} {fmt(s['per_run'], '', 2):>7} {fmt(s['p50'], '', 2):>8} "
                     f"{fmt(s['p90'], '', 2):>8}")


def report(res):
    env = res["environment"]
    lines = ["", "=" * 76, "kuryr Docker plugin benchmark (docker CLI against the lab's dockerd)",
             "=" * 76,
             f"docker {env.get('docker_version')}, kernel {env['kernel']}, {env['cpus']} CPUs; "
             f"load average {'/'.join(fmt(x, '', 2) for x in env['load_before'])} before, "
             f"{'/'.join(fmt(x, '', 2) for x in res.get('load_after') or [None] * 3)} after "
             f"(1/5/15 min); run took {fmt(res.get('duration_s'), ' s', 0)}"]
    n = res.get("networks")
    if n:
        lines += ["", f"(1) docker network create / rm, {n['kuryr']['create']['n']} each "
                  f"(kuryr and bridge alternating; ms, wall time of the CLI)", "",
                  f"    {'driver':<8} | {'create p50':>10} {'p90':>7} | {'rm p50':>7} {'p90':>7}"]
        for d in ("kuryr", "bridge"):
            c, r = n[d]["create"], n[d]["rm"]
            lines.append(f"    {d:<8} | {fmt(c['p50']):>10} {fmt(c['p90']):>7} | "
                         f"{fmt(r['p50']):>7} {fmt(r['p90']):>7}")
        kc, bc = n["kuryr"]["create"]["p50"], n["bridge"]["create"]["p50"]
        kr, br = n["kuryr"]["rm"]["p50"], n["bridge"]["rm"]["p50"]
        lines.append(f"    kuryr / bridge: create {fmt(kc / bc, 'x', 2)}, rm {fmt(kr / br, 'x', 2)} "
                     "(medians)")
        lines += ["", "    the plugin's time per call during those creates and rms "
                  "(agent log, per create+rm round):"]
        calls_table(lines, n["plugin_calls"], "      ")
    r = res.get("containers")
    if r:
        lines += ["", f"(2) docker run --rm --net X {dockerlab.IMAGE} true, {r['none']['n']} "
                  "runs each, interleaved"
                  f"{' (order rotated each round)' if res.get('rotate') else ''} "
                  "(ms, wall time of the CLI)", "",
                  f"    {'X':<8} | {'p50':>7} {'p90':>7} {'min':>7} {'max':>7} | "
                  f"{'network cost (p50 - none p50)':>30}"]
        for k in ("none", "bridge", "kuryr"):
            s = r[k]
            cost = r["cost_ms"].get(k)
            lines.append(f"    {k:<8} | {fmt(s['p50']):>7} {fmt(s['p90']):>7} "
                         f"{fmt(s['min']):>7} {fmt(s['max']):>7} | {fmt(cost, ' ms'):>30}")
        ratio, pratio = r["ratio"], r["paired_ratio"]
        pc = r["paired_cost_ms"]
        iv = r.get("ratio_interval") or {}

        def met(x):
            return "met" if x is not None and x <= 1.2 else "NOT met"

        def span(x):
            return f"{x[0]:.2f}x - {x[1]:.2f}x" if x else "-"
        lines += [f"    kuryr cost / bridge cost (of the medians, as above)       "
                  f"{fmt(ratio, 'x', 2):>6}   target <= 1.2x: {met(ratio)}",
                  f"    paired: median over the rounds of (X - that round's none): "
                  f"bridge {fmt(pc['bridge']['p50'], ' ms')}, kuryr {fmt(pc['kuryr']['p50'], ' ms')}",
                  f"    kuryr cost / bridge cost (paired)                          "
                  f"{fmt(pratio, 'x', 2):>6}   target <= 1.2x: {met(pratio)}",
                  f"    rounds resampled (bootstrap, 5th-95th percentile): of the medians "
                  f"{span(iv.get('medians'))}, paired {span(iv.get('paired'))}"]
        pr = r["plugin_ms_per_run"]
        lines += ["", f"    the plugin's own time per kuryr run (sum of its calls): p50 "
                  f"{fmt(pr['p50'])} ms, p90 {fmt(pr['p90'])} ms "
                  f"(of a {fmt(r['cost_ms']['kuryr'])} ms network cost)",
                  "    per call (agent log, over the measured kuryr runs):"]
        calls_table(lines, r["plugin_calls"], "      ")
        ab = r.get("agent_bind_ms")
        if ab and ab["claim"]["n"]:
            lines.append(f"    the agent's bind inside CreateEndpoint (p50 ms, {ab['claim']['n']} "
                         f"binds): claim {fmt(ab['claim']['p50'], '', 2)}, seen on the watch "
                         f"{fmt(ab['watch']['p50'], '', 2)}, convergence pass "
                         f"{fmt(ab['converge']['p50'], '', 2)}")
    lo = res.get("leftovers")
    if lo is not None:
        lines += ["", f"Neutron ports of the plugin left after the runs: "
                  f"{len(res.get('neutron_leftovers') or [])}; after close: namespaces "
                  f"{lo['namespaces'] or 'none'}, processes {lo['processes'] or 'none'}, "
                  f"lab dir {'LEFT' if lo['dir_exists'] else 'removed'}"]
    for sec, err in res.get("errors", {}).items():
        last = err.strip().splitlines()[-1] if err.strip() else err
        lines += ["", f"!! {sec} failed: {last}"]
    lines.append("=" * 76)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="measured runs of each kind (20)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up rounds, not counted (3)")
    ap.add_argument("--json", action="store_true",
                    help="print the results (with every sample) as JSON instead of the table")
    ap.add_argument("--rotate", action="store_true",
                    help="rotate the order within each round (default: none, bridge, kuryr)")
    ap.add_argument("--only", default="networks,containers",
                    help="sections to run (default networks,containers)")
    args = ap.parse_args()
    only = set(args.only.split(","))

    if os.geteuid() != 0:
        sys.exit("run as root (the lab creates namespaces and runs dockerd)")
    if not os.access(labmod.KURYR_BIN, os.X_OK):
        sys.exit(f"{labmod.KURYR_BIN} missing: cargo build --release --bins")
    if not os.access(dockerlab.DOCKERD, os.X_OK):
        sys.exit(f"{dockerlab.DOCKERD} missing: apt-get install docker.io")
    if not dockerlab.plugin_available():
        sys.exit(f"{labmod.KURYR_BIN} does not serve the Docker plugin (no --docker-socket)")

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the lab is always closed.
    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    res = {"environment": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                           "load_before": list(os.getloadavg()),
                           "rust_log": os.environ.get("RUST_LOG")},
           "runs": args.runs, "warmup": args.warmup, "rotate": args.rotate, "errors": {}}
    started = time.monotonic()
    lab = None
    prefix = labdir = None
    try:
        log("building the Docker lab (1 host: kuryr server, agent with the plugin, dockerd)")
        # The agent as deployed (the lab's default for tests is --network-linger 0).
        lab = dockerlab.DockerLab(hosts=1, agent_args=("--network-linger", "60"))
        prefix, labdir = lab.prefix, lab.dir
        res["environment"]["docker_version"] = lab.docker(HOST, "version", "-f",
                                                          "{{.Server.Version}}")
        res["environment"]["lab"] = prefix
        bench = Bench(lab, args)
        for name, fn in (("networks", bench.networks), ("containers", bench.containers)):
            if name not in only:
                continue
            try:
                res[name] = fn()
            except KeyboardInterrupt:
                raise
            except Exception:
                res["errors"][name] = traceback.format_exc()
                log(f"{name} failed:\n{res['errors'][name]}")
        try:
            res["neutron_leftovers"] = bench.neutron_leftovers()
        except Exception as e:
            res["errors"]["neutron_leftovers"] = str(e)
    except KeyboardInterrupt:
        log("interrupted; closing the lab")
        res["errors"]["interrupted"] = "interrupted"
    except Exception:
        res["errors"]["lab"] = traceback.format_exc()
        log(f"the lab failed:\n{res['errors']['lab']}")
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if lab:
            log("closing the lab")
            lab.close()
    res["duration_s"] = time.monotonic() - started
    res["load_after"] = list(os.getloadavg())
    if prefix:
        res["leftovers"] = leftovers(prefix, labdir)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(report(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
