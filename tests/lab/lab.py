"""The test lab: network namespaces as hosts (DESIGN.md §10).

    lab namespace     underlay bridge br-u 10.99.0.1/24, `kuryr server` on 10.99.0.1
    host namespaces   eth0 10.99.0.1N/24 on br-u, each running a real `kuryr agent`
    containers        namespaces whose interfaces the agents create (veth peers
                      born inside them)

Nothing outside these namespaces is touched: every link is created with `ip -n`,
the agents and the server run under `ip netns exec`, and the API is reached from
inside the lab namespace (`curl` and the `openstack` CLI run there). Every
namespace carries the lab's random prefix; `close()` deletes them all, and a
lab whose test process died is swept by the next one (its pid file is stale).
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KURYR_BIN = os.environ.get("KURYR_BIN", os.path.join(ROOT, "target", "release", "kuryr"))
OPENSTACK_BIN = os.environ.get("OPENSTACK_BIN", os.path.join(ROOT, ".venv", "bin", "openstack"))
PIDS_DIR = "/run/kuryr-lab"
UNDERLAY = "10.99.0"


def sh(*cmd, check=True, timeout=60, input=None):
    """Runs a command; returns stdout. Raises with stderr on failure."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                       timeout=timeout, input=input, stdin=None if input else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stderr}{p.stdout}")
    return p.stdout


def sweep_stale_labs():
    """Deletes the namespaces of labs whose test process is gone."""
    os.makedirs(PIDS_DIR, exist_ok=True)
    for name in os.listdir(PIDS_DIR):
        path = os.path.join(PIDS_DIR, name)
        try:
            pid = int(open(path).read().strip())
            os.kill(pid, 0)
            continue  # still running
        except (ValueError, ProcessLookupError, FileNotFoundError):
            pass
        except PermissionError:
            continue
        for ns in sh("ip", "netns", "list", check=False).split("\n"):
            ns = ns.split(" ")[0]
            if ns.startswith(name + "-"):
                sh("ip", "netns", "del", ns, check=False)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class Process:
    def __init__(self, name, cmd, env, log_path):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc = None
        self.start()

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout=10):
        """SIGTERM; True if the process ended within `timeout` (else it is killed)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return False
        return True

    def log(self, tail=150):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-tail:])
        except OSError:
            return ""


class Replicated:
    """`kuryr server` as several replicas on an etcd cluster, behind one address (HAProxy,
    health-checked on /readyz), all inside the lab namespace: what a deployment with
    replicas looks like to agents and clients. It stands in for the lab's one server
    process: stop() and start() take every replica down and up."""

    def __init__(self, lab, server_cmd, env, replicas=3):
        """`server_cmd(listen, data_dir)`: the lab's server command line."""
        self.name = "servers"
        self.lab = lab
        self.log_path = os.path.join(lab.dir, "server-0.log")
        ns = lab.ns("lab")
        self.etcd = []
        ports = [(2379 + 10000 * i, 2380 + 10000 * i) for i in range(3)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
        for i, (c, p) in enumerate(ports):
            # The lab namespace's own loopback: nothing outside it sees these ports.
            self.etcd.append(Process(f"etcd-{i}", [
                "ip", "netns", "exec", ns,
                *etcd_member_args(f"m{i}", f"{lab.dir}/etcd-{i}", f"http://127.0.0.1:{c}",
                                  f"http://127.0.0.1:{p}", initial)],
                env, os.path.join(lab.dir, f"etcd-{i}.log")))
        endpoints = ",".join(f"http://127.0.0.1:{c}" for c, _ in ports)
        self.replicas = []
        for i in range(replicas):
            addr = f"{UNDERLAY}.{2 + i}"
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "br-u")
            cmd = server_cmd(f"{addr}:9696", os.path.join(lab.dir, f"server-{i}"))
            self.replicas.append(Process(
                f"server-{i}", [*cmd, "--store", "etcd", "--etcd-endpoints", endpoints,
                                "--etcd-timeout", "3", "--public-url", lab.url],
                env, os.path.join(lab.dir, f"server-{i}.log")))
        cfg = os.path.join(lab.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(f"{UNDERLAY}.1:9696",
                                   [f"{UNDERLAY}.{2 + i}:9696" for i in range(replicas)],
                                   tls=bool(lab.cacert)))
        self.haproxy = Process("haproxy", ["ip", "netns", "exec", ns, "haproxy", "-db", "-f", cfg],
                               env, os.path.join(lab.dir, "haproxy.log"))
        self.proc = self.haproxy.proc

    def processes(self):
        return [*self.replicas, self.haproxy, *self.etcd]

    def start(self):
        for r in self.replicas:
            if r.proc.poll() is not None:
                r.start()

    def stop(self, timeout=10):
        return all([r.stop(timeout) for r in self.replicas])

    def kill9(self):
        for p in self.processes():
            p.kill9()

    def log(self, tail=150):
        return "\n".join(f"--- {p.name}\n{p.log(tail)}" for p in self.processes())

    def watching(self, host):
        """The replica serving `host`'s agent its watch (from each replica's metrics)."""
        for r in self.replicas:
            if r.proc.poll() is not None:
                continue
            addr = r.cmd[r.cmd.index("--listen") + 1]
            out = self.lab.exec("lab", "curl", "-sk", f"{'https' if self.lab.cacert else 'http'}"
                                f"://{addr}/metrics", check=False)
            m = re.search(r"^kuryr_host_watches_open(?:\{[^}]*\})? (\d+)", out, re.M)
            if m and int(m.group(1)) > 0:
                return r
        return None


