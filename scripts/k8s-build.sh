#!/usr/bin/env bash
# Builds the real Kubernetes peers that the Kubernetes lab runs, from Go modules
# (the only place they can come from here): kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kubectl from k8s.io/kubernetes at one release, etcd
# from go.etcd.io/etcd/server/v3, and cnitool from github.com/containernetworking/cni.
#
# Cached across runs on one machine: the Go module and build caches live under
# $KURYR_CACHE (default ~/.cache/kuryr) and the binaries in a bin dir named after
# the versions, so a second run prints that dir and exits at once.
# Prints the bin dir on its last line.
set -euo pipefail

K8S=v1.34.4     # kubelet 1.34 still runs on cgroup v1 hosts (1.35+ refuses by default)
STAGING=v0.34.4 # the staging modules published with that release
ETCD=v3.6.16
CNI=v1.3.0

CACHE=${KURYR_CACHE:-$HOME/.cache/kuryr}
BIN=$CACHE/k8s-$K8S-etcd-$ETCD-cni-$CNI/bin
TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd cnitool)

have_all() {
    local t
    for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || return 1; done
}
if have_all; then
    echo "$BIN"
    exit 0
fi

export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOTOOLCHAIN=local
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
src=$CACHE/go/src
mkdir -p "$BIN" "$src"
start=$SECONDS

# k8s.io/kubernetes replaces its staging modules with ./staging/src/...; a module that
# builds it must name each one's published version instead.
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
    cloud-provider cluster-bootstrap code-generator component-base component-helpers
    controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
    sample-apiserver sample-cli-plugin sample-controller)
k8s_src=$src/kubernetes-$K8S
mkdir -p "$k8s_src"
{
    echo "module kuryr.test/k8sbuild"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $K8S"
    echo
    echo "replace ("
    for m in "${staging[@]}"; do echo "	k8s.io/$m => k8s.io/$m $STAGING"; done
    echo ")"
} >"$k8s_src/go.mod"
# The version the binaries report (kubectl version, the node's kubeletVersion).
ver=k8s.io/component-base/version
minor=${K8S#v1.}
minor=${minor%%.*}
ldflags="-s -w -X $ver.gitVersion=$K8S -X $ver.gitMajor=1 -X $ver.gitMinor=$minor"
ldflags+=" -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"
(
    cd "$k8s_src"
    go mod download k8s.io/kubernetes
    go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kubectl
)
echo "[k8s-build] kubernetes $K8S: $((SECONDS - start)) s" >&2

t=$SECONDS
etcd_src=$src/etcd-$ETCD
mkdir -p "$etcd_src"
printf 'module kuryr.test/etcdbuild\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD" \
    >"$etcd_src/go.mod"
(cd "$etcd_src" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
echo "[k8s-build] etcd $ETCD: $((SECONDS - t)) s" >&2

t=$SECONDS
cni_src=$src/cni-$CNI
mkdir -p "$cni_src"
printf 'module kuryr.test/cnibuild\n\ngo 1.24.0\n\nrequire github.com/containernetworking/cni %s\n' "$CNI" \
    >"$cni_src/go.mod"
(cd "$cni_src" && go build -trimpath -ldflags "-s -w" -o "$BIN/cnitool" \
    github.com/containernetworking/cni/cnitool)
echo "[k8s-build] cnitool $CNI: $((SECONDS - t)) s" >&2

have_all
echo "[k8s-build] built in $((SECONDS - start)) s" >&2
echo "$BIN"
