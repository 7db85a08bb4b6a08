#!/usr/bin/env bash
# The Kubernetes demo: a real cluster in a lab of network namespaces, left running.
#
#   scripts/k8s-lab.sh up [--cni auto|kuryr|reference] [--hosts N] [--controller auto|yes|no] [--host-processes]
#   scripts/k8s-lab.sh down
#
# `up` builds what it needs (the Kubernetes peers with scripts/k8s-build.sh, cached;
# kuryr with cargo), starts a kuryr server (the cloud), then the cluster
# (tests/k8s/cluster.py: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler in the lab namespace, containerd and a kubelet per host) and, with
# the kuryr CNI, installs kuryr from deploy/kubernetes (its image made by
# scripts/kuryr_image.py and imported into each node; secret.yaml from `kuryr
# credential kubernetes`; `kubectl apply -f`). --host-processes runs kuryr's agents
# and controller as processes of the lab instead (their logs in the lab directory). The cluster's network is kuryr (kuryr-cni and the
# controller) when both exist, else the reference CNI (bridge + host-local); --cni
# chooses. It prints KUBECONFIG and how to run kubectl, records the cluster in
# /run/kuryr-k8s-lab/state.json and leaves it running. `down` removes all of it:
# processes, containers, mounts, cgroups, namespaces, directories.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '4,5p' "$0" | sed 's/^# *//' >&2
    exit 2
}
[ $# -ge 1 ] || usage
cmd=$1
shift
[ -x .venv/bin/python ] || scripts/test-deps.sh
case "$cmd" in
up)
    KURYR_K8S_BIN=$(scripts/k8s-build.sh | tail -n 1)
    # A no-op (about a second) when kuryr is up to date.
    cargo build --release --bins
    export KURYR_K8S_BIN KURYR_BIN=$PWD/target/release/kuryr \
        KURYR_CNI_BIN=$PWD/target/release/kuryr-cni
    exec .venv/bin/python tests/k8s/cluster.py up "$@"
    ;;
down)
    exec .venv/bin/python tests/k8s/cluster.py down
    ;;
*)
    usage
    ;;
esac
