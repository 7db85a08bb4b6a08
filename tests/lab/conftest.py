"""Fixtures of the agent's test lab (see lab.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lab import Lab  # noqa: E402
from labfixtures import open_lab, report_logs  # noqa: E402

_LABS = []


def _a_lab():
    return open_lab(_LABS, "the lab needs root (network namespaces)", Lab, hosts=3)


@pytest.fixture(scope="session")
def lab():
    """Server + three agents in namespaces, shared by the tests of one worker.
    Each test makes its own networks and containers."""
    yield from _a_lab()


@pytest.fixture
def fresh_lab():
    """A lab of its own, for tests that kill or stop agents."""
    yield from _a_lab()


@pytest.fixture
def replicated_lab():
    """Three servers on an etcd cluster behind one address, two agents."""
    yield from open_lab(_LABS, "the lab needs root (network namespaces)", Lab, hosts=2,
                        replicas=3)


pytest_runtest_makereport = report_logs(_LABS, "lab")
