"""cert-manager's controllers (tools/certmanager, built from the github.com/cert-manager/cert-manager Go
module and cached like devenv/build.py's binaries) against the tests' kube-apiserver, with cert-manager's own
CRDs read from that module in the Go module cache (never copied into this repository)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kubespiffe.devenv.build import ensure_tool, repo_root

MODULE = "github.com/cert-manager/cert-manager"


def _module_dir() -> Path:
    return repo_root() / "tools" / "certmanager"


def _go(*args: str) -> str:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    done = subprocess.run(
        ["go", *args], cwd=_module_dir(), env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def ensure_controller() -> Path:
    """The controller binary, built once per source hash (minutes on two cores)."""
    return ensure_tool("certmanager", "certmanager-controller")


def crd_paths() -> list[Path]:
    """cert-manager's CRDs as its module ships them (deploy/crds), from the module cache."""
    directory = Path(_go("list", "-m", "-f", "{{.Dir}}", MODULE).strip()) / "deploy" / "crds"
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise RuntimeError(f"no CRDs in {directory}")
    return paths


@dataclass
class CertManager:
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, kubeconfig: Path, namespace: str, log: Path) -> CertManager:
        binary = ensure_controller()
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(binary), f"--kubeconfig={kubeconfig}", f"--cluster-resource-namespace={namespace}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        time.sleep(0.5)
        if process.poll() is not None:
            raise RuntimeError(f"cert-manager's controller exited: {log.read_text()[-2000:]}")
        return cls(process, log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
