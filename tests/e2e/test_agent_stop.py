"""The agent stops when told to, and leaves no connection behind (SIGTERM in a pod must end it at once)."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from lightkube import AsyncClient

from kubespiffe.agent.run import Agent, AgentConfig
from kubespiffe.devenv.workloads import create_pod, pod_token
from kubespiffe.tasks import LoopEnded
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


async def test_a_loop_cancelled_by_nobody_stops_the_agent_with_an_error(
    kube: AsyncClient, kubespiffed: Running, namespace: str
) -> None:
    """A library's stray cancel request once ended the identity stream loop silently (issue 8): the agent
    served on without bundle updates. A loop that ends while the agent is not stopping now fails the agent,
    so its container restarts."""
    await register(kube, "lone", {"serviceAccountNames": ["lone"]}, namespace=namespace)
    pod = await create_pod(kube, namespace, "lone-0", "lone")
    directory = _runtime_dir()
    (directory / "token").write_text(await pod_token(kube, pod))
    (directory / "bundle.pem").write_bytes(kubespiffed.bundle_pem)
    config = AgentConfig(
        server=kubespiffed.address,
        token_file=directory / "token",
        bundle_file=directory / "bundle.pem",
        socket=directory / "agent.sock",
    )
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.state.wait_newer(0), 20)
    (stream,) = [t for t in asyncio.all_tasks() if t.get_name() == "agent identity stream loop"]
    stream.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the agent went on without its identity stream loop"
    with pytest.raises(ExceptionGroup) as caught:
        task.result()
    assert caught.group_contains(LoopEnded, match="identity stream")
