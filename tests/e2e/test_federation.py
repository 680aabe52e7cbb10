"""Two clusters, two kubespiffed, federated: cross-cluster mTLS and JWT, rotation, outages, endpoint loss.

Cluster A is the session cluster (trust domain example.org); cluster B (trust domain b) is started here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.pki import ClusterCA
from kubespiffe.devenv.stack import (
    NAMESPACE,
    Kubespiffed,
    agent_command,
    authority_bundle_pem,
    service_account_token,
)
from kubespiffe.devenv.up import Cluster, federate, spiffe_bundle
from kubespiffe.devenv.workloads import create_pod, ensure_namespace, pod_token
from kubespiffe.kube.client import FederatedTrustDomain
from kubespiffe.spiffe.bundle import parse_bundle_json, parse_der_certificates
from kubespiffe.spiffe.spiffeid import TrustDomain
from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.e2e.test_go_spiffe import MtlsServer, _run
from tests.integration.kubespiffed import Running, allow_secret, register, wait_events

pytestmark = pytest.mark.e2e

HEADER = (("workload.spiffe.io", "true"),)
A_TD = "example.org"


@pytest.fixture(scope="session")
async def cluster_b(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    cluster = Cluster(
        "b",
        "b",
        tmp_path_factory.mktemp("cluster-b"),
        extra_args=("--bundle-refresh-hint=2s", "--federation-min-refresh=1s", "--x509-svid-ttl=1m"),
    )
    await asyncio.to_thread(cluster.start)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
async def b_client(cluster_b: Cluster) -> AsyncIterator[AsyncClient]:
    client = cluster_b.client()
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def federated(
    kube: AsyncClient, kubespiffed: Running, cluster_b: Cluster, b_client: AsyncClient
) -> None:
    a_endpoint = f"https://127.0.0.1:{kubespiffed.daemon.bundle_port}/"
    await federate(kube, "b", cluster_b.bundle_endpoint, await spiffe_bundle(b_client, "b"))
    await federate(b_client, A_TD, a_endpoint, await spiffe_bundle(kube, A_TD))


async def _b_agent(cluster_b: Cluster, b_client: AsyncClient, interop_dir: Path, name: str) -> AgentProcess:
    """An agent for a pod in cluster B, started like the start_agent fixture does for cluster A."""
    pod = await create_pod(b_client, "team", name, "server")
    directory = interop_dir / name
    directory.mkdir()
    (directory / "token").write_text(await pod_token(b_client, pod))
    (directory / "bundle.pem").write_bytes((cluster_b.directory / "bundle.pem").read_bytes())
    socket = directory / "agent.sock"
    log = cluster_b.directory / "logs" / f"agent-{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 (a long-running child)
            agent_command(cluster_b.daemon.address, directory / "token", directory / "bundle.pem", socket),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    agent = AgentProcess(process, socket, log, None, pod)
    await _wait_bundles(agent, {"spiffe://b", f"spiffe://{A_TD}"})
    return agent


def _x509_bundles(agent: AgentProcess) -> dict[str, Any]:
    with grpc.insecure_channel(agent.address) as channel:
        stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509Bundles(
            workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=5
        )
        response = next(iter(stream))
        stream.cancel()
    return dict(response.bundles)


async def _wait_bundles(agent: AgentProcess, expected: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            bundles = await asyncio.to_thread(_x509_bundles, agent)
            if set(bundles) == expected:
                return bundles
        except (grpc.RpcError, StopIteration):
            bundles = {}
        assert time.monotonic() < deadline, f"agent bundles {sorted(bundles)} never became {sorted(expected)}"
        await asyncio.sleep(0.3)


@pytest.fixture
async def pair(
    kube: AsyncClient,
    namespace: str,
    start_agent: AgentFactory,
    cluster_b: Cluster,
    b_client: AsyncClient,
    federated: None,
    tmp_path: Path,
) -> AsyncIterator[tuple[AgentProcess, AgentProcess, str, str]]:
    """A client workload in A and a server workload in B, each federating with the other."""
    await register(kube, "client", {"serviceAccountNames": ["client"], "federatesWith": ["b"]}, namespace)
    await ensure_namespace(b_client, "team")
    try:
        await register(
            b_client, "server", {"serviceAccountNames": ["server"], "federatesWith": [A_TD]}, "team"
        )
    except ApiError as exc:
        if exc.status.code != 409:  # created by an earlier test of this session
            raise
    client_agent: AgentProcess = await start_agent("client-1", "client")
    await _wait_bundles(client_agent, {f"spiffe://{A_TD}", "spiffe://b"})
    server_agent = await _b_agent(cluster_b, b_client, tmp_path, f"server-{namespace}")
    yield (
        client_agent,
        server_agent,
        f"spiffe://{A_TD}/ns/{namespace}/sa/client",
        "spiffe://b/ns/team/sa/server",
    )
    server_agent.stop()


async def test_cross_cluster_mtls_with_exact_ids(
    pair: tuple[AgentProcess, AgentProcess, str, str], interop: Path
) -> None:
    client_agent, server_agent, client_id, server_id = pair
    server = await asyncio.to_thread(MtlsServer, interop, server_agent, client_id, 60)
    try:
        ok = await asyncio.to_thread(
            _run, interop, client_agent, "mtls-client", "-connect", server.address, "-authorize", server_id
        )
        assert ok["results"][0].get("body") == f"hello {client_id}", ok
    finally:
        server.stop()


async def test_jwt_minted_in_a_validates_in_b(
    pair: tuple[AgentProcess, AgentProcess, str, str], interop: Path
) -> None:
    client_agent, server_agent, client_id, _ = pair
    fetched = await asyncio.to_thread(_run, interop, client_agent, "fetch-jwt", "-audience", "b-service")
    with grpc.insecure_channel(server_agent.address) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        valid = stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="b-service", svid=fetched["token"]), metadata=HEADER
        )
    assert valid.spiffe_id == client_id
    by_go = await asyncio.to_thread(
        _run, interop, server_agent, "validate-jwt", "-audience", "b-service", "-token", fetched["token"]
    )
    assert by_go["id"] == client_id


async def test_go_spiffe_fetches_our_bundle_endpoint(
    kubespiffed: Running, interop: Path, tmp_path: Path, kube: AsyncClient
) -> None:
    bootstrap = tmp_path / "bundle.json"
    bootstrap.write_bytes(await spiffe_bundle(kube, A_TD))
    result = await asyncio.to_thread(
        subprocess.run,
        [
            str(interop),
            "fetch-bundle",
            "-url",
            f"https://127.0.0.1:{kubespiffed.daemon.bundle_port}/",
            "-trust-domain",
            A_TD,
            "-endpoint-id",
            f"spiffe://{A_TD}/kubespiffe/kubespiffed",
            "-bundle-file",
            str(bootstrap),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fetched = json.loads(result.stdout)
    assert (
        fetched["trust_domain"] == A_TD
        and fetched["x509_authorities"] >= 1
        and fetched["jwt_authorities"] >= 1
    )
    assert fetched["refresh_hint_seconds"] == 2 and fetched["sequence"] >= 1
    wrong = await asyncio.to_thread(
        subprocess.run,
        [
            str(interop),
            "fetch-bundle",
            "-url",
            f"https://127.0.0.1:{kubespiffed.daemon.bundle_port}/",
            "-trust-domain",
            A_TD,
            "-endpoint-id",
            f"spiffe://{A_TD}/not/the/endpoint",
            "-bundle-file",
            str(bootstrap),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert wrong.returncode != 0 and "unexpected ID" in wrong.stderr


async def _ftd_status(kube: AsyncClient, name: str) -> dict[str, Any]:
    obj = await kube.get(FederatedTrustDomain, name)
    status: dict[str, Any] = obj.to_dict().get("status") or {}
    return status


async def _wait_condition(kube: AsyncClient, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = await _ftd_status(kube, name)
        if any(c.get("reason") == reason for c in status.get("conditions") or []):
            return status
        assert time.monotonic() < deadline, f"FederatedTrustDomain {name} never reported {reason}: {status}"
        await asyncio.sleep(0.3)


async def test_rotations_in_b_reach_a_and_cross_cluster_mtls_keeps_working(
    pair: tuple[AgentProcess, AgentProcess, str, str], interop: Path, cluster_b: Cluster, kube: AsyncClient
) -> None:
    client_agent, server_agent, client_id, server_id = pair
    server = await asyncio.to_thread(MtlsServer, interop, server_agent, client_id, 300)
    try:
        for rotation in range(3):
            before = (await _ftd_status(kube, "b")).get("sequence", 0)
            subprocess.run(  # noqa: ASYNC221
                [
                    sys.executable,
                    "-m",
                    "kubespiffe.cli.main",
                    "ca",
                    "rotate",
                    "--kubeconfig",
                    str(cluster_b.kubeconfig),
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            deadline = time.monotonic() + 30
            while (await _ftd_status(kube, "b")).get("sequence", 0) <= before:
                assert time.monotonic() < deadline, f"rotation {rotation}: A never fetched B's new bundle"
                await asyncio.sleep(0.3)
            # Activation follows 3 x 2 s later; keep connecting through it.
            result = await asyncio.to_thread(
                _run,
                interop,
                client_agent,
                "mtls-client",
                "-connect",
                server.address,
                "-authorize",
                server_id,
                "-count",
                "8",
                "-interval",
                "1s",
                "-timeout",
                "60s",
                timeout=70,
            )
            assert all(r.get("body") == f"hello {client_id}" for r in result["results"]), result
    finally:
        server.stop()


async def test_endpoint_down_keeps_last_good_bundle_and_recovers(
    control_plane: ControlPlane,
    kube: AsyncClient,
    kubespiffed: Running,
    namespace: str,
    start_agent: AgentFactory,
    cluster_b: Cluster,
    federated: None,
) -> None:
    await _wait_condition(kube, "b", "Fetched")
    good = (await _ftd_status(kube, "b"))["bundle"]
    cluster_b.daemon.stop()
    try:
        status = await _wait_condition(kube, "b", "FetchFailed")
        assert status["bundle"] == good
        failed = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert failed["status"] == "False" and failed["message"]
        await wait_events(
            kube, "default", lambda e: e.involvedObject.name == "b" and e.reason == "FetchFailed"
        )
        # A new replica (or a restart) in A serves B's last good bundle from status, without fetching.
        replica = Kubespiffed(control_plane)
        replica.start(await service_account_token(kube))
        try:
            await asyncio.to_thread(replica.wait_ready, kubespiffed.bundle_pem)
            await register(
                kube, "outage", {"serviceAccountNames": ["outage"], "federatesWith": ["b"]}, namespace
            )
            agent: AgentProcess = await start_agent("outage-1", "outage", server=replica.address)
            served = await _wait_bundles(agent, {f"spiffe://{A_TD}", "spiffe://b"})
            expected = {
                c.serial_number for c in parse_bundle_json(TrustDomain("b"), good.encode()).x509_authorities
            }
            assert {c.serial_number for c in parse_der_certificates(served["spiffe://b"])} == expected
        finally:
            replica.stop()
    finally:
        token_client = cluster_b.client()
        restarted = type(cluster_b.daemon)(
            cluster_b.plane,
            trust_domain="b",
            extra_args=cluster_b.daemon.extra_args,
            port=cluster_b.daemon.port,
            health_port=cluster_b.daemon.health_port,
            bundle_port=cluster_b.daemon.bundle_port,
        )
        restarted.start(await service_account_token(token_client))
        current_bundle = await authority_bundle_pem(token_client)  # B may have rotated since it started
        await token_client.close()
        cluster_b.daemon = restarted
        await asyncio.to_thread(restarted.wait_ready, current_bundle)
    await _wait_condition(kube, "b", "Fetched")


async def test_deleting_the_federated_trust_domain_removes_the_bundle_from_workloads(
    kube: AsyncClient,
    namespace: str,
    start_agent: AgentFactory,
    cluster_b: Cluster,
    b_client: AsyncClient,
    federated: None,
) -> None:
    await register(kube, "leaver", {"serviceAccountNames": ["leaver"], "federatesWith": ["b"]}, namespace)
    agent: AgentProcess = await start_agent("leaver-1", "leaver")
    await _wait_bundles(agent, {f"spiffe://{A_TD}", "spiffe://b"})
    await kube.delete(FederatedTrustDomain, "b")
    try:
        await _wait_bundles(agent, {f"spiffe://{A_TD}"})
    finally:
        await federate(kube, "b", cluster_b.bundle_endpoint, await spiffe_bundle(b_client, "b"))


async def test_go_spiffe_fetches_our_bundle_endpoint_with_the_https_web_profile(
    control_plane: ControlPlane, kube: AsyncClient, kubespiffed: Running, interop: Path, tmp_path: Path
) -> None:
    """An operator's web-PKI certificate (a kubernetes.io/tls Secret) instead of kubespiffed's own SVID."""
    web_ca = ClusterCA()
    pair = web_ca.issue("bundle endpoint", server_names=("localhost",), server_ips=("127.0.0.1",))
    secret = f"web-{uuid.uuid4().hex[:6]}"
    await kube.create(
        Secret(
            metadata=ObjectMeta(name=secret, namespace=NAMESPACE),
            type="kubernetes.io/tls",
            data={
                "tls.crt": base64.b64encode(pair.cert_pem).decode(),
                "tls.key": base64.b64encode(pair.key_pem).decode(),
            },
        )
    )
    await allow_secret(kube, secret)
    daemon = Kubespiffed(control_plane, extra_args=(f"--bundle-endpoint-web-secret={secret}",))
    daemon.start(await service_account_token(kube))
    try:
        await asyncio.to_thread(daemon.wait_ready, await authority_bundle_pem(kube))
        roots = tmp_path / "web-ca.pem"
        roots.write_bytes(web_ca.cert_pem)
        fetch = [
            str(interop),
            "fetch-bundle",
            "-url",
            f"https://localhost:{daemon.bundle_port}/",
            "-trust-domain",
            A_TD,
        ]
        ok = await asyncio.to_thread(
            subprocess.run, [*fetch, "-bundle-file", str(roots)], capture_output=True, text=True, timeout=30
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["trust_domain"] == A_TD
        untrusted = await asyncio.to_thread(subprocess.run, fetch, capture_output=True, text=True, timeout=30)
        assert untrusted.returncode != 0 and "certificate" in untrusted.stderr
    finally:
        daemon.stop()
