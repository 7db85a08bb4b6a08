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
phase "cargo build" cargo build --release --bins
# Kubernetes, etcd and cnitool from their Go modules (cached: seconds after the first run).
phase "Kubernetes peers (scripts/k8s-build.sh)" scripts/k8s-build.sh
phase "cargo test" cargo test --workspace --release
phase "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# --durations: the slowest tests, printed at the end.
phase "pytest (client, lab, docker, cni)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/pytest -n 2 -q --durations=15 tests/client tests/lab tests/docker tests/cni
# The Kubernetes lab: real clusters (kubelet, containerd) with kuryr-cni and the controller,
# one at a time (their timing checks want the machine's two cores).
phase "pytest (Kubernetes)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/pytest -q --durations=10 tests/k8s
# Pod ADD latency, burst and NetworkPolicy convergence, kuryr against the reference CNI.
phase "benchmark (Kubernetes)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/python bench/kubernetes.py --json target/bench-kubernetes.json
tempest_status=0
phase "tempest (neutron-tempest-plugin API suite)" env KURYR_BIN="$PWD/target/release/kuryr" \
    .venv/bin/python tests/tempest/run.py || tempest_status=$?
echo "[test.sh] total: $SECONDS s"
exit "$tempest_status"
