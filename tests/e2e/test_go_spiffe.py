"""go-spiffe v2, the reference SPIFFE library, against the agent: fetch, JWT validation, mTLS, rotation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient

from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.integration.kubespiffed import register

pytestmark = pytest.mark.e2e


def _run(interop: Path, agent: AgentProcess, *args: str, timeout: float = 30) -> dict[str, Any]:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": agent.address}
    done = subprocess.run(
        [str(interop), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"spiffe-interop {args[0]} failed: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def test_go_spiffe_fetches_and_verifies_the_x509_context(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, interop: Path
) -> None:
    await register(kube, "go", {"serviceAccountNames": ["go"], "hint": "primary"}, namespace)
    agent: AgentProcess = await start_agent("go-1", "go")
    result = await asyncio.to_thread(_run, interop, agent, "fetch-x509")
    assert result["svids"] == [
        {
            "id": f"spiffe://example.org/ns/{namespace}/sa/go",
            "hint": "primary",
            "chain": 1,
            "not_after": result["svids"][0]["not_after"],
        }
    ]
    assert result["bundles"] == {"example.org": 1}


async def test_go_spiffe_validates_a_jwt_svid_with_workload_api_bundles(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, interop: Path
) -> None:
    await register(kube, "jwt", {"serviceAccountNames": ["jwt"]}, namespace)
    agent: AgentProcess = await start_agent("jwt-1", "jwt")
    fetched = await asyncio.to_thread(_run, interop, agent, "fetch-jwt", "-audience", "billing")
    assert fetched["id"] == f"spiffe://example.org/ns/{namespace}/sa/jwt"
    validated = await asyncio.to_thread(
        _run, interop, agent, "validate-jwt", "-audience", "billing", "-token", fetched["token"]
    )
    assert validated["id"] == fetched["id"] and validated["audience"] == ["billing"]
    with pytest.raises(AssertionError, match="audience"):
        await asyncio.to_thread(
            _run, interop, agent, "validate-jwt", "-audience", "other", "-token", fetched["token"]
        )


class MtlsServer:
    def __init__(self, interop: Path, agent: AgentProcess, authorize: str, seconds: int) -> None:
        env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": agent.address}
        self.process = subprocess.Popen(
            [str(interop), "mtls-server", "-authorize", authorize, "-timeout", f"{seconds}s"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.address = json.loads(self.process.stdout.readline())["listening"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def _mtls_pair(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, ttl: str | None = None
) -> tuple[AgentProcess, AgentProcess, str, str]:
    spec: dict[str, Any] = {"serviceAccountNames": ["server", "client", "intruder"]}
    if ttl:
        spec["x509SVIDTTL"] = ttl
    await register(kube, "mtls", spec, namespace)
    server: AgentProcess = await start_agent("server-1", "server")
    client: AgentProcess = await start_agent("client-1", "client")
    return (
        server,
        client,
        f"spiffe://example.org/ns/{namespace}/sa/server",
        f"spiffe://example.org/ns/{namespace}/sa/client",
    )


async def test_go_spiffe_mtls_between_two_workloads_and_wrong_id_refused(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, interop: Path
) -> None:
    server_agent, client_agent, server_id, client_id = await _mtls_pair(kube, namespace, start_agent)
    server = await asyncio.to_thread(MtlsServer, interop, server_agent, client_id, 60)
    try:
        ok = await asyncio.to_thread(
            _run, interop, client_agent, "mtls-client", "-connect", server.address, "-authorize", server_id
        )
        assert ok["results"][0].get("body") == f"hello {client_id}", ok
        intruder: AgentProcess = await start_agent("intruder-1", "intruder")
        refused = await asyncio.to_thread(
            _run, interop, intruder, "mtls-client", "-connect", server.address, "-authorize", server_id
        )
        assert "error" in refused["results"][0] and "body" not in refused["results"][0]
        wrong_server = await asyncio.to_thread(
            _run,
            interop,
            client_agent,
            "mtls-client",
            "-connect",
            server.address,
            "-authorize",
            f"spiffe://example.org/ns/{namespace}/sa/someone-else",
        )
        assert "unexpected ID" in wrong_server["results"][0]["error"]
    finally:
        server.stop()


async def test_go_spiffe_mtls_keeps_working_across_two_rotations(
    kube: AsyncClient, namespace: str, start_agent: AgentFactory, interop: Path
) -> None:
    """1-minute SVIDs renew every ~30 s; new connections keep succeeding for 70 s without restarts."""
    server_agent, client_agent, server_id, client_id = await _mtls_pair(
        kube, namespace, start_agent, ttl="1m"
    )
    server = await asyncio.to_thread(MtlsServer, interop, server_agent, client_id, 120)
    try:
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
            "15",
            "-interval",
            "5s",
            "-timeout",
            "110s",
            timeout=120,
        )
    finally:
        server.stop()
    attempts = result["results"]
    assert [a.get("body") for a in attempts] == [f"hello {client_id}"] * 15, attempts
    serials = {a["client_svid_serial"] for a in attempts}
    assert len(serials) >= 3, f"expected at least two rotations, saw SVIDs {serials}"
