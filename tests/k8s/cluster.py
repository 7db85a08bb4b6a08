"""The Kubernetes test lab: a real cluster on tests/lab's namespaces (DESIGN.md §10-11).

    lab namespace     kuryr server (:9696) as in tests/lab; etcd (127.0.0.1:2379),
                      kube-apiserver (https://10.99.0.1:6443), kube-controller-manager
                      and kube-scheduler
    host namespaces   nodes h1, h2, ...: the kuryr agent (--host = node name, as in
                      tests/lab), containerd 2 + runc and a kubelet

A node's containerd and kubelet share one mount namespace of their own (the kubelet
mounts pod volumes that containerd must see), held by a `sleep` (the "holder") and
entered with nsenter. It is made from the machine's with every mount private except
/run/netns: containerd pins each pod's network namespace at /run/netns/cni-..., and
that path must mean the same thing to the kuryr agent (which runs in the machine's
mount namespace, as in tests/lab) as to the CNI plugin that containerd runs. In it:
a tmpfs on /run (containerd's shim sockets, runc state; /run/netns moved back on
top), the node's own directories bound on /var/lib (kubelet, CNI state) and /var/log
(pod logs), and files of the node's own bound on the kernel tunables that the kubelet
sets (vm.overcommit_memory, kernel.panic, ...: machine-wide, not per namespace).
containerd is 2.x (scripts/k8s-build.sh): Debian's 1.6 runs kubelet 1.34, but its CNI
library rejects CNI 1.1.0 results ("unsupported CNI result version"); containerd 2 also
asks the plugin's STATUS for the node's NetworkReady (it calls no GC). Its root, state,
socket and CNI directories are in <lab dir>/<host>-k; its cgroup, the kubelet's
--cgroup-root and so every pod's cgroup are under /kuryr-<prefix>-<host> (cgroup v1,
cgroupfs driver). No kube-proxy runs.

The CNI is a parameter: "reference" (bridge + host-local, pod CIDR 10.244.<i>.0/24 on
node h<i>, routed over the underlay, no NAT) or "kuryr" (kuryr-cni talking to the node's
agent: pod networks should not overlap 10.244.0.0/16, which the hosts route);
`set_cni()` switches every node's conflist on a running cluster. start_controller()
starts `kuryr controller` (the HOOK to adjust as the controller settles).

Helpers for tests: kubectl(), kubectl_json(), apply(), pods(), wait_pods(), pod_ips(),
pod_exec(), pod_ping(), serve_peer_address() / peer_address(), crictl(), ctr(), and
tests/lab's whole API (network(), port(), api(), agents...).

close() kills everything (the cgroup trees take containerd, its shims and every
container), removes the pods' network namespaces, the cgroups, then what tests/lab
made. A cluster whose test process died is swept by the next one; so is one that
scripts/k8s-lab.sh left running, once its keeper process is gone (`down` kills it).

Run as a script (scripts/k8s-lab.sh does): `cluster.py up [--cni ...]` leaves a
cluster running and records it in /run/kuryr-k8s-lab/state.json; `cluster.py down`
removes it.
"""

import argparse
import glob
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "lab"))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "docker"))
sys.path.insert(0, _HERE)

import dns  # noqa: E402
import images  # noqa: E402
from dockerlab import (CGROUP_ROOT, _cgroup_dirs, _cmdline, _kill_cgroup_tree,  # noqa: E402
                       _kill_pids, _lab_alive, sweep_stale_dockerlabs)
from lab import (KURYR_BIN, OPENSTACK_BIN, PIDS_DIR, ROOT, UNDERLAY, Lab, Process,  # noqa: E402
                 sh)

DEPLOY_DIR = os.path.join(ROOT, "deploy", "kubernetes")
KURYR_CNI_BIN = os.environ.get("KURYR_CNI_BIN",
                               os.path.join(ROOT, "target", "release", "kuryr-cni"))
REFERENCE_CNI_DIR = os.environ.get("REFERENCE_CNI_DIR", "/usr/lib/cni")
RUNC = shutil.which("runc") or "/usr/sbin/runc"
STATE_DIR = "/run/kuryr-k8s-lab"
APISERVER_IP = f"{UNDERLAY}.1"
APISERVER = f"https://{APISERVER_IP}:6443"
# The apiserver's Service range: the lower half of the Neutron service subnet that
# start_controller() makes (kuryr-kubernetes' split), whose gateway (the router's leg)
# and allocation pool are in the upper half, where the apiserver allocates nothing.
SERVICE_CIDR = "10.96.0.0/17"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: the first address of SERVICE_CIDR
SERVICE_NETWORK = "k8s-services"
SERVICE_SUBNET_CIDR = "10.96.0.0/16"
CLUSTER_ROUTER = "k8s-router"
CONFLIST = "10-lab.conflist"
# The pod network start_controller() makes for `kuryr controller` (clear of the
# reference CNI's 10.244.0.0/16, the Services' 10.96.0.0/16 and the underlay).
CONTROLLER_POD_NETWORK = "k8s-pods"
CONTROLLER_POD_CIDR = "10.245.0.0/16"
# The kubelet's kernel tunables (setupKernelTunables), machine-wide: the node gets
# files of its own bound over them.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes")
# What a cluster runs, by executable name (the sweep kills only these, and only when
# their command line names the lab's directory).
_K8S_EXES = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
             "kubelet", "containerd", "containerd-shim-runc-v2", "kuryr"}
_HOLDER = "kuryr-k8s-node"   # argv[0] of a node's mount-namespace holder
_KEEPER = "kuryr-k8s-keeper"  # argv[0] of a left-running cluster's keeper
_LABDIR = re.compile(r"(/[^\s=]*/kuryr-(kl[0-9a-f]{6})-[^/\s]*)/")


def log(msg):
    print(f"[k8s-lab] {msg}", file=sys.stderr, flush=True)


def wait(cond, timeout, what, interval=0.05):
    """Polls `cond` until it returns a true value (returned), or fails the test after
    `timeout` s naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def k8s_bin():
    """The directory of the Kubernetes binaries: $KURYR_K8S_BIN, else what
    scripts/k8s-build.sh prints (instant once built and cached)."""
    d = os.environ.get("KURYR_K8S_BIN")
    if d:
        return d
    return sh(os.path.join(ROOT, "scripts", "k8s-build.sh"), timeout=3600).strip().split("\n")[-1]


def machine_sysctls():
    """The machine's values of the kernel tunables that a kubelet sets."""
    return {f: open(f"/proc/sys/{f}").read().strip() for f in KUBELET_SYSCTLS}


def kuryr_cni_available():
    return os.access(KURYR_CNI_BIN, os.X_OK)


def controller_available():
    """True if this kuryr binary has `kuryr controller`."""
    p = subprocess.run([KURYR_BIN, "controller", "--help"], capture_output=True,
                       stdin=subprocess.DEVNULL)
    return p.returncode == 0


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def _write_json(path, obj):
    # YAML is a superset of JSON: kubeconfigs and KubeletConfiguration read it as is.
    return _write(path, json.dumps(obj, indent=1) + "\n")


# ------------------------------------------------------------------- workloads

# A busybox command that ends at once on SIGTERM (a plain `sleep` as PID 1 ignores it,
# and deleting its pod would wait out the grace period).
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"]


def busybox_pod(name, node=None, labels=None, namespace="default", command=SLEEPER):
    """A pod of the local busybox image (never pulled), on `node` if given."""
    spec = {"terminationGracePeriodSeconds": 5,
            "containers": [{"name": "busybox", "image": images.BUSYBOX,
                            "imagePullPolicy": "Never", "command": list(command)}]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": spec}


def busybox_deployment(name, replicas, labels=None, namespace="default", command=SLEEPER):
    """A Deployment of busybox pods labelled app=<name> (and `labels`), spread evenly
    over the nodes."""
    labels = {"app": name, **(labels or {})}
    template = busybox_pod(name, labels=labels, namespace=namespace, command=command)
    template["spec"]["topologySpreadConstraints"] = [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": name}}}]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels},
                                  "spec": template["spec"]}}}


