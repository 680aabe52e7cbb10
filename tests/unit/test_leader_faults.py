"""Leader election when the API server cannot be reached: the elector keeps running, steps down, and
takes the Lease back when the API server returns (a restart of kube-apiserver must not stop kubespiffed)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from kubespiffe.kube.leader import LeaderElector


class FlakyClient:
    """Holds one Lease like the API server, except while `down` (connection refused)."""

    def __init__(self) -> None:
        self.down = False
        self.lease = Lease(metadata=ObjectMeta(name="l", namespace="ns"))

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("All connection attempts failed")

    async def get(self, resource: Any, name: str, namespace: str) -> Lease:
        self._check()
        return self.lease

    async def replace(self, lease: Lease) -> Lease:
        self._check()
        self.lease = lease
        return lease


async def test_an_unreachable_api_server_does_not_end_the_elector_and_leadership_comes_back() -> None:
    client = FlakyClient()
    elector = LeaderElector(client, "ns", "l", "me", duration=0.3)
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.sleep(0.15)
        assert elector.is_leader
        client.down = True
        await asyncio.sleep(0.3)
        assert not task.done(), f"the elector ended: {task.exception()}"
        assert not elector.is_leader, "a replica that cannot renew its Lease must not act as leader"
        client.down = False
        await asyncio.sleep(0.3)
        assert elector.is_leader
    finally:
        task.cancel()


async def test_a_standby_takes_an_abandoned_lease_as_it_expires_not_a_retry_period_later() -> None:
    """A killed leader's Lease is taken within its duration of the kill: the standby wakes when the Lease
    it saw expires rather than up to duration/3 after that."""
    client = FlakyClient()
    renewed = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5.5)
    client.lease.spec = LeaseSpec(holderIdentity="dead", leaseDurationSeconds=6, renewTime=renewed)
    elector = LeaderElector(client, "ns", "l", "me", duration=6)
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.sleep(0.1)
        assert not elector.is_leader, "the Lease had not expired yet"
        await asyncio.sleep(1.0)  # it expires 0.5 s in; the next retry period would be 2 s in
        assert elector.is_leader
    finally:
        task.cancel()
