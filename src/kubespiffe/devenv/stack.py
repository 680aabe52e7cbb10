"""Install kubespiffe into a control plane and run kubespiffed as a real process under its shipped RBAC.

kubespiffed authenticates as its ServiceAccount (a TokenRequest token in a kubeconfig kept in the control
plane's tmpfs directory), so everything it does is checked against deploy/manifests/rbac.yaml.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lightkube import AsyncClient
from lightkube.codecs import load_all_yaml
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Secret, ServiceAccountToken

from kubespiffe.devenv.build import repo_root
from kubespiffe.devenv.controlplane import ControlPlane, free_port

NAMESPACE = "kubespiffe-system"
SERVICE_ACCOUNT = "kubespiffed"
AUTHORITY_SECRET = "kubespiffe-authority"  # noqa: S105 (a Secret name)


def manifest_paths() -> list[Path]:
    deploy = repo_root() / "deploy"
    return [*sorted((deploy / "crds").glob("*.yaml")), deploy / "manifests" / "rbac.yaml"]


async def install(client: AsyncClient) -> None:
    """Apply the CRDs and RBAC (server-side apply) and wait until the CRDs are served."""
    crds: list[str] = []
    for path in manifest_paths():
        for obj in load_all_yaml(path.read_text()):
            await client.apply(obj, field_manager="kubespiffe-devenv", force=True)
            if isinstance(obj, CustomResourceDefinition) and obj.metadata and obj.metadata.name:
                crds.append(obj.metadata.name)
    for name in crds:
        await client.wait(CustomResourceDefinition, name, for_conditions=["Established"])


async def service_account_token(client: AsyncClient, hours: int = 24) -> str:
    request = ServiceAccountToken(
        metadata=ObjectMeta(namespace=NAMESPACE),
        spec=TokenRequestSpec(audiences=[], expirationSeconds=hours * 3600),
    )
    response = await client.create(request, SERVICE_ACCOUNT, namespace=NAMESPACE)
    assert response.status is not None
    token: str = response.status.token
    return token


async def authority_bundle_pem(
    client: AsyncClient, secret: str = AUTHORITY_SECRET, timeout: float = 30.0
) -> bytes:
    """The trust bundle as kubespiffed published it in its authority Secret (`ca.crt`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            obj = await client.get(Secret, secret, namespace=NAMESPACE)
            if obj.data and "ca.crt" in obj.data:
                return base64.b64decode(obj.data["ca.crt"])
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError("kubespiffed did not create its authority Secret in time")
        await asyncio.sleep(0.2)


@dataclass
class Kubespiffed:
    """One kubespiffed process against a control plane."""

    plane: ControlPlane
    trust_domain: str = "example.org"
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    bundle_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        # A file of each instance's own (restarts append to it): its port is a free port, which a later
        # instance may get too, and reading the earlier one's lines as its own misled a test.
        if self.log_path is None:
            self.log_path = self.plane.log_dir / f"kubespiffed-{self.port}-{uuid.uuid4().hex[:6]}.log"

    @property
    def log(self) -> Path:
        """Where this kubespiffed writes (stdout and stderr), all its starts."""
        assert self.log_path is not None
        return self.log_path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, token: str) -> None:
        kubeconfig = self.plane.dir / f"kubespiffed-{self.port}.kubeconfig"
        fd = os.open(kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.plane.token_kubeconfig(token))
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubespiffe.server.main",
                f"--trust-domain={self.trust_domain}",
                f"--namespace={NAMESPACE}",
                f"--kubeconfig={kubeconfig}",
                "--listen-host=127.0.0.1",
                f"--port={self.port}",
                f"--health-port={self.health_port}",
                f"--bundle-endpoint-port={self.bundle_port}",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, bundle_pem: bytes, timeout: float = 60.0) -> None:
        """Poll /readyz over TLS, verifying kubespiffed's certificate against the trust bundle."""
        context = ssl.create_default_context(cadata=bundle_pem.decode())
        context.check_hostname = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"kubespiffed exited with {self.process.returncode}")
            try:
                url = f"https://127.0.0.1:{self.health_port}/readyz"
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"kubespiffed not ready after {timeout:.0f}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def agent_command(server: str, token_file: Path, bundle_file: Path, socket: Path, *extra: str) -> list[str]:
    """`kubespiffe agent` as a pod's sidecar runs it, for the demo, benchmarks and tests."""
    return [
        sys.executable,
        "-m",
        "kubespiffe.cli.main",
        "agent",
        "--server",
        server,
        "--token-file",
        str(token_file),
        "--bundle-file",
        str(bundle_file),
        "--socket",
        str(socket),
        *extra,
    ]
