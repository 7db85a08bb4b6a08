#!/usr/bin/env bash
# Builds the real Kubernetes peers that the Kubernetes lab runs, from Go modules
# (the only place they can come from here): kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kubectl from k8s.io/kubernetes at one release, etcd
# from go.etcd.io/etcd/server/v3, cnitool from github.com/containernetworking/cni,
# containerd 2 (containerd, ctr, containerd-shim-runc-v2) from
# github.com/containerd/containerd/v2, crictl from sigs.k8s.io/cri-tools and CoreDNS
# from github.com/coredns/coredns (the cluster's DNS, in an image the lab builds; its
# binary is named after its version, coredns-vX.Y.Z, since the bin dir is not).
#
# containerd 2, not Debian's 1.6 (which does run kubelet 1.34): the lab's kuryr
# conflist is CNI 1.1.0, whose results the CNI library of containerd 1.6 rejects
# ("unsupported CNI result version"), and only containerd 2 calls the STATUS verb.
#
# Cached across runs on one machine: the Go module and build caches live under
# $KURYR_CACHE (default ~/.cache/kuryr) and the binaries in a bin dir named after
# the versions; each group is built only when one of its binaries is missing, so a
# second run prints that dir and exits at once.
# Prints the bin dir on its last line.
set -euo pipefail

K8S=v1.34.4     # kubelet 1.34 still runs on cgroup v1 hosts (1.35+ refuses by default)
STAGING=v0.34.4 # the staging modules published with that release
ETCD=v3.6.16
CNI=v1.3.0
CONTAINERD=v2.4.2 # supports cgroup v1 (deprecated, kept until 2029)
CRICTL=v1.34.0    # cri-tools of the same minor as the kubelet
COREDNS=v1.15.0

CACHE=${KURYR_CACHE:-$HOME/.cache/kuryr}
BIN=$CACHE/k8s-$K8S-etcd-$ETCD-cni-$CNI-containerd-$CONTAINERD-crictl-$CRICTL/bin
K8S_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
CONTAINERD_TOOLS=(containerd ctr containerd-shim-runc-v2)
TOOLS=("${K8S_TOOLS[@]}" etcd cnitool "${CONTAINERD_TOOLS[@]}" crictl "coredns-$COREDNS")

# True if every named binary is in the bin dir.
have() {
    local t
    for t in "$@"; do [ -x "$BIN/$t" ] || return 1; done
}
if have "${TOOLS[@]}"; then
    echo "$BIN"
    exit 0
fi

export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOTOOLCHAIN=local
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
src=$CACHE/go/src
mkdir -p "$BIN" "$src"
start=$SECONDS

# A module of our own that requires one module (at one version); prints its dir.
build_module() {
    local dir=$src/$1 module=$2 version=$3
    mkdir -p "$dir"
    printf 'module kuryr.test/build\n\ngo 1.24.0\n\nrequire %s %s\n' "$module" "$version" \
        >"$dir/go.mod"
    echo "$dir"
}

build_kubernetes() {
    # k8s.io/kubernetes replaces its staging modules with ./staging/src/...; a module
    # that builds it must name each one's published version instead.
    local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
        cloud-provider cluster-bootstrap code-generator component-base component-helpers
        controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
        endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
        kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
        sample-apiserver sample-cli-plugin sample-controller)
    local dir m
    dir=$(build_module "kubernetes-$K8S" k8s.io/kubernetes "$K8S")
    {
        echo
        echo "replace ("
        for m in "${staging[@]}"; do echo "	k8s.io/$m => k8s.io/$m $STAGING"; done
        echo ")"
    } >>"$dir/go.mod"
    # The version the binaries report (kubectl version, the node's kubeletVersion).
    local ver=k8s.io/component-base/version minor=${K8S#v1.}
    minor=${minor%%.*}
    local ldflags="-s -w -X $ver.gitVersion=$K8S -X $ver.gitMajor=1 -X $ver.gitMinor=$minor"
    ldflags+=" -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"
    (
        cd "$dir"
        go mod download k8s.io/kubernetes
        go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
            k8s.io/kubernetes/cmd/kube-apiserver \
            k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler \
            k8s.io/kubernetes/cmd/kubelet \
            k8s.io/kubernetes/cmd/kubectl
    )
}

build_etcd() {
    local dir
    dir=$(build_module "etcd-$ETCD" go.etcd.io/etcd/server/v3 "$ETCD")
    (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
}

build_cnitool() {
    local dir
    dir=$(build_module "cni-$CNI" github.com/containernetworking/cni "$CNI")
    (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/cnitool" \
        github.com/containernetworking/cni/cnitool)
}

build_containerd() {
    local dir m=github.com/containerd/containerd/v2
    dir=$(build_module "containerd-$CONTAINERD" "$m" "$CONTAINERD")
    # Without cgo: no btrfs snapshotter (the lab uses overlayfs).
    (cd "$dir" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
        -ldflags "-s -w -X $m/version.Version=$CONTAINERD" -o "$BIN/" \
        "$m/cmd/containerd" "$m/cmd/ctr" "$m/cmd/containerd-shim-runc-v2")
}

build_crictl() {
    local dir
    dir=$(build_module "cri-tools-$CRICTL" sigs.k8s.io/cri-tools "$CRICTL")
    (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/crictl" \
        sigs.k8s.io/cri-tools/cmd/crictl)
}

build_coredns() {
    local dir
    dir=$(build_module "coredns-$COREDNS" github.com/coredns/coredns "$COREDNS")
    (cd "$dir" && go mod download github.com/coredns/coredns &&
        go build -trimpath -ldflags "-s -w" -o "$BIN/coredns-$COREDNS" github.com/coredns/coredns)
}

# group name, build function, binaries
step() {
    local name=$1 fn=$2 t=$SECONDS
    shift 2
    have "$@" && return 0
    "$fn"
    echo "[k8s-build] $name: $((SECONDS - t)) s" >&2
}
step "kubernetes $K8S" build_kubernetes "${K8S_TOOLS[@]}"
step "etcd $ETCD" build_etcd etcd
step "cnitool $CNI" build_cnitool cnitool
step "containerd $CONTAINERD" build_containerd "${CONTAINERD_TOOLS[@]}"
step "crictl $CRICTL" build_crictl crictl
step "coredns $COREDNS" build_coredns "coredns-$COREDNS"

have "${TOOLS[@]}"
echo "[k8s-build] built in $((SECONDS - start)) s" >&2
echo "$BIN"
