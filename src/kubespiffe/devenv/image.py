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

One OpenSSL per process: the pinned `cryptography` is built from its sdist against the host's OpenSSL
(libssl-dev; the host is Debian bookworm like the base, so the same 3.0 series the base's libssl3 provides)
and replaces the manylinux wheel, which carries its own OpenSSL next to the Debian one the stdlib's
ssl/hashlib load (two OpenSSLs mapped and initialised in every agent: ~5 MB of RSS). The Rust build runs once
per input set, cached under ~/.cache/kubespiffe/cryptography; without cargo, pkg-config or libssl-dev the
image gets the manylinux wheel and the build says so.

Images are tagged `localhost/kubespiffe:<hash of the inputs>` and exported as docker-archive tars that
`ctr -n k8s.io images import` accepts; an unchanged tree reuses both, so a second run costs seconds.
Root only: buildah needs it here for overlay storage and its runc containers, and debootstrap always does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
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
CRYPTOGRAPHY = "cryptography"


class ImageError(RuntimeError):
    """The image could not be built or exported; the message carries the failing tool's output."""


@dataclass(frozen=True)
class ImageRef:
    """A built image in kubespiffe's buildah storage: `name` is repository:tag, `digest` its image id."""

    name: str
    image_id: str


@dataclass(frozen=True)
class CryptographyBuild:
    """What building the pinned cryptography against the host's OpenSSL depends on; `key` names the wheel."""

    version: str
    cargo: Path
    toolchain: str  # `cargo -V`: the Rust compiler that builds the extension
    openssl: str  # pkg-config's version of the host's OpenSSL: what openssl-sys links against

    @property
    def key(self) -> str:
        python = f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}-{platform.machine()}"
        inputs = f"{self.version}\n{self.toolchain}\nopenssl {self.openssl}\n{python}"
        return f"{self.version}-{hashlib.sha256(inputs.encode()).hexdigest()[:12]}"


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


def _pinned_version(root: Path, name: str) -> str | None:
    """The `name==version` pin of constraints.txt, if any."""
    for line in (root / "constraints.txt").read_text().splitlines():
        pinned, _, version = line.split("#", 1)[0].partition("==")
        if version and pinned.strip().lower().replace("_", "-") == name:
            return version.strip()
    return None


def _cargo() -> Path | None:
    """cargo on PATH, else where rustup puts it (root's shells in CI often lack ~/.cargo/bin)."""
    found = shutil.which("cargo")
    if found is not None:
        return Path(found)
    rustup = Path(os.environ.get("CARGO_HOME", "~/.cargo")).expanduser() / "bin" / "cargo"
    return rustup if os.access(rustup, os.X_OK) else None


def _output(*cmd: str) -> str | None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def cryptography_build(root: Path) -> CryptographyBuild | str:
    """How the image's `cryptography` is built against the host's OpenSSL, or why it cannot be here."""
    version = _pinned_version(root, CRYPTOGRAPHY)
    if version is None:
        return "constraints.txt pins no cryptography version"
    try:
        release = platform.freedesktop_os_release().get("VERSION_CODENAME")
    except OSError:
        release = None
    if release != SUITE:  # a newer host's OpenSSL (3.5 in trixie) or glibc would not load on the base
        return f"the host is not Debian {SUITE} (the base's release) but {release or 'unknown'}"
    cargo = _cargo()
    if cargo is None:
        return "cargo not found (on PATH or in ~/.cargo/bin; install Rust >= 1.83 with rustup)"
    toolchain = _output(str(cargo), "-V")
    if toolchain is None:
        return f"{cargo} -V failed"
    if shutil.which("pkg-config") is None:
        return "pkg-config is not installed (scripts/bootstrap installs it as root)"
    openssl = _output("pkg-config", "--modversion", "openssl")
    if openssl is None:
        return "pkg-config finds no OpenSSL: is libssl-dev installed? (scripts/bootstrap installs it as root)"
    return CryptographyBuild(version, cargo, toolchain, openssl)


