"""Fixtures of the agent's test lab (see lab.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lab import Lab  # noqa: E402

_LABS = []


def _a_lab():
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    lab = Lab(hosts=3)
    _LABS.append(lab)
    try:
        yield lab
    finally:
        _LABS.remove(lab)
        lab.close()


@pytest.fixture(scope="session")
def lab():
    """Server + three agents in namespaces, shared by the tests of one worker.
    Each test makes its own networks and containers."""
    yield from _a_lab()


@pytest.fixture
def fresh_lab():
    """A lab of its own, for tests that kill or stop agents."""
    yield from _a_lab()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for lab in list(_LABS):
            report.sections.append((f"lab {lab.prefix} logs", lab.logs()))
