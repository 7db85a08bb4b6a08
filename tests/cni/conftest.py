"""Fixtures of the CNI tests (see cnilab.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cnilab import CniLab  # noqa: E402

_LABS = []


@pytest.fixture(scope="module")
def cnilab():
    """Server + two agents (plugins with a project member's credential), shared by the
    tests of one module. Each test makes its own containers."""
    if os.geteuid() != 0:
        pytest.fail("the lab needs root (network namespaces)")
    lab = CniLab(hosts=2)
    _LABS.append(lab)
    try:
        yield lab
    finally:
        _LABS.remove(lab)
        lab.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for lab in list(_LABS):
            report.sections.append((f"lab {lab.prefix} logs", lab.logs()))
