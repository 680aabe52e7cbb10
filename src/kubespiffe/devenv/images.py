"""Tiny container images for the local node, made on this machine: no registry is reachable here.

The pause image holds a static binary compiled from the C source below; the test image is busybox-static
with its applets as symlinks. Both are written as docker-archive tarballs (what `ctr images import`
reads) under the cache, keyed by a hash of their inputs, so they are built once per machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubespiffe.devenv.build import cache_root

PAUSE_IMAGE = "kubespiffe.local/pause:1"
BUSYBOX_IMAGE = "kubespiffe.local/busybox:1"
BUSYBOX_BINARY = Path("/bin/busybox")

# The sandbox's PID 1: it holds the pod's namespaces open, reaps orphans (pods share a PID namespace only
# when asked, but then this process is init) and exits at once on SIGTERM/SIGINT so pods stop quickly.
PAUSE_SOURCE = r"""
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction term = {0};
    term.sa_handler = stop;
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGINT, &term, NULL);
    struct sigaction child = {0};
    child.sa_handler = reap;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &child, NULL);
    for (;;) {
        pause();
    }
}
"""


@dataclass(frozen=True)
class Entry:
    """One file system entry of an image layer: a file (data), a symlink (target) or a directory."""

    path: str
    mode: int = 0o755
    data: bytes | None = None
    target: str | None = None


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _layer(entries: list[Entry]) -> bytes:
    """A reproducible tar layer: fixed owner and mtime, entries in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path.lstrip("/"))
            info.mode, info.mtime, info.uid, info.gid = entry.mode, 0, 0, 0
            if entry.target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                tar.addfile(info)
            elif entry.data is not None:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(path: Path, name: str, entries: list[Entry], config: dict[str, object]) -> Path:
    """A one-layer docker-archive (manifest.json + config + layer), the format `ctr images import` reads."""
    layer = _layer(entries)
    diff_id = hashlib.sha256(layer).hexdigest()
    image_config = {
        "architecture": _architecture(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "kubespiffe.devenv.images"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [name], "Layers": [f"{diff_id}/layer.tar"]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    with tarfile.open(staging, mode="w") as tar:
        _add(tar, f"{diff_id}/layer.tar", layer)
        _add(tar, config_name, config_bytes)
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    staging.rename(path)
    return path


def _images_dir() -> Path:
    return cache_root() / "node-images"


def pause_binary() -> Path:
    """The static pause binary, compiled once per source hash with `gcc -static`."""
    digest = hashlib.sha256(PAUSE_SOURCE.encode()).hexdigest()[:12]
    binary = _images_dir() / f"pause-{digest}"
    if binary.exists():
        return binary
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is required to build the pause binary for the local node")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "pause.c"
        source.write_text(PAUSE_SOURCE)
        output = Path(work) / "pause"
        subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-Wall", "-Werror", "-o", str(output), str(source)],
            check=True,
            capture_output=True,
        )
        shutil.move(output, binary)
    return binary


def pause_archive() -> Path:
    binary = pause_binary().read_bytes()
    digest = hashlib.sha256(binary + PAUSE_IMAGE.encode()).hexdigest()[:12]
    archive = _images_dir() / f"pause-image-{digest}.tar"
    if archive.exists():
        return archive
    return write_docker_archive(
        archive, PAUSE_IMAGE, [Entry("/pause", data=binary)], {"Entrypoint": ["/pause"], "User": "65535"}
    )


def busybox_archive() -> Path:
    """A throwaway image for test pods: busybox-static and its applets; no entrypoint (pods set one)."""
    if not BUSYBOX_BINARY.exists():
        raise RuntimeError(f"{BUSYBOX_BINARY} is missing: install the Debian package busybox-static")
    binary = BUSYBOX_BINARY.read_bytes()
    digest = hashlib.sha256(binary + BUSYBOX_IMAGE.encode()).hexdigest()[:12]
    archive = _images_dir() / f"busybox-image-{digest}.tar"
    if archive.exists():
        return archive
    applets = subprocess.run(
        [str(BUSYBOX_BINARY), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    entries = [Entry("/bin"), Entry("/bin/busybox", data=binary)]
    entries += [Entry(f"/bin/{name}", target="busybox") for name in applets if name != "busybox"]
    entries += [
        Entry("/etc"),
        Entry("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
        Entry("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n"),
        Entry("/root", 0o700),
        Entry("/tmp", 0o1777),
    ]
    return write_docker_archive(
        archive, BUSYBOX_IMAGE, entries, {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}
    )


def interop_archive(binary: Path) -> tuple[str, Path]:
    """go-spiffe's reference client (tools/interop, a static Go binary) as a pod image, tagged by its hash.

    Test and benchmark pods run it as the unmodified application: it only knows SPIFFE_ENDPOINT_SOCKET,
    or with pod certificates the paths of the files the kubelet projects.
    """
    data = binary.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]
    name = f"kubespiffe.local/spiffe-interop:{digest}"
    archive = _images_dir() / f"spiffe-interop-image-{digest}.tar"
    if not archive.exists():
        entries = [Entry("/spiffe-interop", data=data), Entry("/tmp", 0o1777)]
        write_docker_archive(archive, name, entries, {"Entrypoint": ["/spiffe-interop"], "User": "65532"})
    return name, archive
