"""Services on kuryr's load balancer, on a real cluster with no kube-proxy: a ClusterIP
Service is an Octavia-model load balancer (`openstack loadbalancer ...` shows it) whose
VIP is the ClusterIP and whose members are the ready endpoints of its EndpointSlices;
pods on both nodes reach it, spread over every replica; scaling and readiness change
the members; ClientIP affinity sticks; a Service without a selector works from a
hand-written EndpointSlice; headless Services get nothing; NetworkPolicy still governs
what arrives through a Service; deleting the Service deletes its load balancer; a
controller killed in the middle of changes leaves nothing wrong once it is back."""

import time

import pytest

from cluster import (busybox_deployment, busybox_pod, controller_available,
                     kuryr_cni_available)

pytestmark = pytest.mark.skipif(
    not (kuryr_cni_available() and controller_available()),
    reason="kuryr-cni or `kuryr controller` is not built")

LB_ROOT = "/load-balancer/v2"
# A pod that serves GET /cgi-bin/name (its own name) on 8080 and is ready while
# /tmp/ready exists (an exec probe: the kubelet needs no path into the pod network).
WEB_CMD = ["sh", "-c",
           "mkdir -p /tmp/www/cgi-bin && "
           "printf '#!/bin/sh\\necho Content-Type: text/plain; echo; hostname\\n' "
           "> /tmp/www/cgi-bin/name && chmod +x /tmp/www/cgi-bin/name && "
           "httpd -p 8080 -h /tmp/www && touch /tmp/ready && "
           "trap 'exit 0' TERM; sleep 1000000 & wait"]


