"""kuryr installed the way Kubernetes users install a network: `kubectl apply -f` of
deploy/kubernetes (its image made by scripts/kuryr_image.py and imported into each
node's containerd) on a cluster that has no network yet, then `kubectl delete -f`.

The cluster (Cluster(manifests=True)) starts with NotReady nodes and no conflist; the
lab edits config.yaml's values and writes secret.yaml with `kuryr credential
kubernetes`, as the README tells a user to; rbac.yaml, agent.yaml and controller.yaml
are applied as they are in the repository. The tests run in order on one cluster:
what the install gives (pods networked across nodes, a Service by name, least
privilege, an agent update that keeps everything), then what the delete removes."""

import filecmp
import json
import os

import pytest

from cluster import (DEPLOY_DIR, busybox_deployment, busybox_pod, controller_available,
                     kuryr_cni_available, wait)
from test_services import WEB_CMD, answers, ready_pods, service

pytestmark = pytest.mark.skipif(
    not (kuryr_cni_available() and controller_available()),
    reason="kuryr-cni or `kuryr controller` is not built")

NS = "kube-system"


@pytest.fixture(scope="module")
def mcluster(module_clusters):
    return module_clusters.new(hosts=2, manifests=True, dns=True)


def by_app(c, name):
    return [p for p in c.kuryr_pods() if p["metadata"]["labels"]
            .get("app.kubernetes.io/name") == name]


def node_files(c, host):
    """kuryr's files on a node (its CNI plugin and conflist, the agent's state)."""
    found = []
    for d in (c.cni_bin_dir(host), c.cni_conf_dir(host)):
        found += [os.path.join(d, f) for f in os.listdir(d) if "kuryr" in f]
    state = os.path.join(c.node_dir(host), "var-lib", "kuryr", "agent")
    if os.path.isdir(state):
        found += [os.path.join(state, f) for f in os.listdir(state)]
    return sorted(found)


def cloud_objects(c):
    """What the cloud holds for the cluster (by the kuryr.k8s.cluster tag)."""
    tag = f"kuryr.k8s.cluster={c.prefix}"
    found = {}
    for path, key in (("/ports", "ports"), ("/security-groups", "security_groups"),
                      ("/floatingips", "floatingips")):
        _, data = c.api("GET", f"{path}?tags={tag}", expect=200)
        found[key] = [o["id"] for o in data[key]]
    _, data = c.api("GET", f"/lbaas/loadbalancers?tags={tag}", expect=200,
                    root="/load-balancer/v2")
    found["loadbalancers"] = [o["id"] for o in data["loadbalancers"]]
    return found


def kernel_objects(c, host):
    """kuryr's links and nftables objects on a node, and its router namespaces."""
    links, nft = c.kuryr_objects(host)
    return links, nft, c.router_namespaces(host)


def test_apply_brings_pods_up_on_kuryr(mcluster):
    c = mcluster
    # The repository's files were applied as they are, bar the two a user edits.
    for f in ("rbac.yaml", "agent.yaml", "controller.yaml"):
        assert filecmp.cmp(os.path.join(DEPLOY_DIR, f), os.path.join(c.deploy_dir, f),
                           shallow=False), f
    assert {p["spec"]["nodeName"] for p in by_app(c, "kuryr-agent")} == set(c.hosts)
    controllers = {p["metadata"]["name"] for p in by_app(c, "kuryr-controller")}
    assert len(controllers) == 2
    lease = c.kubectl_json("get", "lease", "-n", NS, "kuryr-controller")
    assert lease["spec"]["holderIdentity"] in controllers
    assert [o["kind"] + "/" + o["name"] for o in lease["metadata"]["ownerReferences"]] \
        == ["Deployment/kuryr-controller"]
    for h in c.hosts:
        plugin = os.path.join(c.cni_bin_dir(h), "kuryr-cni")
        # Installed by the agent (a file), not the host-process lab's link.
        assert os.path.isfile(plugin) and not os.path.islink(plugin)
        with open(os.path.join(c.cni_conf_dir(h), "10-kuryr.conflist")) as f:
            assert json.load(f)["plugins"][0]["daemon_socket"] == "/run/kuryr/agent.sock"
    # Pods on both nodes get kuryr ports and reach each other.
    c.apply(busybox_deployment("spread", 4))
    pods = c.wait_pods("app=spread", count=4)
    assert {p["spec"]["nodeName"] for p in pods} == set(c.hosts)
    ips = c.pod_ips("app=spread")
    for ip in ips.values():
        _, data = c.api("GET", f"/ports?fixed_ips=ip_address={ip}", expect=200)
        assert len(data["ports"]) == 1, f"{ip} is a kuryr port"
    first = pods[0]["metadata"]["name"]
    other = next(p for p in pods if p["spec"]["nodeName"] != pods[0]["spec"]["nodeName"])
    assert c.pod_ping(first, other["status"]["podIP"])
    # A Service by name (CoreDNS behind kube-dns, both on kuryr's load balancer).
    d = busybox_deployment("web", 2, command=WEB_CMD)
    c.apply([d, service("web", {"app": "web"})])
    c.wait_pods("app=web", count=2)
    got = wait(lambda: set(answers(c, first, "web.default.svc.cluster.local", n=8))
               & set(ready_pods(c, "web")), 30, "the Service by name")
    assert got


