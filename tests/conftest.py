"""Shared fixtures: one real control plane (etcd + kube-apiserver) and one kubespiffed per test session.

Unit tests never request them, so a unit-only run starts nothing."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from lightkube import AsyncClient, KubeConfig

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, authority_bundle_pem, install, service_account_token
from kubespiffe.devenv.workloads import ensure_namespace
from tests.integration.kubespiffed import Running


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    log_dir = Path(os.environ.get("KUBESPIFFE_TEST_LOGS") or tmp_path_factory.mktemp("controlplane-logs"))
    plane = ControlPlane("test", log_dir=log_dir)
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def admin_kubeconfig(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kubeconfig") / "admin.kubeconfig"
    path.write_text(control_plane.admin_kubeconfig())
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
async def kube(admin_kubeconfig: Path) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_file(admin_kubeconfig), field_manager="kubespiffe-tests")
    yield client
    await client.close()


@pytest.fixture
async def namespace(kube: AsyncClient) -> str:
    """A fresh namespace per test (there is no namespace controller, so they are never deleted)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await ensure_namespace(kube, name, {"kubespiffe-test": "true"})
    return name


@pytest.fixture(scope="session")
async def kubespiffed(control_plane: ControlPlane, kube: AsyncClient) -> AsyncIterator[Running]:
    """kubespiffed as a real process, authenticated as its ServiceAccount under the shipped RBAC."""
    await install(kube)
    daemon = Kubespiffed(
        control_plane,
        trust_domain="example.org",
        # Fast federation for the two-cluster tests: peers publish a 2 s refresh hint.
        # Peers are local (loopback): allowed explicitly, as kubespiffed refuses non-public peers by default.
        extra_args=(
            "--federation-min-refresh=1s",
            "--bundle-refresh-hint=2s",
            "--federation-allowed-networks=127.0.0.0/8",
        ),
    )
    daemon.start(await service_account_token(kube))
    bundle = await authority_bundle_pem(kube)
    await asyncio.to_thread(daemon.wait_ready, bundle)
    yield Running(daemon, bundle)
    daemon.stop()
