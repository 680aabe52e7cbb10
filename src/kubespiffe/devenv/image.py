"""Build the kubespiffe image (deploy/Dockerfile) without a container registry, and export it for containerd.

No registry is reachable from the development machines, so the base image is made locally: `debootstrap`
a minimal Debian bookworm with python3 from the Debian mirror apt already uses, and import it into a
buildah storage under ~/.cache/kubespiffe/images (never the system's /var/lib/containers) as
`localhost/kubespiffe-base:bookworm`. The Dockerfile then builds on it with `--build-arg BASE=...`.

The build runs without network (`--network none`, runc isolation): the wheels for kubespiffe and every pinned
dependency are downloaded/built on the host first (pip's cache makes that cheap after the first time)
and reach the build's RUN steps through a read-only volume plus PIP_NO_INDEX/PIP_FIND_LINKS build
arguments. That keeps the build hermetic and independent of DNS inside the build container, and the
same Dockerfile still builds from PyPI when those arguments are not given (users with registries).

Images are tagged `localhost/kubespiffe:<hash of the inputs>` and exported as docker-archive tars that
`ctr -n k8s.io images import` accepts; an unchanged tree reuses both, so a second run costs seconds.
Root only: buildah needs it here for overlay storage and its runc containers, and debootstrap always does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubespiffe.devenv.build import cache_root, repo_root

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPOSITORY = "localhost/kubespiffe-base"
IMAGE_REPOSITORY = "localhost/kubespiffe"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The build-time Python tooling that building kubespiffe's own wheel needs (pyproject's build-system).
BUILD_REQUIREMENTS = ("setuptools>=77", "wheel")
KEEP = 3  # kubespiffe images (and their archives) kept in the cache; older ones are removed


class ImageError(RuntimeError):
    """The image could not be built or exported; the message carries the failing tool's output."""


@dataclass(frozen=True)
class ImageRef:
    """A built image in kubespiffe's buildah storage: `name` is repository:tag, `digest` its image id."""

    name: str
    image_id: str


def images_dir() -> Path:
    return cache_root() / "images"


def missing_requirements() -> str | None:
    """Why images cannot be built here (for a visible test skip), or None when they can."""
    if os.geteuid() != 0:
        return "building images needs root (debootstrap; buildah with overlay storage and runc)"
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/bootstrap installs it when run as root)"
    return None


def buildah(*args: str, capture: bool = True) -> str:
    """Run buildah against kubespiffe's own storage (overlay driver, under the cache directory)."""
    storage = images_dir() / "storage"
    cmd = [
        "buildah",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        "--storage-driver",
        "overlay",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=capture, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or "")[-4000:] if capture else "(output above)"
        raise ImageError(f"{' '.join(cmd[:1] + list(args[:2]))} failed (exit {result.returncode}):\n{detail}")
    return (result.stdout or "").strip()


def _image_id(name: str) -> str | None:
    try:
        return buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", name)
    except ImageError:
        return None


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and words[1].rstrip("/").endswith("/debian"):
                return words[1]
            if words[:1] == ["deb"] and SUITE in words:
                uri = next((w for w in words[1:] if "://" in w), "")
                if uri.rstrip("/").endswith("/debian"):
                    return uri
    return DEFAULT_MIRROR


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_base() -> str:
    """Return the local base image name, creating the rootfs tarball and importing it on first use."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{SUITE}\n{mirror}\n{' '.join(sorted(BASE_PACKAGES))}".encode()).hexdigest()[:12]
    name = f"{BASE_REPOSITORY}:{SUITE}-{key}"
    if _image_id(name) is not None:
        return name
    tarball = images_dir() / f"base-{SUITE}-{key}.tar"
    if not tarball.exists():
        _log(f"debootstrap {SUITE} with {', '.join(BASE_PACKAGES)} from {mirror} (first run only) ...")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
            rootfs = Path(tmp) / "rootfs"
            cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE]
            result = subprocess.run([*cmd, str(rootfs), mirror], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ImageError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
            # Package caches and lists are build leftovers; an image never runs apt.
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
                for entry in (rootfs / leftover).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            partial = tarball.with_suffix(".partial")
            tar = ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."]
            subprocess.run(tar, check=True)
            partial.rename(tarball)
    container = buildah("from", "scratch")
    try:
        buildah("add", container, str(tarball), "/")
        buildah("config", "--env", "LANG=C.UTF-8", "--cmd", "/bin/sh", container)
        buildah("commit", "--quiet", container, name)
    finally:
        buildah("rm", container)
    return name


def _inputs_digest(root: Path, base_id: str) -> str:
    """Hash of everything the image is made of: sources, packaging metadata, the Dockerfile, the base."""
    digest = hashlib.sha256(base_id.encode())
    files = [root / name for name in ("pyproject.toml", "constraints.txt", "README.md", "deploy/Dockerfile")]
    files += sorted(p for p in (root / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        if path.suffix == ".pyc" or path.parent.name.endswith(".egg-info"):
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _wheelhouse(root: Path, directory: Path) -> None:
    """Every wheel the image's `pip install` needs, so the build itself runs without network."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    steps = [
        [*pip, "wheel", "--quiet", "-c", str(root / "constraints.txt"), "-w", str(directory), str(root)],
        [*pip, "download", "--quiet", "--only-binary=:all:", "-d", str(directory), *BUILD_REQUIREMENTS],
    ]
    for cmd in steps:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"{' '.join(cmd[3:5])} failed:\n{result.stderr[-3000:]}")


