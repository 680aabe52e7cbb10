"""The real nodes the tests run on, and the timings the run measured, printed in the test summary.

- `cluster`: a bare node (control plane + containerd + kubelet + kube-proxy + scheduler +
  controller-manager), one per module that asks for it.
- `env`: kubespiffe installed from its image and chart on a node (NodeCluster), one per session, shared by
  every module that asks for it (test_kubespiffe_on_node.py, test_pod_certificates.py): installing costs
  about a minute. Only one node runs at a time, so the modules using `env` are run after the others
  (pytest_collection_modifyitems) and the shared node stops at the end of the session.
"""

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

from kubespiffe.devenv.build import ensure_interop
from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.images import interop_archive
from kubespiffe.devenv.node import Node
from kubespiffe.devenv.nodecluster import NodeCluster
from kubespiffe.devenv.workloads import ensure_namespace
from tests.node.pods import wait_service_account

TIMINGS: dict[str, list[float]] = {}
SHARED_NODE_FIXTURE = "env"
TRUST_DOMAIN = "node.example"
# Publish-ahead is 3x the refresh hint: a rotated CA activates ~6 s after `kubespiffe ca rotate`.
VALUES = {"bundleEndpoint": {"refreshHint": "2s"}}


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules that share the kubespiffe node after those that start their own node.

    Only tests/node's items move, and each module's tests stay together and in order.
    """
    here = Path(__file__).parent
    positions = [i for i, item in enumerate(items) if item.path.is_relative_to(here)]
    shared = {
        items[i].path for i in positions if SHARED_NODE_FIXTURE in getattr(items[i], "fixturenames", ())
    }
    ordered = sorted((items[i] for i in positions), key=lambda item: item.path in shared)
    for position, item in zip(positions, ordered, strict=True):
        items[position] = item


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


@dataclass
class Env:
    """kubespiffe on the node, and the go-spiffe pod image (tools/interop) imported into it."""

    cluster: NodeCluster
    interop_image: str


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Started once per session, for the modules that use it; teardown proves the machine is as found."""
    if os.geteuid() != 0:
        pytest.skip("node tests need root")
    directory = tmp_path_factory.mktemp("kubespiffe-node")
    interop_image, interop = interop_archive(ensure_interop())
    cluster = NodeCluster(directory, TRUST_DOMAIN, values=VALUES, extra_images=(interop,))
    began = time.monotonic()
    try:
        cluster.start()
        for name, seconds in cluster.timings.items():
            record(f"kubespiffe on node: {name}", seconds)
        yield Env(cluster, interop_image)
    finally:
        cluster.stop()
        record("kubespiffe on node: setup + tests + teardown", time.monotonic() - began)
    cluster.check_clean()
