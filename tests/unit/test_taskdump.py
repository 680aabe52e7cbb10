"""SIGUSR1's task dump names each task and the line its coroutine waits on."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from kubespiffe import taskdump


async def _parked(event: asyncio.Event) -> None:
    await event.wait()


async def test_sigusr1_logs_each_waiting_task(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    taskdump.install(loop)
    event = asyncio.Event()
    task = asyncio.create_task(_parked(event), name="parked-stream")
    try:
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING, logger="kubespiffe.tasks"):
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(100):
                if caplog.records:
                    break
                await asyncio.sleep(0.01)
        text = caplog.records[0].getMessage()
        assert "parked-stream" in text
        line = _parked.__code__.co_firstlineno + 1  # the `await` it is suspended at
        assert f"test_taskdump.py:{line} in _parked" in text
        assert not task.done()  # the dump changes nothing
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        event.set()
        await task
