"""Fixtures of the real-client tests (helpers live in cloud.py: a module of its own,
so that `from cloud import ...` cannot pick up another directory's conftest)."""

import pytest

from cloud import Creds, Server, make_user, osc, unique


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def admin(server):
    return Creds(server, "admin", server.admin_password, "admin")


@pytest.fixture(scope="session")
def network_url(admin):
    catalog = osc(admin, "catalog", "show", "network")
    public = [e for e in catalog["endpoints"] if e["interface"] == "public"]
    return public[0]["url"].rstrip("/") + "/v2.0"


@pytest.fixture
def tenants(admin):
    """Two projects, each with a member user, plus a reader in the first."""
    p1, p2 = unique("proj"), unique("proj")
    osc(admin, "project", "create", p1)
    osc(admin, "project", "create", p2)
    yield make_user(admin, p1), make_user(admin, p2), make_user(admin, p1, role="reader")
