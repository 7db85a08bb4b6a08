"""Services on kuryr's load balancer, and names, on a real cluster with no kube-proxy and
CoreDNS behind kube-dns (tests/k8s/dns.py): a ClusterIP
Service is an Octavia-model load balancer (`openstack loadbalancer ...` shows it) whose
VIP is the ClusterIP and whose members are the ready endpoints of its EndpointSlices;
pods on both nodes reach it, spread over every replica; scaling and readiness change
the members; a UDP Service spreads too; names resolve (FQDN and short); ClientIP
affinity sticks; a Service without a selector works from a
hand-written EndpointSlice; headless Services get nothing; NetworkPolicy still governs
what arrives through a Service; deleting the Service deletes its load balancer; a
controller killed in the middle of changes leaves nothing wrong once it is back."""

import re
import time

import pytest

import dns
import images

from cluster import (busybox_deployment, busybox_pod, controller_available,
                     kuryr_cni_available, wait)

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
    cl = made.new(hosts=2, cni="kuryr", controller=True, dns=True)
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


def resolve(c, client, name, server=""):
    """The addresses busybox nslookup gives for `name` (through the pod's resolv.conf,
    or `server`)."""
    p = c.pod_exec(client, "nslookup", name, *([server] if server else []), check=False,
                   timeout=30)
    answer = p.stdout.partition("Name:")[2]
    return sorted(set(re.findall(r"Address:\s*([0-9.]+)", answer)))


def lookup(c, client, name):
    """The address the C library resolves `name` to in `client` (busybox ping prints
    it before sending anything), '' when it does not resolve."""
    p = c.pod_exec(client, "ping", "-c", "1", "-W", "1", name, check=False, timeout=30)
    m = re.search(r"^PING \S+ \(([0-9.]+)\)", p.stdout, re.M)
    return m.group(1) if m else ""


def test_names_resolve_through_the_dns_service(svc_cluster):
    c = svc_cluster
    c.apply([service("web", {"app": "web"})])
    ip = cluster_ip(c, "web")
    assert cluster_ip_of_dns(c) == dns.DNS_IP
    for client in ("client-h1", "client-h2"):
        assert wait(lambda: resolve(c, client, "web.default.svc.cluster.local"), 10,
                    "the FQDN") == [ip]
        # Names with fewer dots than ndots through the search path, as the C library
        # resolves them (busybox nslookup walks it only for names without a dot).
        assert lookup(c, client, "kubernetes.default") == cluster_ip(c, "kubernetes")
        assert lookup(c, client, "web") == ip
        # Control: a name that does not exist resolves to nothing.
        assert resolve(c, client, "nothing-here.default.svc.cluster.local") == []
        # A short name through the search path, then a connection by name (TCP).
        assert wait(lambda: ask(c, client, "web") in ready_pods(c, "web"), 10,
                    f"{client} reaching web by its short name")


def cluster_ip_of_dns(c):
    return c.kubectl_json("get", "service", "kube-dns", "-n", dns.NAMESPACE)["spec"]["clusterIP"]


# A DNS server per replica that answers whoami.test with its own pod IP (CoreDNS's
# template plugin; the variable comes from the downward API).
WHOAMI_COREFILE = """.:5353 {
    template IN A whoami.test {
        answer "{{ .Name }} 0 IN A {$POD_IP}"
    }
}
"""


