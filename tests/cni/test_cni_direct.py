"""kuryr-cni invoked directly, as the CNI spec 1.1.0 describes a runtime calling a
plugin: every verb (ADD, DEL, CHECK, STATUS, GC, VERSION), every supported version,
and the errors with their codes. The plugin talks to a real agent of the lab, which
makes and binds real ports of the lab's kuryr server."""

import subprocess
import threading
import uuid

import pytest

from cnilab import KURYR_CNI_BIN, POD_PORT_WAIT, VERSIONS

HOST, OTHER = "h1", "h2"


@pytest.fixture(scope="module")
def net(cnilab):
    name = f"cni-{uuid.uuid4().hex[:6]}"
    network, _ = cnilab.network(name, "10.61.0.0/24")
    return network


def test_version_lists_every_supported_version(cnilab):
    out = cnilab.ok(HOST, "VERSION", {"cniVersion": "1.1.0"})
    assert out["supportedVersions"] == VERSIONS
    assert out["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("version", VERSIONS)
def test_add_then_del_in_each_version(cnilab, net, version):
    c = f"v{version.replace('.', '')}"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST, net["name"], version)
    res = cnilab.ok(HOST, "ADD", conf, c)
    assert res["cniVersion"] == version
    iface = res["interfaces"][0]
    assert iface["name"] == "eth0" and iface["sandbox"] == cnilab.netns_path(c)
    ip = res["ips"][0]
    assert ip["address"] in cnilab.addresses(c), (res, cnilab.addresses(c))
    assert ip["address"].startswith("10.61.0.") and ip["gateway"] == "10.61.0.1"
    assert ip.get("interface") == 0
    # 0.3.x and 0.4.0 results name the address family; 1.x ones do not.
    assert ("version" in ip) == version.startswith("0."), ip
    assert any(r["dst"] == "0.0.0.0/0" and r.get("gw") == "10.61.0.1" for r in res["routes"])
    ports = cnilab.port_of(c)
    assert len(ports) == 1
    p = ports[0]
    assert p["device_owner"] == "kuryr:container" and p["binding:host_id"] == HOST
    assert p["mac_address"] == iface["mac"]
    assert p["fixed_ips"][0]["ip_address"] == ip["address"].split("/")[0]

    assert cnilab.ok(HOST, "DEL", conf, c) is None
    assert cnilab.addresses_or_none(c) is None
    assert cnilab.port_of(c) == []
    # DEL again: nothing there, still a success.
    assert cnilab.ok(HOST, "DEL", conf, c) is None


def test_containers_on_two_hosts_reach_each_other(cnilab, net):
    a, b = "pa", "pb"
    cnilab.add_container(a)
    cnilab.add_container(b)
    ra = cnilab.ok(HOST, "ADD", cnilab.conf(HOST, net["name"]), a)
    rb = cnilab.ok(OTHER, "ADD", cnilab.conf(OTHER, net["id"]), b)
    ip_a = ra["ips"][0]["address"].split("/")[0]
    ip_b = rb["ips"][0]["address"].split("/")[0]
    assert cnilab.ping_eventually(a, ip_b) and cnilab.ping_eventually(b, ip_a)
    cnilab.ok(OTHER, "DEL", cnilab.conf(OTHER, net["id"]), b)
    assert cnilab.never_pings(a, ip_b)
    cnilab.ok(HOST, "DEL", cnilab.conf(HOST, net["name"]), a)


def test_add_again_gives_the_same_answer(cnilab, net):
    c = "again"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST, net["name"])
    first = cnilab.ok(HOST, "ADD", conf, c)
    second = cnilab.ok(HOST, "ADD", conf, c)
    assert first == second
    assert len(cnilab.port_of(c)) == 1
    cnilab.ok(HOST, "DEL", conf, c)


def test_check(cnilab, net):
    c = "checked"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST, net["name"])
    res = cnilab.ok(HOST, "ADD", conf, c)
    assert cnilab.ok(HOST, "CHECK", dict(conf, prevResult=res), c) is None
    # A previous result in an older version is read as well.
    old = cnilab.ok(HOST, "ADD", dict(conf, cniVersion="0.4.0"), c)
    assert cnilab.ok(HOST, "CHECK", dict(conf, cniVersion="0.4.0", prevResult=old), c) is None
    # An address that is not the port's.
    wrong = dict(res, ips=[dict(res["ips"][0], address="10.61.0.250/24")])
    err = cnilab.error(HOST, "CHECK", dict(conf, prevResult=wrong), c)
    assert err["code"] >= 100 and "10.61.0.250" in err["msg"]
    # A container the agent knows nothing of.
    cnilab.add_container("unknown")
    err = cnilab.error(HOST, "CHECK", dict(conf, prevResult=res), "unknown")
    assert err["code"] == 3
    cnilab.ok(HOST, "DEL", conf, c)


