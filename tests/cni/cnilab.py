"""The CNI test lab: tests/lab's namespaces (server, agents), and ways to call the
real `kuryr-cni` binary as a runtime does: directly (the spec's environment and
stdin contract), through `cnitool`, and through Podman's CNI backend.

The plugin runs in a host's network namespace (`nsenter --net`), like a runtime
on that host, and talks to that host's agent over its socket (`daemon_socket`).
Standalone containers' ports are made with the plugins' credential (a project
member's: `kuryr credential plugin`), the agent keeps its host-scoped one.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "lab"))

from lab import KURYR_BIN, Lab, sh  # noqa: E402,F401

KURYR_CNI_BIN = os.environ.get("KURYR_CNI_BIN",
                               os.path.join(os.path.dirname(KURYR_BIN), "kuryr-cni"))
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
# How long a pod's ADD waits for its port in these tests (the default is 30 s).
POD_PORT_WAIT = 3


class CniLab(Lab):
    def start_agent(self, host, *extra, env=None):
        env = env or self.agent_env(host)
        env.update({f"KURYR_DOCKER_{k}": v for k, v in self.credential("plugin", host).items()})
        return super().start_agent(host, "--cni-pod-port-wait", str(POD_PORT_WAIT), *extra,
                                   env=env)

    def netns_path(self, container):
        return f"/run/netns/{self.ns(container)}"

    def conf(self, host, network=None, version="1.1.0", name="kuryrnet", **extra):
        """A network configuration of the plugin for `host`'s agent."""
        c = {"cniVersion": version, "name": name, "type": "kuryr-cni",
             "daemon_socket": self.agent_socket(host), **extra}
        if network is not None:
            c["network"] = network
        return c

    def cni(self, host, command, conf, container=None, ifname="eth0", netns=None, args=None,
            env=None, stdin=None, timeout=60):
        """Runs kuryr-cni on `host` as a runtime would. Returns (exit code, the JSON it
        printed or None, stderr). `container` names a lab container: its namespace is
        CNI_NETNS (unless `netns` is given) and the container id is derived from it."""
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
             "CNI_PATH": os.path.dirname(KURYR_CNI_BIN)}
        if container is not None:
            e["CNI_CONTAINERID"] = self.container_id(container)
            e["CNI_NETNS"] = netns if netns is not None else self.netns_path(container)
            e["CNI_IFNAME"] = ifname
        if args:
            e["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in args.items())
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        data = stdin if stdin is not None else json.dumps(conf)
        p = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns(host)}", KURYR_CNI_BIN],
                           input=data, capture_output=True, text=True, env=e, timeout=timeout)
        out = None
        if p.stdout.strip():
            out = json.loads(p.stdout)
        return p.returncode, out, p.stderr

    def addresses_or_none(self, container, ifname="eth0"):
        """The addresses of `ifname` in a container, None if it has no such interface."""
        p = subprocess.run(["ip", "-n", self.ns(container), "-j", "addr", "show", "dev", ifname],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return None
        data = json.loads(p.stdout or "[]")
        return [f"{a['local']}/{a['prefixlen']}" for d in data for a in d["addr_info"]] or None

    def container_id(self, container):
        return f"{self.prefix}{container}".replace("-", "")

    def ok(self, host, command, conf, container=None, **kw):
        rc, out, err = self.cni(host, command, conf, container, **kw)
        if rc != 0:
            raise AssertionError(f"kuryr-cni {command} exited {rc}: {out} {err}\n{self.logs()}")
        return out

    def error(self, host, command, conf, container=None, **kw):
        """The CNI error a call must end with (a failing exit and the spec's JSON)."""
        rc, out, err = self.cni(host, command, conf, container, **kw)
        assert rc != 0, f"kuryr-cni {command} should have failed: {out}"
        assert out is not None and isinstance(out.get("code"), int), (out, err)
        assert out.get("msg"), out
        return out

    def port_of(self, container):
        """The Neutron ports whose device_id is `container`'s id."""
        _, data = self.api("GET", f"/ports?device_id={self.container_id(container)}")
        return data["ports"]
