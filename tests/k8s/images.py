"""Local images for the Kubernetes lab (there is no image registry here).

One OCI image-layout archive holds the images, built with tarfile and hashlib:

    PAUSE     the sandbox image containerd's CRI is configured with: busybox sh as
              PID 1, which exits on SIGTERM/SIGINT and reaps the children it inherits
    BUSYBOX   Debian's busybox-static with every applet as a symlink (sh, sleep,
              ping, nc, httpd, ip, hostname, cat, echo, ...; its wget crashes, even
              on the machine: use nc)

    COREDNS   (when a CoreDNS binary is given) busybox plus /coredns, built from its
              Go module by scripts/k8s-build.sh; started as `/coredns -conf FILE`

All share one uncompressed layer (tests/docker's root filesystem of busybox), so an
import stores it once. The archive is the same bytes on every run (fixed
timestamps), so its digests are stable. `import_into(ctr, address, archive)` loads it
into a containerd's k8s.io namespace with `ctr images import`; the image names come
from the `io.containerd.image.name` annotations of the index.
"""

import hashlib
import io
import json
import os
import sys
import tarfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "docker"))

from dockerlab import build_image_tar  # noqa: E402
from lab import sh  # noqa: E402

PAUSE = "registry.k8s.io/pause:3.10"
BUSYBOX = "kuryr.test/busybox:1"
COREDNS = "kuryr.test/coredns:1"

# PID 1 of a pod sandbox: `wait` returns on a trapped signal, and ash's wait reaps
# any child (orphans of the pod's other processes included).
PAUSE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 2147483647 & wait; done"]

_EPOCH = "1970-01-01T00:00:00Z"
_MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_MT_CONFIG = "application/vnd.oci.image.config.v1+json"
_MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
_PLATFORM = {"architecture": "amd64", "os": "linux"}


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _image(layers, config):
    """(config bytes, manifest bytes) of an image of `layers` [(digest, size)]."""
    cfg = _json({**_PLATFORM, "created": _EPOCH, "config": config,
                 "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
                 "history": [{"created": _EPOCH, "created_by": "kuryr tests/k8s/images.py"}
                             for _ in layers]})
    manifest = _json({"schemaVersion": 2, "mediaType": _MT_MANIFEST,
                      "config": {"mediaType": _MT_CONFIG, "digest": _digest(cfg),
                                 "size": len(cfg)},
                      "layers": [{"mediaType": _MT_LAYER, "digest": d, "size": size}
                                 for d, size in layers]})
    return cfg, manifest


def _file_layer(src, arcname):
    """An uncompressed layer holding one executable file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tar.gettarinfo(src, arcname)
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime, ti.mode = 0, 0o755
        with open(src, "rb") as f:
            tar.addfile(ti, f)
    return buf.getvalue()


def build_archive(path, coredns=None):
    """Writes the OCI archive of the images to `path` (COREDNS too when `coredns`, the
    path of its binary, is given)."""
    layer_path = path + ".layer"
    build_image_tar(layer_path)
    with open(layer_path, "rb") as f:
        layer = f.read()
    os.unlink(layer_path)
    layer_digest = _digest(layer)
    env = ["PATH=/bin"]
    base = [(layer_digest, len(layer))]
    images = [(PAUSE, base, {"Entrypoint": PAUSE_CMD, "Env": env}),
              (BUSYBOX, base, {"Cmd": ["sh"], "Env": env})]
    blobs = {layer_digest: layer}
    if coredns:
        extra = _file_layer(coredns, "coredns")
        blobs[_digest(extra)] = extra
        images.append((COREDNS, base + [(_digest(extra), len(extra))],
                       {"Entrypoint": ["/coredns"], "Env": env}))
    manifests = []
    for name, layers, config in images:
        cfg, manifest = _image(layers, config)
        blobs[_digest(cfg)] = cfg
        blobs[_digest(manifest)] = manifest
        manifests.append({"mediaType": _MT_MANIFEST, "digest": _digest(manifest),
                          "size": len(manifest), "platform": _PLATFORM,
                          "annotations": {"io.containerd.image.name": name,
                                          "org.opencontainers.image.ref.name":
                                              name.rsplit(":", 1)[1]}})
    index = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": manifests})
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tar.addfile(ti, io.BytesIO(data))
        add("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        add("index.json", index)
        for digest, data in sorted(blobs.items()):
            add(f"blobs/sha256/{digest.split(':', 1)[1]}", data)
    return path


def import_into(ctr, address, archive):
    """Imports the archive into the containerd at `address` (unpacked for overlayfs,
    so that the CRI starts containers from it without pulling)."""
    sh(ctr, "--address", address, "-n", "k8s.io", "images", "import",
       "--snapshotter", "overlayfs", archive, timeout=120)