def etcd_member_args(name, data_dir, client_url, peer_url, initial_cluster):
    """The command line of one member of a test etcd cluster: what kuryr needs of its
    etcd (large transactions: a bulk create of many ports is one), and no fsync with
    short elections (a cluster on one machine; a killed process loses nothing the kernel
    has)."""
    return [etcd_bin(), f"--name={name}", f"--data-dir={data_dir}",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={initial_cluster}", "--initial-cluster-state=new",
            f"--initial-cluster-token={os.path.basename(os.path.dirname(data_dir))}",
            "--max-txn-ops=20000", "--max-request-bytes=16777216",
            "--unsafe-no-fsync", "--heartbeat-interval=50", "--election-timeout=500",
            "--log-level=warn"]


def haproxy_config(bind, backends, tls=False):
    """HAProxy in front of kuryr server replicas (as deploy/replicas/haproxy.cfg): TCP
    (host watches are long streams), a replica in rotation while /readyz says 200."""
    check = "check-ssl verify none" if tls else "check"
    return ("global\n    maxconn 4000\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n"
            "    timeout client 1h\n    timeout server 1h\n    retries 3\n    option redispatch\n"
            f"listen kuryr\n    bind {bind}\n    balance roundrobin\n"
            "    option httpchk GET /readyz\n    http-check expect status 200\n"
            "    default-server inter 200ms fall 2 rise 2\n"
            + "".join(f"    server r{i} {b} {check}\n" for i, b in enumerate(backends)))


def etcd_bin():
    """$KURYR_ETCD_BIN, else the etcd scripts/k8s-build.sh builds (instant once cached)."""
    path = os.environ.get("KURYR_ETCD_BIN")
    if path:
        return path
    out = sh(os.path.join(ROOT, "scripts", "k8s-build.sh"), timeout=3600)
    return os.path.join(out.strip().split("\n")[-1], "etcd")


