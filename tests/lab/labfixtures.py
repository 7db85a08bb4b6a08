"""Fixture code shared by the lab conftests (tests/lab, tests/cni, tests/docker and
tests/k8s; each puts tests/lab on sys.path to import this module).

Each conftest keeps its own list of open labs (or clusters): its report_logs hook shows
their logs in the report of a failed test of its directory. No fixture is defined
here: the conftests keep their fixtures' names and scopes and call these helpers.
"""

import os

import pytest


def new_lab(open_labs, needs_root, make, **kwargs):
    """make(**kwargs), listed in open_labs; fails the test with the message needs_root
    unless run as root."""
    if os.geteuid() != 0:
        pytest.fail(needs_root)
    lab = make(**kwargs)
    open_labs.append(lab)
    return lab


def close_lab(open_labs, lab):
    open_labs.remove(lab)
    lab.close()


def open_lab(open_labs, needs_root, make, **kwargs):
    """The body of a lab fixture (`yield from open_lab(...)`): new_lab's lab, closed
    (and out of open_labs) at teardown."""
    lab = new_lab(open_labs, needs_root, make, **kwargs)
    try:
        yield lab
    finally:
        close_lab(open_labs, lab)


def report_logs(open_labs, title):
    """A pytest_runtest_makereport hook (assign it to that name in the conftest): a
    failed test's report gets a section "<title> <prefix> logs" with the logs of each
    lab open in open_labs."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        if report.failed:
            for lab in list(open_labs):
                report.sections.append((f"{title} {lab.prefix} logs", lab.logs()))

    return pytest_runtest_makereport
