"""The plugin restarting under Docker: running containers stay connected, a container
started while it is down waits and then works (SCENARIOS.md B8)."""

import subprocess
import time

from dockerlab import DOCKER, IMAGE, cidr_block, unique


def test_agent_restart_keeps_containers_and_a_waiting_run_completes(dlab):
    v4, _ = cidr_block()
    name, net = dlab.shared_network(v4)
    c1 = dlab.run("h1", name)
    c2 = dlab.run("h2", name)
    ep1, p1 = dlab.assert_port("h1", c1, name, net)
    ip2 = dlab.endpoint("h2", c2, name)["IPAddress"]
    before = dlab.iface("h1", c1)
    assert dlab.cping_eventually("h1", c1, ip2)

    dlab.agents["h1"].kill9()
    # The dataplane is the kernel's: traffic keeps flowing without the agent.
    assert dlab.cping("h1", c1, ip2, count=3)
    # A container started now waits for the plugin (Docker retries the socket).
    c3 = unique("c")
    run = subprocess.Popen([DOCKER, "-H", f"unix://{dlab.docker_socket('h1')}", "run", "-d",
                            "--name", c3, "--net", name, IMAGE, "sleep", "3600"],
                           env=dlab.docker_env("h1"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert run.poll() is None, f"docker run did not wait for the plugin: {run.communicate()}"
        dlab.start_agent("h1")
        dlab.wait_agent_ready("h1")
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, f"docker run failed after the plugin came back:\n{err}{out}"

    ep3, _ = dlab.assert_port("h1", c3, name, net)
    assert dlab.cping_eventually("h1", c3, ip2)
    # The running container kept its interface and port, and its connectivity.
    assert dlab.iface("h1", c1) == before
    assert dlab.get(f"/ports/{p1['id']}")["port"]["status"] == "ACTIVE"
    assert dlab.cping("h1", c1, ip2) and dlab.cping_eventually("h1", c1, ep3["IPAddress"])
    # Docker and the restarted plugin still agree: removal cleans up every endpoint.
    dlab.docker("h1", "rm", "-f", c1, c3)
    assert dlab.ports_of_endpoint(ep1["EndpointID"]) == []
    assert dlab.ports_of_endpoint(ep3["EndpointID"]) == []


def test_graceful_agent_restart_between_operations(dlab):
    v4, _ = cidr_block()
    name, did = dlab.kuryr_network("h1", "--subnet", f"{v4}.0/24", "--gateway", f"{v4}.1")
    [net] = dlab.neutron_networks_of(did)
    c1 = dlab.run("h1", name)
    assert dlab.agents["h1"].stop(timeout=10), "the agent did not stop on SIGTERM"
    dlab.start_agent("h1")
    dlab.wait_agent_ready("h1")
    c2 = dlab.run("h1", name)
    dlab.assert_port("h1", c2, name, net)
    assert dlab.cping_eventually("h1", c2, dlab.endpoint("h1", c1, name)["IPAddress"])
    dlab.docker("h1", "rm", "-f", c1, c2)
    dlab.docker("h1", "network", "rm", name)
    assert dlab.neutron_networks_of(did) == []
    dlab.wait_for(lambda: not dlab.leftovers("h1"), 10, "h1 to remove every kuryr object")
