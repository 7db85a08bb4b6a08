"""Smoke tests of the Kubernetes lab itself, on the reference CNI (bridge + host-local):
nodes Ready, a Deployment spread over both nodes, pods reaching pods across nodes
without NAT, the cluster kept inside its namespaces, the conflist switch, and nothing
left behind by close() or by a test process that died."""

import collections
import ipaddress
import json
import os
import select
import signal
import subprocess
import sys

import pytest

from cluster import (busybox_deployment, busybox_pod, kuryr_cni_available, leftovers,
                     machine_sysctls, sweep_stale_clusters)
from lab import sh, sweep_stale_labs

HERE = os.path.dirname(os.path.abspath(__file__))


def pod(name, node=None):
    return busybox_pod(name, node=node, labels={"test": name})


@pytest.fixture(scope="module")
def smoke(cluster):
    """A Deployment of 4 busybox pods over the 2 nodes; {node: [pods]} once all are Ready."""
    cluster.apply(busybox_deployment("smoke", 4))
    try:
        pods = cluster.wait_pods("app=smoke", count=4, timeout=120)
        by_node = collections.defaultdict(list)
        for p in pods:
            by_node[p["spec"]["nodeName"]].append(p)
        yield by_node
    finally:
        cluster.kubectl("delete", "deployment", "smoke", "--wait=false")


def test_nodes_ready(cluster):
    nodes = {n["metadata"]["name"]: n for n in cluster.nodes()}
    assert sorted(nodes) == sorted(cluster.hosts)
    for host, node in nodes.items():
        status = node["status"]
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        assert {"type": "InternalIP", "address": cluster.node_ip(host)} in status["addresses"]
        assert status["nodeInfo"]["kubeletVersion"] == "v1.34.4"
        assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")


def test_deployment_spreads_over_both_nodes(cluster, smoke):
    assert {h: len(pods) for h, pods in smoke.items()} == {"h1": 2, "h2": 2}
    for host, pods in smoke.items():
        cidr = ipaddress.ip_network(cluster.pod_cidr(host))
        for p in pods:
            assert p["status"]["phase"] == "Running"
            assert ipaddress.ip_address(p["status"]["podIP"]) in cidr, p["metadata"]["name"]
    ips = [p["status"]["podIP"] for pods in smoke.values() for p in pods]
    assert len(set(ips)) == 4


def test_pods_ping_across_nodes(cluster, smoke):
    a, b = smoke["h1"][0], smoke["h2"][0]
    assert cluster.pod_ping(a["metadata"]["name"], b["status"]["podIP"])
    assert cluster.pod_ping(b["metadata"]["name"], a["status"]["podIP"])


def test_pods_see_each_other_without_nat(cluster, smoke):
    """A server in a pod on h2 sees a client pod on h1 by the client's own address."""
    a, b = smoke["h1"][1], smoke["h2"][1]
    cluster.serve_peer_address(b["metadata"]["name"])
    assert cluster.peer_address(a["metadata"]["name"], b["status"]["podIP"]) == \
        a["status"]["podIP"]


def test_ping_to_an_address_nobody_has_fails(cluster, smoke):
    a, b = smoke["h1"][0], smoke["h2"][0]
    nobody = str(ipaddress.ip_network(cluster.pod_cidr("h2"))[250])
    assert nobody not in cluster.pod_ips().values()
    # Positive control: the same pod reaches a real pod of that subnet.
    assert cluster.pod_ping(a["metadata"]["name"], b["status"]["podIP"])
    assert not cluster.pod_ping(a["metadata"]["name"], nobody, count=2)


def test_cluster_stays_inside_its_namespaces(cluster, machine_before):
    # The kubelet's iptables chains are in its host's namespace, not the machine's.
    assert "KUBE-KUBELET-CANARY" in cluster.exec("h1", "nft", "list", "ruleset")
    assert "KUBE-" not in sh("nft", "list", "ruleset")
    # The kernel tunables the kubelet sets went to the node's own files.
    node_file = os.path.join(cluster.node_dir("h1"), "sysctl", "vm.overcommit_memory")
    assert open(node_file).read().strip() == "1"
    assert machine_sysctls() == machine_before["sysctls"]
    # The node's mounts are in its mount namespace only.
    holder = cluster.cluster_procs["holder-h1"].proc.pid

    def sources(pid):
        return [line.split(" - ")[1].split()[1] for line in open(f"/proc/{pid}/mountinfo")]
    assert "kuryr-node" in sources(holder)
    assert "kuryr-node" not in sources("self")
    assert not [line for line in open("/proc/self/mountinfo") if cluster.dir in line]


def test_pod_network_namespaces_are_where_the_agent_sees_them(cluster, smoke):
    """Each pod's network namespace is pinned at the same /run/netns path for the CNI
    plugin (containerd's mount namespace) and for the agent (the machine's)."""
    inside = json.loads(cluster.crictl("h1", "pods", "-o", "json"))["items"]
    ours = {p["metadata"]["name"] for p in smoke["h1"]}
    names = []
    for sandbox in inside:
        if sandbox["metadata"]["name"] not in ours or sandbox["state"] != "SANDBOX_READY":
            continue
        info = json.loads(cluster.crictl("h1", "inspectp", sandbox["id"]))
        spec = info["info"]["runtimeSpec"]["linux"]["namespaces"]
        path = next(n["path"] for n in spec if n["type"] == "network")
        names.append(os.path.basename(path))
        assert os.path.exists(path.replace("/var/run/", "/run/", 1))
    assert len(names) == 2
    assert set(names) <= set(os.listdir("/run/netns"))


