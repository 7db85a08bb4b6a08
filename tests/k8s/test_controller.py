"""`kuryr controller` on a real cluster whose CNI is kuryr-cni: pods get Neutron ports
from per-node pools (tags, host, address, the annotation), reach each other across
nodes, give their ports back; namespaces get networks (namespace-subnet mode);
NetworkPolicies become security groups (a matrix of cases, each with allowed and
denied traffic, and relabelling within a second); kill -9 of the controller and the
agents leaves every pod wired and nothing without an owner; two replicas elect one
leader; `--cleanup` leaves nothing of the cluster in Neutron."""

import ipaddress
import json
import os
import random
import re
import threading
import time

import pytest

from cluster import (Cluster, busybox_deployment, busybox_pod, controller_available,
                     kuryr_cni_available, wait)
from lab import KURYR_BIN, Process

CLUSTER = "kubernetes"
CLUSTER_TAG = f"kuryr.k8s.cluster={CLUSTER}"
POD_CIDR = "10.246.0.0/16"
METRICS = "10.99.0.1:9797"
PORT_ANNOTATION = "kuryr.openstack.org/port-id"
GROUP_ANNOTATION = "kuryr.openstack.org/security-group-id"
# Small pools, quick updates: the tests see refills and returns in seconds.
POOL_MIN, POOL_MAX, POOL_BATCH = 3, 12, 4
POOL_ARGS = ("--ports-pool-min", POOL_MIN, "--ports-pool-max", POOL_MAX,
             "--ports-pool-batch", POOL_BATCH, "--ports-pool-update-frequency", 2)

pytestmark = pytest.mark.skipif(
    not (kuryr_cni_available() and controller_available()),
    reason="kuryr-cni or `kuryr controller` is not built")


# ------------------------------------------------------------------- helpers



def neutron(c, kind, query=""):
    key = kind.replace("-", "_")
    _, data = c.api("GET", f"/{kind}?tags={CLUSTER_TAG}{query}", expect=200)
    return data[key]


def start_controller(c, *args, network=True):
    """`kuryr controller` with its application credential, on a pod network made here (unless
    `network` is False: the arguments say where ports go)."""
    extra = []
    if network:
        net, _ = c.network("pods", POD_CIDR)
        c.pod_network = net
        extra = ["--pod-network", net["id"]]
    return c.start_controller(*extra, "--metrics-listen", METRICS, *map(str, POOL_ARGS),
                              "--resync-period", "30", *map(str, args))


def metrics(c):
    out = c.exec("lab", "curl", "-sf", "-m", "2", f"http://{METRICS}/metrics", check=False)
    values = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def pool_sizes(c):
    """{node: pool ports} from Neutron (device_id "")."""
    sizes = {}
    for p in neutron(c, "ports"):
        if not p["device_id"]:
            sizes[p["binding:host_id"]] = sizes.get(p["binding:host_id"], 0) + 1
    return sizes


def live_pods(c):
    """Pods that need a port: scheduled, on the pod network, not finished."""
    out = c.kubectl_json("get", "pods", "-A")["items"]
    return [p for p in out if p["spec"].get("nodeName") and not p["spec"].get("hostNetwork")
            and p["status"].get("phase") not in ("Succeeded", "Failed")]


