"""Helpers of the real-client tests: the unmodified `openstack` CLI and openstacksdk against a
`kuryr server` started here (one per pytest worker), with password login."""

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KURYR_BIN = os.environ.get("KURYR_BIN", os.path.join(ROOT, "target", "release", "kuryr"))
OPENSTACK_BIN = os.environ.get("OPENSTACK_BIN", os.path.join(ROOT, ".venv", "bin", "openstack"))


class Server:
    """A kuryr server process with its own data directory. It listens on a port the
    kernel picks (no race between choosing a free port and binding it) and names
    that port in its "ready" log line."""

    def __init__(self, *extra, cacert=None, admin_password=None, data_dir=None):
        """`cacert`: the server serves HTTPS (extra holds --tls-cert/--tls-key) with a
        certificate this CA bundle verifies; clients get it as OS_CACERT."""
        self.cacert = cacert
        self.dir = tempfile.mkdtemp(prefix="kuryr-cli-")
        self.admin_password = admin_password or password()
        self.log_path = os.path.join(self.dir, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [KURYR_BIN, "server", "--listen", "127.0.0.1:0",
             "--data-dir", data_dir or os.path.join(self.dir, "data"),
             f"--admin-password={self.admin_password}", *extra],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                self.fail(f"kuryr server exited with {self.proc.returncode}")
            ready = re.search(r"kuryr server ready.*listen=(\S+)", self.log_text())
            if ready:
                break
            if time.time() > deadline:
                self.fail("kuryr server was not ready in 60 s")
            time.sleep(0.05)
        self.url = f"{'https' if cacert else 'http'}://{ready.group(1)}"
        self.port = int(ready.group(1).rsplit(":", 1)[1])
        self.auth_url = f"{self.url}/identity/v3"
        r = requests.get(self.auth_url, timeout=10, verify=cacert or True)
        if r.status_code != 200:
            self.fail(f"GET {self.auth_url} answered {r.status_code}")

    def fail(self, why):
        text = self.log_text()
        self.stop()
        raise RuntimeError(f"{why}; its log:\n{text}")

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Creds:
    def __init__(self, server, username, password, project):
        self.server, self.username, self.password, self.project = server, username, password, project

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(OS_AUTH_URL=self.server.auth_url, OS_USERNAME=self.username,
                   OS_PASSWORD=self.password, OS_PROJECT_NAME=self.project,
                   OS_USER_DOMAIN_NAME="Default", OS_PROJECT_DOMAIN_NAME="Default",
                   OS_IDENTITY_API_VERSION="3", OS_REGION_NAME="RegionOne",
                   OS_INTERFACE="public")
        if getattr(self.server, "cacert", None):
            env["OS_CACERT"] = self.server.cacert
        return env


class CliError(Exception):
    def __init__(self, args, code, stderr):
        super().__init__(f"openstack {' '.join(args)} exited {code}: {stderr}")
        self.code, self.stderr = code, stderr


def osc(creds, *args, fmt="json", expect_fail=False):
    """Runs the real openstack CLI; returns parsed JSON (or text for other formats)."""
    args = [str(a) for a in args]
    cmd = [OPENSTACK_BIN, *args]
    if fmt:
        cmd += ["-f", fmt]
    p = subprocess.run(cmd, env=creds.env(), capture_output=True, text=True, timeout=120)
    if expect_fail:
        assert p.returncode != 0, f"expected failure: {' '.join(args)} -> {p.stdout}"
        return p.stderr
    if p.returncode != 0:
        raise CliError(args, p.returncode, p.stderr)
    if fmt == "json":
        return json.loads(p.stdout) if p.stdout.strip() else None
    return p.stdout


def token_for(creds):
    return osc(creds, "token", "issue")["id"]


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"




def password():
    """A random password that cannot be mistaken for a command-line option."""
    return "pw" + secrets.token_urlsafe(12)


def make_user(admin, project, role="member"):
    """A new user with `role` on `project`, as credentials for the CLI."""
    name = unique("user")
    pw = password()
    osc(admin, "user", "create", "--project", project, "--password", pw, name)
    osc(admin, "role", "add", "--project", project, "--user", name, role, fmt=None)
    return Creds(admin.server, name, pw, project)
