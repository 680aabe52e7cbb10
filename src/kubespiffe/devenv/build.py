"""Build etcd, kube-apiserver and the node components from the Go module under tools/controlplane, once.

The binaries land in a cache outside the repository keyed by the pinned versions and a hash of go.mod and
go.sum, so a second run (or CI on the same machine) reuses them. Building prints progress because a cold
build of kube-apiserver takes minutes on two cores.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
APISERVER_PACKAGE = "k8s.io/kubernetes/cmd/kube-apiserver"
NODE_PACKAGES = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}


def repo_root() -> Path:
    """The checkout this package runs from (editable install), overridable for installed copies."""
    override = os.environ.get("KUBESPIFFE_REPO")
    return Path(override) if override else Path(__file__).resolve().parents[3]


def cache_root() -> Path:
    base = os.environ.get("KUBESPIFFE_CACHE") or os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "kubespiffe"


@dataclass(frozen=True)
class ControlPlaneBinaries:
    etcd: Path
    kube_apiserver: Path
    kubernetes_version: str


@dataclass(frozen=True)
class NodeBinaries:
    """What a local node runs besides containerd: built from the same k8s.io/kubernetes as the API server."""

    kubelet: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kube_proxy: Path
    kubernetes_version: str


def _module_version(go_mod: str, module: str) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", go_mod, re.MULTILINE)
    if not match:
        raise RuntimeError(f"{module} is not required in tools/controlplane/go.mod")
    return match.group(1)


def _module_dir() -> Path:
    return repo_root() / "tools" / "controlplane"


def _build_dir(module_dir: Path, kind: str = "controlplane") -> tuple[Path, str]:
    go_mod = (module_dir / "go.mod").read_text()
    k8s = _module_version(go_mod, "k8s.io/kubernetes")
    etcd = _module_version(go_mod, ETCD_PACKAGE)
    digest = hashlib.sha256(go_mod.encode() + (module_dir / "go.sum").read_bytes()).hexdigest()[:12]
    return cache_root() / kind / f"k8s-{k8s}-etcd-{etcd}-{digest}", k8s


def _version_ldflags(k8s_version: str) -> str:
    """Stamp the version the binaries report (`/version`, kubelet's node status), as release builds do."""
    version_flags = " ".join(
        f"-X k8s.io/component-base/version.{name}={value}"
        for name, value in (
            ("gitVersion", k8s_version),
            ("gitMajor", k8s_version.split(".")[0].lstrip("v")),
            ("gitMinor", k8s_version.split(".")[1]),
            ("gitTreeState", "clean"),
        )
    )
    return f"-s -w {version_flags}"


def _build_all(module_dir: Path, target: Path, builds: list[tuple[str, str, str]]) -> None:
    """Build (package, binary name, ldflags) into a staging directory renamed into place when all succeed."""
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build the local cluster binaries; `go` is not on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        for package, name, ldflags in builds:
            go_build(module_dir, package, staging / name, ldflags)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def go_build(module_dir: Path, package: str, output: Path, ldflags: str) -> None:
    """`go build -v` prints each package as it compiles; count them so a long build shows it is alive."""
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(output), package]
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    print(f"building {package} (first run only; cached afterwards) ...", file=sys.stderr, flush=True)
    with subprocess.Popen(
        cmd, cwd=module_dir, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stderr is not None
        tail: list[str] = []
        for compiled, line in enumerate(proc.stderr, start=1):
            tail = [*tail[-20:], line.rstrip()]
            if compiled % 100 == 0:
                print(f"  {package}: {compiled} packages compiled", file=sys.stderr, flush=True)
        if proc.wait() != 0:
            detail = "\n".join(tail)
            raise RuntimeError(f"go build {package} failed (exit {proc.returncode}):\n{detail}")


def ensure_binaries(module_dir: Path | None = None) -> ControlPlaneBinaries:
    """Return the cached binaries, building whatever is missing."""
    module_dir = module_dir or _module_dir()
    target, k8s_version = _build_dir(module_dir)
    etcd, apiserver = target / "etcd", target / "kube-apiserver"
    if not (etcd.exists() and apiserver.exists()):
        _build_all(
            module_dir,
            target,
            [
                (ETCD_PACKAGE, "etcd", "-s -w"),
                (APISERVER_PACKAGE, "kube-apiserver", _version_ldflags(k8s_version)),
            ],
        )
    return ControlPlaneBinaries(etcd=etcd, kube_apiserver=apiserver, kubernetes_version=k8s_version)


def ensure_node_binaries(module_dir: Path | None = None) -> NodeBinaries:
    """kubelet, kube-controller-manager, kube-scheduler and kube-proxy, cached like the control plane.

    They live in their own directory (same key) so that a machine that never runs a node never builds them.
    """
    module_dir = module_dir or _module_dir()
    target, k8s_version = _build_dir(module_dir, "node")
    if not all((target / name).exists() for name in NODE_PACKAGES):
        flags = _version_ldflags(k8s_version)
        _build_all(module_dir, target, [(package, name, flags) for name, package in NODE_PACKAGES.items()])
    return NodeBinaries(
        kubelet=target / "kubelet",
        kube_controller_manager=target / "kube-controller-manager",
        kube_scheduler=target / "kube-scheduler",
        kube_proxy=target / "kube-proxy",
        kubernetes_version=k8s_version,
    )


def ensure_tool(name: str, binary_name: str) -> Path:
    """tools/<name>, a Go program of the tests or benchmarks, built once per hash of its go.mod, go.sum and
    *.go files into ~/.cache/kubespiffe/<name>/<hash>/<binary_name> (renamed into place when built)."""
    module_dir = repo_root() / "tools" / name
    sources = [module_dir / "go.mod", module_dir / "go.sum", *sorted(module_dir.glob("*.go"))]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]
    binary = cache_root() / name / digest / binary_name
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        staging = binary.parent / f".{binary_name}-{os.getpid()}"
        go_build(module_dir, ".", staging, "-s -w")
        staging.rename(binary)
    return binary


def ensure_interop() -> Path:
    """The go-spiffe interop program (tools/interop)."""
    return ensure_tool("interop", "spiffe-interop")


if __name__ == "__main__":
    binaries = ensure_binaries()
    print(f"etcd: {binaries.etcd}\nkube-apiserver: {binaries.kube_apiserver}")
    print(f"spiffe-interop: {ensure_interop()}")
    if "--node" in sys.argv[1:]:
        node = ensure_node_binaries()
        print(f"kubelet: {node.kubelet}")