def test_del_after_the_namespace_is_gone(cnilab, net):
    c = "gone"
    full = cnilab.add_container(c)
    conf = cnilab.conf(HOST, net["name"])
    cnilab.ok(HOST, "ADD", conf, c)
    assert len(cnilab.port_of(c)) == 1
    subprocess.run(["ip", "netns", "del", full], check=True)
    cnilab.namespaces.remove(full)
    assert cnilab.ok(HOST, "DEL", conf, c) is None
    assert cnilab.port_of(c) == []
    # And with no CNI_NETNS at all (the runtime forgot it).
    assert cnilab.ok(HOST, "DEL", conf, c, env={"CNI_NETNS": None}) is None


def test_gc_removes_what_the_runtime_no_longer_has(cnilab, net):
    keep, drop = "gckeep", "gcdrop"
    cnilab.add_container(keep)
    cnilab.add_container(drop)
    conf = cnilab.conf(HOST, net["name"], name="gcnet")
    cnilab.ok(HOST, "ADD", conf, keep)
    cnilab.ok(HOST, "ADD", conf, drop)
    # Another configuration's attachment: GC of gcnet must not touch it.
    other = "gcother"
    cnilab.add_container(other)
    cnilab.ok(HOST, "ADD", cnilab.conf(HOST, net["name"], name="othernet"), other)
    valid = [{"containerID": cnilab.container_id(keep), "ifname": "eth0"}]
    assert cnilab.ok(HOST, "GC", dict(conf, **{"cni.dev/valid-attachments": valid})) is None
    assert cnilab.port_of(drop) == [] and cnilab.addresses_or_none(drop) is None
    assert len(cnilab.port_of(keep)) == 1 and cnilab.addresses(keep)
    assert len(cnilab.port_of(other)) == 1 and cnilab.addresses(other)
    cnilab.ok(HOST, "DEL", conf, keep)
    cnilab.ok(HOST, "DEL", cnilab.conf(HOST, net["name"], name="othernet"), other)


def test_errors_have_the_specs_codes(cnilab, net):
    c = "errs"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST, net["name"])
    # Positive control: this configuration works.
    cnilab.ok(HOST, "ADD", conf, c)
    cnilab.ok(HOST, "DEL", conf, c)
    assert cnilab.error(HOST, "ADD", conf, c, env={"CNI_COMMAND": None})["code"] == 4
    assert cnilab.error(HOST, "FROB", conf, c)["code"] == 4
    assert cnilab.error(HOST, "ADD", conf, c, stdin="{not json")["code"] == 6
    for version in ("0.2.0", "9.9.9"):
        assert cnilab.error(HOST, "ADD", dict(conf, cniVersion=version), c)["code"] == 1
    assert cnilab.error(HOST, "ADD", {k: v for k, v in conf.items() if k != "name"},
                        c)["code"] == 7
    assert cnilab.error(HOST, "ADD", conf, c, env={"CNI_NETNS": None})["code"] == 4
    assert cnilab.error(HOST, "ADD", conf, c, env={"CNI_IFNAME": None})["code"] == 4
    assert cnilab.error(HOST, "ADD", conf, c, netns="/run/netns/no-such-namespace")["code"] == 3
    assert cnilab.error(HOST, "ADD", cnilab.conf(HOST, "no-such-network"), c)["code"] == 7
    # Kubernetes mode (no network) without the pod's identity.
    assert cnilab.error(HOST, "ADD", cnilab.conf(HOST), c)["code"] == 4
    assert cnilab.port_of(c) == []


