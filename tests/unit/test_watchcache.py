"""The list+watch cache's own logic: relist on 410 Gone, synthetic deletes, listener events.

A scripted client stands in for the API server here (pure logic); the cache also runs against the real
kube-apiserver in every integration test through kubespiffed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.core_v1 import Pod

from kubespiffe.kube.watchcache import WatchCache


def pod(name: str, version: str) -> Pod:
    return Pod(metadata=ObjectMeta(name=name, namespace="ns", resourceVersion=version))


class Listing:
    def __init__(self, items: list[Pod], version: str) -> None:
        self.items, self.resourceVersion = items, version

    async def __aiter__(self) -> AsyncIterator[Pod]:
        for item in self.items:
            yield item


class ScriptedClient:
    """Each relist returns the next listing; each watch yields its events, then fails with 410 or blocks."""

    def __init__(self, listings: list[Listing], watches: list[list[tuple[str, Pod]]]) -> None:
        self.listings, self.watches = listings, watches
        self.watch_versions: list[str] = []

    def list(self, resource: Any, **kwargs: Any) -> Listing:
        return self.listings.pop(0)

    async def watch(self, resource: Any, **kwargs: Any) -> AsyncIterator[tuple[str, Pod]]:
        self.watch_versions.append(kwargs["resource_version"])
        for event in self.watches.pop(0):
            yield event
        if self.watches:
            raise ApiError(status=Status(code=410, message="too old resource version"))
        await asyncio.Event().wait()


async def test_relist_after_410_reports_deletes_for_vanished_objects() -> None:
    client = ScriptedClient(
        listings=[
            Listing([pod("a", "1"), pod("b", "1")], "10"),
            Listing([pod("b", "1"), pod("c", "5")], "20"),
        ],
        watches=[[("MODIFIED", pod("a", "2"))], []],
    )
    cache: WatchCache[Pod] = WatchCache(client, Pod)
    events: list[tuple[str, str, str]] = []
    cache.add_listener(
        lambda kind, obj: events.append((kind, obj.metadata.name, obj.metadata.resourceVersion))
    )
    task = asyncio.create_task(cache.run())
    for _ in range(100):
        if cache.relists == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert cache.relists == 2
    assert client.watch_versions == ["10", "20"]
    assert events == [
        ("ADDED", "a", "1"),
        ("ADDED", "b", "1"),
        ("MODIFIED", "a", "2"),
        ("DELETED", "a", "2"),
        ("ADDED", "c", "5"),
    ]
    assert sorted(p.metadata.name for p in cache) == ["b", "c"]
    assert cache.get("ns", "a") is None


async def test_failing_listener_does_not_break_the_cache() -> None:
    client = ScriptedClient(listings=[Listing([pod("a", "1")], "1")], watches=[[("DELETED", pod("a", "1"))]])
    cache: WatchCache[Pod] = WatchCache(client, Pod)

    def broken(kind: str, obj: Any) -> None:
        raise RuntimeError("listener bug")

    cache.add_listener(broken)
    task = asyncio.create_task(cache.run())
    await cache.synced.wait()
    for _ in range(100):
        if len(cache) == 0:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert len(cache) == 0