def test_udp_service_spreads_over_replicas(svc_cluster):
    c = svc_cluster
    labels = {"app": "whoami"}
    c.apply([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "whoami"},
         "data": {"Corefile": WHOAMI_COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "whoami"},
         "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "terminationGracePeriodSeconds": 2,
                      "containers": [{
                          "name": "dns", "image": images.COREDNS, "imagePullPolicy": "Never",
                          "args": ["-conf", "/etc/whoami/Corefile"],
                          "env": [{"name": "POD_IP", "valueFrom": {
                              "fieldRef": {"fieldPath": "status.podIP"}}}],
                          "volumeMounts": [{"name": "c", "mountPath": "/etc/whoami"}]}],
                      "volumes": [{"name": "c", "configMap": {"name": "whoami"}}]}}}},
        service("whoami", labels, ports=[{"name": "dns", "port": 53, "targetPort": 5353,
                                          "protocol": "UDP"}])])
    ip = cluster_ip(c, "whoami")
    pods = c.wait_pods("app=whoami", count=3, timeout=90)
    ips = sorted(p["status"]["podIP"] for p in pods)
    lb = wait(lambda: lbs(c, "whoami"), 10, "the UDP Service's load balancer")[0]
    wait(lambda: [m[0] for m in members(c, lb)] == ips, 10, "3 UDP members")
    for client in ("client-h1", "client-h2"):
        seen = set()
        wait(lambda: seen.update(resolve(c, client, "whoami.test", ip)) or seen == set(ips),
             20, f"{client}: answers from every replica over UDP")
    c.kubectl("delete", "deployment", "whoami")
    c.kubectl("delete", "service", "whoami")


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


def outside_get(c, ip, source=None):
    """GET /cgi-bin/name at ip:80 from the lab's outside namespace ('' if nothing
    answered)."""
    p = c.exec("out", "curl", "-s", "-m", "2", *(["--interface", source] if source else []),
               f"http://{ip}/cgi-bin/name", check=False)
    return p.strip() if isinstance(p, str) else ""


def test_load_balancer_type_gets_a_floating_ip_and_its_source_ranges(svc_cluster):
    c = svc_cluster
    c.kubectl("scale", "deployment", "web", "--replicas=2")
    wait(lambda: len(ready_pods(c, "web")) == 2, 90, "2 ready replicas")
    allowed, other = c.OUTSIDE_IP, "203.0.113.3"
    c.exec("out", "ip", "addr", "add", f"{other}/24", "dev", "eth0")
    c.apply([service("public", {"app": "web"}, type="LoadBalancer",
                     loadBalancerSourceRanges=[f"{allowed}/32"])])
    fip = wait(lambda: (c.kubectl_json("get", "service", "public")["status"]
                        .get("loadBalancer", {}).get("ingress") or [{}])[0].get("ip"),
               20, "status.loadBalancer.ingress")
    lb = lbs(c, "public")[0]
    _, data = c.api("GET", f"/floatingips?port_id={lb['vip_port_id']}", expect=200)
    assert [f["floating_ip_address"] for f in data["floatingips"]] == [fip]
    assert wait(lambda: outside_get(c, fip, allowed), 15, "the floating IP from outside") \
        in ready_pods(c, "web")
    assert outside_get(c, fip, other) == "", "a source outside the ranges is blocked"
    # Pods still use the ClusterIP (the ranges are about the outside).
    assert ask(c, "client-h1", cluster_ip(c, "public")) in ready_pods(c, "web")
    # Without ranges, the other source gets in too (control of the block above).
    c.kubectl("patch", "service", "public", "--type=json", "-p",
              '[{"op": "remove", "path": "/spec/loadBalancerSourceRanges"}]')
    wait(lambda: outside_get(c, fip, other), 15, "the other source once the ranges are gone")
    events = c.kubectl("get", "events", "--field-selector", "involvedObject.name=public").stdout
    assert "NodePortNotServed" in events, events
    c.kubectl("delete", "service", "public")
    wait(lambda: lbs(c, "public") == [], 10, "the load balancer gone")
    _, data = c.api("GET", f"/floatingips?floating_ip_address={fip}", expect=200)
    assert data["floatingips"] == [], "the floating IP went with the Service"


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


def controller_http(c, addr, path):
    """(status, body) of GET http://addr/path from the lab namespace."""
    out = c.exec("lab", "curl", "-s", "-m", "2", "-w", "\n%{http_code}", f"http://{addr}{path}",
                 check=False)
    body, _, code = out.rpartition("\n")
    return int(code or 0), body


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rpartition(" ")[2])
    return None


