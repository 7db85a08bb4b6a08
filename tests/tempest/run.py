"""Neutron's own API test suite (neutron-tempest-plugin's `neutron_tempest_plugin.api`,
run by tempest from PyPI) against a `kuryr server` started here.

It starts the server on a loopback port the kernel picks, with its embedded store in a
temporary directory, writes a tempest workspace whose tempest.conf enables neutron only and
lists exactly the extensions the server advertises (tempest skips the tests of the others),
runs the suite minus tests/tempest/exclude.txt, prints each failure, the totals and the
slowest tests, then stops the server and removes everything.
Exit status: 0 only if every test that ran passed.

Run with the test venv's Python: `.venv/bin/python tests/tempest/run.py`.
Environment: KURYR_BIN (default target/release/kuryr); TEMPEST_CONCURRENCY (default 2);
TEMPEST_REGEX (default the whole API suite); TEMPEST_KEEP=DIR keeps the workspace (with
tempest.conf and tempest.log), the server's log and the subunit stream in DIR.
"""

import collections
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import requests
import subunit
import testtools

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
KURYR_BIN = os.environ.get("KURYR_BIN", os.path.join(ROOT, "target", "release", "kuryr"))
EXCLUDE = os.path.join(HERE, "exclude.txt")
REGEX = os.environ.get("TEMPEST_REGEX", r"^neutron_tempest_plugin\.api\.")
CONCURRENCY = os.environ.get("TEMPEST_CONCURRENCY", "2")
ADMIN = "admin"
# Two agents: the agents API tests keep one untouched and update another.
AGENT_HOSTS = ["tempest-host-1", "tempest-host-2"]


def log(msg):
    print(f"[tempest] {msg}", flush=True)


class Server:
    """`kuryr server` on 127.0.0.1:0; the port it got is in its "ready" log line."""

    def __init__(self, workdir):
        self.password = "pw" + secrets.token_urlsafe(16)
        self.log_path = os.path.join(workdir, "kuryr-server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [KURYR_BIN, "server", "--listen", "127.0.0.1:0",
             "--data-dir", os.path.join(workdir, "data"),
             f"--admin-password={self.password}",
             # As neutron-tempest-plugin's jobs set: a test class makes more routers
             # and floating IPs in its one project than Neutron's defaults allow.
             "--default-quota=router=100,floatingip=500"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kuryr server exited with {self.proc.returncode}:\n"
                                   + self.log_text())
            ready = re.search(r"kuryr server ready.*listen=(\S+)", self.log_text())
            if ready:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("kuryr server was not ready in 60 s:\n" + self.log_text())
            time.sleep(0.05)
        self.url = f"http://{ready.group(1)}"
        self.auth_url = f"{self.url}/identity/v3"
        self.token = self._admin_token()
        self.network_url = self._network_url()

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def _admin_token(self):
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": ADMIN, "domain": {"name": "Default"}, "password": self.password}}},
            "scope": {"project": {"name": ADMIN, "domain": {"name": "Default"}}}}}
        r = requests.post(f"{self.auth_url}/auth/tokens", json=body, timeout=30)
        r.raise_for_status()
        return r.headers["X-Subject-Token"]

    def _network_url(self):
        """The network endpoint, found in the catalog the way clients find it."""
        r = requests.get(f"{self.auth_url}/auth/catalog",
                         headers={"X-Auth-Token": self.token}, timeout=30)
        r.raise_for_status()
        network = [s for s in r.json()["catalog"] if s["type"] == "network"][0]
        endpoint = [e for e in network["endpoints"] if e["interface"] == "public"][0]["url"]
        return endpoint.rstrip("/") + "/v2.0"

    def extensions(self):
        r = requests.get(f"{self.network_url}/extensions",
                         headers={"X-Auth-Token": self.token}, timeout=30)
        r.raise_for_status()
        return sorted(e["alias"] for e in r.json()["extensions"])

    def register_agents(self, hosts):
        """Agents for the agents API tests: each host sends the heartbeat `kuryr agent`
        sends (`PUT /v2.0/kuryr/agents/{host}`). The API tests touch no dataplane, so no
        real agent (which needs root and namespaces) has to run."""
        for i, host in enumerate(hosts, start=1):
            report = {"agent": {"host": host, "tunneling_ip": f"127.0.0.{i}",
                                "started_at_unix": int(time.time())}}
            r = requests.put(f"{self.network_url}/kuryr/agents/{host}", json=report,
                             headers={"X-Auth-Token": self.token}, timeout=30)
            r.raise_for_status()

    def create_public_network(self):
        """The external network tempest's L3 tests put router gateways and floating IPs
        on (devstack's `public`), with an IPv4 and an IPv6 subnet outside the project
        CIDRs below. The API tests need no dataplane behind it."""
        h = {"X-Auth-Token": self.token}
        r = requests.post(f"{self.network_url}/networks", headers=h, timeout=30, json={
            "network": {"name": "public", "router:external": True}})
        r.raise_for_status()
        net = r.json()["network"]["id"]
        for version, cidr in ((4, "172.24.4.0/24"), (6, "2001:db8:ffff::/64")):
            r = requests.post(f"{self.network_url}/subnets", headers=h, timeout=30, json={
                "subnet": {"network_id": net, "ip_version": version, "cidr": cidr,
                           "name": f"public-v{version}"}})
            r.raise_for_status()
        return net

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def tempest_conf(server, extensions, workspace, public_network):
    # Every service but neutron is off. Dynamic credentials: tempest makes a project and
    # users per test class through our Keystone subset, with the admin below. No isolated
    # network/router per project (the tests make their own). The public network is the
    # external one made above. kuryr's network types are vxlan, flat and local; the
    # underlay MTU is the server's default, 1500.
    return f"""[DEFAULT]
log_dir = {workspace}/logs
log_file = tempest.log
use_stderr = False

[oslo_concurrency]
lock_path = {workspace}/tempest_lock

[auth]
use_dynamic_credentials = True
create_isolated_networks = False
admin_username = {ADMIN}
admin_password = {server.password}
admin_project_name = {ADMIN}
admin_domain_name = Default
default_credentials_domain_name = Default

[identity]
auth_version = v3
uri_v3 = {server.auth_url}
region = RegionOne
v3_endpoint_type = public

[identity-feature-enabled]
api_v2 = False
api_v2_admin = False
api_v3 = True

[service_available]
neutron = True
nova = False
glance = False
cinder = False
swift = False
horizon = False

[network]
region = RegionOne
endpoint_type = public
project_network_cidr = 10.100.0.0/16
project_network_mask_bits = 28
project_network_v6_cidr = 2001:db8::/48
project_network_v6_mask_bits = 64
project_networks_reachable = False
public_network_id = {public_network}
floating_network_name = public
shared_physical_network = False

[network-feature-enabled]
api_extensions = {",".join(extensions)}
ipv6 = True
ipv6_subnet_attributes = True
port_security = {"port-security" in extensions}
floating_ips = False

[neutron_plugin_options]
available_type_drivers = vxlan,flat,local
max_mtu = 1500

[validation]
run_validation = False
"""


