"""A value that changes over time and the tasks that wait for it to change.

kubespiffed's trust bundle set and the agent's snapshot of what a pod holds are both "the newest value,
and wake every open stream when it changes": streams send the complete current state, as the Workload API
spec asks, so a waiter needs the newest value, never the ones in between.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Versioned(Generic[T]):
    """Holds the newest value; its version grows by one with every `publish`."""

    def __init__(self, value: T) -> None:
        self._value = value
        self._version = 0
        self._condition = asyncio.Condition()

    @property
    def current(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        return self._version

    async def publish(self, value: T) -> None:
        async with self._condition:
            self._value = value
            self._version += 1
            self._condition.notify_all()

    async def update(self, change: Callable[[T], T]) -> None:
        """Publish `change(current)`; the change is applied under the lock, so two updates never race."""
        async with self._condition:
            self._value = change(self._value)
            self._version += 1
            self._condition.notify_all()

    async def wait_newer(self, seen: int, timeout: float | None = None) -> tuple[int, T]:
        """Wait (at most `timeout` seconds, if given) for a version newer than `seen`; return the current."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a cancellation that arrives as the
        # condition is notified, and a stopping task would then wait again instead of ending.
        async with self._condition:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._condition.wait_for(lambda: self._version > seen)
            return self._version, self._value
