"""The trust bundle as one versioned value that every output derives from.

The issuer API's bundle fields, the WatchBundles streams (and later the bundle endpoint and federation)
read the current `Bundle` here; whoever changes it (rotation, federation refresh) calls `publish`, and
every waiting stream wakes up with the complete new state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from kubespiffe.spiffe.bundle import Bundle
from kubespiffe.spiffe.spiffeid import TrustDomain


class TrustStore:
    def __init__(self, own: Bundle) -> None:
        self._own = own
        self._federated: dict[TrustDomain, Bundle] = {}
        self._version = 0
        self._condition = asyncio.Condition()

    @property
    def own(self) -> Bundle:
        return self._own

    @property
    def version(self) -> int:
        return self._version

    def bundles_for(self, federates_with: set[TrustDomain]) -> list[Bundle]:
        """Own bundle first, then the federated bundles a pod's registrations ask for and that exist."""
        foreign = [self._federated[td] for td in sorted(federates_with) if td in self._federated]
        return [self._own, *foreign]

    async def publish(
        self, own: Bundle | None = None, federated: Mapping[TrustDomain, Bundle] | None = None
    ) -> None:
        async with self._condition:
            if own is not None:
                self._own = own
            if federated is not None:
                self._federated = dict(federated)
            self._version += 1
            self._condition.notify_all()

    async def wait_newer(self, seen: int, timeout: float) -> int:
        """Wait (at most `timeout` seconds) for a version newer than `seen`; return the current version."""
        async with self._condition:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._condition.wait_for(lambda: self._version > seen), timeout)
            return self._version
