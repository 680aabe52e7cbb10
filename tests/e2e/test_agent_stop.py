"""The agent stops when told to, and leaves no connection behind (SIGTERM in a pod must end it at once)."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from lightkube import AsyncClient

from kubespiffe.agent.run import Agent, AgentConfig
from kubespiffe.devenv.workloads import create_pod, pod_token
from tests.e2e.conftest import _runtime_dir
from tests.integration.kubespiffed import Running, register

pytestmark = pytest.mark.e2e


async def test_agent_stops_promptly_and_closes_its_connections(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    await register(kube, "stop", {"serviceAccountNames": ["stop"]}, namespace=namespace)
    pod = await create_pod(kube, namespace, "stop-0", "stop")
    directory = _runtime_dir()
    (directory / "token").write_text(await pod_token(kube, pod))
    (directory / "bundle.pem").write_bytes(kubespiffed.bundle_pem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for round_ in range(15):  # the lost cancellation needed a race: several rounds make it likely
            config = AgentConfig(
                server=kubespiffed.address,
                token_file=directory / "token",
                bundle_file=directory / "bundle.pem",
                socket=directory / f"agent-{round_}.sock",
            )
            agent = Agent(config)
            task = asyncio.create_task(agent.run())
            await asyncio.wait_for(agent.state.wait_newer(0), 20)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, f"round {round_}: the agent did not stop within 5 s of being cancelled"
        gc.collect()
    unclosed = [str(w.message) for w in caught if "Unclosed" in str(w.message)]
    assert not unclosed, unclosed
