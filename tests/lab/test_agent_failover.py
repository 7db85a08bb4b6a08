"""The agents of a lab whose `kuryr server` is three replicas on etcd behind one address
(HAProxy): an agent whose replica dies reconnects to another and resumes its watch."""

import re

from test_agent import pinging_across_hosts


def test_an_agent_whose_replica_is_killed_resumes_on_another(replicated_lab):
    lab = replicated_lab
    net, p1, p2, c1, c2, dst = pinging_across_hosts(lab)
    victim = lab.server.watching("h1") or lab.server.watching("h2")
    assert victim is not None, "an agent's watch is served by some replica"
    resumed = {h: len(re.findall(r"watching this host's view since=[1-9]", lab.agents[h].log()))
               for h in ("h1", "h2")}
    victim.kill9()
    # The dataplane never depended on the server.
    assert lab.ping(c1, dst, count=3)
    # At least one agent lost its stream, came back through the one address to another
    # replica, and resumed from its revision (not from 0).
    lab.wait_for(lambda: any(
        len(re.findall(r"watching this host's view since=[1-9]", lab.agents[h].log())) > resumed[h]
        for h in ("h1", "h2")), 30, "an agent to resume its watch on another replica")
    for h in ("h1", "h2"):
        lab.wait_for(lambda h=h: lab.agent_call(h, "GET", "/v1/health")["synced"], 30,
                     f"{h} to be synced")
    assert lab.server.watching("h1") not in (None, victim)
    # Work after the failover: new ports on both hosts are wired and reach each other.
    p3, p4 = lab.port(net), lab.port(net)
    lab.add_container("c3")
    lab.add_container("c4")
    lab.bind("h1", p3, "c3")
    lab.bind("h2", p4, "c4")
    assert lab.ping_eventually("c3", p4["fixed_ips"][0]["ip_address"])
    assert lab.ping_eventually("c4", dst)
