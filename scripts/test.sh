#!/usr/bin/env bash
# Every kuryr test: Rust unit, conformance and integration tests, then the real
# openstack CLI and openstacksdk against a running `kuryr server`, the agent in a
# lab of namespaces, and dockerd with the kuryr plugin; last, Neutron's own API test
# suite (neutron-tempest-plugin, run by tempest) against a `kuryr server`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-deps.sh
cargo build --release --bins
cargo test --workspace --release
KURYR_BIN="$PWD/target/release/kuryr" .venv/bin/pytest -n 2 -q tests/client tests/lab tests/docker
tempest_start=$SECONDS
tempest_status=0
KURYR_BIN="$PWD/target/release/kuryr" .venv/bin/python tests/tempest/run.py || tempest_status=$?
echo "[tempest] neutron-tempest-plugin API suite: wall time $((SECONDS - tempest_start)) s"
exit "$tempest_status"