class Lab:
    def __init__(self, hosts=3, agent_args=(), server_args=(), cacert=None, agents=True,
                 replicas=None):
        """`cacert`: the server serves HTTPS (server_args hold --tls-cert/--tls-key) with
        a certificate this CA bundle verifies; agents and clients get it as OS_CACERT.
        `agents`: start an agent per host (tests/k8s runs them from its manifests).
        `replicas`: that many servers on etcd behind one address (default: $KURYR_LAB_REPLICAS,
        else one server on the embedded store)."""
        self.replicas = int(replicas if replicas is not None
                            else os.environ.get("KURYR_LAB_REPLICAS", "0") or 0)
        self.start_agents = agents
        sweep_stale_labs()
        self.cacert = cacert
        self.prefix = "kl" + secrets.token_hex(3)
        with open(os.path.join(PIDS_DIR, self.prefix), "w") as f:
            f.write(str(os.getpid()))
        self.dir = tempfile.mkdtemp(prefix=f"kuryr-{self.prefix}-")
        self.namespaces = []
        # Processes started inside lab namespaces (listeners): killed by close().
        self.spawned = []
        self.server = None
        self.agents = {}
        # `=` form on the command line: a random password may start with '-'.
        self.password = secrets.token_urlsafe(12)
        self.url = f"{'https' if cacert else 'http'}://{UNDERLAY}.1:9696"
        self.auth_url = f"{self.url}/identity/v3"
        self.hosts = [f"h{i}" for i in range(1, hosts + 1)]
        self._token = None
        try:
            self._build(agent_args, server_args)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- topology

    def ns(self, name):
        """The full namespace name of a lab member ('lab', 'h1', a container)."""
        return f"{self.prefix}-{name}"

    def add_ns(self, name):
        full = self.ns(name)
        sh("ip", "netns", "add", full)
        self.namespaces.append(full)
        sh("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def _build(self, agent_args, server_args):
        lab = self.add_ns("lab")
        sh("ip", "-n", lab, "link", "add", "br-u", "type", "bridge")
        sh("ip", "-n", lab, "addr", "add", f"{UNDERLAY}.1/24", "dev", "br-u")
        sh("ip", "-n", lab, "link", "set", "br-u", "up")
        # A second, address-less segment for flat networks (physnet1 = eth1 on hosts).
        sh("ip", "-n", lab, "link", "add", "br-flat", "type", "bridge")
        sh("ip", "-n", lab, "link", "set", "br-flat", "up")
        # The external segment (physnet2 = eth2 on hosts), where the outside lives.
        sh("ip", "-n", lab, "link", "add", "br-ext", "type", "bridge")
        sh("ip", "-n", lab, "link", "set", "br-ext", "up")
        for i, h in enumerate(self.hosts, start=1):
            host = self.add_ns(h)
            # Created inside the lab namespace, peer born in the host namespace.
            sh("ip", "-n", lab, "link", "add", f"u-{h}", "type", "veth",
               "peer", "name", "eth0", "netns", host)
            sh("ip", "-n", lab, "link", "set", f"u-{h}", "master", "br-u", "up")
            sh("ip", "-n", host, "addr", "add", f"{UNDERLAY}.{10 + i}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            # As a real host has one: the kernel routes its own replies by it (a TCP
            # reset refusing a connection to a load balancer without members looks
            # up a route to the client first, though it leaves by the client's tap).
            sh("ip", "-n", host, "route", "add", "default", "via", f"{UNDERLAY}.1")
            sh("ip", "-n", lab, "link", "add", f"f-{h}", "type", "veth",
               "peer", "name", "eth1", "netns", host)
            sh("ip", "-n", lab, "link", "set", f"f-{h}", "master", "br-flat", "up")
            sh("ip", "-n", lab, "link", "add", f"x-{h}", "type", "veth",
               "peer", "name", "eth2", "netns", host)
            sh("ip", "-n", lab, "link", "set", f"x-{h}", "master", "br-ext", "up")
        def server_cmd(listen, data_dir):
            return ["ip", "netns", "exec", lab, KURYR_BIN, "server", "--listen", listen,
                    "--data-dir", data_dir, f"--admin-password={self.password}",
                    "--agent-down-time", "3", "--watch-keepalive", "2", *server_args]

        server_env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        if self.replicas:
            self.server = Replicated(self, server_cmd, server_env, self.replicas)
        else:
            self.server = Process("server", server_cmd(f"{UNDERLAY}.1:9696",
                                                       os.path.join(self.dir, "server")),
                                  server_env, os.path.join(self.dir, "server.log"))
        self.wait_for(lambda: self.curl_status("GET", "/identity/v3") == 200, 30,
                      "the lab's kuryr server to answer", self.server)
        # The lab's tests share one project: neutron's default of 10 security groups
        # would make them depend on which tests a worker happens to run.
        project = self.openstack("token", "issue")["project_id"]
        self.api("PUT", f"/quotas/{project}", {"quota": {"security_group": -1}}, expect=200)
        if not self.start_agents:
            return
        for i, h in enumerate(self.hosts, start=1):
            self.start_agent(h, *agent_args)
        for h in self.hosts:
            self.wait_agent_ready(h)

    def agent_socket(self, host):
        return os.path.join(self.dir, f"{host}.sock")

    def credential(self, kind, host, *args):
        """OS_* variables of a credential `kuryr credential KIND --host HOST` made with the
        lab's admin (once per lab: making it again replaces it): `agent` is scoped to
        the host, `plugin` a member of the admin project, `controller` (HOST is then the
        cluster's name) a member and service user of the admin project."""
        path = os.path.join(self.dir, f"{host}-{kind}.rc")
        if not os.path.exists(path):
            env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
            env.update(self.os_env())
            flag = "--cluster" if kind == "controller" else "--host"
            p = subprocess.run(["ip", "netns", "exec", self.ns("lab"), KURYR_BIN, "credential",
                                kind, flag, host, "--output", path, *args],
                               env=env, capture_output=True, text=True, timeout=120,
                               stdin=subprocess.DEVNULL)
            if p.returncode != 0:
                raise RuntimeError(f"kuryr credential {kind} {flag} {host} exited "
                                   f"{p.returncode}:\n{p.stderr}")
        values = {}
        with open(path) as f:
            for line in f:
                if line.startswith("export "):
                    k, _, v = line[len("export "):].strip().partition("=")
                    values[k] = v
        return values

    def agent_env(self, host):
        """The environment of `host`'s agent: its host-scoped credential, no admin."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("OS_") and not k.startswith("KURYR_DOCKER_OS_")}
        env.update(self.credential("agent", host), RUST_LOG=os.environ.get("RUST_LOG", "info"))
        return env

    def start_agent(self, host, *extra, env=None):
        i = self.hosts.index(host) + 1
        env = env or self.agent_env(host)
        self.agents[host] = Process(
            host,
            # nsenter, not `ip netns exec`: the latter gives the agent a mount
            # namespace of its own (a slave), where the router namespaces it mounts
            # under /run/netns would stay invisible to everyone else.
            ["nsenter", f"--net=/run/netns/{self.ns(host)}", KURYR_BIN, "agent", "--host", host,
             "--underlay-ip", f"{UNDERLAY}.{10 + i}", "--underlay-interface", "eth0",
             "--socket", self.agent_socket(host),
             "--state-dir", os.path.join(self.dir, f"{host}-state"),
             "--report-interval", "1", "--physical-interface-mappings", "physnet1:eth1,physnet2:eth2",
             # The Docker plugin only where a test asks for it (its default socket
             # is a machine-wide path).
             *([] if any(str(a).startswith("--docker") for a in extra) else ["--no-docker"]),
             # Links of a network go with its last port, as the tests expect.
             *([] if "--network-linger" in map(str, extra) else ["--network-linger", "0"]),
             # The hosts share the machine's namespace names: each its own routers,
             # named with the lab's prefix so that close() and the sweep find them.
             "--router-namespace-prefix", self.router_prefix(host),
             *extra],
            env, os.path.join(self.dir, f"{host}.log"))
        return self.agents[host]

    def router_prefix(self, host):
        return f"{self.prefix}-{host}-kqr-"

    def router_ns(self, host, router_id):
        """The full name of `host`'s namespace of a router."""
        return f"{self.router_prefix(host)}{router_id}"

    def router_namespaces(self, host):
        return [n.split(" ")[0] for n in sh("ip", "netns", "list").split("\n")
                if n.startswith(self.router_prefix(host))]

    def wait_agent_ready(self, host, timeout=30):
        def ready():
            try:
                return self.agent_call(host, "GET", "/v1/health").get("synced") is True
            except RuntimeError:
                return False
        self.wait_for(ready, timeout, f"agent {host} to sync with the server", self.agents[host])

    def wait_for(self, cond, timeout, what, proc=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc is not None and proc.proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode} waiting for "
                                   f"{what}:\n{proc.log()}")
            if cond():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}"
                           + (f"\n{proc.name} log:\n{proc.log()}" if proc else ""))

    # ---------------------------------------------------------------- outside

    OUTSIDE_CIDR = "203.0.113.0/24"
    OUTSIDE_IP = "203.0.113.1"

    def outside(self):
        """The namespace 'out' on the external segment (physnet2): the external
        network's upstream at 203.0.113.1/24, where tests run servers the routers
        reach."""
        full = self.ns("out")
        if full not in self.namespaces:
            self.add_ns("out")
            lab = self.ns("lab")
            sh("ip", "-n", lab, "link", "add", "o-out", "type", "veth", "peer", "name", "eth0",
               "netns", full)
            sh("ip", "-n", lab, "link", "set", "o-out", "master", "br-ext", "up")
            sh("ip", "-n", full, "addr", "add", f"{self.OUTSIDE_IP}/24", "dev", "eth0")
            sh("ip", "-n", full, "link", "set", "eth0", "up")
        return "out"

    def external_network(self):
        """The lab's one external network (flat on physnet2: one per physical network),
        with a subnet whose gateway is the outside namespace. Made once per lab."""
        if getattr(self, "_external", None) is None:
            self.outside()
            net = self.create("networks", {"name": "ext", "router:external": True,
                                           "provider:network_type": "flat",
                                           "provider:physical_network": "physnet2"})
            sub = self.create("subnets", {"network_id": net["id"], "ip_version": 4,
                                          "cidr": self.OUTSIDE_CIDR,
                                          "gateway_ip": self.OUTSIDE_IP,
                                          "allocation_pools": [{"start": "203.0.113.10",
                                                                "end": "203.0.113.250"}]})
            self._external = (net, sub)
        return self._external

    def serve_peer_address(self, name, port, udp=False):
        """A server in namespace `name` that answers each TCP connection (or UDP
        datagram) with the address it came from. Killed by close()."""
        kind = "SOCK_DGRAM" if udp else "SOCK_STREAM"
        code = (
            "import socket\n"
            f"s = socket.socket(socket.AF_INET, socket.{kind})\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port}))\n"
            + ("while True:\n    d, a = s.recvfrom(100)\n    s.sendto(a[0].encode(), a)\n"
               if udp else
               "s.listen(16)\nwhile True:\n    c, a = s.accept()\n"
               "    c.sendall(a[0].encode())\n    c.close()\n"))
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(name), "python3", "-c", code],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.spawned.append(p)
        flag = "-Hlun" if udp else "-Hltn"
        self.wait_for(lambda: self.exec(name, "ss", flag, f"sport = :{port}").strip() != "",
                      10, f"a server on port {port} in {name}")
        return p

    def peer_address(self, src, ip, port, udp=False):
        """What a peer_address server at ip:port says the connection from namespace
        `src` came from ('' when nothing answered)."""
        code = (
            "import socket, sys\n"
            f"s = socket.socket(socket.AF_INET, socket.{'SOCK_DGRAM' if udp else 'SOCK_STREAM'})\n"
            "s.settimeout(2)\n"
            "try:\n"
            + (f"    s.sendto(b'x', ('{ip}', {port}))\n    print(s.recv(100).decode())\n"
               if udp else
               f"    s.connect(('{ip}', {port}))\n    print(s.recv(100).decode())\n")
            + "except OSError:\n    pass\n")
        p = subprocess.run(["ip", "netns", "exec", self.ns(src), "python3", "-c", code],
                           capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        return p.stdout.strip()

    def add_container(self, name):
        """A namespace standing for a container; its interfaces come from an agent."""
        return self.add_ns(name)

    def close(self):
        for p in self.spawned:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.spawned = []
        for a in self.agents.values():
            a.kill9()
        if self.server:
            self.server.kill9()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces = []
        # What the agents made under the lab's prefix (router namespaces).
        for ns in sh("ip", "netns", "list", check=False).split("\n"):
            ns = ns.split(" ")[0]
            if ns.startswith(self.prefix + "-"):
                sh("ip", "netns", "del", ns, check=False)
        try:
            os.unlink(os.path.join(PIDS_DIR, self.prefix))
        except FileNotFoundError:
            pass
        if not os.environ.get("KURYR_LAB_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self):
        out = []
        for p in [self.server, *self.agents.values()]:
            if p:
                out.append(f"----- {p.name} ({p.log_path}) -----\n{p.log()}")
        return "\n".join(out)

    # ---------------------------------------------------------------- running things

    def exec(self, name, *cmd, check=True, timeout=60):
        """Runs a command inside a lab namespace."""
        return sh("ip", "netns", "exec", self.ns(name), *cmd, check=check, timeout=timeout)

    def ping(self, src, dst_ip, count=1, wait=1, source=None):
        """True if `src` (a container) gets an answer from dst_ip."""
        flag = ["-6"] if ":" in dst_ip else []
        if source:
            flag += ["-I", source]
        p = subprocess.run(["ip", "netns", "exec", self.ns(src), "ping", *flag, "-c", str(count),
                            "-W", str(wait), "-i", "0.2", dst_ip],
                           capture_output=True, text=True, timeout=30 + count)
        return p.returncode == 0

    def ping_eventually(self, src, dst_ip, timeout=5, src_ip=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.ping(src, dst_ip, source=src_ip):
                return True
        return False

    def never_pings(self, src, dst_ip, attempts=3):
        return not any(self.ping(src, dst_ip) for _ in range(attempts))

    def tcp_listen(self, name, port):
        """A busybox nc that answers one connection with 'hello'. Returns the process."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(name), "busybox", "nc", "-l",
                              "-p", str(port), "-e", "echo", "hello"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.spawned.append(p)
        # Listening before anyone connects (a negative check must not pass vacuously).
        self.wait_for(lambda: self.exec(name, "ss", "-Hltn", f"sport = :{port}").strip() != "",
                      10, f"nc to listen on port {port} in {name}")
        return p

    def tcp_connects(self, src, ip, port):
        """True if a TCP connection from `src` to ip:port gets the listener's answer."""
        p = subprocess.run(["ip", "netns", "exec", self.ns(src), "busybox", "nc", "-w", "2",
                            ip, str(port)], capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        return "hello" in p.stdout

    # ---------------------------------------------------------------- the API

    def os_env(self):
        return {"OS_AUTH_URL": self.auth_url, "OS_USERNAME": "admin", "OS_PASSWORD": self.password,
                "OS_PROJECT_NAME": "admin", "OS_USER_DOMAIN_NAME": "Default",
                "OS_PROJECT_DOMAIN_NAME": "Default", "OS_IDENTITY_API_VERSION": "3",
                "OS_REGION_NAME": "RegionOne", "OS_INTERFACE": "public",
                **({"OS_CACERT": self.cacert} if self.cacert else {})}

    def curl(self):
        """curl, trusting the lab's CA when the server serves HTTPS."""
        return ["curl", *(["--cacert", self.cacert] if self.cacert else [])]

    def openstack(self, *args, env=None, fmt="json", check=True):
        """The real openstack CLI, run inside the lab namespace."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        e.update(env or self.os_env())
        cmd = ["ip", "netns", "exec", self.ns("lab"), OPENSTACK_BIN, *map(str, args)]
        if fmt:
            cmd += ["-f", fmt]
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"openstack {' '.join(map(str, args))} exited {p.returncode}:\n"
                               f"{p.stderr}")
        if fmt == "json" and p.returncode == 0:
            return json.loads(p.stdout) if p.stdout.strip() else None
        return p

    def token(self):
        if self._token is None:
            body = json.dumps({"auth": {"identity": {"methods": ["password"], "password": {
                "user": {"name": "admin", "domain": {"name": "Default"},
                         "password": self.password}}},
                "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})
            out = self.exec("lab", *self.curl(), "-s", "-i", "-X", "POST", "-H",
                            "Content-Type: application/json", "-d", body,
                            f"{self.auth_url}/auth/tokens")
            m = re.search(r"(?im)^x-subject-token:\s*(\S+)", out)
            if not m:
                raise RuntimeError(f"no token from the lab's server:\n{out}")
            self._token = m.group(1)
        return self._token

    def curl_status(self, method, path):
        p = subprocess.run(["ip", "netns", "exec", self.ns("lab"), *self.curl(), "-s", "-o", "/dev/null",
                            "-w", "%{http_code}", "-X", method, self.url + path],
                           capture_output=True, text=True, timeout=10)
        try:
            return int(p.stdout or 0)
        except ValueError:
            return 0

    def api(self, method, path, body=None, expect=None, root="/networking/v2.0"):
        """Neutron over HTTP as admin (from inside the lab; `root="/load-balancer/v2"`:
        Octavia). Returns (status, json)."""
        cmd = [*self.curl(), "-s", "-w", "\n%{http_code}", "-X", method, "-H",
               f"X-Auth-Token: {self.token()}", "-H", "Content-Type: application/json",
               f"{self.url}{root}{path}"]
        if body is not None:
            cmd[1:1] = ["-d", json.dumps(body)]
        out = self.exec("lab", *cmd)
        text, _, code = out.rpartition("\n")
        status = int(code)
        data = json.loads(text) if text.strip() else None
        if expect is not None and status != expect:
            raise RuntimeError(f"{method} {path} -> {status}, expected {expect}: {text}")
        return status, data

    def create(self, kind, body):
        singular = {"networks": "network", "subnets": "subnet", "ports": "port",
                    "security-groups": "security_group",
                    "security-group-rules": "security_group_rule"}[kind]
        _, data = self.api("POST", f"/{kind}", {singular: body}, expect=201)
        return data[singular]

    def network(self, name, cidr, cidr6=None, **extra):
        """A network with an IPv4 subnet (and optionally IPv6). Returns (net, [subnets])."""
        net = self.create("networks", {"name": name, **extra})
        subnets = [self.create("subnets", {"network_id": net["id"], "cidr": cidr,
                                           "ip_version": 4})]
        if cidr6:
            subnets.append(self.create("subnets", {"network_id": net["id"], "cidr": cidr6,
                                                   "ip_version": 6}))
        return net, subnets

    def port(self, net, **extra):
        return self.create("ports", {"network_id": net["id"], **extra})

    # ---------------------------------------------------------------- the agents

    def metric(self, host, name, **labels):
        """A sample of `host`'s agent metrics (0 when absent)."""
        text = sh("curl", "-sf", "--unix-socket", self.agent_socket(host), "http://agent/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(name + " ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def agent_call(self, host, method, path, body=None):
        """The agent's local API over its unix socket (curl --unix-socket)."""
        cmd = ["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", self.agent_socket(host),
               "-X", method, f"http://agent{path}"]
        if body is not None:
            cmd[1:1] = ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"agent {host} unreachable: {p.stderr}")
        text, _, code = p.stdout.rpartition("\n")
        return json.loads(text) if text.strip() else {"status": int(code)}

    def bind(self, host, port, container, ifname="eth0", check=True):
        """`kuryr port bind` on `host` (the real CLI)."""
        p = subprocess.run([KURYR_BIN, "port", "bind", port["id"] if isinstance(port, dict) else port,
                            "--netns", f"/run/netns/{self.ns(container)}", "--ifname", ifname,
                            "--socket", self.agent_socket(host), "--json"],
                           capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise RuntimeError(f"kuryr port bind failed ({p.returncode}): {p.stderr}\n{self.logs()}")
        return json.loads(p.stdout) if p.returncode == 0 else p

    def unbind(self, host, port):
        return sh(KURYR_BIN, "port", "unbind", port["id"] if isinstance(port, dict) else port,
                  "--socket", self.agent_socket(host))

    def links(self, name):
        return json.loads(sh("ip", "-j", "-n", self.ns(name), "link", "show") or "[]")

    def addresses(self, name, ifname="eth0"):
        data = json.loads(sh("ip", "-j", "-n", self.ns(name), "addr", "show", "dev", ifname))
        return [f"{a['local']}/{a['prefixlen']}" for a in data[0]["addr_info"]]

    def kuryr_objects(self, host):
        """Every link and nft object the agent made on a host (by kuryr's names)."""
        names = [l["ifname"] for l in self.links(host)
                 if re.match(r"^(tap|brq|vxlan-)", l["ifname"])]
        nft = self.exec(host, "nft", "-j", "list", "ruleset")
        objects = [o for o in json.loads(nft)["nftables"]
                   if any(k in o for k in ("chain", "set", "map", "rule", "element"))
                   and (o.get("chain") or o.get("set") or o.get("map") or o.get("rule") or {})
                   .get("table") == "kuryr"]
        return names, objects

    def leftovers(self, host):
        """kuryr links, per-port chains, per-group sets, and any element left in kuryr's
        sets and maps on a host (the tables and their base chains stay)."""
        links, objects = self.kuryr_objects(host)
        left = list(links)
        for o in objects:
            kind = next((k for k in ("chain", "set", "map") if k in o), None)
            if kind is None:
                continue
            name = o[kind].get("name", "")
            if kind == "chain" and re.match(r"^(in|out|spoof)_", name):
                left.append(f"chain {name}")
            if kind == "set" and re.match(r"^g[46]_", name):
                left.append(f"set {name}")
            if kind in ("set", "map") and o[kind].get("elem"):
                left.append(f"{kind} {name} elements {o[kind]['elem']}")
        return left