def lease_holder(c):
    return c.kubectl_json("get", "lease", "-n", "kube-system", "kuryr-controller")[
        "spec"].get("holderIdentity")


def test_the_follower_takes_over_during_a_burst_of_changes(clusters):
    c = clusters.new(hosts=2, cni="kuryr", probe=False)
    election = ("--leader-elect-lease-duration", "3", "--leader-elect-renew-deadline", "2",
                "--leader-elect-retry-period", "1")
    addr_a, addr_b = "10.99.0.1:9797", "10.99.0.1:9798"
    a = c.start_controller(leader=True, extra=(
        "--leader-elect-identity", "replica-a", "--metrics-listen", addr_a, *election))
    wait(lambda: c.kubectl("get", "lease", "-n", "kube-system", "kuryr-controller",
                           check=False).returncode == 0 and lease_holder(c) == "replica-a",
         20, "replica-a to lead")
    b = c.start_controller(leader=True, name="controller-b", extra=(
        "--leader-elect-identity", "replica-b", "--metrics-listen", addr_b, *election))
    # The follower is ready (its caches are synced) without leading.
    wait(lambda: controller_http(c, addr_b, "/readyz")[0] == 200, 20, "replica-b ready")
    assert controller_http(c, addr_b, "/healthz")[0] == 200
    assert metric(controller_http(c, addr_b, "/metrics")[1], "kuryr_controller_leader") == 0
    assert metric(controller_http(c, addr_a, "/metrics")[1], "kuryr_controller_leader") == 1

    c.apply([web_deployment("web", 2), busybox_pod("client", node="h1")])
    names = [f"svc-{i}" for i in range(10)]
    c.apply([service(n, {"app": "web"}) for n in names])
    c.kubectl("scale", "deployment", "web", "--replicas=4")
    a.kill9()
    t0 = time.monotonic()
    for n in names[:4]:
        c.kubectl("delete", "service", n)
    c.kubectl("scale", "deployment", "web", "--replicas=3")
    wait(lambda: lease_holder(c) == "replica-b", 20, "replica-b to take over")
    took = time.monotonic() - t0
    print(f"replica-b leads {took:.1f} s after the leader's death (lease 3 s)")
    assert "caches synced" in b.log(2000)

    replicas = wait(lambda: len(ready_pods(c, "web")) == 3 and ready_pods(c, "web"), 90,
                    "3 ready replicas")
    ips = sorted(pod_ip(c, p) for p in replicas)
    for n in names[4:]:
        got = wait(lambda: len(lbs(c, n)) == 1 and lbs(c, n), 20, f"one load balancer for {n}")
        wait(lambda: [m[0] for m in members(c, got[0]) if m[2] > 0] == ips, 20,
             f"the 3 replicas behind {n}")
    for n in names[:4]:
        wait(lambda: lbs(c, n) == [], 20, f"no load balancer left for the deleted {n}")
    c.wait_pods("app=web", count=3)
    assert ask(c, "client", cluster_ip(c, names[-1])) in replicas
    # Nothing twice: one load balancer per Service of the cluster, and no other.
    _, data = c.api("GET", f"/lbaas/loadbalancers?tags=kuryr.k8s.cluster={c.prefix}",
                    expect=200, root=LB_ROOT)
    services = {f"{s['metadata']['namespace']}/{s['metadata']['name']}"
                for s in c.kubectl_json("get", "services", "-A")["items"]}
    assert sorted(lb["name"] for lb in data["loadbalancers"]) == sorted(services)
    text = controller_http(c, addr_b, "/metrics")[1]
    assert metric(text, "kuryr_controller_leader") == 1
    assert metric(text, 'kuryr_controller_reconciles_total{kind="service"}') > 0
    assert metric(text, "kuryr_controller_queue_depth") is not None
