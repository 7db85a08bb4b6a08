"""Helpers of the replica tests: a real etcd cluster on loopback (etcd from its Go module,
built by scripts/k8s-build.sh) and `kuryr server` replicas on it.

Everything listens on 127.0.0.1 ports the kernel hands out; every process is killed and
every directory removed by `close()`, whatever the test did."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client"))
sys.path.insert(0, os.path.join(HERE, "..", "lab"))

from cloud import KURYR_BIN, Server, password  # noqa: E402
from lab import etcd_member_args, haproxy_config  # noqa: E402,F401


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=30, interval=0.05):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - reported if it never succeeds
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Etcd:
    """A cluster of `n` etcd members on loopback."""

    def __init__(self, n=3):
        self.dir = tempfile.mkdtemp(prefix="kuryr-etcd-")
        ports = [(free_port(), free_port()) for _ in range(n)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
        self.urls = [f"http://127.0.0.1:{c}" for c, _ in ports]
        self.args = [etcd_member_args(f"m{i}", f"{self.dir}/m{i}", f"http://127.0.0.1:{c}",
                                      f"http://127.0.0.1:{p}", initial)
                     for i, (c, p) in enumerate(ports)]
        self.procs = [None] * n
        for i in range(n):
            self.start(i)

    def endpoints(self):
        return ",".join(self.urls)

    def start(self, i):
        log = open(os.path.join(self.dir, f"m{i}.log"), "a")
        self.procs[i] = subprocess.Popen(self.args[i], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        log.close()

    def kill(self, i):
        """kill -9 one member."""
        p = self.procs[i]
        if p and p.poll() is None:
            p.kill()
            p.wait()
        self.procs[i] = None

    def close(self):
        for i in range(len(self.procs)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)


class Replica(Server):
    """`kuryr server --store etcd` on one etcd cluster; every replica gets the same admin
    password (only the first start of the cloud uses it)."""

    def __init__(self, etcd, admin_password, *extra):
        self.etcd = etcd
        super().__init__("--store", "etcd", "--etcd-endpoints", etcd.endpoints(),
                         "--etcd-timeout", "3", *extra, admin_password=admin_password)

    def kill(self):
        """kill -9, keeping the log for the report."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Replicas:
    """An etcd cluster and `n` kuryr server replicas on it."""

    def __init__(self, n=3, *extra):
        self.etcd = Etcd(3)
        self.admin_password = password()
        self.servers = []
        try:
            for _ in range(n):
                self.servers.append(Replica(self.etcd, self.admin_password, *extra))
        except Exception:
            self.close()
            raise

    def alive(self):
        return [s for s in self.servers if s.proc.poll() is None]

    def close(self):
        for s in self.servers:
            s.stop()
        self.etcd.close()


def run_kuryr(*args, timeout=120):
    p = subprocess.run([KURYR_BIN, *args], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p
