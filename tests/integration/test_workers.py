"""kubespiffed --workers 2 against a real kube-apiserver: two processes answer on one port, only the primary
does the Lease holder's work, a worker that dies is started again, and workers stop with the primary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from lightkube import AsyncClient
from lightkube.resources.coordination_v1 import Lease
from prometheus_client.parser import text_string_to_metric_families

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import (
    NAMESPACE,
    Kubespiffed,
    authority_bundle_pem,
    install,
    service_account_token,
)
from kubespiffe.proto import issuer_pb2, issuer_pb2_grpc
from kubespiffe.server.config import ServerConfig
from kubespiffe.server.workers import WorkerFailed, WorkerPool
from kubespiffe.spiffe.spiffeid import TrustDomain

from .kubespiffed import Running, allow_secret, pod_with_token, register

pytestmark = pytest.mark.integration


async def _start(control_plane: ControlPlane, kube: AsyncClient, secret: str) -> Running:
    """kubespiffed --workers=2 with its own authority Secret (and so its own Lease), worker 1 ready."""
    await install(kube)  # CRDs and RBAC (idempotent)
    await allow_secret(kube, secret)
    daemon = Kubespiffed(
        control_plane, extra_args=("--workers=2", f"--authority-secret={secret}", "--bundle-configmap=")
    )
    daemon.start(await service_account_token(kube))
    bundle = await authority_bundle_pem(kube, secret=secret)
    await asyncio.to_thread(daemon.wait_ready, bundle)
    running = Running(daemon, bundle)
    await _worker_ready(running)
    return running


@pytest.fixture(scope="module")
async def two_workers(control_plane: ControlPlane, kube: AsyncClient) -> AsyncIterator[Running]:
    running = await _start(control_plane, kube, f"workers-{uuid.uuid4().hex[:8]}")
    yield running
    running.daemon.stop()


def _log(running: Running) -> str:
    return running.log.read_text(errors="replace")


async def _worker_ready(running: Running, not_pid: int | None = None, timeout: float = 60) -> int:
    """The pid of worker 1 once its log says it is ready (a pid other than `not_pid`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(p) for p in re.findall(r"worker 1 ready pid=(\d+)", _log(running))]
        if pids and pids[-1] != not_pid:
            return pids[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker 1 not ready after {timeout}s:\n{_log(running)[-3000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _served_certificate(port: int) -> bytes:
    """The certificate whoever accepted this new connection serves: each process has its own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


async def _mint_on_new_connection(running: Running, token: str) -> issuer_pb2.MintX509SVIDResponse:
    """One MintX509SVID on a connection of its own (a local subchannel pool: no connection reuse)."""
    from kubespiffe.agent.issuer_client import new_csr

    options = [("grpc.ssl_target_name_override", "kubespiffed"), ("grpc.use_local_subchannel_pool", 1)]
    credentials = grpc.ssl_channel_credentials(running.bundle_pem)
    async with grpc.aio.secure_channel(running.address, credentials, options=options) as channel:
        response: issuer_pb2.MintX509SVIDResponse = await issuer_pb2_grpc.IssuerStub(channel).MintX509SVID(
            issuer_pb2.MintX509SVIDRequest(csr=new_csr()[1]),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    return response


async def test_two_processes_answer_on_one_port(
    kube: AsyncClient, two_workers: Running, namespace: str
) -> None:
    served = {await asyncio.to_thread(_served_certificate, two_workers.daemon.port) for _ in range(40)}
    assert len(served) == 2  # the kernel spreads connections over both listening processes

    await register(kube, "spread", {"serviceAccountNames": ["spread"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "spread-0", "spread")
    for _ in range(40):
        response = await _mint_on_new_connection(two_workers, token)
        assert [s.spiffe_id for s in response.svids] == [f"spiffe://example.org/ns/{namespace}/sa/spread"]
    attested = [
        line
        for line in _log(two_workers).splitlines()
        if f"attested pod=spread-0 namespace={namespace}" in line
    ]
    by_worker = [line for line in attested if " worker=1 " in line]
    assert len(attested) == 40
    assert 0 < len(by_worker) < 40  # both the primary and the worker signed


async def test_a_worker_has_its_own_process_group_in_the_primarys_session(two_workers: Running) -> None:
    """Ctrl-C in a terminal reaches the primary only (it stops the workers itself); the session stays
    the primary's, so where the kernel shares CPU time by session (sched_autogroup) the workers do not
    take a share each."""
    assert two_workers.daemon.process is not None
    primary = two_workers.daemon.process.pid
    worker = await _worker_ready(two_workers)
    assert os.getpgid(worker) == worker != os.getpgid(primary)
    assert os.getsid(worker) == os.getsid(primary)


async def test_only_the_primary_does_the_lease_holders_work(
    kube: AsyncClient, two_workers: Running, namespace: str
) -> None:
    assert two_workers.daemon.process is not None
    primary = f"{socket.gethostname()}-{two_workers.daemon.process.pid}"
    secret = next(a.split("=", 1)[1] for a in two_workers.daemon.extra_args if a.startswith("--authority-"))
    lease = await kube.get(Lease, f"{secret}-leader", namespace=NAMESPACE)
    assert lease.spec is not None and lease.spec.holderIdentity == primary

    name = f"status-{uuid.uuid4().hex[:6]}"
    await register(kube, name, {"serviceAccountNames": ["status"]}, namespace)  # waits for Ready status
    await asyncio.sleep(2)  # a worker writing status would have done so by now
    written = [
        line for line in _log(two_workers).splitlines() if "registration ready" in line and name in line
    ]
    assert len(written) == 1 and " worker=" not in written[0]
    worker_lines = [line for line in _log(two_workers).splitlines() if " worker=1 " in line]
    assert worker_lines and not [line for line in worker_lines if "leadership" in line or "rotated" in line]
    lease = await kube.get(Lease, f"{secret}-leader", namespace=NAMESPACE)
    assert lease.spec is not None and lease.spec.holderIdentity == primary


async def test_a_worker_that_dies_is_started_again(
    kube: AsyncClient, two_workers: Running, namespace: str
) -> None:
    await register(kube, "restart", {"serviceAccountNames": ["restart"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "restart-0", "restart")
    old = await _worker_ready(two_workers)
    os.kill(old, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert (await _mint_on_new_connection(two_workers, token)).svids  # the primary still serves
    new = await _worker_ready(two_workers, not_pid=old)
    assert f"worker 1 (pid {old}) exited with -9; starting it again" in _log(two_workers)
    served = {await asyncio.to_thread(_served_certificate, two_workers.daemon.port) for _ in range(40)}
    assert len(served) == 2
    assert _alive(new)


async def test_workers_stop_when_the_primary_is_gone(control_plane: ControlPlane, kube: AsyncClient) -> None:
    running = await _start(control_plane, kube, f"orphan-{uuid.uuid4().hex[:8]}")
    worker = await _worker_ready(running)
    assert running.daemon.process is not None
    try:
        running.daemon.process.kill()  # SIGKILL: no chance to stop its workers itself
        running.daemon.process.wait()
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.1)
        assert not _alive(worker), "the worker outlived the primary"
        assert "the primary kubespiffed process is gone; stopping" in _log(running)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
        running.daemon.stop()


async def test_a_worker_that_cannot_start_stops_kubespiffed(tmp_path: Path) -> None:
    """Three starts that never get ready end the pool with WorkerFailed (kubespiffed then exits)."""
    config = ServerConfig(trust_domain=TrustDomain("example.org"), kubeconfig=str(tmp_path / "missing"))
    pool = WorkerPool(config, 1)
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(pool.run(), 60)
    assert caught.group_contains(WorkerFailed, match="worker 1 exited before it was ready 3 times")
    assert pool.ready == {}


def _issued(running: Running) -> dict[str, float]:
    """kubespiffe_svids_issued_total{type="x509"} by `worker` label, from the primary's /metrics."""
    context = ssl.create_default_context(cadata=running.bundle_pem.decode())
    context.check_hostname = False
    url = f"https://127.0.0.1:{running.daemon.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubespiffe_svids_issued_total" and sample.labels.get("type") == "x509":
                found[sample.labels["worker"]] = sample.value
    return found


async def test_metrics_count_the_calls_of_every_process(
    kube: AsyncClient, two_workers: Running, namespace: str
) -> None:
    await register(kube, "counted", {"serviceAccountNames": ["counted"]}, namespace)
    _, token = await pod_with_token(kube, namespace, "counted-0", "counted")
    await asyncio.sleep(6)  # the worker's last snapshot is current
    before = await asyncio.to_thread(_issued, two_workers)
    for _ in range(30):
        await _mint_on_new_connection(two_workers, token)
    deadline = time.monotonic() + 15
    after = before
    while sum(after.values()) < sum(before.values()) + 30 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        after = await asyncio.to_thread(_issued, two_workers)
    assert sum(after.values()) == sum(before.values()) + 30
    assert set(after) == {"0", "1"}
    assert all(after[w] > before.get(w, 0) for w in after)  # both processes signed some
