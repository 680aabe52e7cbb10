"""kubespiffed's background loops: one that fails stops kubespiffed with its own error, not buried."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from kubespiffe.server.app import Shutdown, run_until_stopped
from kubespiffe.tasks import LoopEnded


async def _forever() -> None:
    await asyncio.Event().wait()


async def _broken() -> None:
    await asyncio.sleep(0.01)
    raise ValueError("the watch failed")


async def _ready() -> None:
    return None


async def _run() -> None:
    loops = [_forever, _broken, _forever]
    try:
        await run_until_stopped(loops, _ready, Shutdown(grpc.aio.server(), []))
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


async def test_a_failing_loop_is_the_error_and_its_siblings_stop_quietly() -> None:
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(_run(), 5)
    assert caught.group_contains(ValueError, match="the watch failed")
    assert not caught.group_contains(LoopEnded), caught.value.exceptions
