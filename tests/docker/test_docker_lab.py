"""The Docker lab itself: a dockerd per host, inside that host's namespace."""

import json
import os

from dockerlab import IMAGE


def test_each_host_runs_its_own_dockerd_in_its_namespace(dlab):
    # A container without a network has only loopback.
    out = dlab.docker("h1", "run", "--rm", "--net", "none", IMAGE, "ip", "-o", "link")
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
    # --net host is the lab host: its underlay address, not the machine's.
    for i, h in enumerate(dlab.hosts, start=1):
        out = dlab.docker(h, "run", "--rm", "--net", "host", IMAGE, "ip", "-o", "-4", "addr")
        assert f"10.99.0.{10 + i}/24" in out, out
    # The daemons are separate: a container on h1 is not seen by h2.
    c = dlab.run("h1", None, cmd=("sleep", "3600"))
    assert c in dlab.docker("h1", "ps", "--format", "{{.Names}}").split()
    assert c not in dlab.docker("h2", "ps", "-a", "--format", "{{.Names}}").split()
    # Each daemon leaves the machine alone: no bridge, no iptables.
    info = json.loads(dlab.docker("h1", "info", "--format", "{{json .}}"))
    assert info["Driver"] == "vfs"
    assert info["DockerRootDir"] == os.path.join(dlab.docker_dir("h1"), "root")
    assert "docker0" not in {link["ifname"] for link in dlab.links("h1")}
    # Its containers live under the lab's own cgroup parent.
    cid = dlab.inspect("h1", c)["Id"]
    assert os.path.isdir(f"/sys/fs/cgroup/pids/{dlab.cgroup_parent('h1')}/{cid}")
