"""Agents scoped to their host (issue 8 section 5), over raw HTTP: a credential made by
`kuryr credential agent --host H` carries the role `kuryr_agent:H` and may heartbeat as
H, read H's watch, read ports of H or unbound ones, claim an unbound port for H and set
the status and binding of ports bound to H. Nothing else."""

import subprocess
import time

import pytest
import requests

from cloud import KURYR_BIN, token_for, unique


def agent_token(admin, host, tmp_path):
    rc = tmp_path / f"{host}.rc"
    p = subprocess.run([KURYR_BIN, "credential", "agent", "--host", host, "--output", str(rc)],
                       env=admin.env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    values = dict(line[len("export "):].strip().split("=", 1)
                  for line in rc.read_text().splitlines() if line.startswith("export "))
    r = requests.post(f"{admin.server.auth_url}/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["application_credential"], "application_credential": {
            "id": values["OS_APPLICATION_CREDENTIAL_ID"],
            "secret": values["OS_APPLICATION_CREDENTIAL_SECRET"]}}}})
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


class Api:
    def __init__(self, url, token):
        self.url, self.token = url, token

    def __call__(self, method, path, body=None, **kw):
        return requests.request(method, f"{self.url}{path}", json=body, timeout=30,
                                headers={"X-Auth-Token": self.token}, **kw)


def report(host):
    return {"agent": {"host": host, "tunneling_ip": "192.0.2.1", "interface_mappings": {},
                      "started_at_unix": int(time.time()), "devices": 0}}


def watch_status(api, host):
    r = api("GET", f"/kuryr/hosts/{host}/watch", stream=True)
    r.close()
    return r.status_code


@pytest.fixture
def scoped(admin, network_url, tmp_path):
    """(admin api, h1 agent api, h1, h2, an unbound port, a port bound to h2)."""
    h1, h2 = unique("h"), unique("h")
    adm = Api(network_url, token_for(admin))
    agent = Api(network_url, agent_token(admin, h1, tmp_path))
    net = adm("POST", "/networks", {"network": {"name": unique("net")}}).json()["network"]
    r = adm("POST", "/subnets", {"subnet": {"network_id": net["id"], "ip_version": 4,
                                            "cidr": "10.77.0.0/24"}})
    assert r.status_code == 201, r.text
    free = adm("POST", "/ports", {"port": {"network_id": net["id"]}}).json()["port"]
    r = adm("POST", "/ports", {"port": {"network_id": net["id"], "binding:host_id": h2}})
    assert r.status_code == 201, r.text
    other = r.json()["port"]
    yield adm, agent, h1, h2, free, other
    for p in (free, other):
        adm("DELETE", f"/ports/{p['id']}")
    adm("DELETE", f"/networks/{net['id']}")


def test_an_agent_heartbeats_and_watches_as_its_host_only(scoped):
    adm, agent, h1, h2, _, _ = scoped
    r = agent("PUT", f"/kuryr/agents/{h1}", report(h1))
    assert r.status_code == 200, r.text
    assert watch_status(agent, h1) == 200
    r = agent("PUT", f"/kuryr/agents/{h2}", report(h2))
    assert r.status_code == 403, r.text
    assert watch_status(agent, h2) == 403
    # An admin may do both (the control).
    assert adm("PUT", f"/kuryr/agents/{h2}", report(h2)).status_code == 200
    assert watch_status(adm, h2) == 200


def test_an_agent_claims_binds_and_releases_ports_of_its_host_only(scoped):
    adm, agent, h1, h2, free, other = scoped
    assert agent("GET", f"/ports/{free['id']}").status_code == 200
    assert agent("GET", f"/ports/{other['id']}").status_code in (403, 404)
    # Not to another host, and nothing but the binding and the status.
    r = agent("PUT", f"/ports/{free['id']}", {"port": {"binding:host_id": h2}})
    assert r.status_code in (403, 404), r.text
    r = agent("PUT", f"/ports/{free['id']}", {"port": {"name": "mine"}})
    assert r.status_code in (403, 404), r.text
    # Claimed for h1, made ACTIVE, released.
    r = agent("PUT", f"/ports/{free['id']}", {"port": {"binding:host_id": h1}})
    assert r.status_code == 200, r.text
    r = agent("PUT", f"/ports/{free['id']}", {"port": {
        "status": "ACTIVE", "binding:vif_type": "bridge",
        "binding:vif_details": {"bridge_name": "brq-x", "port_filter": True}}})
    assert r.status_code == 200, r.text
    port = adm("GET", f"/ports/{free['id']}").json()["port"]
    assert port["binding:host_id"] == h1 and port["status"] == "ACTIVE"
    r = agent("PUT", f"/ports/{free['id']}", {"port": {"binding:host_id": "", "status": "DOWN"}})
    assert r.status_code == 200, r.text
    # Another host's port: no status, no binding, no stealing, no delete.
    for attrs in ({"status": "DOWN"}, {"binding:host_id": h1}, {"binding:host_id": ""}):
        r = agent("PUT", f"/ports/{other['id']}", {"port": attrs})
        assert r.status_code in (403, 404), (attrs, r.text)
    assert agent("DELETE", f"/ports/{other['id']}").status_code in (403, 404)
    assert adm("GET", f"/ports/{other['id']}").json()["port"]["binding:host_id"] == h2


def test_an_agent_makes_no_networks(scoped):
    adm, agent, _, _, _, _ = scoped
    r = agent("POST", "/networks", {"network": {"name": unique("net")}})
    assert r.status_code == 403, r.text
    r = adm("POST", "/networks", {"network": {"name": unique("net")}})
    assert r.status_code == 201, r.text
    adm("DELETE", f"/networks/{r.json()['network']['id']}")