def test_least_privilege(mcluster):
    c = mcluster

    def can(sa, *what):
        p = c.kubectl("auth", "can-i", f"--as=system:serviceaccount:{NS}:{sa}", *what,
                      check=False)
        return p.stdout.strip() == "yes"
    # What each needs (the controls)...
    assert can("kuryr-agent", "get", "daemonsets/kuryr-agent", "-n", NS)
    assert can("kuryr-controller", "patch", "pods", "-A")
    assert can("kuryr-controller", "update", "leases/kuryr-controller", "-n", NS)
    # ...and nothing beside it.
    assert not can("kuryr-agent", "get", "daemonsets/kube-proxy", "-n", NS)
    assert not can("kuryr-agent", "list", "pods", "-A")
    assert not can("kuryr-controller", "get", "secrets", "-n", NS)
    assert not can("kuryr-controller", "update", "leases/kube-scheduler", "-n", NS)
    assert not can("kuryr-controller", "delete", "pods", "-A")
    # The controller sees only its own credential, the agents only theirs.
    ctl = by_app(c, "kuryr-controller")[0]["metadata"]["name"]
    clouds = c.kubectl("exec", "-n", NS, ctl, "--", "cat", "/etc/openstack/clouds.yaml").stdout
    assert "kuryr-controller:" in clouds and "kuryr-agent-" not in clouds


def test_an_agent_update_keeps_the_network(mcluster):
    """A rolling restart of the agents is not an uninstall: the CNI files, the pods'
    interfaces and the cloud's ports stay (the control of the delete test)."""
    c = mcluster
    before = {p["metadata"]["uid"] for p in by_app(c, "kuryr-agent")}
    c.kubectl("rollout", "restart", "daemonset/kuryr-agent", "-n", NS)
    c.kubectl("rollout", "status", "daemonset/kuryr-agent", "-n", NS, "--timeout=120s",
              timeout=130)
    wait(lambda: len(by_app(c, "kuryr-agent")) == len(c.hosts)
         and not before & {p["metadata"]["uid"] for p in by_app(c, "kuryr-agent")},
         60, "every agent replaced")
    for h in c.hosts:
        assert os.path.exists(os.path.join(c.cni_conf_dir(h), "10-kuryr.conflist"))
    pods = c.wait_pods("app=spread", count=4)
    other = next(p for p in pods if p["spec"]["nodeName"] != pods[0]["spec"]["nodeName"])
    assert c.pod_ping(pods[0]["metadata"]["name"], other["status"]["podIP"], count=3)
    # A pod made after the update is wired by the new agents.
    c.apply(busybox_pod("after-update", node=other["spec"]["nodeName"]))
    wait(lambda: c.pod_ready(c.kubectl_json("get", "pod", "after-update")), 60,
         "a pod made after the update Ready")
    assert c.pod_ping("after-update", pods[0]["status"]["podIP"], count=3)


def test_kubectl_delete_removes_kuryr_and_what_it_made(mcluster):
    c = mcluster
    # A LoadBalancer Service, so that a floating IP is among what kuryr made.
    c.apply(service("public", {"app": "web"}, type="LoadBalancer"))
    wait(lambda: (c.kubectl_json("get", "service", "public")["status"]
                  .get("loadBalancer", {}).get("ingress")), 30, "the floating IP")
    made = cloud_objects(c)
    for kind in ("ports", "security_groups", "floatingips", "loadbalancers"):
        assert made[kind], f"control: kuryr made {kind}"
    for h in c.hosts:
        links, nft, routers = kernel_objects(c, h)
        assert links and nft and routers, f"control: kuryr's links, tables, routers on {h}"
        assert len(node_files(c, h)) >= 3, node_files(c, h)

    c.uninstall_kuryr()

    wait(lambda: not any(cloud_objects(c).values()), 30,
         "the cloud's objects of the cluster deleted")
    for h in c.hosts:
        assert node_files(c, h) == [], f"kuryr's files left on {h}"
        assert kernel_objects(c, h) == ([], [], []), f"kuryr's kernel objects left on {h}"
    wait(lambda: c.kubectl("get", "lease", "-n", NS, "kuryr-controller",
                           check=False).returncode != 0, 30,
         "the lease gone with the Deployment")
    # No network any more: the nodes say so.
    wait(lambda: not any(c.node_ready(n) for n in c.nodes()), 60, "nodes NotReady")
    for kind in ("configmap/kuryr-config", "secret/kuryr-credentials",
                 "serviceaccount/kuryr-agent", "role/kuryr-agent"):
        assert c.kubectl("get", kind, "-n", NS, check=False).returncode != 0, kind
    assert c.kubectl("get", "clusterrole", "kuryr-controller", check=False).returncode != 0
