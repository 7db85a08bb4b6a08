"""GET /metrics parsed by the Prometheus project's own parser, before and after real CLI
calls: its counters move by route (never by raw id) and status."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from cloud import osc, unique


def scrape(server):
    r = requests.get(f"{server.url}/metrics", timeout=10, verify=server.cacert or True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            values[(s.name, frozenset(s.labels.items()))] = s.value
    return values


def value(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_with_cli_calls(admin, server):
    before = scrape(server)
    name = unique("metered")
    net = osc(admin, "network", "create", name)
    osc(admin, "network", "delete", net["id"], fmt=None)
    after = scrape(server)

    def delta(name_, **labels):
        return value(after, name_, **labels) - value(before, name_, **labels)

    nets = "/networking/v2.0/networks"
    assert delta("kuryr_http_requests_total", method="POST", route=nets, status="201") == 1
    assert delta("kuryr_http_requests_total", method="DELETE", route=nets + "/{id}",
                 status="204") == 1
    assert delta("kuryr_http_request_duration_seconds_count", method="POST", route=nets) == 1
    # Each CLI call logged in.
    assert delta("kuryr_http_requests_total", method="POST", route="/identity/v3/auth/tokens",
                 status="201") >= 2
    assert delta("kuryr_store_commit_duration_seconds_count") >= 2
    assert value(after, "kuryr_store_revision") > value(before, "kuryr_store_revision")
    # Ids never become labels.
    assert not [k for k in after if any(net["id"] in v for _, v in k[1])]