def wiring_problems(c):
    """What is wrong between the cluster and Neutron: a live pod without exactly one
    port (with its tags, host, address and annotation), a port of a pod that is gone,
    a pool port that is not clean, a group of a policy that is gone, a network of a
    namespace that is gone. [] when all is well."""
    pods = {p["metadata"]["uid"]: p for p in live_pods(c)}
    policies = {p["metadata"]["uid"]
                for p in c.kubectl_json("get", "networkpolicy", "-A")["items"]}
    namespaces = {n["metadata"]["name"] for n in c.kubectl_json("get", "ns")["items"]}
    problems, mine = [], {}
    for p in neutron(c, "ports"):
        if not p["device_id"]:
            if p["security_groups"] or "kuryr.k8s.pool" not in p["tags"] \
                    or p["name"] != "available-port":
                problems.append(f"pool port {p['id']} not clean: {p}")
            continue
        if p["device_id"] not in pods:
            problems.append(f"port {p['id']} ({p['name']}) of a pod that is gone")
            continue
        mine.setdefault(p["device_id"], []).append(p)
    for uid, pod in pods.items():
        md = pod["metadata"]
        name = f"{md['namespace']}/{md['name']}"
        ports = mine.get(uid, [])
        if len(ports) != 1:
            problems.append(f"pod {name} has {len(ports)} ports")
            continue
        port = ports[0]
        want_tags = {CLUSTER_TAG, f"kuryr.k8s.pod.uid={uid}",
                     f"kuryr.k8s.pod.namespace={md['namespace']}",
                     f"kuryr.k8s.pod.name={md['name']}"}
        if set(port["tags"]) != want_tags:
            problems.append(f"pod {name}: port tags {port['tags']}")
        if port["binding:host_id"] != pod["spec"]["nodeName"] or port["name"] != name \
                or port["device_owner"] != "compute:kuryr":
            problems.append(f"pod {name}: port {port['id']} host/name/owner {port}")
        if md.get("annotations", {}).get(PORT_ANNOTATION) != port["id"]:
            problems.append(f"pod {name}: annotation {md.get('annotations')}")
        ip = pod["status"].get("podIP")
        if ip and ip not in [f["ip_address"] for f in port["fixed_ips"]]:
            problems.append(f"pod {name}: podIP {ip} is not its port's")
    for g in neutron(c, "security-groups"):
        uid = next((t.split("=", 1)[1] for t in g["tags"]
                    if t.startswith("kuryr.k8s.policy.uid=")), None)
        if uid is not None and uid not in policies:
            problems.append(f"group {g['name']} of a policy that is gone")
    for kind in ("networks", "subnets"):
        for n in neutron(c, kind):
            ns = next((t.split("=", 1)[1] for t in n["tags"]
                       if t.startswith("kuryr.k8s.namespace=")), None)
            if ns is not None and ns not in namespaces:
                problems.append(f"{kind[:-1]} {n['name']} of a namespace that is gone")
    return problems


def wait_wired(c, timeout=30):
    last = []

    def ok():
        last[:] = wiring_problems(c)
        return not last
    try:
        wait(ok, timeout, "every pod wired and nothing without an owner", interval=0.5)
    except AssertionError:
        raise AssertionError("still wrong:\n" + "\n".join(last)) from None


def reachable(c, pod, ip, port=8080, namespace="default"):
    return c.peer_address(pod, ip, port, namespace=namespace, wait=1) != ""


def mesh(c, pods, port=8080):
    """{(src, dst ip): (pings, connects)}, one exec per source pod."""
    out = {}
    for src in pods:
        name, ns = src["metadata"]["name"], src["metadata"]["namespace"]
        targets = [p["status"]["podIP"] for p in pods if p is not src]
        # The server answers with the address it sees (as [::ffff:a.b.c.d]): ours.
        me = re.escape(src["status"]["podIP"])
        script = "; ".join(
            f"ping -c1 -W1 {ip} >/dev/null 2>&1 && echo P{ip}; "
            f"printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {ip} {port} "
            f"| grep -qE '(^|[^0-9.]){me}([^0-9.]|$)' && echo C{ip}"
            for ip in targets)
        text = c.pod_exec(name, "sh", "-c", script + "; true", namespace=ns,
                          timeout=120).stdout
        for ip in targets:
            out[(name, ip)] = (f"P{ip}\n" in text + "\n", f"C{ip}\n" in text + "\n")
    return out


def cleanup_everything(c):
    """Stops the controller and deletes what it made (`--cleanup`): nothing of the
    cluster is left in Neutron."""
    for name, p in list(c.cluster_procs.items()):
        if name.startswith("controller"):
            p.kill9()
    # The controller's own credential (no admin), as an operator would run it.
    os_vars = [f"{k}={v}" for k, v in c.credential("controller", c.prefix).items()]
    out = c.exec("lab", "env", "-i", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
                 *os_vars, KURYR_BIN, "controller", "--cleanup", "--cluster-name", CLUSTER,
                 timeout=120)
    left = {kind: neutron(c, kind) for kind in ("ports", "security-groups", "networks",
                                                "subnets")}
    assert not any(left.values()), f"left in Neutron after --cleanup ({out}): {left}"


# ------------------------------------------------------------------- single network

