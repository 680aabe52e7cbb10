"""A pod deleted while the pod watch was down, or while the cache relisted, is refused once the cache has
caught up: the relist's synthetic delete, or the watch's delete from the list's resourceVersion, removes it,
and the API server's 404 refuses the token (a scripted API server here; the cache against the real one is
in tests/integration/test_watchcache_apiserver.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from kubespiffe.attestation.pod import PodAttestor
from kubespiffe.attestation.token import PodClaims, TokenRejected
from kubespiffe.kube.pods import PodMetaView, PodSpecView, PodView
from kubespiffe.kube.watchcache import WatchCache


def _pod(name: str, version: str) -> PodView:
    meta = PodMetaView(name=name, namespace="ns", uid=f"uid-{name}", resourceVersion=version)
    return PodView(metadata=meta, spec=PodSpecView(serviceAccountName="app"))


def _claims(name: str) -> PodClaims:
    return PodClaims(
        namespace="ns",
        service_account="app",
        pod_name=name,
        pod_uid=f"uid-{name}",
        node_name=None,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10),
        service_account_uid=None,
    )


class Listing:
    def __init__(self, items: list[PodView], version: str) -> None:
        self.items, self.resourceVersion = items, version

    async def __aiter__(self) -> AsyncIterator[PodView]:
        for item in self.items:
            yield item


class ApiServer:
    """Lists and watches as scripted; a GET answers from `live`, the pods that exist now."""

    def __init__(self, listings: list[Listing], watches: list[list[tuple[str, PodView]]]) -> None:
        self.listings, self.watches = listings, watches
        self.live: dict[str, PodView] = {}
        self.gets = 0

    def list(self, resource: Any, **kwargs: Any) -> Listing:
        return self.listings.pop(0)

    async def watch(self, resource: Any, **kwargs: Any) -> AsyncIterator[tuple[str, PodView]]:
        for event in self.watches.pop(0):
            yield event
        if self.watches:
            raise ApiError(status=Status(code=410, message="too old resource version"))
        await asyncio.Event().wait()

    async def get(self, resource: Any, name: str, *, namespace: str) -> PodView:
        self.gets += 1
        if name not in self.live:
            raise ApiError(status=Status(code=404, message=f'pods "{name}" not found'))
        return self.live[name]


class Verifier:
    async def verify(self, token: str) -> PodClaims:
        raise AssertionError("resolve() is called directly")


async def _attested_then_relisted(server: ApiServer) -> tuple[PodAttestor, WatchCache[PodView]]:
    client: Any = server
    pods: WatchCache[PodView] = WatchCache(client, PodView)
    attestor = PodAttestor(Verifier(), client, pods)  # type: ignore[arg-type]
    task = asyncio.create_task(pods.run())
    await pods.synced.wait()
    assert (await attestor.resolve(_claims("a"))).metadata is not None  # served by the cache
    for _ in range(200):
        if pods.relists == 2 and not server.watches:  # the second watch is running
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    return attestor, pods


async def test_a_pod_deleted_while_the_watch_was_down_is_refused_after_the_relist() -> None:
    server = ApiServer(
        listings=[Listing([_pod("a", "1"), _pod("b", "1")], "10"), Listing([_pod("b", "1")], "30")],
        watches=[[], []],  # the first watch breaks (410); "a" is deleted before the relist's snapshot
    )
    attestor, pods = await _attested_then_relisted(server)
    assert pods.get("ns", "a") is None  # the relist's synthetic delete
    with pytest.raises(TokenRejected, match="no longer exists"):
        await attestor.resolve(_claims("a"))
    assert server.gets == 1  # asked the API server, which said 404


async def test_a_pod_deleted_during_the_relist_is_refused_once_the_watch_delivers_it() -> None:
    server = ApiServer(
        listings=[Listing([_pod("a", "1")], "10"), Listing([_pod("a", "1")], "20")],
        # "a" is deleted after the relist's snapshot (version 20): the watch from 20 says so.
        watches=[[], [("DELETED", _pod("a", "25"))]],
    )
    attestor, pods = await _attested_then_relisted(server)
    assert pods.get("ns", "a") is None
    with pytest.raises(TokenRejected, match="no longer exists"):
        await attestor.resolve(_claims("a"))
