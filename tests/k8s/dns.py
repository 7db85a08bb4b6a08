"""The cluster's DNS: CoreDNS (built from its Go module, images.COREDNS) as a Deployment
of two replicas behind the `kube-dns` Service, as kubeadm installs it, with the
kubelets' clusterDNS pointing at that Service. kuryr balances that Service like any
other, so every lookup also goes through kuryr's load balancer (UDP and TCP).

CoreDNS reaches the apiserver through the `kubernetes` Service (10.96.0.1:443, whose
member is the apiserver's own address): see Cluster.cluster_networks(). It answers
cluster.local and the reverse zones, forwards nothing (the lab has no upstream and
sends no traffic outside its namespaces) and answers NXDOMAIN for any other name. Its readiness is checked from inside the pod
(`nc` to its /ready endpoint): the kubelet's HTTP probes would come from the node's
namespace, which has no path into pod networks."""

import images

DNS_IP = "10.96.0.10"
DOMAIN = "cluster.local"
NAMESPACE = "kube-system"

# cluster.local and the reverse zones from the API; every other name NXDOMAIN at once
# (no upstream: a SERVFAIL would stop busybox's walk down the search path).
COREFILE = f"""\
{DOMAIN} in-addr.arpa ip6.arpa {{
    errors
    health :8080
    ready :8181
    kubernetes {DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        ttl 5
    }}
    prometheus :9153
    cache 5
    loadbalance
}}
. {{
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""

_READY = ["sh", "-c",
          "printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' | nc -w 1 127.0.0.1 8181 | grep -q ' 200 '"]


def objects():
    """The objects to apply: account, RBAC, Corefile, Deployment, kube-dns Service."""
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns",
                       "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "coredns", "namespace": NAMESPACE},
         "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": NAMESPACE, "labels": labels},
         "spec": {
             "replicas": 2, "selector": {"matchLabels": labels},
             "template": {"metadata": {"labels": labels}, "spec": {
                 "serviceAccountName": "coredns", "dnsPolicy": "Default",
                 "terminationGracePeriodSeconds": 5,
                 "topologySpreadConstraints": [{
                     "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                     "whenUnsatisfiable": "DoNotSchedule",
                     "labelSelector": {"matchLabels": labels}}],
                 "containers": [{
                     "name": "coredns", "image": images.COREDNS,
                     "imagePullPolicy": "Never",
                     "args": ["-conf", "/etc/coredns/Corefile"],
                     "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                               {"name": "metrics", "containerPort": 9153,
                                "protocol": "TCP"}],
                     "readinessProbe": {"exec": {"command": _READY}, "periodSeconds": 1,
                                        "failureThreshold": 2},
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns",
                                       "readOnly": True}]}],
                 "volumes": [{"name": "config", "configMap": {
                     "name": "coredns", "items": [{"key": "Corefile",
                                                   "path": "Corefile"}]}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": NAMESPACE,
                      "labels": {**labels, "kubernetes.io/name": "CoreDNS"}},
         "spec": {"selector": labels, "clusterIP": DNS_IP,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                            {"name": "metrics", "port": 9153, "protocol": "TCP"}]}},
    ]