def test_status_and_an_agent_that_is_down(cnilab, net):
    c = "down"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST, net["name"])
    assert cnilab.ok(HOST, "STATUS", conf) is None
    cnilab.agents[HOST].stop()
    try:
        assert cnilab.error(HOST, "STATUS", conf)["code"] == 50
        assert cnilab.error(HOST, "ADD", conf, c)["code"] == 11
        assert cnilab.error(HOST, "DEL", conf, c)["code"] == 11
    finally:
        cnilab.start_agent(HOST)
        cnilab.wait_agent_ready(HOST)
    assert cnilab.ok(HOST, "STATUS", conf) is None
    cnilab.ok(HOST, "ADD", conf, c)
    cnilab.ok(HOST, "DEL", conf, c)


# ---------------------------------------------------------------- Kubernetes mode


def pod_port(cnilab, net, uid, host=HOST):
    """A port assigned to a pod, as the controller leaves it (no agent involved)."""
    return cnilab.port(net, device_owner="compute:kuryr", device_id=uid,
                       **{"binding:host_id": host, "name": f"default/p-{uid[:8]}"})


def pod_args(uid):
    return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default",
            "K8S_POD_NAME": f"p-{uid[:8]}", "K8S_POD_UID": uid}


def waiting_add(cnilab, conf, container, uid, done, key):
    """An ADD for pod `uid` in a thread (its (rc, result, stderr) in done[key]), once
    the agent says it waits for the pod's port."""
    t = threading.Thread(target=lambda: done.update(
        {key: cnilab.cni(HOST, "ADD", conf, container, args=pod_args(uid))}))
    t.start()
    cnilab.wait_for(lambda: f"waiting for the port of pod default/p-{uid[:8]}"
                    in cnilab.agents[HOST].log(200), 10, "the ADD to wait")
    return t


def test_a_pod_takes_the_port_the_controller_assigned(cnilab, net):
    uid = str(uuid.uuid4())
    port = pod_port(cnilab, net, uid)
    c = "pod1"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST)
    ready = cnilab.metric(HOST, "kuryr_agent_cni_pod_ports_total", port="ready")
    res = cnilab.ok(HOST, "ADD", conf, c, args=pod_args(uid))
    assert res["ips"][0]["address"].split("/")[0] == port["fixed_ips"][0]["ip_address"]
    assert res["interfaces"][0]["mac"] == port["mac_address"]
    assert cnilab.metric(HOST, "kuryr_agent_cni_pod_ports_total", port="ready") == ready + 1
    # DEL: the interface goes, the port stays this node's for the controller.
    cnilab.ok(HOST, "DEL", conf, c, args=pod_args(uid))
    assert cnilab.addresses_or_none(c) is None
    _, data = cnilab.api("GET", f"/ports/{port['id']}")
    assert data["port"]["binding:host_id"] == HOST and data["port"]["device_id"] == uid


def test_an_add_waits_for_the_controller(cnilab, net):
    uid = str(uuid.uuid4())
    c = "pod2"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST)
    waited = cnilab.metric(HOST, "kuryr_agent_cni_pod_ports_total", port="waited")
    done = {}
    t = waiting_add(cnilab, conf, c, uid, done, "r")
    # The port is made only once the ADD waits for it.
    port = pod_port(cnilab, net, uid)
    t.join(timeout=POD_PORT_WAIT + 30)
    rc, res, err = done["r"]
    assert rc == 0, (res, err)
    assert res["ips"][0]["address"].split("/")[0] == port["fixed_ips"][0]["ip_address"]
    assert cnilab.metric(HOST, "kuryr_agent_cni_pod_ports_total", port="waited") == waited + 1
    cnilab.ok(HOST, "DEL", conf, c, args=pod_args(uid))


def test_a_pod_without_a_port_is_told_to_try_again(cnilab, net):
    c = "pod3"
    cnilab.add_container(c)
    err = cnilab.error(HOST, "ADD", cnilab.conf(HOST), c, args=pod_args(str(uuid.uuid4())))
    assert err["code"] == 11 and "no port" in err["msg"]
    # Positive control: the same ADD once the controller assigned a port.
    uid = str(uuid.uuid4())
    pod_port(cnilab, net, uid)
    cnilab.ok(HOST, "ADD", cnilab.conf(HOST), c, args=pod_args(uid))
    cnilab.ok(HOST, "DEL", cnilab.conf(HOST), c, args=pod_args(uid))