# ------------------------------------------------------------------- certificates

class Pki:
    """The cluster's keys and certificates, made with openssl: one CA signs every
    serving and client certificate (ECDSA P-256, quick to make)."""

    def __init__(self, d):
        self.dir = d
        os.makedirs(d, exist_ok=True)
        # `req` wants a distinguished_name section even when -subj gives the name.
        self.cnf = _write(self.path("openssl.cnf"), "[req]\ndistinguished_name = dn\n[dn]\n")
        self.ca, self.ca_key = self.path("ca.crt"), self.path("ca.key")
        self._req("ca", "/CN=kuryr-lab-ca", ["basicConstraints=critical,CA:TRUE",
                                             "keyUsage=critical,keyCertSign,cRLSign"])
        # The service-account token signing key pair.
        self.sa_key, self.sa_pub = self.path("sa.key"), self.path("sa.pub")
        sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-out", self.sa_key)
        sh("openssl", "pkey", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    def path(self, name):
        return os.path.join(self.dir, name)

    def _req(self, name, subject, extensions, signed=False):
        cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
               "-keyout", self.path(f"{name}.key"), "-out", self.path(f"{name}.crt"),
               "-subj", subject, "-config", self.cnf]
        if signed:
            cmd += ["-CA", self.ca, "-CAkey", self.ca_key]
        for e in extensions:
            cmd += ["-addext", e]
        sh(*cmd)
        return self.path(f"{name}.crt"), self.path(f"{name}.key")

    def issue(self, name, cn, org=None, sans=(), server=False):
        """A certificate signed by the CA: (cert path, key path). `org` becomes the
        Kubernetes group, `cn` the user."""
        subject = (f"/O={org}" if org else "") + f"/CN={cn}"
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
               "extendedKeyUsage=" + ("serverAuth,clientAuth" if server else "clientAuth")]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        return self._req(name, subject, ext, signed=True)