@pytest.fixture(scope="module")
def kc():
    """Two nodes with kuryr-cni and the controller on one pod network, shared by the
    module's tests. Its close must leave nothing, in Neutron or on the machine."""
    if os.geteuid() != 0:
        pytest.fail("the Kubernetes lab needs root (namespaces, mounts, cgroups)")
    c = Cluster(hosts=2, cni="kuryr", probe=False)
    try:
        start_controller(c)
        # Warm-up: every node's pool at min before any pod.
        wait(lambda: all(pool_sizes(c).get(h, 0) >= POOL_MIN for h in c.hosts), 30,
             "the pools' warm-up")
        yield c
        cleanup_everything(c)
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.close()
    left = c.cluster_leftovers()
    assert not left, "the cluster left behind:\n" + "\n".join(left)


def test_first_pod_on_a_node_takes_a_premade_port(kc):
    before = metrics(kc)
    sizes = pool_sizes(kc)
    assert sizes.get("h1", 0) >= POOL_MIN, sizes
    kc.apply(busybox_pod("first", node="h1", labels={"test": "first"}))
    try:
        [p] = kc.wait_pods("test=first", count=1)
        port_id = p["metadata"]["annotations"][PORT_ANNOTATION]
        line = wait(lambda: next((ln for ln in kc.controller.log(400).splitlines()
                                  if "port assigned" in ln and port_id in ln), None),
                    10, "the assignment's log line")
        assert 'pool="hit"' in line, line
        assert re.search(r'ms="[0-9.]+"', line), line
        after = metrics(kc)
        key = 'kuryr_controller_pool_hits_total{node="h1"}'
        assert after.get(key, 0) == before.get(key, 0) + 1
        # The pool refills to min in the background.
        wait(lambda: pool_sizes(kc).get("h1", 0) >= POOL_MIN, 15, "h1's pool to refill")
    finally:
        kc.kubectl("delete", "pod", "first", "--wait=true", timeout=120)


def test_pods_get_ports_and_reach_each_other(kc):
    kc.apply(busybox_deployment("mesh", 10))
    try:
        pods = kc.wait_pods("app=mesh", count=10, timeout=120)
        assert {p["spec"]["nodeName"] for p in pods} == set(kc.hosts)
        wait_wired(kc)
        subnet = ipaddress.ip_network(POD_CIDR)
        assert all(ipaddress.ip_address(p["status"]["podIP"]) in subnet for p in pods)
        for p in pods:
            kc.serve_peer_address(p["metadata"]["name"])
        result = mesh(kc, pods)
        bad = {k: v for k, v in result.items() if v != (True, True)}
        assert not bad, f"(ping, connect without NAT) failures: {bad}"
    finally:
        kc.kubectl("delete", "deployment", "mesh", "--wait=false")


def test_deleted_pods_give_ports_back_or_delete_them(kc):
    # 12 a node: given back on top of what the pools hold, they pass POOL_MAX.
    kc.apply(busybox_deployment("churn", 24))
    ports = []
    try:
        pods = kc.wait_pods("app=churn", count=24, timeout=180)
        ports = [p["metadata"]["annotations"][PORT_ANNOTATION] for p in pods]
    finally:
        kc.kubectl("delete", "deployment", "churn", "--wait=false")

    def returned():
        states = []
        for pid in ports:
            status, data = kc.api("GET", f"/ports/{pid}")
            if status == 404:
                states.append("deleted")
            elif not data["port"]["device_id"]:
                p = data["port"]
                assert p["name"] == "available-port" and p["security_groups"] == [], p
                assert set(p["tags"]) == {CLUSTER_TAG, "kuryr.k8s.pool"}, p
                states.append("pool")
            else:
                return None
        return states
    states = wait(returned, 60, "every port back in its pool or deleted", interval=0.5)
    # 24 ports back into two pools of at most POOL_MAX: some had to go.
    assert "pool" in states and "deleted" in states, states
    wait(lambda: all(n <= POOL_MAX for n in pool_sizes(kc).values()), 15, "pools within max")
    wait_wired(kc)


