"""Envoy SDS on the agent's socket, with real agents and kubespiffed, checked by clients kubespiffe did not
write: tools/sdsclient (go-control-plane's Envoy types over grpc-go, decoding every Secret, verifying each
certificate chain against the validation contexts as Envoy's SPIFFE validator would) and xds-protos' stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.devenv.build import ensure_tool
from kubespiffe.kube.client import FederatedTrustDomain
from kubespiffe.spiffe.bundle import certificates_to_pem
from kubespiffe.spiffe.spiffeid import TrustDomain
from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.integration.kubespiffed import Running, register

pytestmark = pytest.mark.e2e

HEADER = (("workload.spiffe.io", "true"),)
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def ensure_sdsclient() -> Path:
    """tools/sdsclient (go-control-plane's SDS types over grpc-go)."""
    return ensure_tool("sdsclient", "sdsclient")


@pytest.fixture(scope="session")
def sdsclient() -> Path:
    return ensure_sdsclient()


def _run(binary: Path, agent: AgentProcess, *args: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Run sdsclient against the agent; its JSON lines (an RPC error is the last line, as {"error": ...})."""
    done = subprocess.run(
        [str(binary), "-socket", str(agent.socket), "-timeout", f"{timeout}s", *args],
        capture_output=True,
        text=True,
        timeout=timeout + 15,
        check=False,
    )
    assert done.returncode == 0, (
        f"sdsclient failed: {done.stderr}\nagent log: {agent.log.read_text()[-2000:]}"
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def _secrets(line: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in line["secrets"]}


def _fingerprints(certificates: list[x509.Certificate]) -> list[str]:
    return [hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in certificates]


@pytest.fixture
async def federated(kube: AsyncClient) -> AsyncIterator[tuple[TrustDomain, x509.Certificate]]:
    """A federated trust domain known by its bootstrap bundle (its endpoint, a closed loopback port, never
    answers): enough for kubespiffed to hand its bundle to pods that federate with it."""
    trust_domain = TrustDomain(f"sds-{uuid.uuid4().hex[:8]}.test")
    ca = create_self_signed_ca(trust_domain, KeyType.EC_P256, dt.timedelta(days=1), dt.datetime.now(dt.UTC))
    name = trust_domain.name.replace(".", "-")
    await kube.create(
        FederatedTrustDomain(
            metadata=ObjectMeta(name=name),
            spec={
                "trustDomain": trust_domain.name,
                "bundleEndpointURL": "https://127.0.0.1:1/",
                "bundleEndpointProfile": {"type": "https_web"},
                "trustDomainBundle": certificates_to_pem([ca.certificate]).decode(),
            },
        )
    )
    yield trust_domain, ca.certificate
    with contextlib.suppress(ApiError):
        await kube.delete(FederatedTrustDomain, name)


async def test_envoy_gets_its_certificate_and_spiffe_validation_contexts(
    kube: AsyncClient,
    kubespiffed: Running,
    namespace: str,
    start_agent: AgentFactory,
    sdsclient: Path,
    federated: tuple[TrustDomain, x509.Certificate],
) -> None:
    peer, peer_ca = federated
    await register(kube, "web", {"serviceAccountNames": ["web"], "federatesWith": [peer.name]}, namespace)
    agent: AgentProcess = await start_agent("web-1", "web")
    own_id = f"spiffe://example.org/ns/{namespace}/sa/web"
    names = ["default", own_id, "ROOTCA", "ALL", f"spiffe://{peer.name}", "spiffe://example.org"]
    # The federated bundle reaches the agent shortly after its SVID: ask until ALL holds it.
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        (line,) = await asyncio.to_thread(_run, sdsclient, agent, "-names", ",".join(names))
        if "error" not in line and len(_secrets(line)["ALL"]["trust_domains"]) == 2:
            break
        assert asyncio.get_running_loop().time() < deadline, f"never both trust domains: {line}"
        await asyncio.sleep(0.5)
    assert line["type_url"] == SECRET and line["version"] and line["nonce"]
    secrets = _secrets(line)
    assert [s["name"] for s in line["secrets"]] == names
    own = _fingerprints(kubespiffed.bundle)
    for name in ("default", own_id):
        tls = secrets[name]
        assert tls["kind"] == "tls" and tls["spiffe_id"] == own_id and tls["key_matches"]
        # Verified by the contexts holding example.org's bundle, as Envoy's SPIFFE validator would.
        assert tls["verified_by"] == ["ROOTCA", "ALL", "spiffe://example.org"]
    assert secrets["default"]["chain"] == secrets[own_id]["chain"]
    for name in ("ROOTCA", "spiffe://example.org"):
        assert secrets[name]["validator"] == "spiffe" and secrets[name]["trust_domains"] == {
            "example.org": own
        }
    assert secrets["ALL"]["trust_domains"] == {"example.org": own, peer.name: _fingerprints([peer_ca])}
    assert secrets[f"spiffe://{peer.name}"]["trust_domains"] == {peer.name: _fingerprints([peer_ca])}

    # Envoy asks for a plain CA through its node metadata; ALL cannot be one.
    (plain,) = await asyncio.to_thread(
        _run, sdsclient, agent, "-no-spiffe-validation", "-names", "default,ROOTCA"
    )
    rootca = _secrets(plain)["ROOTCA"]
    assert rootca["validator"] == "trusted_ca" and rootca["trusted_ca"] == own
    assert _secrets(plain)["default"]["verified_by"] == ["ROOTCA"]
    (refused,) = await asyncio.to_thread(_run, sdsclient, agent, "-no-spiffe-validation", "-names", "ALL")
    assert refused["error"]["code"] == "InvalidArgument"


async def test_refusals_fetch_and_delta(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, sdsclient: Path
) -> None:
    await register(kube, "api", {"serviceAccountNames": ["api"]}, namespace)
    agent: AgentProcess = await start_agent("api-1", "api")
    other = f"spiffe://example.org/ns/{namespace}/sa/other"
    for mode in ("stream", "fetch"):
        (line,) = await asyncio.to_thread(_run, sdsclient, agent, "-mode", mode, "-names", f"default,{other}")
        assert line["error"]["code"] == "InvalidArgument" and other in line["error"]["message"]
    (wrong_type,) = await asyncio.to_thread(
        _run,
        sdsclient,
        agent,
        "-mode",
        "fetch",
        "-type-url",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    )
    assert wrong_type["error"]["code"] == "InvalidArgument"
    (delta,) = await asyncio.to_thread(_run, sdsclient, agent, "-mode", "delta")
    assert delta["error"]["code"] == "Unimplemented"
    (fetched,) = await asyncio.to_thread(_run, sdsclient, agent, "-mode", "fetch")
    assert not fetched.get("nonce")
    assert [s["name"] for s in fetched["secrets"]] == [
        f"spiffe://example.org/ns/{namespace}/sa/api",
        "spiffe://example.org",
    ]
    (stale,) = [
        line
        for line in await asyncio.to_thread(_run, sdsclient, agent, "-names", "default", "-stale-then-change")
        if "event" in line
    ]
    assert stale["event"] == "stale-ignored"


async def test_nack_keeps_the_stream_quiet_and_rotation_is_pushed(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, sdsclient: Path
) -> None:
    """SVIDs of 1 minute are renewed at half-life: the push must follow within seconds of the renewal."""
    await register(kube, "short", {"serviceAccountNames": ["short"], "x509SVIDTTL": "1m"}, namespace)
    agent: AgentProcess = await start_agent("short-1", "short")
    lines = await asyncio.to_thread(
        _run,
        sdsclient,
        agent,
        "-names",
        "default,ROOTCA",
        "-responses",
        "2",
        "-nack-first",
        "-quiet",
        "2s",
        timeout=75,
    )
    first, nacked, pushed = lines
    assert nacked == {"event": "nack-not-resent"}
    assert "error" not in pushed, pushed
    assert pushed["version"] != first["version"] and pushed["nonce"] != first["nonce"]
    old, new = _secrets(first)["default"], _secrets(pushed)["default"]
    assert new["chain"][0] != old["chain"][0] and new["key_matches"] and new["verified_by"] == ["ROOTCA"]
    # Pushed within a few seconds of the renewal: the new leaf is still in the first half of its life.
    issued = dt.datetime.fromisoformat(new["not_after"]) - dt.timedelta(minutes=1)
    assert dt.datetime.now(dt.UTC) - issued < dt.timedelta(seconds=25)
    assert "Envoy rejected version" in agent.log.read_text()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_python_xds_client_and_what_sds_costs_the_agent(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory
) -> None:
    """xds-protos' own stub fetches from a real agent; loading SDS costs the agent little memory."""
    await register(kube, "py", {"serviceAccountNames": ["py"]}, namespace)
    agent: AgentProcess = await start_agent("py-1", "py")
    async with grpc.aio.insecure_channel(agent.address) as channel:
        # A Workload API call first, so that the difference below is SDS's alone.
        workload = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        await workload.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER).read()
        before = _rss_kib(agent.process.pid)
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        response = await stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=["default", "ROOTCA"]), timeout=10
        )
    assert [r.type_url for r in response.resources] == [SECRET, SECRET]
    after = _rss_kib(agent.process.pid)
    print(f"agent VmRSS before SDS {before} KiB, after {after} KiB")  # quoted in reports (pytest -s)
    assert after - before < 8 * 1024, (before, after)