def _cryptography_wheel(build: CryptographyBuild) -> Path:
    """The pinned cryptography built from its PyPI sdist against the host's OpenSSL, once per input set.

    pip checks the sdist against the sha256 PyPI's index gives for it; maturin runs cargo with --locked
    (cryptography's pyproject), so the crates are the sdist's Cargo.lock versions, checksums verified.
    --no-cache-dir: a wheel pip cached from another build of the same sdist would skip the key's inputs."""
    directory = cache_root() / CRYPTOGRAPHY / build.key
    wheels = sorted(directory.glob(f"{CRYPTOGRAPHY}-*.whl"))
    if wheels:
        return wheels[0]
    _log(
        f"building {CRYPTOGRAPHY} {build.version} against the host's OpenSSL {build.openssl} with "
        f"{build.toolchain} (first run only, a few minutes) ..."
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    log = directory.parent / f"{build.key}.log"
    with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
        out = Path(tmp) / "wheel"
        cmd = [
            *(sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir", "wheel"),
            *("--no-deps", "--no-binary", CRYPTOGRAPHY, "-w", str(out), f"{CRYPTOGRAPHY}=={build.version}"),
        ]
        env = {**os.environ, "PATH": f"{build.cargo.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        with log.open("w") as sink:
            result = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, check=False)
        if result.returncode != 0:
            tail = log.read_text()[-3000:]
            raise ImageError(f"building {CRYPTOGRAPHY} {build.version} failed (log: {log}):\n{tail}")
        if not directory.exists():  # else a concurrent build finished first: same inputs, same wheel
            out.rename(directory)
    (wheel,) = directory.glob(f"{CRYPTOGRAPHY}-*.whl")
    return wheel


def _inputs_digest(root: Path, base_id: str, cryptography: str) -> str:
    """Hash of everything the image is made of: sources, packaging metadata, the Dockerfile, the base, and
    which cryptography wheel goes in (`cryptography`: the build key, or the reason for the manylinux one)."""
    digest = hashlib.sha256(f"{base_id}\n{cryptography}".encode())
    files = [root / name for name in ("pyproject.toml", "constraints.txt", "README.md", "deploy/Dockerfile")]
    files += sorted(p for p in (root / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        if path.suffix == ".pyc" or path.parent.name.endswith(".egg-info"):
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _wheelhouse(root: Path, directory: Path, cryptography: CryptographyBuild | str) -> None:
    """Every wheel the image's `pip install` needs, so the build itself runs without network.

    cryptography's is the one built against the host's OpenSSL when `cryptography` is a build (the
    manylinux wheel pip fetched is removed: pip would prefer it), else the manylinux wheel."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    steps = [
        [*pip, "wheel", "--quiet", "-c", str(root / "constraints.txt"), "-w", str(directory), str(root)],
        [*pip, "download", "--quiet", "--only-binary=:all:", "-d", str(directory), *BUILD_REQUIREMENTS],
    ]
    for cmd in steps:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"{' '.join(cmd[3:5])} failed:\n{result.stderr[-3000:]}")
    if isinstance(cryptography, str):
        _log(f"{CRYPTOGRAPHY}: {cryptography}; the image gets the manylinux wheel: two OpenSSLs per process")
        return
    for fetched in directory.glob(f"{CRYPTOGRAPHY}-*.whl"):
        fetched.unlink()
    shutil.copy2(_cryptography_wheel(cryptography), directory)


def build_image(root: Path | None = None) -> ImageRef:
    """Build deploy/Dockerfile on the local base; reuse the image when nothing it is made of changed.

    `root` is the checkout to build (default: this one); a copy with the same files gets the same tag.
    """
    root = root or repo_root()
    base = ensure_base()
    base_id = _image_id(base)
    assert base_id is not None
    cryptography = cryptography_build(root)
    key = cryptography.key if isinstance(cryptography, CryptographyBuild) else f"manylinux: {cryptography}"
    name = f"{IMAGE_REPOSITORY}:{_inputs_digest(root, base_id, key)}"
    existing = _image_id(name)
    if existing is not None:
        _prune_images()
        return ImageRef(name, existing)
    _log(f"building {name} from deploy/Dockerfile on {base} ...")
    with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
        wheels = Path(tmp) / "wheelhouse"
        _wheelhouse(root, wheels, cryptography)
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