def test_host_network_pods_are_left_alone(kc):
    pod = busybox_pod("hostnet", node="h2", labels={"test": "hostnet"})
    pod["spec"]["hostNetwork"] = True
    kc.apply(pod)
    try:
        [p] = kc.wait_pods("test=hostnet", count=1)
        assert PORT_ANNOTATION not in p["metadata"].get("annotations", {})
        assert not [x for x in neutron(kc, "ports") if x["device_id"] == p["metadata"]["uid"]]
        # Positive control: a pod on the pod network on the same node gets its port.
        kc.apply(busybox_pod("podnet", node="h2", labels={"test": "podnet"}))
        [q] = kc.wait_pods("test=podnet", count=1)
        assert q["metadata"]["annotations"][PORT_ANNOTATION]
    finally:
        kc.kubectl("delete", "pod", "hostnet", "podnet", "--ignore-not-found", timeout=120)


# ------------------------------------------------------------------- NetworkPolicy

@pytest.fixture(scope="module")
def np_world(kc):
    """Namespaces np-a (team=a) and np-b (team=b); servers srv (app=srv, http 8080 and
    metrics 9090) and srv2 (app=srv2) in np-a on h1; clients c-a (role=client) and
    c-other (role=other) in np-a and c-b (role=any) in np-b on h2."""
    for ns, team in (("np-a", "a"), ("np-b", "b")):
        kc.apply({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": ns, "labels": {"team": team}}})

    def server(name, app):
        p = busybox_pod(name, node="h1", labels={"app": app}, namespace="np-a")
        p["spec"]["containers"][0]["ports"] = [
            {"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]
        return p
    kc.apply([server("srv", "srv"), server("srv2", "srv2"),
              busybox_pod("c-a", node="h2", labels={"role": "client"}, namespace="np-a"),
              busybox_pod("c-other", node="h2", labels={"role": "other"}, namespace="np-a"),
              busybox_pod("c-b", node="h2", labels={"role": "any"}, namespace="np-b")])
    pods = {p["metadata"]["name"]: p for ns, n in (("np-a", 4), ("np-b", 1))
            for p in kc.wait_pods(namespace=ns, count=n)}
    for s in ("srv", "srv2"):
        for port in (8080, 9090):
            kc.serve_peer_address(s, port=port, namespace="np-a")
    ip = {n: p["status"]["podIP"] for n, p in pods.items()}
    yield ip
    kc.kubectl("delete", "ns", "np-a", "np-b", "--wait=true", timeout=180)


CLIENT_NS = {"c-a": "np-a", "c-other": "np-a", "c-b": "np-b"}


def connections(kc, ip, pairs):
    """{(client, server, port): connected} for the pairs, checked in parallel."""
    out = {}

    def one(pair):
        client, server, port = pair
        out[pair] = reachable(kc, client, ip[server], port, namespace=CLIENT_NS[client])
    threads = [threading.Thread(target=one, args=(p,)) for p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def expect(kc, ip, allowed, denied, timeout=10):
    """Waits until every `allowed` connection works and every `denied` one does not
    (both at once); returns the seconds it took."""
    t0 = time.monotonic()
    want = {**{p: True for p in allowed}, **{p: False for p in denied}}
    last = {}

    def ok():
        last.clear()
        last.update(connections(kc, ip, list(want)))
        return last == want
    try:
        wait(ok, timeout, "the policy's effect", interval=0.1)
    except AssertionError:
        wrong = {p: v for p, v in last.items() if v != want[p]}
        raise AssertionError(f"connections not as expected (pair: got): {wrong}") from None
    return time.monotonic() - t0


def policy(name, spec, namespace="np-a"):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


EVERYONE = [("c-a", "srv", 8080), ("c-other", "srv", 8080), ("c-b", "srv", 8080)]

# name: (policies, allowed, denied)
MATRIX = {
    "default-deny": (
        [policy("deny", {"podSelector": {"matchLabels": {"app": "srv"}},
                         "policyTypes": ["Ingress"]})],
        [("c-a", "srv2", 8080)],
        EVERYONE),
    "allow-by-pod-label": (
        [policy("by-pod", {"podSelector": {"matchLabels": {"app": "srv"}},
                           "ingress": [{"from": [{"podSelector": {
                               "matchLabels": {"role": "client"}}}]}]})],
        [("c-a", "srv", 8080), ("c-a", "srv", 9090)],
        [("c-other", "srv", 8080), ("c-b", "srv", 8080)]),
    "allow-by-namespace-label": (
        [policy("by-ns", {"podSelector": {"matchLabels": {"app": "srv"}},
                          "ingress": [{"from": [{"namespaceSelector": {
                              "matchLabels": {"team": "b"}}}]}]})],
        [("c-b", "srv", 8080)],
        [("c-a", "srv", 8080), ("c-other", "srv", 8080)]),
    "namespace-and-pod-label": (
        [policy("ns-and-pod", {"podSelector": {"matchLabels": {"app": "srv"}},
                               "ingress": [{"from": [{
                                   "namespaceSelector": {"matchLabels": {"team": "a"}},
                                   "podSelector": {"matchLabels": {"role": "other"}}}]}]})],
        [("c-other", "srv", 8080)],
        [("c-a", "srv", 8080), ("c-b", "srv", 8080)]),
    "ip-block-except": (
        [policy("ipblock", {"podSelector": {"matchLabels": {"app": "srv"}},
                            "ingress": [{"from": [{"ipBlock": {
                                "cidr": POD_CIDR, "except": ["{c-a}/32"]}}]}]})],
        [("c-other", "srv", 8080), ("c-b", "srv", 8080)],
        [("c-a", "srv", 8080)]),
    "named-port": (
        [policy("named", {"podSelector": {"matchLabels": {"app": "srv"}},
                          "ingress": [{"ports": [{"port": "http"}]}]})],
        [("c-a", "srv", 8080), ("c-b", "srv", 8080)],
        [("c-a", "srv", 9090), ("c-b", "srv", 9090)]),
    "port-range": (
        [policy("range", {"podSelector": {"matchLabels": {"app": "srv"}},
                          "ingress": [{"ports": [{"protocol": "TCP", "port": 9000,
                                                  "endPort": 9100}]}]})],
        [("c-a", "srv", 9090)],
        [("c-a", "srv", 8080)]),
    "egress-deny": (
        [policy("egress-deny", {"podSelector": {"matchLabels": {"role": "client"}},
                                "policyTypes": ["Egress"]})],
        [("c-other", "srv", 8080)],
        [("c-a", "srv", 8080), ("c-a", "srv2", 8080)]),
    "egress-to-pods-on-a-named-port": (
        [policy("egress-named", {"podSelector": {"matchLabels": {"role": "client"}},
                                 "policyTypes": ["Egress"],
                                 "egress": [{"to": [{"podSelector": {
                                     "matchLabels": {"app": "srv"}}}],
                                     "ports": [{"port": "metrics"}]}]})],
        [("c-a", "srv", 9090), ("c-other", "srv", 8080)],
        [("c-a", "srv", 8080), ("c-a", "srv2", 9090)]),
    "two-policies": (
        [policy("one", {"podSelector": {"matchLabels": {"app": "srv"}},
                        "ingress": [{"from": [{"podSelector": {
                            "matchLabels": {"role": "client"}}}]}]}),
         policy("two", {"podSelector": {"matchLabels": {"app": "srv"}},
                        "ingress": [{"from": [{"namespaceSelector": {
                            "matchLabels": {"team": "b"}}}]}]})],
        [("c-a", "srv", 8080), ("c-b", "srv", 8080)],
        [("c-other", "srv", 8080)]),
}


def fill(obj, ip):
    """Pod addresses into a policy ({c-a} → c-a's address)."""
    text = json.dumps(obj)
    for name, addr in ip.items():
        text = text.replace("{" + name + "}", addr)
    return json.loads(text)


@pytest.mark.parametrize("case", list(MATRIX))
def test_network_policy_matrix(kc, np_world, case):
    policies, allowed, denied = MATRIX[case]
    ip = np_world
    # Before: everything open (the positive control of every denial below).
    expect(kc, ip, allowed + denied, [])
    # How long the first denial takes, from the apply's request to the last connection
    # that got through (attempts every 0.1 s inside the client).
    src, dst, port = denied[0]
    r = attempts(kc, src, CLIENT_NS[src], ip[dst], port, 3)
    time.sleep(0.5)
    t0 = uptime()
    kc.apply([fill(p, ip) for p in policies])
    names = [p["metadata"]["name"] for p in policies]
    try:
        r.join()
        assert r.connected and r.connected[0] < t0, "no connection before the policy"
        took = max(0.0, r.connected[-1] - t0)
        expect(kc, ip, allowed, denied)
        print(f"{case}: {src} -> {dst}:{port} denied within {took + 0.1:.1f} s")
        assert took < 1.0, took
        for p in policies:
            got = kc.kubectl_json("get", "networkpolicy", "-n", "np-a",
                                  p["metadata"]["name"])
            gid = got["metadata"].get("annotations", {}).get(GROUP_ANNOTATION)
            assert gid, got["metadata"]
            status, g = kc.api("GET", f"/security-groups/{gid}")
            assert status == 200
            assert f"kuryr.k8s.policy.uid={got['metadata']['uid']}" in \
                g["security_group"]["tags"]
    finally:
        kc.kubectl("delete", "networkpolicy", "-n", "np-a", *names)
    # After: open again, and the policies' groups are gone.
    expect(kc, ip, allowed + denied, [])
    wait_wired(kc)


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def attempts(kc, pod, namespace, ip, port, seconds):
    """Starts, inside `pod`, a connection attempt every 0.1 s for `seconds` (each
    with a 1 s timeout); returns a thread whose `.connected` are the machine's uptimes
    (the clock pods and this process share) at which the attempts that connected
    began."""
    n = int(seconds * 10)
    script = (f"i=0; while [ $i -lt {n} ]; do "
              f"(t=$(cut -d' ' -f1 /proc/uptime); echo | nc -w 1 {ip} {port} >/dev/null 2>&1"
              f" && echo $t) & sleep 0.1; i=$((i+1)); done; wait")

    class Runner(threading.Thread):
        connected = []

        def run(self):
            out = kc.pod_exec(pod, "sh", "-c", script, namespace=namespace, check=False,
                              timeout=seconds + 30).stdout
            self.connected = sorted(float(x) for x in out.split())
    r = Runner()
    r.start()
    return r


def test_relabelling_moves_a_pod_within_a_second(kc, np_world):
    """From the relabel's request to the first (last) connection that gets through,
    measured inside the client every 0.1 s."""
    ip = np_world
    kc.apply(policy("relabel", {"podSelector": {"matchLabels": {"app": "srv"}},
                                "ingress": [{"from": [{"podSelector": {
                                    "matchLabels": {"role": "client"}}}]}]}))
    try:
        expect(kc, ip, [("c-a", "srv", 8080)], [("c-other", "srv", 8080)])
        r = attempts(kc, "c-other", "np-a", ip["srv"], 8080, 4)
        time.sleep(1)  # attempts that fail before the relabel: the negative control
        t0 = uptime()
        kc.kubectl("label", "pod", "-n", "np-a", "c-other", "role=client", "--overwrite")
        r.join()
        assert r.connected, "never let in"
        assert r.connected[0] >= t0, "connected before the relabel"
        into = r.connected[0] - t0
        r = attempts(kc, "c-other", "np-a", ip["srv"], 8080, 4)
        time.sleep(1)  # attempts that connect before the relabel: the positive control
        t0 = uptime()
        kc.kubectl("label", "pod", "-n", "np-a", "c-other", "role=other", "--overwrite")
        r.join()
        assert r.connected and r.connected[0] < t0, "not let in before the relabel"
        out = max(0.0, r.connected[-1] - t0)
        # Attempts are 0.1 s apart: the figures are within 0.1 s.
        print(f"relabel: in {into:.1f} s, out within {out + 0.1:.1f} s")
        assert into < 1.0 and out < 1.0, (into, out)
    finally:
        kc.kubectl("label", "pod", "-n", "np-a", "c-other", "role=other", "--overwrite")
        kc.kubectl("delete", "networkpolicy", "-n", "np-a", "relabel")


def test_policy_changes_write_only_what_moves(kc, np_world):
    """Label churn is membership: a relabel updates the one port, never a rule."""
    kc.apply(policy("churn", {"podSelector": {"matchLabels": {"app": "srv"}},
                              "ingress": [{"from": [{"podSelector": {
                                  "matchLabels": {"role": "client"}}}]}]}))
    try:
        expect(kc, np_world, [("c-a", "srv", 8080)], [("c-other", "srv", 8080)])
        gid = kc.kubectl_json("get", "networkpolicy", "-n", "np-a", "churn")[
            "metadata"]["annotations"][GROUP_ANNOTATION]
        _, before = kc.api("GET", f"/security-group-rules?security_group_id={gid}")
        updates = metrics(kc).get("kuryr_controller_port_group_updates_total", 0)
        kc.kubectl("label", "pod", "-n", "np-a", "c-other", "role=client", "--overwrite")
        expect(kc, np_world, [("c-other", "srv", 8080)], [])
        _, after = kc.api("GET", f"/security-group-rules?security_group_id={gid}")
        assert sorted(r["id"] for r in before["security_group_rules"]) == \
            sorted(r["id"] for r in after["security_group_rules"])
        assert metrics(kc)["kuryr_controller_port_group_updates_total"] == updates + 1
    finally:
        kc.kubectl("label", "pod", "-n", "np-a", "c-other", "role=other", "--overwrite")
        kc.kubectl("delete", "networkpolicy", "-n", "np-a", "churn")


# ------------------------------------------------------------------- namespace subnets

def test_namespace_subnets(clusters):
    c = clusters.new(hosts=2, cni="kuryr", probe=False)
    pool = c.api("POST", "/subnetpools", {"subnetpool": {
        "name": "k8s-pods", "prefixes": ["10.247.0.0/16"], "default_prefixlen": 24}},
        expect=201)[1]["subnetpool"]
    router = c.api("POST", "/routers", {"router": {"name": "k8s-router"}},
                   expect=201)[1]["router"]
    start_controller(c, "--namespace-subnet-pool", pool["id"], "--pod-router", router["id"],
                     network=False)
    try:
        for ns in ("blue", "green"):
            c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        c.apply([busybox_pod("b", node="h1", namespace="blue"),
                 busybox_pod("g", node="h2", namespace="green")])
        [b] = c.wait_pods(namespace="blue", count=1)
        [g] = c.wait_pods(namespace="green", count=1)
        nets = {tag_value(n, "kuryr.k8s.namespace"): n for n in neutron(c, "networks")}
        subnets = {tag_value(s, "kuryr.k8s.namespace"): s for s in neutron(c, "subnets")}
        for ns, pod in (("blue", b), ("green", g)):
            assert nets[ns]["name"] == f"ns/{ns}-net"
            assert subnets[ns]["name"] == f"ns/{ns}-subnet"
            assert subnets[ns]["subnetpool_id"] == pool["id"]
            assert ipaddress.ip_address(pod["status"]["podIP"]) in \
                ipaddress.ip_network(subnets[ns]["cidr"])
            ann = c.kubectl_json("get", "ns", ns)["metadata"]["annotations"]
            assert ann["kuryr.openstack.org/network-id"] == nets[ns]["id"]
            assert ann["kuryr.openstack.org/subnet-id"] == subnets[ns]["id"]
            _, rp = c.api("GET", f"/ports?device_id={router['id']}"
                                 f"&network_id={nets[ns]['id']}", expect=200)
            assert rp["ports"], f"no router interface on {ns}'s network"
        wait_wired(c)
        # Across namespaces and nodes, through the router.
        c.serve_peer_address("g", namespace="green")
        assert c.peer_address("b", g["status"]["podIP"], namespace="blue") == \
            b["status"]["podIP"]
        c.kubectl("delete", "ns", "blue", "--wait=true", timeout=180)
        wait(lambda: "blue" not in {tag_value(n, "kuryr.k8s.namespace")
                                    for n in neutron(c, "networks")}, 30,
             "blue's network to go")
        assert "blue" not in {tag_value(s, "kuryr.k8s.namespace")
                              for s in neutron(c, "subnets")}
        # Positive control: green's is still there.
        assert "green" in {tag_value(n, "kuryr.k8s.namespace") for n in neutron(c, "networks")}
        wait_wired(c)
    finally:
        cleanup_everything(c)


def tag_value(obj, key):
    return next((t.split("=", 1)[1] for t in obj["tags"] if t.startswith(key + "=")), None)


# ------------------------------------------------------------------- crash safety

def test_kill9_controller_and_agents_while_pods_come_and_go(clusters):
    c = clusters.new(hosts=2, cni="kuryr", probe=False)
    start_controller(c)
    rng = random.Random(int(os.environ.get("KURYR_CHAOS_SEED", time.time())))
    stop = threading.Event()
    kills = []

    def chaos():
        while not stop.is_set():
            time.sleep(rng.uniform(0.2, 1.5))
            victim = rng.choice(["controller", "controller", *c.hosts]) if kills \
                else "controller"
            proc = c.controller if victim == "controller" else c.agents[victim]
            proc.kill9()
            kills.append(victim)
            time.sleep(rng.uniform(0, 0.5))
            proc.start()
    try:
        c.apply(busybox_deployment("chaos", 0))
        # Membership too must survive: the pods are isolated by a policy throughout.
        c.apply(policy("chaos", {"podSelector": {"matchLabels": {"app": "chaos"}},
                                 "ingress": [{"from": [{"podSelector": {
                                     "matchLabels": {"role": "client"}}}]}]},
                       namespace="default"))
        t = threading.Thread(target=chaos)
        t.start()
        try:
            for n in (20, 4, 16, 0, 20, 8, 20, 2):
                c.kubectl("scale", "deployment", "chaos", f"--replicas={n}")
                time.sleep(rng.uniform(0.5, 2))
        finally:
            stop.set()
            t.join()
        print(f"killed: {kills}")
        assert "controller" in kills
        c.kubectl("scale", "deployment", "chaos", "--replicas=8")
        pods = c.wait_pods("app=chaos", count=8, timeout=180)
        wait_wired(c, timeout=60)
        np = c.kubectl_json("get", "networkpolicy", "chaos")
        gid = np["metadata"]["annotations"][GROUP_ANNOTATION]
        allow_in = [g["id"] for g in neutron(c, "security-groups")
                    if "kuryr.k8s.allow-all=ingress" in g["tags"]]
        for p in pods:
            _, port = c.api("GET", f"/ports/{p['metadata']['annotations'][PORT_ANNOTATION]}",
                            expect=200)
            groups = port["port"]["security_groups"]
            assert gid in groups and not set(allow_in) & set(groups), groups
        # Traffic as the policy says, across nodes: a client gets in, a chaos pod not.
        a = pods[0]
        b = next(p for p in pods if p["spec"]["nodeName"] != a["spec"]["nodeName"])
        c.apply(busybox_pod("chaos-client", node=a["spec"]["nodeName"],
                            labels={"role": "client"}))
        c.wait_pods("role=client", count=1)
        assert c.pod_ping("chaos-client", b["status"]["podIP"])
        assert not c.pod_ping(a["metadata"]["name"], b["status"]["podIP"], count=2)
        c.kubectl("delete", "deployment", "chaos", "--wait=true", timeout=180)
        c.kubectl("delete", "pod", "chaos-client", "--wait=true", timeout=120)
        c.kubectl("delete", "networkpolicy", "chaos")
        wait(lambda: not live_pods(c), 60, "the pods to go")
        wait_wired(c, timeout=60)
    finally:
        cleanup_everything(c)


# ------------------------------------------------------------------- leader election

def test_one_leader_acts_and_another_takes_over(clusters):
    c = clusters.new(hosts=1, cni="kuryr", probe=False)
    election = ("--leader-elect-lease-duration", "3", "--leader-elect-renew-deadline", "2",
                "--leader-elect-retry-period", "1")
    start_controller(c, "--leader-elect-identity", "replica-a", *election)
    wait(lambda: "leading" in c.controller.log(), 15, "replica-a to lead")
    env = dict(c.controller.env)
    cmd = [x if x != "replica-a" else "replica-b" for x in c.controller.cmd]
    cmd[cmd.index(METRICS)] = "10.99.0.1:9798"
    b = Process("controller-b", cmd, env, os.path.join(c.dir, "controller-b.log"))
    c.cluster_procs["controller-b"] = b
    try:
        lease = c.kubectl_json("get", "lease", "-n", "kube-system", "kuryr-controller")
        assert lease["spec"]["holderIdentity"] == "replica-a"
        c.apply(busybox_pod("one", labels={"test": "one"}))
        c.wait_pods("test=one", count=1)
        assert "port assigned" in c.controller.log(400)
        assert "port assigned" not in b.log(400), "the follower acted"
        c.controller.kill9()
        t0 = time.monotonic()
        wait(lambda: c.kubectl_json("get", "lease", "-n", "kube-system", "kuryr-controller")[
            "spec"].get("holderIdentity") == "replica-b", 20, "replica-b to take over")
        c.apply(busybox_pod("two", labels={"test": "two"}))
        c.wait_pods("test=two", count=1)
        print(f"take-over and a new pod wired in {time.monotonic() - t0:.1f} s")
        assert "port assigned" in b.log(400)
        wait_wired(c)
    finally:
        b.kill9()
        cleanup_everything(c)
