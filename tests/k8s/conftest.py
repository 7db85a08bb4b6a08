"""Fixtures of the Kubernetes lab's tests (see cluster.py)."""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "lab"))  # for labfixtures
sys.path.insert(0, _HERE)
pytest.register_assert_rewrite("cluster")

from cluster import Cluster, machine_sysctls  # noqa: E402
from labfixtures import close_lab, new_lab, report_logs  # noqa: E402

_CLUSTERS = []  # open clusters, whose logs a failed test's report shows


class Clusters:
    """Clusters of one test: new() makes one, close() closes it; the fixture closes
    what the test left open."""

    def new(self, **kwargs):
        return new_lab(_CLUSTERS, "the Kubernetes lab needs root (namespaces, mounts, cgroups)",
                       Cluster, **kwargs)

    def close(self, c):
        if c in _CLUSTERS:
            close_lab(_CLUSTERS, c)


@pytest.fixture(scope="session")
def machine_before():
    """What the machine looked like before any cluster of this worker started."""
    return {"sysctls": machine_sysctls()}


@pytest.fixture(scope="session")
def cluster(machine_before):
    """A server, two hosts with their agents, and a Kubernetes cluster on them with the
    reference CNI; shared by the tests of one worker. Its close must leave nothing."""
    made = Clusters()
    c = made.new(hosts=2, cni="reference")
    try:
        yield c
    finally:
        made.close(c)
    left = c.cluster_leftovers()
    assert not left, "the cluster left behind:\n" + "\n".join(left)


def _clusters(check_leftovers):
    made = Clusters()
    opened = len(_CLUSTERS)
    yield made
    for c in _CLUSTERS[opened:]:
        made.close(c)
        if check_leftovers:
            left = c.cluster_leftovers()
            assert not left, "the cluster left behind:\n" + "\n".join(left)


@pytest.fixture
def clusters():
    """Clusters of the test's own (closed after it at the latest)."""
    yield from _clusters(False)


@pytest.fixture(scope="module")
def module_clusters():
    """Clusters of a test module's own, closed after its last test; their close must
    leave nothing."""
    yield from _clusters(True)


pytest_runtest_makereport = report_logs(_CLUSTERS, "k8s lab")
