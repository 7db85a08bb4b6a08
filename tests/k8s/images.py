"""Local images for the Kubernetes lab (there is no image registry here).

One OCI image-layout archive holds the images, built with tarfile and hashlib:

    PAUSE     the sandbox image containerd's CRI is configured with: busybox sh as
              PID 1, which exits on SIGTERM/SIGINT and reaps the children it inherits
    BUSYBOX   Debian's busybox-static with every applet as a symlink (sh, sleep,
              ping, nc, httpd, ip, hostname, cat, echo, ...; its wget crashes, even
              on the machine: use nc)

    COREDNS   (when a CoreDNS binary is given) busybox plus /coredns, built from its
              Go module by scripts/k8s-build.sh; started as `/coredns -conf FILE`

    KURYR     (when kuryr's binaries are given) scripts/kuryr_image.py's image, which
              deploy/kubernetes runs

All but KURYR share one uncompressed layer (tests/docker's root filesystem of busybox), so an
import stores it once. The archive is the same bytes on every run (fixed
timestamps), so its digests are stable. `import_into(ctr, address, archive)` loads it
into a containerd's k8s.io namespace with `ctr images import`; the image names come
from the `io.containerd.image.name` annotations of the index.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "tests", "docker"))
sys.path.insert(0, os.path.join(_ROOT, "scripts"))

import kuryr_image  # noqa: E402
from dockerlab import build_image_tar  # noqa: E402
from lab import sh  # noqa: E402

PAUSE = "registry.k8s.io/pause:3.10"
BUSYBOX = "kuryr.test/busybox:1"
COREDNS = "kuryr.test/coredns:1"
# kuryr's image, named as deploy/kubernetes names it.
KURYR = kuryr_image.default_name()

# PID 1 of a pod sandbox: `wait` returns on a trapped signal, and ash's wait reaps
# any child (orphans of the pod's other processes included).
PAUSE_CMD = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 2147483647 & wait; done"]

def build_archive(path, coredns=None, kuryr_bin_dir=None):
    """Writes the OCI archive of the images to `path` (COREDNS too when `coredns`, the
    path of its binary, is given; kuryr's own image, as scripts/kuryr_image.py makes
    it, when `kuryr_bin_dir` is)."""
    layer_path = path + ".layer"
    build_image_tar(layer_path)
    with open(layer_path, "rb") as f:
        base = f.read()
    os.unlink(layer_path)
    env = ["PATH=/bin"]
    images = [(PAUSE, [base], {"Entrypoint": PAUSE_CMD, "Env": env}),
              (BUSYBOX, [base], {"Cmd": ["sh"], "Env": env})]
    if coredns:
        images.append((COREDNS, [base, kuryr_image.file_layer(coredns, "coredns")],
                       {"Entrypoint": ["/coredns"], "Env": env}))
    if kuryr_bin_dir:
        images.append(kuryr_image.kuryr_image(kuryr_bin_dir, KURYR))
    return kuryr_image.write_archive(path, images)


def import_into(ctr, address, archive):
    """Imports the archive into the containerd at `address` (unpacked for overlayfs,
    so that the CRI starts containers from it without pulling)."""
    sh(ctr, "--address", address, "-n", "k8s.io", "images", "import",
       "--snapshotter", "overlayfs", archive, timeout=120)
