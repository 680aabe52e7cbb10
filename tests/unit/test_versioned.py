"""Versioned: the newest value, waiters woken by publish, and cancellation that is never lost."""

from __future__ import annotations

import asyncio

import pytest

from kubespiffe.versioned import Versioned


async def test_waiter_gets_the_newest_value_not_the_ones_between() -> None:
    value: Versioned[int] = Versioned(0)
    waiter = asyncio.create_task(value.wait_newer(0))
    await asyncio.sleep(0)
    await value.publish(1)
    await value.publish(2)
    assert await waiter == (2, 2)


async def test_timeout_returns_the_current_version() -> None:
    value: Versioned[str] = Versioned("a")
    assert await value.wait_newer(0, timeout=0.01) == (0, "a")


async def test_update_applies_the_change_to_the_current_value() -> None:
    value: Versioned[list[int]] = Versioned([1])
    await value.update(lambda current: [*current, 2])
    assert value.current == [1, 2] and value.version == 1


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_cancel_that_races_a_publish_is_not_swallowed(timeout: float | None) -> None:
    """Python 3.11's asyncio.wait_for can drop a cancellation that arrives as the awaited future completes;
    a task stopping (the agent on SIGTERM) would then wait again instead of ending."""
    for _ in range(50):
        value: Versioned[int] = Versioned(0)
        waiter = asyncio.create_task(value.wait_newer(0, timeout))
        await asyncio.sleep(0)  # the waiter is parked on the condition
        publish = asyncio.create_task(value.publish(1))
        await asyncio.sleep(0)  # the publish has notified: the waiter's wake-up is scheduled
        waiter.cancel()
        await publish
        with pytest.raises(asyncio.CancelledError):
            await waiter