class Tempest:
    """A tempest workspace in `workdir`. tempest keeps a workspace registry under $HOME
    and a lock under $TMPDIR: both point into `workdir` so that nothing is left behind."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.workspace = os.path.join(workdir, "workspace")
        self.env = {**os.environ, "HOME": workdir, "TMPDIR": workdir}

    def _run(self, *args, cwd=None, **kw):
        return subprocess.run([os.path.join(VENV_BIN, args[0]), *args[1:]],
                              cwd=cwd or self.workspace, env=self.env, check=False, **kw)

    def init(self, conf):
        p = self._run("tempest", "init", self.workspace, cwd=self.workdir,
                      capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"tempest init failed:\n{p.stdout}\n{p.stderr}")
        with open(os.path.join(self.workspace, "etc", "tempest.conf"), "w") as f:
            f.write(conf)

    def list(self, exclude):
        args = ["tempest", "run", "--list-tests", "--regex", REGEX]
        if exclude:
            args += ["--exclude-list", EXCLUDE]
        p = self._run(*args, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"tempest run --list-tests failed:\n{p.stdout}\n{p.stderr}")
        return {re.sub(r"\[.*\]$", "", line) for line in p.stdout.splitlines()
                if line.startswith("neutron_tempest_plugin.")}

    def run(self):
        p = self._run("tempest", "run", "--regex", REGEX, "--exclude-list", EXCLUDE,
                      "--concurrency", CONCURRENCY,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return p.returncode, p.stdout.decode(errors="replace")

    def last_subunit(self):
        return self._run("stestr", "last", "--subunit", capture_output=True).stdout


def results(stream):
    """Per reported id: (status, seconds, details) from tempest's subunit v2 stream. A
    class whose setUpClass failed or skipped reports one id, `setUpClass (module.Class)`."""
    out = {}

    def on_test(test):
        tid = re.sub(r"\[.*\]$", "", test["id"])
        start, stop = test["timestamps"]
        secs = (stop - start).total_seconds() if start and stop else 0.0
        out[tid] = (test["status"], secs, test["details"])

    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    subunit.ByteStreamToStreamResult(io.BytesIO(stream), non_subunit_name="stdout").run(result)
    result.stopTestRun()
    return out


def per_test(to_run, by_id):
    """success/fail/skip/missing for every test that was to run; a test of a class whose
    setUpClass failed or skipped counts as failed or skipped."""
    status = {}
    for tid in to_run:
        cls = tid.rsplit(".", 1)[0]
        own = by_id.get(tid) or by_id.get(f"setUpClass ({cls})")
        state = own[0] if own else "missing"
        status[tid] = {"uxsuccess": "fail", "xfail": "success"}.get(state, state)
    return status


def failure_text(details):
    """A failure in short: the last requests tempest logged, the frames of the test's own
    code and the exception (rest_client, testtools and unittest frames left out)."""
    text = "".join(c.as_text() for c in details.values()).splitlines()
    out = [line.split("] ", 1)[-1] for line in text
           if "rest_client" in line and "Request (" in line][-3:]
    tb = max((i for i, line in enumerate(text) if line.startswith("Traceback")), default=None)
    if tb is None:
        return "\n".join(out + text[-20:])
    frames = text[tb + 1:]
    last_frame = max((i for i, line in enumerate(frames) if line.startswith("  File ")),
                     default=-1)
    for i, line in enumerate(frames[:last_frame + 1]):
        if line.startswith("  File ") and "neutron_tempest_plugin" in line:
            out.append(line.replace(os.path.dirname(os.path.dirname(subunit.__file__)), ""))
            if i + 1 < len(frames) and not frames[i + 1].startswith("  File "):
                out.append(frames[i + 1])
    # After the last frame's code line (and its ^^^ marks): the exception.
    exc = [line[:800] for line in frames[last_frame + 2:] if line.strip(" ^~")]
    return "\n".join(out + exc[:12])


def report(by_id, status, excluded, selected, started):
    failed_ids = sorted(t for t, (s, _, _) in by_id.items() if s in ("fail", "uxsuccess"))
    for tid in failed_ids:
        print(f"\n===== FAIL: {tid}\n{failure_text(by_id[tid][2])}", flush=True)
    failed = sorted(t for t, s in status.items() if s == "fail")
    if failed:
        print(f"\nFailed tests ({len(failed)}):")
        for tid in failed:
            print(f"  {tid}")
    missing = sorted(t for t, s in status.items() if s == "missing")
    if missing:
        print(f"\nTests with no result ({len(missing)}):")
        for tid in missing:
            print(f"  {tid}")
    print("\nSlowest tests:")
    for tid, (_, secs, _) in sorted(by_id.items(), key=lambda kv: -kv[1][1])[:10]:
        print(f"  {secs:7.2f}s  {tid}")
    counts = collections.Counter(status.values())
    log(f"TOTALS: passed {counts['success']}, failed {counts['fail']}, "
        f"skipped {counts['skip']}, excluded {len(excluded)}, no result {counts['missing']} "
        f"(of {len(selected)} API tests), in {time.monotonic() - started:.0f} s")
    return counts


def main():
    started = time.monotonic()
    keep = os.environ.get("TEMPEST_KEEP")
    workdir = tempfile.mkdtemp(prefix="kuryr-tempest-")
    server = None
    try:
        server = Server(workdir)
        extensions = server.extensions()
        server.register_agents(AGENT_HOSTS)
        public_network = server.create_public_network()
        log(f"kuryr server at {server.url} advertises {len(extensions)} extensions: "
            + ",".join(extensions))
        tempest = Tempest(workdir)
        tempest.init(tempest_conf(server, extensions, tempest.workspace, public_network))

        selected = tempest.list(exclude=False)
        to_run = tempest.list(exclude=True)
        excluded = selected - to_run
        log(f"{len(selected)} API tests, {len(excluded)} excluded by "
            f"{os.path.relpath(EXCLUDE, ROOT)}; running {len(to_run)} "
            f"with concurrency {CONCURRENCY}")
        code, output = tempest.run()
        stream = tempest.last_subunit()
        if keep:
            os.makedirs(keep, exist_ok=True)
            with open(os.path.join(keep, "tempest-output.txt"), "w") as f:
                f.write(output)
            with open(os.path.join(keep, "tempest.subunit"), "wb") as f:
                f.write(stream)
        by_id = results(stream)
        counts = report(by_id, per_test(to_run, by_id), excluded, selected, started)
        if code != 0 and not counts["fail"]:
            print(output[-6000:])
            log(f"tempest run exited {code} without a failed test")
            return 1
        return 1 if counts["fail"] or counts["missing"] else 0
    finally:
        if server:
            server.stop()
        if keep:
            shutil.copytree(workdir, os.path.join(keep, "work"), dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("data"))
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
