"""One real node (control plane + containerd + kubelet + kube-proxy + scheduler + controller-manager) per
module, and the timings the run measured, printed in the test summary."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from lightkube import AsyncClient, KubeConfig

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.node import Node
from kubespiffe.devenv.workloads import ensure_namespace
from tests.node.pods import wait_service_account

TIMINGS: dict[str, list[float]] = {}


def record(name: str, seconds: float) -> None:
    TIMINGS.setdefault(name, []).append(seconds)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.geteuid() != 0:
        terminalreporter.section("local node")
        terminalreporter.write_line(
            "tests/node SKIPPED: not root (containerd, a kubelet, iptables); CI runs them as root",
            yellow=True,
        )
    if TIMINGS:
        terminalreporter.section("local node timings (seconds)")
        for name, values in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {', '.join(f'{v:.2f}' for v in values)}")


@dataclass
class Cluster:
    plane: ControlPlane
    node: Node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Started once per module; teardown then proves the machine is as found (or errors the module)."""
    if os.geteuid() != 0:
        pytest.skip("node tests need root")
    log_dir = Path(os.environ.get("KUBESPIFFE_TEST_LOGS") or tmp_path_factory.mktemp("node-logs"))
    began = time.monotonic()
    plane = ControlPlane("node", log_dir=log_dir, with_nodes=True)
    node = Node(plane, log_dir=log_dir)
    try:
        node.start()  # the bridge, then the control plane listening on it, then the node
        record("containerd start -> node Ready", node.timings["containerd_to_ready"])
        record("node setup (control plane included)", node.timings["setup"])
        yield Cluster(plane, node)
    finally:
        stopping = time.monotonic()
        node.stop()
        record("node teardown", node.timings.get("teardown", float("nan")))
        record("control plane + node teardown", time.monotonic() - stopping)
        record("whole setup + tests + teardown", time.monotonic() - began)
    node.check_clean()


@pytest.fixture(scope="module")
async def kube(cluster: Cluster) -> AsyncIterator[AsyncClient]:
    config = KubeConfig.from_dict(yaml.safe_load(cluster.plane.admin_kubeconfig()))
    client = AsyncClient(config, field_manager="kubespiffe-node-tests")
    yield client
    await client.close()


@pytest.fixture
async def namespace(kube: AsyncClient) -> str:
    """A fresh namespace with its `default` ServiceAccount (made by the controller-manager)."""
    name = f"n-{uuid.uuid4().hex[:10]}"
    await ensure_namespace(kube, name, {"kubespiffe-test": "true"})
    await wait_service_account(kube, name)
    return name
