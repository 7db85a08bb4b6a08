"""Fixtures of the CNI tests (see cnilab.py)."""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "lab"))  # for labfixtures
sys.path.insert(0, _HERE)

from cnilab import CniLab  # noqa: E402
from labfixtures import open_lab, report_logs  # noqa: E402

_LABS = []


@pytest.fixture(scope="module")
def cnilab():
    """Server + two agents (plugins with a project member's credential), shared by the
    tests of one module. Each test makes its own containers."""
    yield from open_lab(_LABS, "the lab needs root (network namespaces)", CniLab, hosts=2)


pytest_runtest_makereport = report_logs(_LABS, "lab")
