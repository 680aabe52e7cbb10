"""deploy/Dockerfile builds, and the image runs as its own non-root user on a read-only root filesystem.

No node is needed: the image's rootfs is mounted through buildah, bound read-only in a private mount
namespace with a tmpfs on /tmp (what a pod with readOnlyRootFilesystem and an emptyDir gets), and the
commands run there under chroot with the image's configured user and environment.
Root only (debootstrap, buildah, mounts); elsewhere every test here is skipped and says why.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubespiffe.authority.keys import KeyType
from kubespiffe.devenv import image
from kubespiffe.devenv.build import repo_root

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(image.missing_requirements() is not None, reason=str(image.missing_requirements())),
]


@dataclass(frozen=True)
class Rootfs:
    path: Path
    user: str
    env: list[str]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run argv in the image: read-only root, tmpfs /tmp, the image's user and environment only."""
        inner = " && ".join(
            [
                f"mount --bind {self.path} {self.path}",
                f"mount -o remount,bind,ro {self.path}",
                f"mount -t tmpfs -o size=16m,mode=1777 tmpfs {self.path}/tmp",
                shlex.join(
                    [
                        "chroot",
                        f"--userspec={self.user}",
                        str(self.path),
                        "/usr/bin/env",
                        "-i",
                        *self.env,
                        *argv,
                    ]
                ),
            ]
        )
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's inputs copied once, so every test here sees one tree even while the checkout changes."""
    source, copy = repo_root(), tmp_path_factory.mktemp("image-inputs")
    for name in ("pyproject.toml", "constraints.txt", "README.md", "deploy/Dockerfile"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(source / "src", copy / "src", ignore=ignore)
    return copy


@pytest.fixture(scope="session")
def built(snapshot: Path) -> image.ImageRef:
    return image.build_image(snapshot)


@pytest.fixture(scope="session")
def rootfs(built: image.ImageRef) -> Iterator[Rootfs]:
    config = json.loads(image.buildah("inspect", "--type", "image", built.name))["OCIv1"]["config"]
    container = image.buildah("from", "--pull-never", built.name)
    try:
        yield Rootfs(Path(image.buildah("mount", container)), config.get("User", ""), config.get("Env", []))
    finally:
        image.buildah("rm", container)


def test_image_user_is_not_root(rootfs: Rootfs) -> None:
    assert rootfs.user == "65532:65532"
    result = rootfs.run("sh", "-c", "id -u; id -g")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65532", "65532"]


@pytest.mark.parametrize(
    "argv",
    [
        ("kubespiffe", "--help"),
        ("kubespiffe", "agent", "--help"),
        ("kubespiffe", "fetch", "--help"),
        ("kubespiffed", "--help"),
        ("python3", "-c", "import kubespiffe.agent.main, kubespiffe.server.main"),
    ],
)
def test_commands_run_on_a_read_only_root(rootfs: Rootfs, argv: tuple[str, ...]) -> None:
    result = rootfs.run(*argv)
    assert result.returncode == 0, result.stderr[-3000:]


def test_cryptography_uses_the_base_images_openssl(rootfs: Rootfs, snapshot: Path) -> None:
    """One OpenSSL per process: cryptography's Rust extension links the base's libssl3/libcrypto3, the ones
    the stdlib's ssl and hashlib load. The manylinux wheel carries its own OpenSSL, a second one mapped and
    initialised in every kubespiffe process (~5 MB of an agent's RSS)."""
    result = rootfs.run(
        "python3",
        "-c",
        "import json, ssl; from cryptography.hazmat.backends.openssl import backend; "
        "from cryptography.hazmat.bindings import _rust; "
        "print(json.dumps([backend.openssl_version_text(), ssl.OPENSSL_VERSION, _rust.__file__]))",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    theirs, stdlib, extension = json.loads(result.stdout)
    why = image.cryptography_build(snapshot)
    assert theirs == stdlib, f"cryptography runs {theirs}, ssl {stdlib}; the image build: {why}"
    linked = rootfs.run("ldd", extension)
    assert linked.returncode == 0, linked.stderr
    resolved = {
        words[0]: words[2] for words in map(str.split, linked.stdout.splitlines()) if words[1:2] == ["=>"]
    }
    for library in ("libssl.so.3", "libcrypto.so.3"):
        assert resolved.get(library, "").startswith(("/lib/", "/usr/lib/")), linked.stdout


def test_without_rust_or_libssl_dev_the_build_says_why(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manylinux fallback names what is missing (it is logged and goes into the image's hash)."""
    assert isinstance(image.cryptography_build(snapshot), image.CryptographyBuild)  # this machine has both
    monkeypatch.setenv("PKG_CONFIG_LIBDIR", str(tmp_path))  # pkg-config without openssl.pc
    assert "libssl-dev" in str(image.cryptography_build(snapshot))
    path = [entry for entry in os.environ["PATH"].split(os.pathsep) if not Path(entry, "cargo").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    monkeypatch.setenv("CARGO_HOME", str(tmp_path))
    assert "cargo not found" in str(image.cryptography_build(snapshot))


def test_kubespiffe_crypto_works_in_the_image(rootfs: Rootfs) -> None:
    """What kubespiffed and the agent do with cryptography, on the image's OpenSSL: a CA of every key type
    signs an X.509-SVID that verifies against it, and mints a JWT-SVID that validates."""
    script = """
import datetime as dt
from kubespiffe.authority.keys import KeyType, generate_key
from kubespiffe.authority.x509ca import create_self_signed_ca, sign_x509_svid_for_key
from kubespiffe.spiffe import jwtsvid
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import verify_chain

now, ttl = dt.datetime.now(dt.timezone.utc), dt.timedelta(minutes=5)
domain, workload = TrustDomain.parse("example.org"), SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
for key_type in KeyType:
    ca = create_self_signed_ca(domain, key_type, dt.timedelta(hours=1), now)
    leaf = sign_x509_svid_for_key(ca, generate_key().public_key(), workload, [], ttl, now)
    assert verify_chain([leaf], {domain: [ca.certificate]}, now) == workload
    token = jwtsvid.mint(ca.key, "k", workload, ["aud"], ttl, now)
    assert jwtsvid.validate(token, "aud", {domain: {"k": ca.key.public_key()}}, now).spiffe_id == workload
    print(key_type.value)
"""
    result = rootfs.run("python3", "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [key_type.value for key_type in KeyType]


def test_root_really_is_read_only(rootfs: Rootfs) -> None:
    """The harness itself can fail: a write outside /tmp is refused, one into /tmp works."""
    assert rootfs.run("sh", "-c", "echo x > /opt/kubespiffe/probe").returncode != 0
    assert rootfs.run("sh", "-c", "echo x > /tmp/probe").returncode == 0


def test_bytecode_is_precompiled(rootfs: Rootfs) -> None:
    """With PYTHONDONTWRITEBYTECODE and a read-only root, a missing .pyc is recompiled at every start."""
    env = dict(item.split("=", 1) for item in rootfs.env)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    result = rootfs.run(
        "python3",
        "-c",
        "import importlib.util as u, kubespiffe.agent.main as m, os; "
        "print(os.path.exists(u.cache_from_source(m.__file__)))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert not rootfs.path.joinpath("opt/kubespiffe/bin/pip").exists()


def test_archive_is_a_tagged_docker_archive(built: image.ImageRef, tmp_path: Path) -> None:
    """The format the node helper imports with `ctr -n k8s.io images import`."""
    archive = image.export_archive(built, tmp_path / "image.tar")
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        (entry,) = json.load(manifest)
    assert entry["RepoTags"] == [built.name]
    assert built.name.startswith(f"{image.IMAGE_REPOSITORY}:")


def test_unchanged_inputs_reuse_the_image(built: image.ImageRef, snapshot: Path) -> None:
    assert image.build_image(snapshot) == built


def test_the_cache_keeps_only_the_newest_images(built: image.ImageRef) -> None:
    """Every source change builds another ~250 MB image (and archive): only image.KEEP of each stay."""
    archive = image.cached_archive(built)
    names = [n for i in json.loads(image.buildah("images", "--json")) for n in i.get("names") or []]
    ours = [n for n in names if n.startswith(f"{image.IMAGE_REPOSITORY}:")]
    assert built.name in ours and len(ours) <= image.KEEP, ours
    archives = list(archive.parent.glob("kubespiffe-*.tar"))
    assert archive in archives and len(archives) <= image.KEEP, archives
