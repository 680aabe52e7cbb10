"""The agent when kubespiffed goes away: it keeps serving what is valid, says so, and recovers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import pytest
from lightkube import AsyncClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

from kubespiffe.devenv.controlplane import ControlPlane
from kubespiffe.devenv.stack import Kubespiffed, service_account_token
from tests.e2e.conftest import AgentFactory, AgentProcess
from tests.integration.kubespiffed import Running, register

pytestmark = pytest.mark.e2e


def _probe(agent: AgentProcess, *flags: str) -> int:
    command = [sys.executable, "-m", "kubespiffe.cli.main", "probe", "--socket", str(agent.socket), *flags]
    return subprocess.run(command, capture_output=True, check=False).returncode


async def _until(agent: AgentProcess, expected: int, *flags: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(_probe, agent, *flags) != expected:
        assert time.monotonic() < deadline, (
            f"probe {flags} never returned {expected}: {agent.log.read_text()[-1500:]}"
        )
        await asyncio.sleep(0.2)


async def test_agent_keeps_serving_while_kubespiffed_is_down_and_recovers(
    control_plane: ControlPlane,
    kube: AsyncClient,
    kubespiffed: Running,
    namespace: str,
    start_agent: AgentFactory,
) -> None:
    await register(kube, "resilient", {"serviceAccountNames": ["resilient"]}, namespace)
    own = Kubespiffed(control_plane)
    own.start(await service_account_token(kube))
    try:
        await asyncio.to_thread(own.wait_ready, kubespiffed.bundle_pem)
        agent: AgentProcess = await start_agent("resilient-1", "resilient", server=own.address)
        await _until(agent, 0, "--upstream")
        own.stop()
        await _until(agent, 1, "--upstream")
        assert await asyncio.to_thread(_probe, agent) == 0, "a valid SVID is still in hand"
        with grpc.insecure_channel(agent.address) as channel:
            stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
                workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "true"),), timeout=5
            )
            assert next(iter(stream)).svids
            stream.cancel()
        restarted = Kubespiffed(control_plane, port=own.port, health_port=own.health_port)
        restarted.start(await service_account_token(kube))
        own = restarted
        await asyncio.to_thread(own.wait_ready, kubespiffed.bundle_pem)
        await _until(agent, 0, "--upstream", timeout=45)
    finally:
        own.stop()
