#!/usr/bin/env bash
# Installs what kuryr's tests need on a fresh Debian machine with Rust:
# a Python venv (.venv) with the openstack CLI, openstacksdk and pytest from PyPI,
# and tempest with neutron-tempest-plugin (Neutron's API test suite).
# Idempotent: a second run with the same requirements takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The agent's test lab: namespaces, links and nftables (iproute2, nftables), ping,
# busybox (nc in "containers"), iperf3, socat and the reference CNI plugins for the benchmarks.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
command -v busybox >/dev/null 2>&1 || need_apt+=(busybox-static)
command -v iperf3 >/dev/null 2>&1 || need_apt+=(iperf3)
# socat: the load balancer dataplane tests' TCP and UDP clients and servers.
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
# The Docker tests: a real dockerd per lab host (docker.io brings containerd and runc).
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
# The CNI tests: Podman with its CNI backend runs containers wired by kuryr-cni.
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
# The Kubernetes lab (tests/k8s): runc under containerd 2 (built by scripts/k8s-build.sh),
# openssl for the cluster's certificates, iptables for the kubelet's chains (made in the
# host namespaces), findmnt/nsenter/unshare for the nodes' mount namespaces.
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v findmnt >/dev/null 2>&1 || need_apt+=(util-linux)
# The etcd store (cargo feature `etcd`): etcd-client compiles etcd's protobuf files.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
# The replicated server's one address in the replica tests (health-checked on /readyz).
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[test-deps] installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

reqs=(tests/requirements.txt tests/tempest/requirements.txt tests/tempest/constraints.txt)
stamp=.venv/.requirements-$(cat "${reqs[@]}" | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then
  exit 0
fi
echo "[test-deps] creating .venv with the openstack CLI, openstacksdk and tempest"
rm -rf .venv
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check \
  -r tests/requirements.txt -r tests/tempest/requirements.txt
touch "$stamp"
