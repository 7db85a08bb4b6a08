"""Fixtures of the Docker tests (see dockerlab.py)."""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "lab"))  # for labfixtures
sys.path.insert(0, _HERE)
pytest.register_assert_rewrite("dockerlab")

from dockerlab import DockerLab  # noqa: E402
from labfixtures import open_lab, report_logs  # noqa: E402

_LABS = []


@pytest.fixture(scope="session")
def shared_dlab():
    """A server, two hosts each with an agent serving the plugin and a dockerd; shared
    by the tests of one worker."""
    yield from open_lab(_LABS, "the Docker lab needs root (namespaces, dockerd)", DockerLab,
                        hosts=2)


@pytest.fixture
def dlab(shared_dlab):
    """The shared lab. After the test, an agent it stopped is started again, every
    container and Docker network is removed, and then nothing kuryr made may remain:
    no kuryr object in Neutron and no kuryr link or rule on a host that was not there
    before the test (a leak fails the test's teardown, once)."""
    lab = shared_dlab
    neutron_before = lab.kuryr_neutron_objects()
    kernel_before = {h: set(lab.leftovers(h)) for h in lab.hosts}
    yield lab
    for h in lab.hosts:
        a = lab.agents.get(h)
        if a is None or a.proc.poll() is not None:
            lab.start_agent(h)
            lab.wait_agent_ready(h)
    lab.remove_all()
    leaked = lab.kuryr_neutron_objects() - neutron_before
    assert not leaked, ("kuryr objects left in Neutron after docker rm:\n"
                        + "\n".join(sorted(leaked)))
    for h in lab.hosts:
        lab.wait_for(lambda h=h: not set(lab.leftovers(h)) - kernel_before[h], 10,
                     f"{h} to remove every kuryr link and rule")


pytest_runtest_makereport = report_logs(_LABS, "docker lab")
