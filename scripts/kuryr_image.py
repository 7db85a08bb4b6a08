#!/usr/bin/env python3
"""Builds kuryr's container image from the release binaries, with no registry and no
image builder: an OCI image-layout archive that `ctr -n k8s.io images import`,
`podman load` or `docker load` read.

    cargo build --release --bins && scripts/kuryr_image.py   # -> target/kuryr-image.tar

One layer: /usr/local/bin/{kuryr,kuryr-cni}; what the agent runs (nft, and ip for
`ip netns exec`) and busybox (a shell for `kubectl exec`), each with the
shared libraries ldd names, copied from this machine; /etc/ssl/certs from this
machine when present (HTTPS clouds); /var/run -> /run (runtimes name pods' network
namespaces /var/run/netns/...). No modprobe: the nodes' br_netfilter module is loaded
by the node's setup (as kubeadm's prerequisites do), not from a container. The archive is the same bytes for the same inputs
(fixed timestamps, sorted entries).

The OCI helpers (write_archive, file_layer) are shared with tests/k8s/images.py.
"""

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EPOCH = "1970-01-01T00:00:00Z"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_MT_CONFIG = "application/vnd.oci.image.config.v1+json"
_MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
_PLATFORM = {"architecture": "amd64", "os": "linux"}
PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _image(layers, config):
    """(config bytes, manifest bytes) of an image of `layers` [(digest, size)]."""
    cfg = _json({**_PLATFORM, "created": _EPOCH, "config": config,
                 "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
                 "history": [{"created": _EPOCH, "created_by": "kuryr scripts/kuryr_image.py"}
                             for _ in layers]})
    manifest = _json({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                      "config": {"mediaType": _MT_CONFIG, "digest": digest(cfg),
                                 "size": len(cfg)},
                      "layers": [{"mediaType": _MT_LAYER, "digest": d, "size": size}
                                 for d, size in layers]})
    return cfg, manifest


def write_archive(path, images):
    """Writes an OCI image-layout archive. `images`: [(name, [layer bytes], config)],
    config being the image's `config` (Entrypoint, Env, ...); a layer shared by
    several images is stored once."""
    blobs, manifests = {}, []
    for name, layers, config in images:
        for layer in layers:
            blobs[digest(layer)] = layer
        cfg, manifest = _image([(digest(ly), len(ly)) for ly in layers], config)
        blobs[digest(cfg)] = cfg
        blobs[digest(manifest)] = manifest
        manifests.append({"mediaType": MT_MANIFEST, "digest": digest(manifest),
                          "size": len(manifest), "platform": _PLATFORM,
                          "annotations": {"io.containerd.image.name": name,
                                          "org.opencontainers.image.ref.name":
                                              name.rsplit(":", 1)[1]}})
    index = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": manifests})
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tar.addfile(ti, io.BytesIO(data))
        add("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        add("index.json", index)
        for d, data in sorted(blobs.items()):
            add(f"blobs/sha256/{d.split(':', 1)[1]}", data)
    os.replace(tmp, path)
    return path


class Layer:
    """An uncompressed layer built entry by entry (root-owned, mtime 0)."""

    def __init__(self):
        self.entries = {}  # path in the image -> (kind, source or target, mode)

    def dir(self, path, mode=0o755):
        self.entries.setdefault(path.strip("/"), ("dir", None, mode))

    def file(self, src, path, mode=None):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("file", src, mode if mode is not None else
                              (0o755 if os.access(src, os.X_OK) else 0o644))

    def symlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = ("link", target, 0o777)

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def bytes(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, src, mode = self.entries[path]
                ti = tarfile.TarInfo(path)
                ti.mtime, ti.mode, ti.uid, ti.gid = 0, mode, 0, 0
                if kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    tar.addfile(ti)
                elif kind == "link":
                    ti.type, ti.linkname = tarfile.SYMTYPE, src
                    tar.addfile(ti)
                else:
                    with open(src, "rb") as f:
                        data = f.read()
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
        return buf.getvalue()


def file_layer(src, arcname):
    """A layer holding one executable file."""
    layer = Layer()
    layer.file(src, arcname, 0o755)
    return layer.bytes()


def shared_libraries(binary):
    """The paths of the shared libraries `binary` loads (ldd), loader included; none
    for a static binary."""
    p = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if p.returncode != 0:  # "not a dynamic executable"
        return []
    libs = []
    for line in p.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def tool(name):
    """The machine's executable `name` (its real file, not a link)."""
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return os.path.realpath(p)
    found = shutil.which(name)
    if not found:
        sys.exit(f"kuryr_image.py: {name} is not installed (it goes into the image)")
    return os.path.realpath(found)


def version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', f.read(),
                      re.M | re.S)
    return m.group(1) if m else "dev"


def default_name():
    return f"localhost/kuryr:{version()}"


def kuryr_layer(bin_dir):
    layer = Layer()
    for name in ("kuryr", "kuryr-cni"):
        src = os.path.join(bin_dir, name)
        if not os.access(src, os.X_OK):
            sys.exit(f"kuryr_image.py: {src} is missing: cargo build --release --bins")
        layer.file(src, f"usr/local/bin/{name}", 0o755)
    executables = [os.path.join(bin_dir, "kuryr"), os.path.join(bin_dir, "kuryr-cni")]
    for name in ("nft", "ip"):
        src = tool(name)
        layer.file(src, f"usr/sbin/{name}", 0o755)
        executables.append(src)
    busybox = tool("busybox")
    layer.file(busybox, "bin/busybox", 0o755)
    executables.append(busybox)
    for applet in ("sh", "ls", "cat", "ps"):
        layer.symlink(f"bin/{applet}", "busybox")
    for exe in executables:
        for lib in shared_libraries(exe):
            layer.file(os.path.realpath(lib), lib, 0o755)
    certs = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(certs):
        layer.file(os.path.realpath(certs), certs, 0o644)
    for d in ("run", "tmp", "proc", "sys", "dev", "etc/openstack", "var/lib/kuryr"):
        layer.dir(d, 0o1777 if d == "tmp" else 0o755)
    layer.symlink("var/run", "../run")
    return layer.bytes()


def kuryr_image(bin_dir, name):
    """(name, [layer], config) of kuryr's image."""
    return (name, [kuryr_layer(bin_dir)],
            {"Entrypoint": ["/usr/local/bin/kuryr"], "Env": [f"PATH={PATH}"],
             "Labels": {"org.opencontainers.image.title": "kuryr",
                        "org.opencontainers.image.licenses": "Apache-2.0",
                        "org.opencontainers.image.version": version()}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                    help="where kuryr and kuryr-cni are (default: target/release)")
    ap.add_argument("--name", default=default_name(),
                    help="the image's name (default: %(default)s, as deploy/kubernetes names it)")
    ap.add_argument("--output", default=os.path.join(ROOT, "target", "kuryr-image.tar"))
    args = ap.parse_args()
    write_archive(args.output, [kuryr_image(args.bin_dir, args.name)])
    size = os.path.getsize(args.output)
    print(f"{args.name}: {args.output} ({size / 1e6:.1f} MB)\n"
          f"import it on each node: ctr -n k8s.io images import {args.output}")


if __name__ == "__main__":
    main()