def build_image(root: Path | None = None) -> ImageRef:
    """Build deploy/Dockerfile on the local base; reuse the image when nothing it is made of changed.

    `root` is the checkout to build (default: this one); a copy with the same files gets the same tag.
    """
    root = root or repo_root()
    base = ensure_base()
    base_id = _image_id(base)
    assert base_id is not None
    name = f"{IMAGE_REPOSITORY}:{_inputs_digest(root, base_id)}"
    existing = _image_id(name)
    if existing is not None:
        _prune_images()
        return ImageRef(name, existing)
    _log(f"building {name} from deploy/Dockerfile on {base} ...")
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        wheels = Path(tmp) / "wheelhouse"
        _wheelhouse(root, wheels)
        buildah(
            "bud",
            "--quiet",
            "--isolation",
            "oci",
            "--network",
            "none",
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--build-arg",
            "PIP_FIND_LINKS=/wheelhouse",
            "--volume",
            f"{wheels}:/wheelhouse:ro",
            "-f",
            str(root / "deploy" / "Dockerfile"),
            "-t",
            name,
            str(root),
        )
    image_id = _image_id(name)
    assert image_id is not None
    _prune_images()
    return ImageRef(name, image_id)


def _prune_images() -> None:
    """Remove all but the KEEP newest kubespiffe images: each source change builds another (~250 MB).

    KEEP, not one: concurrent test runs of different trees (a fresh clone beside a working copy) each use
    their own image while it is in use."""
    images = json.loads(buildah("images", "--json") or "[]")
    ours = [i for i in images if any(n.startswith(f"{IMAGE_REPOSITORY}:") for n in i.get("names") or [])]
    ours.sort(key=lambda i: i.get("created", 0), reverse=True)
    for image in ours[KEEP:]:
        with contextlib.suppress(ImageError):  # in use by a build at this moment: next time
            buildah("rmi", image["id"])


def export_archive(ref: ImageRef, path: Path) -> Path:
    """Write `ref` as a docker-archive tar tagged with its name (what `ctr -n k8s.io images import` takes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    buildah("push", "--quiet", ref.name, f"docker-archive:{partial}:{ref.name}")
    partial.rename(path)
    return path


def cached_archive(ref: ImageRef) -> Path:
    """The image's docker-archive under the cache, exported once per image id (the KEEP newest kept)."""
    path = images_dir() / "archives" / f"kubespiffe-{ref.image_id[:16]}.tar"
    if path.exists():
        os.utime(path)  # the newest by use, not by export, are kept
        return path
    export_archive(ref, path)
    archives = sorted(path.parent.glob("kubespiffe-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def main() -> None:
    """`python -m kubespiffe.devenv.image`: build (or reuse) the image and print its name and archive."""
    reason = missing_requirements()
    if reason is not None:
        raise SystemExit(reason)
    ref = build_image()
    print(ref.name)
    print(cached_archive(ref))


if __name__ == "__main__":
    main()