def test_a_recycled_port_replaces_the_old_pods_binding(cnilab, net):
    old_uid, new_uid = str(uuid.uuid4()), str(uuid.uuid4())
    port = pod_port(cnilab, net, old_uid)
    old, new = "oldpod", "newpod"
    cnilab.add_container(old)
    cnilab.add_container(new)
    conf = cnilab.conf(HOST)
    cnilab.ok(HOST, "ADD", conf, old, args=pod_args(old_uid))
    assert cnilab.addresses(old)
    # The controller gave the port to another pod before the old one's DEL came.
    cnilab.api("PUT", f"/ports/{port['id']}", {"port": {"device_id": new_uid}},
               expect=200)
    res = cnilab.ok(HOST, "ADD", conf, new, args=pod_args(new_uid))
    assert res["ips"][0]["address"].split("/")[0] == port["fixed_ips"][0]["ip_address"]
    cnilab.wait_for(lambda: cnilab.addresses_or_none(old) is None, 10,
                    "the old pod's interface to go")
    assert cnilab.addresses(new)
    # The old pod's late DEL does not touch the new pod's interface.
    cnilab.ok(HOST, "DEL", conf, old, args=pod_args(old_uid))
    assert cnilab.addresses(new)
    cnilab.ok(HOST, "DEL", conf, new, args=pod_args(new_uid))


def bound_ports(cnilab, host=HOST):
    """The ports bound on `host`, as its agent lists them."""
    return {b["port_id"] for b in cnilab.agent_call(host, "GET", "/v1/ports")["bindings"]}


def test_a_del_that_overtakes_its_add_waits_for_it(cnilab, net):
    """A runtime that gives up on a sandbox sends DEL while the ADD still waits for the
    pod's port: the DEL is served after the ADD, and undoes it, rather than finding
    nothing and leaving the ADD's binding behind."""
    uid = str(uuid.uuid4())
    c = "overtaken"
    cnilab.add_container(c)
    conf = cnilab.conf(HOST)
    done = {}
    add = waiting_add(cnilab, conf, c, uid, done, "add")
    dele = threading.Thread(target=lambda: done.update(
        delete=cnilab.cni(HOST, "DEL", conf, c, args=pod_args(uid))))
    dele.start()
    # The DEL is held while the ADD waits (it would be done in milliseconds otherwise).
    dele.join(timeout=1)
    assert dele.is_alive() and "delete" not in done
    port = pod_port(cnilab, net, uid)
    add.join(timeout=POD_PORT_WAIT + 30)
    dele.join(timeout=30)
    rc, res, err = done["add"]
    assert rc == 0, (res, err)  # the ADD did wire the pod ...
    assert done["delete"][0] == 0, done["delete"]
    # ... and the DEL that came after it removed it all.
    assert port["id"] not in bound_ports(cnilab)
    cnilab.wait_for(lambda: cnilab.addresses_or_none(c) is None, 10, "the interface to go")


def test_a_container_gone_without_del_is_released(cnilab, net):
    """The sandbox's namespace vanished and no DEL came: the agent forgets the binding
    (so that the port can serve the next pod at once) and deletes the port it made."""
    c = "vanished"
    full = cnilab.add_container(c)
    conf = cnilab.conf(HOST, net["name"])
    cnilab.ok(HOST, "ADD", conf, c)
    [port] = cnilab.port_of(c)
    assert port["id"] in bound_ports(cnilab)  # positive control
    subprocess.run(["ip", "netns", "del", full], check=True)
    cnilab.namespaces.remove(full)
    cnilab.wait_for(lambda: port["id"] not in bound_ports(cnilab), 15,
                    "the agent to release the binding")
    cnilab.wait_for(lambda: cnilab.port_of(c) == [], 15, "the container's port to go")
    assert "without a CNI DEL" in cnilab.agents[HOST].log(300)
    # A DEL that comes late is still fine.
    assert cnilab.ok(HOST, "DEL", conf, c, env={"CNI_NETNS": None}) is None


def test_the_plugin_execs_nothing_else(cnilab):
    """A thin client: its only dynamic dependencies are the C library's."""
    out = subprocess.run(["ldd", KURYR_CNI_BIN], capture_output=True, text=True).stdout
    libs = [line.split()[0] for line in out.splitlines() if "=>" in line]
    assert all(lib.startswith(("libc.", "libgcc_s", "libm.", "libdl.", "libpthread.",
                               "librt.", "linux-vdso")) for lib in libs), libs
