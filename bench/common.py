"""Helpers shared by the bench scripts (bench/kubernetes.py, bench/routers.py): the
progress log, quantiles and the report's number format. Importing it has no side
effects (unlike bench/routers.py, which sets RUST_LOG)."""

import sys
import time


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(samples, q):
    """The q-quantile (0..1) of samples, nearest rank."""
    s = sorted(samples)
    if not s:
        return None
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def fmt(v, unit="", digits=1):
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def finish(report, json_path):
    """The end of a bench script's report: says whether the run failed, writes the JSON
    report when asked; the exit status (1: the run failed)."""
    import json

    if report.get("error"):
        print("  (the run failed: see above)")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report.get("error") else 0