def kubeconfig(path, ca, cert, key, user, server=APISERVER):
    return _write_json(path, {
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": server,
                                                 "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}]})


# ------------------------------------------------------------------- sweeping

def _processes_of(prefix):
    """Pids of the cluster processes (and kuryr's) whose command line names a lab
    directory of `prefix`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cmd = _cmdline(entry)
        m = _LABDIR.search(cmd)
        if not m or m.group(2) != prefix:
            continue
        exe = os.path.basename(cmd.split(" ", 1)[0])
        if exe in _K8S_EXES or exe.startswith((_HOLDER, _KEEPER)):
            out.append(int(entry))
    return out


def _node_cgroups(prefix):
    """Names of the node cgroups (/kuryr-<prefix>-<host>) that exist."""
    names = set()
    for h in os.listdir(CGROUP_ROOT) if os.path.isdir(CGROUP_ROOT) else []:
        try:
            for n in os.listdir(os.path.join(CGROUP_ROOT, h)):
                if re.match(rf"^kuryr-{prefix}-h\d+$", n):
                    names.add(n)
        except OSError:
            pass
    return names


def _netns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _pod_netns(prefix, lab_dir):
    """The /run/netns entries of the cluster's pods: those named in the OCI specs of
    its sandboxes (containerd's state in the lab directory), and those that a
    process in a node cgroup is in."""
    paths = set()
    if lab_dir:
        pattern = os.path.join(lab_dir, "h*-k", "containerd", "state",
                               "io.containerd.runtime.v2.task", "*", "*", "config.json")
        for spec in glob.glob(pattern):
            try:
                with open(spec) as f:
                    namespaces = json.load(f).get("linux", {}).get("namespaces", [])
            except (OSError, ValueError):
                continue
            for ns in namespaces:
                if ns.get("type") == "network" and ns.get("path"):
                    paths.add(ns["path"].replace("/var/run/", "/run/", 1))
    inodes = set()
    for name in _node_cgroups(prefix):
        for top in _cgroup_dirs(name):
            for root, _dirs, files in os.walk(top):
                if "cgroup.procs" not in files:
                    continue
                try:
                    pids = open(os.path.join(root, "cgroup.procs")).read().split()
                except OSError:
                    continue
                for pid in pids:
                    ino = _netns_inode(f"/proc/{pid}/ns/net")
                    if ino:
                        inodes.add(ino)
    if inodes:
        for p in glob.glob("/run/netns/cni-*"):
            if _netns_inode(p) in inodes:
                paths.add(p)
    # Only containerd's names: never a namespace of the lab itself or of anyone else.
    return {p for p in paths if re.match(r"^/run/netns/cni-[0-9a-f-]+$", p)}


def _remove_netns(path):
    subprocess.run(["umount", path], capture_output=True)
    try:
        os.unlink(path)
    except OSError:
        pass


def sweep_cluster(prefix, lab_dir=None):
    """Removes everything a cluster of lab `prefix` made outside tests/lab: its
    processes (control plane, kubelets, containerd, shims, holders, kuryr's), every
    process in its node cgroups and the cgroups, its pods' network namespaces. The
    lab's own namespaces are left to tests/lab (its close() or sweep)."""
    if lab_dir is None:
        dirs = glob.glob(os.path.join(tempfile.gettempdir(), f"kuryr-{prefix}-*"))
        lab_dir = dirs[0] if dirs else None
    netns = _pod_netns(prefix, lab_dir)
    _kill_pids(_processes_of(prefix))
    for name in _node_cgroups(prefix):
        _kill_cgroup_tree(name)
    for p in netns:
        _remove_netns(p)


def leftovers(prefix, lab_dir, pod_netns=()):
    """What a closed cluster of lab `prefix` left behind (empty when nothing): its
    processes, node cgroups, namespaces, pods' network namespaces, directory, pid file."""
    left = [f"process {pid}: {_cmdline(pid)}" for pid in _processes_of(prefix)]
    left += [f"cgroup {d}" for n in _node_cgroups(prefix) for d in _cgroup_dirs(n)]
    left += [f"namespace {n}" for n in os.listdir("/run/netns") if n.startswith(prefix + "-")]
    left += [f"pod network namespace {p}" for p in pod_netns if os.path.exists(p)]
    left += [f"mount {line.split()[4]}" for line in open("/proc/self/mountinfo")
             if lab_dir and lab_dir in line.split()[4]]
    if lab_dir and os.path.exists(lab_dir) and not os.environ.get("KURYR_LAB_KEEP"):
        left.append(f"directory {lab_dir}")
    if os.path.exists(os.path.join(PIDS_DIR, prefix)):
        left.append(f"pid file {os.path.join(PIDS_DIR, prefix)}")
    return left


def _stale_prefixes():
    """Lab prefixes with cluster leftovers (processes, node cgroups) and no live owner."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            m = _LABDIR.search(_cmdline(entry))
            if m:
                found.add(m.group(2))
    for h in os.listdir(CGROUP_ROOT) if os.path.isdir(CGROUP_ROOT) else []:
        try:
            for n in os.listdir(os.path.join(CGROUP_ROOT, h)):
                m = re.match(r"^kuryr-(kl[0-9a-f]{6})-h\d+$", n)
                if m:
                    found.add(m.group(1))
        except OSError:
            pass
    return {p for p in found if not _lab_alive(p)}


def sweep_stale_clusters():
    for prefix in _stale_prefixes():
        dirs = glob.glob(os.path.join(tempfile.gettempdir(), f"kuryr-{prefix}-*"))
        sweep_cluster(prefix, dirs[0] if dirs else None)
        if not os.environ.get("KURYR_LAB_KEEP"):
            for d in dirs:
                if os.path.isdir(os.path.join(d, "k8s")):
                    shutil.rmtree(d, ignore_errors=True)
    # The kuryr processes of dead labs (tests/lab's sweep, which runs next, deletes
    # their namespaces).
    sweep_stale_dockerlabs()


# ------------------------------------------------------------------- the cluster

class Cluster(Lab):
    """tests/lab's Lab (server, agents) plus a Kubernetes cluster whose nodes are the
    lab's hosts. `cni`: "reference" or "kuryr"."""

    def __init__(self, hosts=2, cni="reference", agent_args=(), server_args=(),
                 probe=True, controller=False, keep_running=False, dns=False,
                 manifests=False):
        """`probe`: wait until a pod per node has run (scheduled, started, with the
        CNI); `controller`: start `kuryr controller` (see start_controller) before the
        probe; `keep_running`: the cluster outlives this process (scripts/k8s-lab.sh)
        until `down` (a keeper process stands for it in tests/lab's pid file); `dns`:
        CoreDNS behind kube-dns (tests/k8s/dns.py), which needs kuryr's Services (the
        kuryr CNI and the controller); `manifests`: kuryr (agents, CNI, controller) is
        installed from deploy/kubernetes with kubectl apply (install_kuryr()) instead of
        run as host processes (implies the kuryr CNI and the controller)."""
        self.manifests = manifests
        if manifests:
            cni, controller = "kuryr", True
        if cni not in ("reference", "kuryr"):
            raise ValueError(f"cni must be 'reference' or 'kuryr', not {cni!r}")
        if dns and not (cni == "kuryr" and controller):
            raise ValueError("dns needs cni='kuryr' and the controller (Services)")
        self.dns = dns
        if cni == "kuryr" and not kuryr_cni_available():
            raise RuntimeError(f"{KURYR_CNI_BIN} is not built (cargo build --release --bins)")
        self.timings = {}
        self.cni = cni
        self.bin = k8s_bin()
        self.cluster_procs = {}  # name -> Process (control plane, holders, nodes)
        self.keeper = None
        self.controller = None
        t = time.monotonic()
        sweep_stale_clusters()
        self._time("sweep of stale labs", t)
        t = time.monotonic()
        super().__init__(hosts=hosts, agent_args=agent_args, server_args=server_args,
                         agents=not manifests)
        self._time("kuryr server and agents", t)
        try:
            if keep_running:
                self._keep()
            self._build_cluster(probe, controller)
        except BaseException:
            self.close()
            raise

    def _time(self, step, since):
        self.timings[step] = time.monotonic() - since
        log(f"{step}: {self.timings[step]:.1f} s")

    # ---------------------------------------------------------------- paths

    @property
    def k8s_dir(self):
        return os.path.join(self.dir, "k8s")

    def node_dir(self, host):
        return os.path.join(self.dir, f"{host}-k")

    def node_ip(self, host):
        return f"{UNDERLAY}.{10 + self.hosts.index(host) + 1}"

    def pod_cidr(self, host):
        """The reference CNI's pod CIDR of a node."""
        return f"10.244.{self.hosts.index(host) + 1}.0/24"

    def cgroup(self, host):
        """The node's cgroup (every hierarchy): containerd, shims and pods are in it."""
        return f"kuryr-{self.prefix}-{host}"

    def containerd_socket(self, host):
        return os.path.join(self.node_dir(host), "containerd.sock")

    def cni_conf_dir(self, host):
        return os.path.join(self.node_dir(host), "cni", "net.d")

    def cni_bin_dir(self, host):
        return os.path.join(self.node_dir(host), "cni", "bin")

    @property
    def kubeconfig(self):
        """The admin's kubeconfig (system:masters)."""
        return os.path.join(self.k8s_dir, "admin.kubeconfig")

    def exe(self, name):
        return os.path.join(self.bin, name)

    def coredns_bin(self):
        """The CoreDNS binary scripts/k8s-build.sh made (named after its version)."""
        found = sorted(glob.glob(os.path.join(self.bin, "coredns-v*")))
        if not found:
            raise RuntimeError(f"no coredns-v* in {self.bin}: run scripts/k8s-build.sh")
        return found[-1]

    # ---------------------------------------------------------------- bring-up

    def _build_cluster(self, probe, controller):
        t = time.monotonic()
        self.pki = Pki(os.path.join(self.k8s_dir, "pki"))
        self._credentials()
        self._time("certificates and kubeconfigs", t)
        t = time.monotonic()
        self._start_etcd()
        for h in self.hosts:
            self._prepare_node(h)
            self._start_holder(h)
        archive = images.build_archive(
            os.path.join(self.dir, "images.tar"),
            coredns=self.coredns_bin() if self.dns else None,
            kuryr_bin_dir=os.path.dirname(KURYR_BIN) if self.manifests else None)
        self._wait_etcd()
        self._start_apiserver()
        for h in self.hosts:
            self._wait_holder(h)
            self._start_containerd(h)
        for h in self.hosts:
            self._wait_containerd(h)
            images.import_into(self.exe("ctr"), self.containerd_socket(h), archive)
        self._time("etcd, containerd, images imported", t)
        t = time.monotonic()
        self._wait_apiserver()
        self._time("kube-apiserver ready", t)
        t = time.monotonic()
        self._start_controller_manager()
        self._start_scheduler()
        for h in self.hosts:
            self._start_kubelet(h)
        # With no network yet (manifests), nodes register NotReady: kuryr makes them Ready.
        self.wait_nodes_ready(registered_only=self.manifests)
        self._time("nodes registered" if self.manifests else "nodes Ready", t)
        t = time.monotonic()
        self.wait_for(lambda: self.kubectl("get", "serviceaccount", "default",
                                           check=False).returncode == 0,
                      60, "the default ServiceAccount", self.cluster_procs["kcm"])
        self._time("default ServiceAccount", t)
        if self.manifests:
            t = time.monotonic()
            self.install_kuryr()
            self._time("kuryr installed from deploy/kubernetes, nodes Ready", t)
        elif controller:
            self.start_controller()
        if self.dns:
            t = time.monotonic()
            self.apply(dns.objects())
            self.wait_pods("k8s-app=kube-dns", namespace=dns.NAMESPACE, count=2, timeout=120)
            self._time("CoreDNS ready", t)
        if probe:
            t = time.monotonic()
            self.probe()
            self._time("a pod ran on every node", t)
        log(f"cluster up in {sum(self.timings.values()):.1f} s")

    def _credentials(self):
        """Client certificates and kubeconfigs of the admin, the controller manager,
        the scheduler, each kubelet (system:node:<host> in system:nodes, which the
        Node authorizer accepts) and the apiserver's kubelet client; the apiserver's
        serving certificate."""
        p, d = self.pki, self.k8s_dir
        kubeconfig(self.kubeconfig, p.ca, *p.issue("admin", "kubernetes-admin",
                                                   "system:masters"), "admin")
        kubeconfig(os.path.join(d, "kcm.kubeconfig"), p.ca,
                   *p.issue("kcm", "system:kube-controller-manager"), "kcm")
        kubeconfig(os.path.join(d, "scheduler.kubeconfig"), p.ca,
                   *p.issue("scheduler", "system:kube-scheduler"), "scheduler")
        for h in self.hosts:
            kubeconfig(os.path.join(d, f"kubelet-{h}.kubeconfig"), p.ca,
                       *p.issue(f"kubelet-{h}", f"system:node:{h}", "system:nodes"), h)
        p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        p.issue("apiserver", "kube-apiserver", server=True, sans=[
            f"IP:{APISERVER_IP}", f"IP:{SERVICE_IP}", "IP:127.0.0.1", "DNS:localhost",
            "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local"])

    def _lab_process(self, name, cmd, env=None):
        """A control-plane process in the lab namespace (nsenter: no mount namespace
        of its own, it mounts nothing)."""
        p = Process(name, ["nsenter", f"--net=/run/netns/{self.ns('lab')}", *cmd],
                    env or dict(os.environ), os.path.join(self.dir, f"{name}.log"))
        self.cluster_procs[name] = p
        return p

    def _start_etcd(self):
        url = "http://127.0.0.1"
        self._lab_process("etcd", [
            self.exe("etcd"), "--name", "lab", "--data-dir", os.path.join(self.k8s_dir, "etcd"),
            "--listen-client-urls", f"{url}:2379", "--advertise-client-urls", f"{url}:2379",
            "--listen-peer-urls", f"{url}:2380", "--initial-advertise-peer-urls", f"{url}:2380",
            "--initial-cluster", f"lab={url}:2380", "--log-level", "warn",
            # A lab's data is thrown away: no fsync (a busy disk would slow every write).
            "--unsafe-no-fsync"])

    def _curl_ok(self, *args):
        p = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns('lab')}", "curl", "-sf",
                            "-m", "2", *args], capture_output=True, stdin=subprocess.DEVNULL)
        return p.returncode == 0

    def _wait_etcd(self):
        self.wait_for(lambda: self._curl_ok("http://127.0.0.1:2379/health"), 30, "etcd",
                      self.cluster_procs["etcd"])

    def _start_apiserver(self):
        p, d = self.pki, self.k8s_dir
        self._lab_process("apiserver", [
            self.exe("kube-apiserver"), "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0", f"--advertise-address={APISERVER_IP}",
            "--secure-port=6443", f"--cert-dir={d}/apiserver",
            f"--tls-cert-file={p.path('apiserver.crt')}",
            f"--tls-private-key-file={p.path('apiserver.key')}",
            f"--client-ca-file={p.ca}",
            f"--kubelet-client-certificate={p.path('apiserver-kubelet-client.crt')}",
            f"--kubelet-client-key={p.path('apiserver-kubelet-client.key')}",
            # Node names (h1...) resolve nowhere: reach kubelets on their underlay address.
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false", "--event-ttl=1h"])

    def _wait_apiserver(self):
        self.wait_for(lambda: self._curl_ok("--cacert", self.pki.ca, f"{APISERVER}/readyz"),
                      120, "kube-apiserver /readyz", self.cluster_procs["apiserver"])

    def _start_controller_manager(self):
        p, d = self.pki, self.k8s_dir
        conf = os.path.join(d, "kcm.kubeconfig")
        self._lab_process("kcm", [
            self.exe("kube-controller-manager"), f"--kubeconfig={conf}",
            f"--authentication-kubeconfig={conf}", f"--authorization-kubeconfig={conf}",
            "--bind-address=127.0.0.1", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.sa_key}", f"--root-ca-file={p.ca}",
            f"--cert-dir={d}/kcm", "--kube-api-qps=100", "--kube-api-burst=200",
            "--profiling=false"])

    def _start_scheduler(self):
        conf = os.path.join(self.k8s_dir, "scheduler.kubeconfig")
        self._lab_process("scheduler", [
            self.exe("kube-scheduler"), f"--kubeconfig={conf}",
            f"--authentication-kubeconfig={conf}", f"--authorization-kubeconfig={conf}",
            "--bind-address=127.0.0.1", "--leader-elect=false",
            f"--cert-dir={self.k8s_dir}/scheduler", "--kube-api-qps=100",
            "--kube-api-burst=200", "--profiling=false"])

    # ---------------------------------------------------------------- nodes

    def _prepare_node(self, host):
        """The node's directories, cgroup, CNI plugins and conflist, containerd's and
        the kubelet's configuration, and the routes of the reference pod CIDRs."""
        n = self.node_dir(host)
        for sub in ("var-lib", "var-log", "sysctl", "cni/net.d", "cni/bin", "cni/ipam",
                    "containerd/root", "containerd/state"):
            os.makedirs(os.path.join(n, sub), exist_ok=True)
        self._make_cgroup(self.cgroup(host))
        self._link_cni_plugins(host)
        # From manifests, the node starts with no network: kuryr's agent writes its conflist.
        if not self.manifests:
            self._write_conflist(host, self.cni)
        self._write_containerd_config(host)
        self._write_kubelet_config(host)
        self._route_pod_cidrs(host)

    @staticmethod
    def _make_cgroup(name):
        """/name in every cgroup v1 hierarchy (the kubelet checks that its
        --cgroup-root exists; a cpuset child needs its cpus and mems set)."""
        for h in os.listdir(CGROUP_ROOT):
            top = os.path.join(CGROUP_ROOT, h)
            if h == "unified" or not os.path.exists(os.path.join(top, "cgroup.procs")):
                continue
            d = os.path.join(top, name)
            os.makedirs(d, exist_ok=True)
            if h == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    with open(os.path.join(top, f)) as src, open(os.path.join(d, f), "w") as dst:
                        dst.write(src.read())

    def _link_cni_plugins(self, host):
        """The node's CNI bin dir: the reference plugins (a node's standard plugins:
        containerd needs loopback) and kuryr-cni (linked even before it is built:
        set_cni("kuryr") checks that it is there; from manifests, kuryr's agent installs
        it)."""
        d = self.cni_bin_dir(host)
        for name in ("bridge", "host-local", "loopback", "portmap"):
            os.symlink(os.path.join(REFERENCE_CNI_DIR, name), os.path.join(d, name))
        if not self.manifests:
            os.symlink(KURYR_CNI_BIN, os.path.join(d, "kuryr-cni"))

    def conflist(self, host, cni):
        """The conflist of `cni` on `host`."""
        if cni == "kuryr":
            return {"cniVersion": "1.1.0", "name": "kuryr",
                    "plugins": [{"type": "kuryr-cni", "daemon_socket": self.agent_socket(host)}]}
        # Debian's plugins (1.1.1) speak CNI up to 1.0.0.
        return {"cniVersion": "1.0.0", "name": "reference", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": self.pod_cidr(host)}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": os.path.join(self.node_dir(host), "cni", "ipam")}}]}

    def _write_conflist(self, host, cni):
        # Renamed into place: containerd's watcher never reads half a file.
        path = os.path.join(self.cni_conf_dir(host), CONFLIST)
        _write_json(path + ".tmp", self.conflist(host, cni))
        os.rename(path + ".tmp", path)

    def _route_pod_cidrs(self, host):
        """Pods reach pods on other nodes without NAT: each node routes the others'
        pod CIDRs to their underlay address (and so does the lab namespace)."""
        for other in self.hosts:
            via = ("via", self.node_ip(other))
            if other != host:
                sh("ip", "-n", self.ns(host), "route", "replace", self.pod_cidr(other), *via)
            sh("ip", "-n", self.ns("lab"), "route", "replace", self.pod_cidr(other), *via)
        sh("ip", "netns", "exec", self.ns(host), "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def _write_containerd_config(self, host):
        n = self.node_dir(host)
        cri = "plugins.'io.containerd.cri.v1.runtime'"
        _write(os.path.join(n, "containerd.toml"), f"""\
version = 3
root = '{n}/containerd/root'
state = '{n}/containerd/state'
imports = []
# Plugins that would look at (or create) machine-wide paths, and ones the lab has no use for.
disabled_plugins = ['io.containerd.internal.v1.opt', 'io.containerd.image-verifier.v1.bindir',
  'io.containerd.nri.v1.nri', 'io.containerd.tracing.processor.v1.otlp',
  'io.containerd.internal.v1.tracing', 'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs']

[grpc]
  address = '{self.containerd_socket(host)}'

[ttrpc]
  address = '{self.containerd_socket(host)}.ttrpc'

[cgroup]
  path = '/{self.cgroup(host)}/containerd'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{images.PAUSE}'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = ''

[{cri}]
  cdi_spec_dirs = []
  # No process here may lower its OOM score (no CAP_SYS_RESOURCE in this sandbox): keep
  # containers' scores at or above containerd's own instead of failing them.
  restrict_oom_score_adj = true
  [{cri}.containerd]
    default_runtime_name = 'runc'
    [{cri}.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = '{RUNC}'
        SystemdCgroup = false
  # The standard paths, which are the node's own directories in its mount namespace.
  [{cri}.cni]
    bin_dirs = ['/opt/cni/bin']
    conf_dir = '/etc/cni/net.d'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
""")

    def _write_kubelet_config(self, host):
        n = self.node_dir(host)
        resolv = _write(os.path.join(n, "resolv.conf"), "")
        _write_json(os.path.join(n, "kubelet.yaml"), {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.node_ip(host), "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": self.pki.ca}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket(host)}",
            # cgroup v1, cgroupfs; each node under a cgroup of its own.
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup(host)}",
            "cgroupsPerQOS": True, "failCgroupV1": False, "failSwapOn": False,
            # A busy machine must not make the kubelet evict or delete images (none can
            # be pulled again).
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "volumeStatsAggPeriod": "0s", "serializeImagePulls": False,
            "resolvConf": resolv, "clusterDomain": dns.DOMAIN,
            **({"clusterDNS": [dns.DNS_IP]} if self.dns else {}),
            "shutdownGracePeriod": "0s", "rotateCertificates": False,
            # Its writes go to the node's own files (see the module's docstring).
            "protectKernelDefaults": False,
            # Not below 0: see restrict_oom_score_adj in containerd's configuration.
            "oomScoreAdj": 0,
            "kubeAPIQPS": 100, "kubeAPIBurst": 200})

    def _start_holder(self, host):
        """The node's mount namespace (see the module's docstring), held by a sleep."""
        n = self.node_dir(host)
        sysctls = " ".join(KUBELET_SYSCTLS)
        script = f"""set -e
# Copies of the machine's mounts: private, except /run/netns and what is under it.
findmnt -rn -o TARGET,PROPAGATION | while read -r target prop; do
  case "$target" in /run/netns|/run/netns/*) continue;; esac
  case "$prop" in *shared*) mount --make-private "$target";; esac
done
mkdir -p {n}/netns
mount --rbind /run/netns {n}/netns
mount -t tmpfs -o mode=0755 kuryr-node /run
mkdir /run/netns
mount --move {n}/netns /run/netns
mount --bind {n}/var-lib /var/lib
mount --bind {n}/var-log /var/log
# The standard CNI directories are the node's own (hostPath volumes of kuryr's
# DaemonSet name them): /opt/cni does not exist on the machine, so a tmpfs on /opt.
mount -t tmpfs -o mode=0755 kuryr-node-opt /opt
mkdir -p /opt/cni/bin
mount --bind {n}/cni/bin /opt/cni/bin
mount --bind {n}/cni/net.d /etc/cni/net.d
for f in {sysctls}; do
  cat /proc/sys/$f > {n}/sysctl/${{f//\\//.}}
  mount --bind {n}/sysctl/${{f//\\//.}} /proc/sys/$f
done
touch {n}/holder-ready
exec -a '{_HOLDER} {n}/' sleep infinity
"""
        self.cluster_procs[f"holder-{host}"] = Process(
            f"holder-{host}",
            ["nsenter", f"--net=/run/netns/{self.ns(host)}", "unshare", "-m", "--propagation",
             "unchanged", "bash", "-c", script],
            dict(os.environ), os.path.join(self.dir, f"{host}-holder.log"))

    def _wait_holder(self, host):
        ready = os.path.join(self.node_dir(host), "holder-ready")
        self.wait_for(lambda: os.path.exists(ready), 10, f"{host}'s mount namespace",
                      self.cluster_procs[f"holder-{host}"])

    def _node_process(self, host, name, cmd, env=None):
        """A process of `host` in the node's network and mount namespaces."""
        holder = self.cluster_procs[f"holder-{host}"].proc.pid
        p = Process(f"{name}-{host}",
                    ["nsenter", f"--mount=/proc/{holder}/ns/mnt",
                     f"--net=/run/netns/{self.ns(host)}", *cmd],
                    env or dict(os.environ), os.path.join(self.dir, f"{host}-{name}.log"))
        self.cluster_procs[f"{name}-{host}"] = p
        return p

    def _start_containerd(self, host):
        # Our containerd-shim-runc-v2 (from the bin dir) before Debian's.
        env = dict(os.environ, PATH=f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self._node_process(host, "containerd", [
            self.exe("containerd"), "--config",
            os.path.join(self.node_dir(host), "containerd.toml"), "--log-level", "warn"], env)

    def crictl(self, host, *args, check=True, timeout=60):
        """crictl against `host`'s containerd; its stdout."""
        sock = f"unix://{self.containerd_socket(host)}"
        # An empty configuration of its own: none is read from /etc.
        config = os.path.join(self.node_dir(host), "crictl.yaml")
        if not os.path.exists(config):
            _write(config, "")
        return sh(self.exe("crictl"), "--config", config, "--runtime-endpoint", sock,
                  "--image-endpoint", sock, "--timeout", "10s", *args, check=check,
                  timeout=timeout)

    def ctr(self, host, *args, check=True, timeout=60):
        """ctr (namespace k8s.io) against `host`'s containerd; its stdout."""
        return sh(self.exe("ctr"), "--address", self.containerd_socket(host), "-n", "k8s.io",
                  *args, check=check, timeout=timeout)

    def _wait_containerd(self, host):
        def up():
            return self.crictl(host, "version", check=False, timeout=15) != ""
        self.wait_for(up, 30, f"containerd on {host}", self.cluster_procs[f"containerd-{host}"])

    def _start_kubelet(self, host):
        n = self.node_dir(host)
        self._node_process(host, "kubelet", [
            self.exe("kubelet"), f"--config={n}/kubelet.yaml",
            f"--kubeconfig={self.k8s_dir}/kubelet-{host}.kubeconfig",
            f"--hostname-override={host}", f"--node-ip={self.node_ip(host)}"])

    # ---------------------------------------------------------------- readiness

    def nodes(self):
        return self.kubectl_json("get", "nodes")["items"]

    def wait_nodes_ready(self, timeout=90, registered_only=False):
        def ready():
            nodes = {n["metadata"]["name"]: n for n in self.nodes()}
            return all(h in nodes and (registered_only or self.node_ready(nodes[h]))
                       for h in self.hosts)
        self.wait_for(ready, timeout, "every node " + ("registered" if registered_only
                                                       else "Ready"),
                      self.cluster_procs["apiserver"])

    @staticmethod
    def node_ready(node):
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in node["status"].get("conditions", []))

    def probe(self, timeout=90):
        """One pod per node, scheduled by the scheduler, that runs `true` with the
        cluster's CNI (on host network when the CNI is kuryr and no controller runs:
        nothing gives pods their ports then). Waits for each to succeed."""
        host_network = self.cni == "kuryr" and self.controller is None and not self.manifests
        token = secrets.token_hex(3)
        pods = [busybox_pod(f"lab-probe-{h}-{token}", node=h, command=["true"]) for h in self.hosts]
        for p in pods:
            p["spec"].update(restartPolicy="Never", hostNetwork=host_network,
                             terminationGracePeriodSeconds=0)
        self.apply(pods)
        names = [p["metadata"]["name"] for p in pods]

        def done():
            phases = {p["metadata"]["name"]: p.get("status", {}).get("phase")
                      for p in self.kubectl_json("get", "pods", *names)["items"]}
            if "Failed" in phases.values():
                raise RuntimeError(f"a probe pod failed: {phases}\n{self.describe(*names)}")
            return all(v == "Succeeded" for v in phases.values())
        try:
            self.wait_for(done, timeout, "a probe pod on every node to run")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.describe(*names)}") from None
        self.kubectl("delete", "pod", *names, "--wait=false")

    def describe(self, *pods, namespace="default"):
        return self.kubectl("describe", "pod", "-n", namespace, *pods, check=False).stdout

    # ---------------------------------------------------------------- kubectl

    def kubectl_cmd(self):
        """The command line of kubectl inside the lab namespace, as the admin."""
        return ["nsenter", f"--net=/run/netns/{self.ns('lab')}", self.exe("kubectl"),
                f"--kubeconfig={self.kubeconfig}"]

    def kubectl(self, *args, input=None, check=True, timeout=60):
        """kubectl ARGS as the admin; the CompletedProcess (text). Raises on failure
        when `check`."""
        p = subprocess.run([*self.kubectl_cmd(), *map(str, args)], capture_output=True,
                           text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(map(str, args))} exited {p.returncode}:\n"
                               f"{p.stderr}{p.stdout}")
        return p

    def kubectl_json(self, *args, timeout=60):
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, objects, timeout=60):
        """kubectl apply: a YAML/JSON text, one object (dict) or a list of them."""
        if isinstance(objects, str):
            text = objects
        else:
            items = objects if isinstance(objects, list) else [objects]
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return self.kubectl("apply", "-f", "-", input=text, timeout=timeout).stdout

    def pods(self, selector=None, namespace="default"):
        args = ["get", "pods", "-n", namespace] + (["-l", selector] if selector else [])
        return self.kubectl_json(*args)["items"]

    @staticmethod
    def pod_ready(pod):
        return (pod.get("status", {}).get("phase") == "Running"
                and any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod["status"].get("conditions", [])))

    def wait_pods(self, selector=None, namespace="default", count=None, timeout=120):
        """Waits until `count` pods (any number if None, at least one) match and all are
        Running and Ready; returns them."""
        found = []

        def ready():
            found[:] = [p for p in self.pods(selector, namespace)
                        if not p["metadata"].get("deletionTimestamp")]
            if not found or (count is not None and len(found) != count):
                return False
            return all(self.pod_ready(p) for p in found)
        try:
            self.wait_for(ready, timeout, f"pods {selector or '(all)'} in {namespace} Ready")
        except RuntimeError as e:
            names = [p["metadata"]["name"] for p in found]
            raise RuntimeError(f"{e}\n{self.describe(*names, namespace=namespace)}") from None
        return list(found)

    def pod_ips(self, selector=None, namespace="default"):
        """{pod name: pod IP} of the matching pods that have one."""
        return {p["metadata"]["name"]: p["status"]["podIP"]
                for p in self.pods(selector, namespace) if p.get("status", {}).get("podIP")}

    def pod_exec(self, pod, *cmd, namespace="default", check=True, timeout=60):
        """`kubectl exec POD -- CMD`; the CompletedProcess. Raises on failure when `check`."""
        return self.kubectl("exec", "-n", namespace, pod, "--", *cmd, check=check,
                            timeout=timeout)

    def pod_ping(self, pod, ip, namespace="default", count=1, wait=1):
        """True if `pod` gets an answer from ip (busybox ping inside it)."""
        p = self.pod_exec(pod, "ping", "-c", count, "-W", wait, ip, namespace=namespace,
                          check=False, timeout=30 + count * wait)
        return p.returncode == 0

    def serve_peer_address(self, pod, port=8080, namespace="default"):
        """busybox httpd in `pod` answering GET /cgi-bin/ip on `port` with the address
        the connection came from (REMOTE_ADDR). Waits until it listens."""
        self.pod_exec(pod, "sh", "-c",
                      "mkdir -p /tmp/www/cgi-bin && cd /tmp/www/cgi-bin && "
                      "echo '#!/bin/sh' > ip && "
                      "echo 'echo Content-Type: text/plain; echo; echo $REMOTE_ADDR' >> ip && "
                      f"chmod +x ip && httpd -p {port} -h /tmp/www", namespace=namespace)
        self.wait_for(lambda: f":{port} " in self.pod_exec(pod, "netstat", "-ltn",
                                                           namespace=namespace).stdout,
                      10, f"httpd to listen on port {port} in {pod}")

    def peer_address(self, pod, ip, port=8080, namespace="default", wait=2):
        """What a serve_peer_address server at ip:port says a connection from `pod` came
        from ('' when nothing answered). busybox nc: Debian's static busybox wget
        crashes."""
        p = self.pod_exec(pod, "sh", "-c",
                          f"printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | "
                          f"nc -w {wait} {ip} {port}", namespace=namespace, check=False,
                          timeout=30 + wait)
        body = p.stdout.replace("\r", "").partition("\n\n")[2].strip()
        # The server listens on an IPv6 socket: IPv4 peers look like [::ffff:a.b.c.d].
        return re.sub(r"^\[(::ffff:)?(.*)\]$", r"\2", body)

    # ---------------------------------------------------------------- the CNI

    def set_cni(self, cni, timeout=30):
        """Switches every node's conflist to `cni` and waits until every containerd has
        loaded it (pods created from then on use it; running pods keep theirs)."""
        if cni == "kuryr" and not kuryr_cni_available():
            raise RuntimeError(f"{KURYR_CNI_BIN} is not built (cargo build --release --bins)")
        for h in self.hosts:
            self._write_conflist(h, cni)
        name = self.conflist(self.hosts[0], cni)["name"]
        for h in self.hosts:
            self.wait_for(lambda h=h: self.loaded_cni(h) == name, timeout,
                          f"containerd on {h} to load the {cni} conflist",
                          self.cluster_procs[f"containerd-{h}"])
        self.cni = cni

    def loaded_cni(self, host):
        """The name of the network that `host`'s containerd has loaded (None if none)."""
        try:
            info = json.loads(self.crictl(host, "info", timeout=15))
        except (RuntimeError, ValueError):
            return None
        networks = (info.get("cniconfig") or {}).get("Networks") or []
        # The first network is containerd's own loopback.
        names = [n.get("Config", {}).get("Name") for n in networks]
        names = [n for n in names if n != "cni-loopback"]
        return names[0] if names else None

    # ---------------------------------------------------------------- the controller

    def start_controller(self, *args, extra=(), name="controller", leader=False):
        """Starts `kuryr controller ARGS` in the lab namespace with the admin's kubeconfig
        and the application credential `kuryr credential controller` makes for this
        cluster (member and service of the admin project: no admin). Without ARGS: one
        pod network for every pod (CONTROLLER_POD_NETWORK) and the service subnet, both
        on the cluster router (made here, see cluster_networks()), Services balanced by
        kuryr (floating IPs of `type: LoadBalancer` from the lab's external network),
        the lab's prefix as the cluster name, leader election only if `leader`. `extra`: arguments
        after those; `name`: the process's (another replica needs its own)."""
        if not args:
            self.cluster_networks()
            args = ("--pod-network", CONTROLLER_POD_NETWORK, "--service-subnet",
                    SERVICE_NETWORK, "--external-svc-net", "ext", "--cluster-name",
                    self.prefix, "--leader-elect", "true" if leader else "false")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(self.credential("controller", self.prefix),
                   RUST_LOG=os.environ.get("RUST_LOG", "info"))
        p = self._lab_process(
            name, [KURYR_BIN, "controller", "--kubeconfig", self.kubeconfig,
                   *map(str, args), *map(str, extra)], env)
        if name == "controller":
            self.controller = p
        return p

    def cluster_networks(self):
        """The pod network (CONTROLLER_POD_CIDR) and the service subnet
        (SERVICE_SUBNET_CIDR, gateway and allocation pool in its upper half) on one router,
        CLUSTER_ROUTER, as an operator prepares them for kuryr-kubernetes: a Service's
        VIP is served on the bridges of the networks that share a router with it. Made
        once; returns the router."""
        _, data = self.api("GET", f"/routers?name={CLUSTER_ROUTER}", expect=200)
        if data["routers"]:
            return data["routers"][0]
        _, pod_subnets = self.network(CONTROLLER_POD_NETWORK, CONTROLLER_POD_CIDR)
        svc = self.create("networks", {"name": SERVICE_NETWORK})
        svc_subnet = self.create("subnets", {
            "network_id": svc["id"], "name": SERVICE_NETWORK, "ip_version": 4,
            "cidr": SERVICE_SUBNET_CIDR, "gateway_ip": "10.96.255.254",
            "allocation_pools": [{"start": "10.96.128.1", "end": "10.96.255.253"}]})
        ext, _ = self.external_network()
        _, data = self.api("POST", "/routers", {"router": {
            "name": CLUSTER_ROUTER, "external_gateway_info": {"network_id": ext["id"]}}},
            expect=201)
        router = data["router"]
        self._apiserver_from_outside()
        for s in (pod_subnets[0], svc_subnet):
            self.api("PUT", f"/routers/{router['id']}/add_router_interface",
                     {"subnet_id": s["id"]}, expect=200)
        return router

    def _apiserver_from_outside(self):
        """The apiserver reachable from the external network, as a cloud's control
        plane is: the lab namespace gets an address on the external segment and the
        outside (the routers' upstream) a route to the apiserver through it. Pods then
        reach it as the `kubernetes` Service's member, through their router's SNAT."""
        lab, out = self.ns("lab"), self.ns("out")
        sh("ip", "-n", lab, "addr", "add", "203.0.113.2/24", "dev", "br-ext")
        sh("ip", "-n", out, "route", "add", f"{APISERVER_IP}/32", "via", "203.0.113.2")
        sh("ip", "netns", "exec", out, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    # ---------------------------------------------------------------- kuryr from its manifests

    @property
    def deploy_dir(self):
        """The lab's copy of deploy/kubernetes (install_kuryr())."""
        return os.path.join(self.dir, "deploy")

    def site_config(self):
        """The lab's values of deploy/kubernetes/config.yaml (what a user edits)."""
        return {
            "KUBERNETES_SERVICE_HOST": APISERVER_IP,
            "KUBERNETES_SERVICE_PORT": "6443",
            "KURYR_CLUSTER_NAME": self.prefix,
            "KURYR_POD_NETWORK": CONTROLLER_POD_NETWORK,
            "KURYR_SERVICE_SUBNET": SERVICE_NETWORK,
            "KURYR_EXTERNAL_SVC_NET": "ext",
            "KURYR_PHYSICAL_INTERFACE_MAPPINGS": "physnet1:eth1,physnet2:eth2",
            # The nodes share the machine's namespace names: the lab's prefix on routers'.
            "KURYR_ROUTER_NAMESPACE_PREFIX": f"{self.prefix}-kqr-",
            # The lab's server declares an agent down after 3 s.
            "KURYR_REPORT_INTERVAL": "1",
        }

    def router_prefix(self, host):
        if getattr(self, "manifests", False):
            return f"{self.prefix}-kqr-{host}-"
        return super().router_prefix(host)

    def install_kuryr(self, timeout=120):
        """kuryr installed as deploy/kubernetes says: the cloud's networks made first
        (cluster_networks()), the directory copied, config.yaml's values set (by key, as a
        user edits them), secret.yaml written by `kuryr credential kubernetes`, then
        `kubectl apply -f` of the copy. rbac.yaml, agent.yaml and controller.yaml are
        applied as they are. Waits until the agents and the controller replicas are
        Ready and, with them, the nodes."""
        self.cluster_networks()
        d = self.deploy_dir
        shutil.copytree(DEPLOY_DIR, d)
        conf = os.path.join(d, "config.yaml")
        with open(conf) as f:
            text = f.read()
        for key, value in self.site_config().items():
            text, n = re.subn(rf"^[ #]*{key}: .*$", f"  {key}: {json.dumps(value)}", text,
                              flags=re.M)
            if n != 1:
                raise RuntimeError(f"{key} appears {n} times in {conf}")
        _write(conf, text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(self.os_env())
        nodes = [a for h in self.hosts for a in ("--node", h)]
        p = subprocess.run(["ip", "netns", "exec", self.ns("lab"), KURYR_BIN, "credential",
                            "kubernetes", "--cluster", self.prefix, *nodes, "--output",
                            os.path.join(d, "secret.yaml")],
                           env=env, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"kuryr credential kubernetes exited {p.returncode}:\n{p.stderr}")
        self.kubectl("apply", "-f", d)
        self.wait_kuryr(timeout)

    def kuryr_pods(self):
        return self.pods("app.kubernetes.io/part-of=kuryr", namespace="kube-system")

    def wait_kuryr(self, timeout=120):
        """Every node's agent and both controller replicas Ready, then every node."""
        def ready():
            pods = self.kuryr_pods()
            agents = {p["spec"].get("nodeName") for p in pods if self.pod_ready(p)
                      and p["metadata"]["labels"].get("app.kubernetes.io/name") == "kuryr-agent"}
            controllers = [p for p in pods if self.pod_ready(p) and p["metadata"]["labels"]
                           .get("app.kubernetes.io/name") == "kuryr-controller"]
            return agents == set(self.hosts) and len(controllers) == 2
        try:
            self.wait_for(ready, timeout, "kuryr's agents and controllers Ready",
                          self.cluster_procs["apiserver"])
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.kuryr_logs()}") from None
        self.wait_nodes_ready(timeout=60)

    def kuryr_logs(self, tail=40):
        """The state and logs of kuryr's pods (for failures)."""
        out = [self.kubectl("get", "pods", "-n", "kube-system", "-o", "wide",
                            check=False).stdout]
        for p in self.kuryr_pods():
            name = p["metadata"]["name"]
            out.append(f"----- {name} -----\n" + self.kubectl(
                "logs", "-n", "kube-system", name, f"--tail={tail}", check=False).stdout)
            out.append(self.describe(name, namespace="kube-system")[-1500:])
        return "\n".join(out)

    def uninstall_kuryr(self, timeout=150):
        """`kubectl delete -f` of the lab's copy of deploy/kubernetes; waits until no
        kuryr pod is left (each has removed what it made on its way out)."""
        self.kubectl("delete", "-f", self.deploy_dir, timeout=timeout)
        self.wait_for(lambda: not self.kuryr_pods(), timeout, "kuryr's pods to be gone")

    def get_network(self, name):
        """The Neutron network named `name` (None if there is none)."""
        _, data = self.api("GET", f"/networks?name={name}", expect=200)
        return (data["networks"] or [None])[0]

    # ---------------------------------------------------------------- keeping it running

    def _keep(self):
        """A keeper process stands for this lab in tests/lab's pid file, so that no
        sweep takes the cluster while it runs; `down` (or its death) ends the cluster."""
        self.keeper = subprocess.Popen(
            ["bash", "-c", f"exec -a '{_KEEPER} {self.dir}/' sleep infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        with open(os.path.join(PIDS_DIR, self.prefix), "w") as f:
            f.write(str(self.keeper.pid))

    def state(self):
        return {"prefix": self.prefix, "dir": self.dir, "bin": self.bin, "cni": self.cni,
                "kubeconfig": self.kubeconfig, "lab_namespace": self.ns("lab"),
                "hosts": self.hosts, "keeper": self.keeper.pid if self.keeper else None,
                "pids": {name: p.proc.pid for name, p in self._all_processes().items()}}

    def _all_processes(self):
        procs = {"server": self.server, **{f"agent-{h}": a for h, a in self.agents.items()},
                 **self.cluster_procs}
        return {k: v for k, v in procs.items() if v is not None}

    # ---------------------------------------------------------------- teardown

    def close(self):
        if getattr(self, "closed", False):
            return
        self.closed = True
        # Kubelets first (they would restart what goes next), then everything else.
        for name, p in list(getattr(self, "cluster_procs", {}).items()):
            if name.startswith("kubelet-"):
                p.kill9()
        sandboxes_netns = self._remove_sandboxes()
        if hasattr(self, "prefix"):
            try:
                # Remembered for leftovers(): the records go with the lab directory.
                self.pod_netns = _pod_netns(self.prefix, self.dir) | sandboxes_netns
                sweep_cluster(self.prefix, self.dir)
                for path in sandboxes_netns:
                    if os.path.exists(path):
                        _remove_netns(path)
            except Exception as e:  # keep closing the rest
                print(f"sweeping cluster {self.prefix}: {e}", file=sys.stderr)
        for p in getattr(self, "cluster_procs", {}).values():
            p.kill9()
        if getattr(self, "keeper", None):
            self.keeper.kill()
            self.keeper.wait()
        super().close()

    def _wait_cni_calls(self, timeout=45):
        """Waits (a while) until no node's containerd runs a CNI plugin: a sandbox whose
        ADD is still running (a pod deleted while its port was awaited) is listed
        nowhere yet, and its namespace would outlive a containerd killed meanwhile.
        Once the ADD ends, containerd either tears the sandbox down itself or lists it
        for `crictl rmp`. containerd's only children are such plugin runs (its shims
        detach)."""
        pids = [p.proc.pid for name, p in getattr(self, "cluster_procs", {}).items()
                if name.startswith("containerd-") and p.proc.poll() is None]

        def busy():
            # Per thread: a Go program forks from any of its threads.
            for pid in pids:
                for children in glob.glob(f"/proc/{pid}/task/*/children"):
                    try:
                        with open(children) as f:
                            if f.read().split():
                                return True
                    except OSError:
                        continue
            return False
        deadline = time.monotonic() + timeout
        while busy() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _remove_sandboxes(self):
        """Has each node's containerd stop and remove its pod sandboxes (the kubelets
        are gone: nothing makes them again), while the CNI and the agents still
        answer, so that their network namespaces go the runtime's own way. Returns
        the namespaces the sandboxes had: a sandbox stopped but not removed (a pod
        force-deleted just before) has no task and no process that would name it."""
        paths = set()
        self._wait_cni_calls()
        for h in getattr(self, "hosts", []):
            if f"containerd-{h}" not in getattr(self, "cluster_procs", {}):
                continue
            try:
                ids = self.crictl(h, "pods", "-q", check=False, timeout=20).split()
                # kuryr's own pods (manifests) last: the others' CNI DELs need the agent.
                own = set(self.crictl(h, "pods", "-q", "--label",
                                      "app.kubernetes.io/part-of=kuryr", check=False,
                                      timeout=20).split())
                others = [i for i in ids if i not in own]
                if others and own:
                    self.crictl(h, "rmp", "-f", *others, check=False, timeout=120)
                for sandbox in ids:
                    out = self.crictl(h, "inspectp", sandbox, check=False, timeout=20)
                    spec = (json.loads(out or "{}").get("info") or {}).get("runtimeSpec") or {}
                    for ns in (spec.get("linux") or {}).get("namespaces") or []:
                        if ns.get("type") == "network" and ns.get("path"):
                            paths.add(ns["path"].replace("/var/run/", "/run/", 1))
                if ids:
                    self.crictl(h, "rmp", "-fa", check=False, timeout=120)
            except (RuntimeError, ValueError, subprocess.SubprocessError) as e:
                print(f"removing the sandboxes of {h}: {e}", file=sys.stderr)
        return {p for p in paths if re.match(r"^/run/netns/cni-[0-9a-f-]+$", p)}

    def cluster_leftovers(self):
        """What close() left behind (see the module's leftovers(); tests/lab's
        leftovers(host) is about kuryr's links and rules on a host)."""
        return leftovers(self.prefix, self.dir, getattr(self, "pod_netns", ()))

    def logs(self, tail=80):
        out = [super().logs()]
        for p in getattr(self, "cluster_procs", {}).values():
            out.append(f"----- {p.name} ({p.log_path}) -----\n{p.log(tail)}")
        return "\n".join(out)


# ------------------------------------------------------------------- scripts/k8s-lab.sh

STATE_FILE = os.path.join(STATE_DIR, "state.json")


def _read_state():
    try:
        with open(STATE_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _down():
    state = _read_state()
    if state is None:
        log("no cluster recorded in " + STATE_FILE)
        return 0
    if state.get("keeper"):
        try:
            os.kill(state["keeper"], signal.SIGKILL)
        except OSError:
            pass
    prefix = state["prefix"]
    sweep_cluster(prefix, state["dir"])
    # What tests/lab made: the namespaces of the prefix (hosts, routers) and its pid file.
    for ns in sh("ip", "netns", "list", check=False).split("\n"):
        ns = ns.split(" ")[0]
        if ns.startswith(prefix + "-"):
            sh("ip", "netns", "del", ns, check=False)
    try:
        os.unlink(os.path.join(PIDS_DIR, prefix))
    except FileNotFoundError:
        pass
    if not os.environ.get("KURYR_LAB_KEEP"):
        shutil.rmtree(state["dir"], ignore_errors=True)
    os.unlink(STATE_FILE)
    log(f"cluster {state['prefix']} removed")
    return 0


def _up(args):
    if _read_state() is not None:
        log(f"a cluster is recorded in {STATE_FILE}: run `down` first")
        return 1
    os.makedirs(STATE_DIR, exist_ok=True)
    # "auto": kuryr as the cluster's network once both halves exist (kuryr-cni, and
    # `kuryr controller`, which gives pods their ports), else the reference CNI.
    cni = args.cni
    if cni == "auto":
        cni = "kuryr" if kuryr_cni_available() and controller_available() else "reference"
    # HOOK (kuryr controller): "auto" starts it with the kuryr CNI once it exists.
    controller = {"yes": True, "no": False}.get(args.controller, None)
    if controller is None:
        controller = cni == "kuryr" and controller_available()
    # kuryr from deploy/kubernetes (kubectl apply), unless host processes are asked for.
    manifests = cni == "kuryr" and controller and not args.host_processes
    # CoreDNS behind kube-dns whenever kuryr serves Services.
    c = Cluster(hosts=args.hosts, cni=cni, controller=controller, keep_running=True,
                dns=cni == "kuryr" and controller, manifests=manifests)
    try:
        wrapper = _write(os.path.join(c.dir, "bin", "kubectl"),
                         "#!/bin/sh\n# kubectl inside the lab namespace, where the apiserver "
                         "is.\n"
                         f"export KUBECONFIG=\"${{KUBECONFIG:-{c.kubeconfig}}}\"\n"
                         f"exec {' '.join(c.kubectl_cmd()[:-1])} \"$@\"\n", 0o755)
        # The openstack CLI as the lab's admin, inside the namespace where the server is.
        openrc = _write(os.path.join(c.dir, "admin-openrc.sh"),
                        "".join(f"export {k}={shlex.quote(v)}\n"
                                for k, v in c.os_env().items()))
        _write(os.path.join(c.dir, "bin", "openstack"),
               "#!/bin/sh\n# the openstack CLI inside the lab namespace, as the lab's admin\n"
               f". {openrc}\nexec ip netns exec {c.ns('lab')} {OPENSTACK_BIN} \"$@\"\n", 0o755)
        with open(STATE_FILE + ".tmp", "w") as f:
            json.dump(c.state(), f, indent=1)
        os.rename(STATE_FILE + ".tmp", STATE_FILE)
    except BaseException:
        c.close()  # unrecorded, `down` could not find it
        raise
    print(f"""
Kubernetes lab {c.prefix} is up ({len(c.hosts)} nodes: {' '.join(c.hosts)}, CNI {c.cni}, \
kuryr {'installed from deploy/kubernetes (' + c.deploy_dir + ')' if manifests else
       'controller ' + ('running as a host process' if c.controller else 'not started')}).
The apiserver ({APISERVER}) is inside the network namespace {c.ns('lab')}:

  export KUBECONFIG={c.kubeconfig}
  ip netns exec {c.ns('lab')} {c.exe('kubectl')} get nodes -o wide

or, with a kubectl that enters the namespace itself:

  export PATH={os.path.dirname(wrapper)}:$PATH
  kubectl get pods -A -o wide
  openstack loadbalancer list        # the same PATH: the CLI as the lab's admin

Logs and state: {c.dir}  (recorded in {STATE_FILE})
Remove it all: scripts/k8s-lab.sh down
""")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="The Kubernetes lab, left running.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--cni", choices=["auto", "kuryr", "reference"], default="auto",
                    help="auto: kuryr when kuryr-cni and `kuryr controller` exist")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--controller", choices=["auto", "yes", "no"], default="auto",
                    help="start `kuryr controller` (auto: with the kuryr CNI, if this "
                    "kuryr has it)")
    up.add_argument("--host-processes", action="store_true",
                    help="run kuryr's agents and controller as processes of the lab (their "
                    "logs in the lab directory: easier to debug) instead of installing "
                    "deploy/kubernetes")
    sub.add_parser("down")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("needs root (namespaces, mounts, cgroups)")
        return 1
    return _up(args) if args.cmd == "up" else _down()


if __name__ == "__main__":
    sys.exit(main())
