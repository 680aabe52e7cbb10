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

from kubespiffe.kube.watchcache import PAGE_SIZE, WatchCache


def pod(name: str, version: str) -> Pod:
    return Pod(metadata=ObjectMeta(name=name, namespace="ns", resourceVersion=version))


class Listing:
    """One list response, or several pages of one: each page after the first waits for `next_page`
    (when given), as a page waits for the API server, so a test can look at the cache in between."""

    def __init__(
        self,
        items: list[Pod],
        version: str,
        *,
        pages: int = 1,
        next_page: asyncio.Queue[None] | None = None,
        expires: bool = False,
    ) -> None:
        self.items, self.resourceVersion = items, version
        self.pages, self.next_page, self.expires = pages, next_page, expires

    async def __aiter__(self) -> AsyncIterator[Pod]:
        size = -(-len(self.items) // self.pages)
        for start in range(0, len(self.items), size):
            if start and self.next_page is not None:
                await self.next_page.get()
            if start and self.expires:  # the continue token expired (etcd compacted the snapshot)
                raise ApiError(status=Status(code=410, message="The provided continue parameter is too old"))
            for item in self.items[start : start + size]:
                yield item


class ScriptedClient:
    """Each relist returns the next listing; each watch yields its events, then fails with 410 or blocks."""

    def __init__(self, listings: list[Listing], watches: list[list[tuple[str, Pod]]]) -> None:
        self.listings, self.watches = listings, watches
        self.watch_versions: list[str] = []
        self.list_calls: list[dict[str, Any]] = []

    def list(self, resource: Any, **kwargs: Any) -> Listing:
        self.list_calls.append(kwargs)
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


async def _until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def _relisting(
    client: ScriptedClient,
) -> tuple[WatchCache[Pod], list[tuple[str, str]], asyncio.Task[None]]:
    """A cache synced from the first listing, recording events from then on, once it lists again (its
    first watch failed with 410)."""
    cache: WatchCache[Pod] = WatchCache(client, Pod)
    events: list[tuple[str, str]] = []
    task = asyncio.create_task(cache.run())
    await cache.synced.wait()
    cache.add_listener(lambda kind, obj: events.append((kind, obj.metadata.name)))
    await _until(lambda: len(client.list_calls) == 2)
    return cache, events, task


async def test_lookups_during_a_paged_relist_see_the_old_snapshot() -> None:
    """Until the last page is in, the cache answers from the previous list: a pod gone from the new one
    is still found (no half-built cache), a pod in the first page is not yet seen; then both at once."""
    next_page: asyncio.Queue[None] = asyncio.Queue()
    client = ScriptedClient(
        listings=[
            Listing([pod("a", "1"), pod("b", "1")], "10"),
            Listing([pod("b", "1"), pod("c", "5"), pod("d", "5")], "20", pages=3, next_page=next_page),
        ],
        watches=[[], []],
    )
    cache, events, task = await _relisting(client)
    for _ in range(2):  # two of the three pages are in
        await asyncio.sleep(0.05)
        assert cache.get("ns", "a") is not None
        assert cache.get("ns", "c") is None
        assert events == []
        next_page.put_nowait(None)
    await _until(lambda: cache.relists == 2)
    task.cancel()
    assert cache.get("ns", "a") is None
    assert cache.get("ns", "d") is not None
    assert events == [("DELETED", "a"), ("ADDED", "c"), ("ADDED", "d")]


async def test_a_relist_keeps_unchanged_objects_and_asks_for_pages() -> None:
    """An object whose resourceVersion did not change keeps its copy (a relist does not hold two full
    lists) and is not reported; the list is asked for in pages of PAGE_SIZE."""
    client = ScriptedClient(
        listings=[
            Listing([pod("a", "1"), pod("b", "1")], "10"),
            Listing([pod("a", "1"), pod("b", "2")], "20"),
        ],
        watches=[[], []],
    )
    cache: WatchCache[Pod] = WatchCache(client, Pod)
    task = asyncio.create_task(cache.run())
    await cache.synced.wait()
    first_a = cache.get("ns", "a")
    events: list[tuple[str, str]] = []
    cache.add_listener(lambda kind, obj: events.append((kind, obj.metadata.name)))
    await _until(lambda: cache.relists == 2)
    task.cancel()
    assert cache.get("ns", "a") is first_a
    assert events == [("MODIFIED", "b")]
    assert [call["chunk_size"] for call in client.list_calls] == [PAGE_SIZE, PAGE_SIZE]


async def test_a_relist_whose_continue_token_expires_keeps_the_old_snapshot_and_lists_again() -> None:
    """A later page answering 410 Gone: the pages already read are dropped, never swapped in half, and the
    list starts over from its first page."""
    client = ScriptedClient(
        listings=[
            Listing([pod("a", "1"), pod("b", "1")], "10"),
            Listing([pod("c", "5"), pod("d", "5")], "20", pages=2, expires=True),
            Listing([pod("c", "5"), pod("d", "5")], "30", pages=2),
        ],
        watches=[[], []],
    )
    cache, events, task = await _relisting(client)
    await asyncio.sleep(0.05)
    assert sorted(p.metadata.name for p in cache) == ["a", "b"]  # the expired list changed nothing
    assert events == []
    await _until(lambda: cache.relists == 2)
    task.cancel()
    assert client.watch_versions == ["10", "30"]
    assert sorted(p.metadata.name for p in cache) == ["c", "d"]
    assert events == [("DELETED", "a"), ("DELETED", "b"), ("ADDED", "c"), ("ADDED", "d")]