def wait(cond, timeout, what, interval=0.1):
    """Polls `cond` until it returns a true value (returned), or fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def web_deployment(name, replicas, labels=None):
    d = busybox_deployment(name, replicas, labels=labels, command=WEB_CMD)
    d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {
        "exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1,
        "failureThreshold": 1, "successThreshold": 1}
    return d


def service(name, selector=None, ports=None, **spec):
    ports = ports or [{"name": "http", "port": 80, "targetPort": 8080}]
    body = {"ports": ports, **spec}
    if selector is not None:
        body["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": body}


def cluster_ip(c, name):
    return c.kubectl_json("get", "service", name)["spec"]["clusterIP"]


def ask(c, client, ip, port=80):
    """The name of the pod that answered GET /cgi-bin/name at ip:port from `client`
    ('' when nothing did)."""
    p = c.pod_exec(client, "sh", "-c",
                   f"printf 'GET /cgi-bin/name HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}",
                   check=False, timeout=30)
    return p.stdout.replace("\r", "").partition("\n\n")[2].strip()


def answers(c, client, ip, n=12, port=80):
    """The names of the pods that answered n requests (in one exec: quicker)."""
    script = (f"for i in $(seq {n}); do printf 'GET /cgi-bin/name HTTP/1.0\\r\\n\\r\\n' | "
              f"nc -w 2 {ip} {port} | tail -n 1; echo; done")
    p = c.pod_exec(client, "sh", "-c", script, check=False, timeout=30 + 3 * n)
    return [line.strip() for line in p.stdout.splitlines() if line.strip()]


def ready_pods(c, app):
    return sorted(p["metadata"]["name"] for p in c.pods(f"app={app}")
                  if c.pod_ready(p) and not p["metadata"].get("deletionTimestamp"))


def lbs(c, name, namespace="default"):
    """The load balancers the controller made for Service namespace/name."""
    _, data = c.api("GET", f"/lbaas/loadbalancers?tags=kuryr.k8s.service.name={name},"
                    f"kuryr.k8s.service.namespace={namespace}", expect=200, root=LB_ROOT)
    return data["loadbalancers"]


def members(c, lb):
    """(address, port, weight) of every member of every pool of load balancer `lb`."""
    _, data = c.api("GET", f"/lbaas/pools?loadbalancer_id={lb['id']}", expect=200,
                    root=LB_ROOT)
    out = []
    for pool in data["pools"]:
        if pool["loadbalancers"][0]["id"] != lb["id"]:
            continue
        _, m = c.api("GET", f"/lbaas/pools/{pool['id']}/members", expect=200, root=LB_ROOT)
        out += [(x["address"], x["protocol_port"], x["weight"]) for x in m["members"]]
    return sorted(out)


def pod_ip(c, name):
    return c.kubectl_json("get", "pod", name)["status"]["podIP"]


@pytest.fixture(scope="module")
def svc_cluster(machine_before):
    from conftest import Clusters
    made = Clusters()
    cl = made.new(hosts=2, cni="kuryr", controller=True)
    try:
        cl.apply([busybox_pod("client-h1", node="h1"), busybox_pod("client-h2", node="h2"),
                  busybox_pod("friend", node="h2", labels={"role": "friend"}),
                  web_deployment("web", 3)])
        cl.wait_pods(count=6, timeout=120)
        yield cl
    finally:
        made.close(cl)
    left = cl.cluster_leftovers()
    assert not left, "the cluster left behind:\n" + "\n".join(left)


def test_cluster_ip_spreads_over_replicas_from_both_nodes(svc_cluster):
    c = svc_cluster
    c.apply([service("web", {"app": "web"})])
    ip = cluster_ip(c, "web")
    lb = wait(lambda: lbs(c, "web"), 10, "the Service's load balancer")[0]
    # What an operator sees with the real CLI.
    shown = c.openstack("loadbalancer", "show", lb["id"])
    assert shown["name"] == "default/web" and shown["vip_address"] == ip
    assert shown["provider"] == "kuryr"
    replicas = wait(lambda: len(ready_pods(c, "web")) == 3 and ready_pods(c, "web"), 60,
                    "3 ready replicas")
    ips = sorted(pod_ip(c, p) for p in replicas)
    wait(lambda: [m[0] for m in members(c, lb)] == ips, 10, "the replicas as members")
    assert {(m[1], m[2]) for m in members(c, lb)} == {(8080, 1)}
    for client in ("client-h1", "client-h2"):
        seen = set(wait(lambda: answers(c, client, ip), 10, f"{client} reaching the VIP"))
        more = 0
        while seen != set(replicas) and more < 3:
            seen |= set(answers(c, client, ip))
            more += 1
        assert seen == set(replicas), f"{client}: answers from {seen}, replicas {replicas}"
    # Control: the VIP's port the Service does not have answers nothing.
    assert ask(c, "client-h1", ip, port=81) == ""


def test_members_follow_scaling_and_readiness(svc_cluster):
    c = svc_cluster
    c.apply([service("web", {"app": "web"})])
    ip = cluster_ip(c, "web")
    lb = wait(lambda: lbs(c, "web"), 10, "the Service's load balancer")[0]
    for n in (5, 1, 2):
        c.kubectl("scale", "deployment", "web", f"--replicas={n}")
        replicas = wait(lambda: len(ready_pods(c, "web")) == n and ready_pods(c, "web"), 90,
                        f"{n} ready replicas")
        ips = sorted(pod_ip(c, p) for p in replicas)
        wait(lambda: [m[0] for m in members(c, lb) if m[2] > 0] == ips, 10,
             f"{n} members in rotation")
        seen = set()
        wait(lambda: seen.update(answers(c, "client-h2", ip, n=6)) or seen >= set(replicas),
             20, f"answers from all {n} replicas")
        assert seen <= set(replicas), f"answers from gone replicas: {seen}"
    # Readiness: one of the two stops being ready, its member goes; back, it returns.
    a, b = replicas
    c.pod_exec(a, "rm", "/tmp/ready")
    wait(lambda: [m[0] for m in members(c, lb) if m[2] > 0] == [pod_ip(c, b)], 15,
         "the unready replica out of the pool")
    assert set(answers(c, "client-h1", ip, n=8)) == {b}
    c.pod_exec(a, "touch", "/tmp/ready")
    wait(lambda: set(answers(c, "client-h1", ip, n=6)) == {a, b}, 20,
         "the replica back in rotation")


def test_client_ip_affinity_sticks(svc_cluster):
    c = svc_cluster
    c.kubectl("scale", "deployment", "web", "--replicas=3")
    wait(lambda: len(ready_pods(c, "web")) == 3, 90, "3 ready replicas")
    c.apply([service("web-sticky", {"app": "web"}, sessionAffinity="ClientIP"),
             service("web", {"app": "web"})])
    sticky, spread = cluster_ip(c, "web-sticky"), cluster_ip(c, "web")
    wait(lambda: len({m[0] for m in members(c, (lbs(c, "web-sticky") or [{"id": ""}])[0])})
         == 3, 20, "3 members behind the sticky Service")
    wait(lambda: len(set(answers(c, "client-h1", spread, n=9))) > 1, 20,
         "the plain Service spreading (control)")
    for client in ("client-h1", "client-h2"):
        got = answers(c, client, sticky, n=9)
        assert len(got) == 9 and len(set(got)) == 1, f"{client}: {got}"


def test_service_without_selector_uses_a_manual_endpointslice(svc_cluster):
    c = svc_cluster
    target = wait(lambda: ready_pods(c, "web"), 60, "a ready replica")[0]
    c.apply([service("manual")])
    ip = cluster_ip(c, "manual")
    lb = wait(lambda: lbs(c, "manual"), 10, "the selector-less Service's load balancer")[0]
    assert members(c, lb) == []
    assert ask(c, "client-h1", ip) == "", "no endpoint yet: nothing answers"
    c.apply([{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "manual-1", "namespace": "default",
                           "labels": {"kubernetes.io/service-name": "manual"}},
              "addressType": "IPv4",
              "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
              "endpoints": [{"addresses": [pod_ip(c, target)],
                             "conditions": {"ready": True}}]}])
    wait(lambda: ask(c, "client-h1", ip) == target, 10, "the manual endpoint answering")
    assert members(c, lb) == [(pod_ip(c, target), 8080, 1)]


def test_headless_service_gets_no_load_balancer(svc_cluster):
    c = svc_cluster
    c.apply([service("headless", {"app": "web"}, clusterIP="None")])
    c.apply([service("sentinel", {"app": "web"})])
    wait(lambda: lbs(c, "sentinel"), 10, "the sentinel's load balancer (control)")
    assert lbs(c, "headless") == []


def test_deleting_the_service_deletes_its_load_balancer(svc_cluster):
    c = svc_cluster
    c.apply([service("doomed", {"app": "web"})])
    lb = wait(lambda: lbs(c, "doomed"), 10, "the load balancer")[0]
    vip_port = lb["vip_port_id"]
    c.kubectl("delete", "service", "doomed")
    wait(lambda: lbs(c, "doomed") == [], 10, "the load balancer gone")
    status, _ = c.api("GET", f"/ports/{vip_port}")
    assert status == 404, "the VIP port went with it"


def test_network_policy_governs_traffic_through_a_service(svc_cluster):
    c = svc_cluster
    c.kubectl("scale", "deployment", "web", "--replicas=2")
    c.apply([service("web", {"app": "web"})])
    ip = cluster_ip(c, "web")
    wait(lambda: len(ready_pods(c, "web")) == 2, 90, "2 ready replicas")
    wait(lambda: ask(c, "client-h2", ip), 10, "the Service reached before the policy")
    c.apply([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "web-friends", "namespace": "default"},
              "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                       "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector":
                                              {"matchLabels": {"role": "friend"}}}]}]}}])
    try:
        wait(lambda: ask(c, "client-h2", ip) == "", 10, "a stranger blocked at the Service")
        assert ask(c, "friend", ip) in ready_pods(c, "web"), "a friend still served"
    finally:
        c.kubectl("delete", "networkpolicy", "web-friends")
    wait(lambda: ask(c, "client-h2", ip), 10, "the stranger served again")


def test_a_controller_killed_mid_way_leaves_the_right_load_balancers(svc_cluster):
    c = svc_cluster
    names = [f"burst-{i}" for i in range(12)]
    c.apply([service(n, {"app": "web"}) for n in names])
    c.controller.kill9()
    for n in names[:6]:
        c.kubectl("delete", "service", n)
    c.start_controller()
    for n in names[6:]:
        wait(lambda: len(lbs(c, n)) == 1, 20, f"one load balancer for {n}")
    for n in names[:6]:
        wait(lambda: lbs(c, n) == [], 20, f"no load balancer for deleted {n}")
    for n in names[6:]:
        c.kubectl("delete", "service", n)
