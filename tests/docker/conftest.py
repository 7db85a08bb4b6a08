"""Fixtures of the Docker tests (see dockerlab.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
pytest.register_assert_rewrite("dockerlab")

from dockerlab import DockerLab  # noqa: E402

_LABS = []


def _new_lab():
    if os.geteuid() != 0:
        pytest.fail("the Docker lab needs root (namespaces, dockerd)")
    lab = DockerLab(hosts=2)
    _LABS.append(lab)
    return lab


def _close(lab):
    _LABS.remove(lab)
    lab.close()


@pytest.fixture(scope="session")
def shared_dlab():
    """A server, two hosts each with an agent serving the plugin and a dockerd; shared
    by the tests of one worker."""
    lab = _new_lab()
    try:
        yield lab
    finally:
        _close(lab)


@pytest.fixture
def dlab(shared_dlab):
    """The shared lab; every container and Docker network is removed after the test,
    and an agent a test stopped is started again."""
    yield shared_dlab
    lab = shared_dlab
    for h in lab.hosts:
        a = lab.agents.get(h)
        if a is None or a.proc.poll() is not None:
            lab.start_agent(h)
            lab.wait_agent_ready(h)
    lab.remove_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for lab in list(_LABS):
            report.sections.append((f"docker lab {lab.prefix} logs", lab.logs()))
