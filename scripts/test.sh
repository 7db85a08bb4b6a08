#!/usr/bin/env bash
# Every kuryr test: Rust unit, conformance and integration tests, then the real
# openstack CLI and openstacksdk against a running `kuryr server`, the agent in a
# lab of namespaces, and dockerd with the kuryr plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-deps.sh
cargo build --release --bins
cargo test --workspace --release
KURYR_BIN="$PWD/target/release/kuryr" .venv/bin/pytest -n 2 -q tests/client tests/lab tests/docker