def test_set_cni_switches_every_node(cluster):
    if not kuryr_cni_available():
        pytest.skip("kuryr-cni is not built")
    try:
        cluster.set_cni("kuryr")
        for h in cluster.hosts:
            assert cluster.loaded_cni(h) == "kuryr"
            conf = json.load(open(os.path.join(cluster.cni_conf_dir(h), "10-lab.conflist")))
            assert conf["cniVersion"] == "1.1.0"
            assert conf["plugins"] == [{"type": "kuryr-cni",
                                        "daemon_socket": cluster.agent_socket(h)}]
    finally:
        cluster.set_cni("reference")
    assert [cluster.loaded_cni(h) for h in cluster.hosts] == ["reference"] * len(cluster.hosts)
    # Pods made after the switch back get the reference CNI's addresses.
    cluster.apply(pod("after-switch", "h2"))
    try:
        [p] = cluster.wait_pods("test=after-switch", count=1)
        assert ipaddress.ip_address(p["status"]["podIP"]) in \
            ipaddress.ip_network(cluster.pod_cidr("h2"))
    finally:
        cluster.kubectl("delete", "pod", "after-switch", "--wait=false")


def test_kuryr_cni_wires_pods_given_their_ports(cluster):
    """The lab's kuryr mode, end to end through containerd, kuryr-cni and the agents: a
    pod whose Neutron port is made as the controller would make it (device_id = pod
    uid, bound to the pod's node) runs with the port's address, and pods on the two
    nodes reach each other. (The port comes from this test: no controller here.)"""
    if not kuryr_cni_available():
        pytest.skip("kuryr-cni is not built")
    net, _ = cluster.network("lab-kuryr-pods", "10.245.0.0/24")
    ports, names = {}, [f"kuryr-{h}" for h in cluster.hosts]
    try:
        cluster.set_cni("kuryr")
        for name, host in zip(names, cluster.hosts):
            cluster.apply(pod(name, host))
            uid = cluster.kubectl_json("get", "pod", name)["metadata"]["uid"]
            ports[name] = cluster.port(net, device_id=uid, device_owner="compute:kuryr",
                                       name=f"default/{name}", **{"binding:host_id": host})
        pods = {p["metadata"]["name"]: p for p in cluster.wait_pods(
            f"test in ({','.join(names)})", count=len(names))}
        for name in names:
            assert pods[name]["status"]["podIP"] == ports[name]["fixed_ips"][0]["ip_address"]
        a, b = names[0], names[1]
        assert cluster.pod_ping(a, pods[b]["status"]["podIP"])
        # Negative, with the ping above as its control: an address of no port.
        assert not cluster.pod_ping(a, "10.245.0.250", count=2)
    finally:
        cluster.kubectl("delete", "pod", *names, "--ignore-not-found", timeout=120)
        cluster.set_cni("reference")
        for port in ports.values():
            cluster.api("DELETE", f"/ports/{port['id']}")
        cluster.api("DELETE", f"/networks/{net['id']}")


def test_close_leaves_nothing(clusters):
    c = clusters.new(hosts=1, probe=False)
    try:
        c.apply(pod("survivor"))
        c.wait_pods("test=survivor", count=1)
        # Positive control: there is something to remove.
        assert leftovers(c.prefix, c.dir)
    finally:
        clusters.close(c)
    assert c.pod_netns, "no pod network namespace was found to remove"
    assert c.cluster_leftovers() == []


# A cluster in a process of its own, which prints what it made and waits to be killed.
_ORPHAN = """
import json, os, signal, sys
sys.path.insert(0, {here!r})
from cluster import Cluster, _pod_netns
c = Cluster(hosts=1, probe=False)
c.apply(json.loads({pod!r}))
c.wait_pods("test=orphan", count=1)
print(json.dumps([c.prefix, c.dir, sorted(_pod_netns(c.prefix, c.dir))]), flush=True)
signal.pause()
"""


def test_a_cluster_whose_test_process_died_is_swept(tmp_path):
    errors = tmp_path / "orphan.log"
    with open(errors, "w") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _ORPHAN.format(here=HERE, pod=json.dumps(pod("orphan")))],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True)
    try:
        # Its first line, once its cluster is up (or nothing, if it died first).
        ready, _, _ = select.select([child.stdout], [], [], 300)
        line = child.stdout.readline() if ready else ""
        assert line, f"the orphan cluster did not come up:\n{errors.read_text()}"
        prefix, lab_dir, netns = json.loads(line)
        assert netns and leftovers(prefix, lab_dir, netns)  # positive control
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
        child.stdout.close()
    # What the next lab does first.
    sweep_stale_clusters()
    sweep_stale_labs()
    assert leftovers(prefix, lab_dir, netns) == []
