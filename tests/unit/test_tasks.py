"""Lifelong loops fail loudly when cancelled by nobody; SIGUSR1's dump names each task and where it waits."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from kubespiffe import tasks


async def _parked(event: asyncio.Event) -> None:
    await event.wait()


async def test_sigusr1_logs_each_waiting_task(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    tasks.install_dump(loop)
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
        assert f"test_tasks.py:{line} in _parked" in text
        assert not task.done()  # the dump changes nothing
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        event.set()
        await task


async def _forever() -> None:
    await asyncio.Event().wait()


async def _done() -> None:
    return None


async def _group_with_a_stray_cancel() -> None:
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        stray = group.create_task(tasks.for_life("watch", _forever, stop.is_set))
        group.create_task(tasks.for_life("other", _forever, stop.is_set))
        await asyncio.sleep(0)
        stray.cancel()  # a cancel request nobody who stops the process made


async def test_a_loop_cancelled_by_nobody_fails_its_group() -> None:
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(_group_with_a_stray_cancel(), 5)
    assert caught.group_contains(tasks.LoopEnded, match="the watch loop was cancelled")


async def test_a_stop_cancels_lifelong_loops_quietly_and_a_return_is_no_failure() -> None:
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(tasks.for_life("finite", _done, stop.is_set))
        looping = group.create_task(tasks.for_life("watch", _forever, stop.is_set))
        await asyncio.sleep(0)
        stop.set()
        looping.cancel()
    assert looping.cancelled()
