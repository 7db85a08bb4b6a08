#!/usr/bin/env bash
# Every kuryr test: Rust unit, conformance and integration tests, then the real
# openstack CLI and openstacksdk against a running `kuryr server`, the agent in a
# lab of namespaces, and dockerd with the kuryr plugin; last, Neutron's own API test
# suite (neutron-tempest-plugin, run by tempest) against a `kuryr server`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase prints its wall time, so a slow run says where the time went.
phase() {
    local name=$1 start=$SECONDS status=0
    shift
    "$@" || status=$?
    echo "[test.sh] $name: $((SECONDS - start)) s (exit $status)"
    return "$status"
}

phase "dependencies" scripts/test-deps.sh
phase "cargo fmt --check" cargo fmt --all --check
# Every test runs the binary with the etcd store built in (cargo feature `etcd`).
FEATURES=(--features kuryr/etcd)
phase "cargo build" cargo build --release --bins "${FEATURES[@]}"

# CPU-bound builds run in the background, at a lower priority, while tests that mostly
# wait (processes, the network) run in front: on a new machine the first build of the
# Kubernetes peers then costs little wall time. Each prints its own time.
background() {
    local name=$1 logf=$2
    shift 2
    (
        start=$SECONDS status=0
        nice -n 10 "$@" >"$logf" 2>&1 || status=$?
        echo "[test.sh] $name (background): $((SECONDS - start)) s (exit $status)"
        [ "$status" -eq 0 ] || tail -n 60 "$logf"
        exit "$status"
    ) &
}
settle() {
    local name=$1 pid=$2 start=$SECONDS status=0
    wait "$pid" || status=$?
    echo "[test.sh] waiting for $name: $((SECONDS - start)) s (exit $status)"
    return "$status"
}
# A failing phase ends the run: the background builds go with it.
kill_tree() {
    local p
    for p in $(pgrep -P "$1" || true); do kill_tree "$p"; done
    kill "$1" 2>/dev/null || true
}
clippy_pid=""
trap 'for p in $clippy_pid; do kill_tree "$p"; done' EXIT
mkdir -p target
phase "cargo test" cargo test --workspace --release "${FEATURES[@]}"
# Kubernetes, etcd, containerd and cnitool from their Go modules (cached: seconds after
# the first run on a machine; the first build's log is target/k8s-build.log). The
# replicated-server tests below need its etcd.
k8s_build() {
    scripts/k8s-build.sh >target/k8s-build.log 2>&1 || { tail -n 60 target/k8s-build.log; return 1; }
}
phase "Kubernetes peers (scripts/k8s-build.sh)" k8s_build
KURYR_ETCD_BIN="$(tail -n 1 target/k8s-build.log)/etcd"
export KURYR_ETCD_BIN
# The store conformance suite on a real three-member etcd cluster, and quorum loss.
phase "cargo test (etcd store)" cargo test --release -p kuryr-store --features etcd --test etcd
# Clippy shares cargo's build directory lock with cargo test: after the cargo tests, beside pytest.
# Both builds: with the etcd store (what the tests run) and the default one (`kuryr up`'s).
background "cargo clippy" target/clippy.log sh -c 'cargo clippy --workspace --all-targets --features kuryr/etcd -- -D warnings && cargo clippy -p kuryr-store --features etcd --test etcd -- -D warnings && cargo clippy --workspace --all-targets -- -D warnings'
clippy_pid=$!
# --durations: the slowest tests, printed at the end. The client tests run against one
# server on the embedded store; the agent lab, Docker and CNI tests against three
# replicas on etcd behind one address (KURYR_LAB_REPLICAS); tests/replicas drives
# replicas directly (the CLI across them, concurrent creates through faults, migration).
phase "pytest (client, replicas, lab, docker, cni)" env KURYR_BIN="$PWD/target/release/kuryr" \
    KURYR_LAB_REPLICAS=3 \
    .venv/bin/pytest -n 2 -q --durations=15 tests/client tests/replicas tests/lab tests/docker tests/cni
phase "cargo clippy" settle "cargo clippy" "$clippy_pid"
clippy_pid=""
# The Kubernetes lab: real clusters (kubelet, containerd) with kuryr-cni and the controller,
# one at a time (their timing checks want the machine's two cores).
phase "pytest (Kubernetes)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/pytest -q --durations=10 tests/k8s
# Pod ADD latency, burst and NetworkPolicy convergence, kuryr against the reference CNI.
phase "benchmark (Kubernetes)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/python bench/kubernetes.py --json target/bench-kubernetes.json
# Services on kuryr's load balancer: readiness, endpoint changes, throughput, 1,000 Services.
phase "benchmark (Services)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/python bench/services.py --json target/bench-services.json
# Server replicas on a 3-member etcd against one server on the embedded store: creates,
# watch latency across replicas, failover.
phase "benchmark (replicas)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/python bench/replicas.py --json target/bench-replicas.json
tempest_status=0
phase "tempest (neutron-tempest-plugin API suite)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/python tests/tempest/run.py || tempest_status=$?
echo "[test.sh] total: $SECONDS s"
exit "$tempest_status"
