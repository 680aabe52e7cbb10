"""A small list+watch cache: relists on 410 Gone and reports deletes for objects that vanished meanwhile.

Why not a library: the ones measured kept deleted objects after a relist or hot-looped on 410. This cache
keeps one dict keyed by (namespace, name); every change, including the synthetic deletes a relist finds,
is reported to the listeners, so they see one consistent stream of events.

A relist reads the collection in pages of PAGE_SIZE objects (`limit` and `continue`: all pages come from
one snapshot of the API server) and builds the new dict beside the old one; lookups keep answering from
the old dict until the last page is in, then the dicts are swapped and the listeners told what changed, in
one step on the event loop. Each page is decoded on its own between awaits, so a relist of 10,000 pods no
longer holds the event loop while one 17 MB response is decoded (issue 9: issuance stalled 0.6-3 s). An
object whose resourceVersion did not change keeps its old copy, so a relist holds the old objects plus
one page and the changed ones, not two full lists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str | None, str]
Listener = Callable[[str, Any], None]

# A failed list or watch is retried after 0.5, 1, 2, 4, then every 5 s. The cap bounds how long the caches
# stay stale once the API server is back (a registration deleted meanwhile keeps granting until the
# relist): with 30 s, a 10 s kube-apiserver restart left them stale for 21 s after it was ready (issue 12).
_BACKOFF_MAX = 5.0


# Objects per list request while relisting: client-go's reflector uses the same page size.
PAGE_SIZE = 500


def object_key(obj: Any) -> Key:
    return (obj.metadata.namespace, obj.metadata.name)


def _version(obj: Any) -> str | None:
    version: str | None = obj.metadata.resourceVersion
    return version


class WatchCache(Generic[T]):
    """Keeps every object of one resource type (optionally one namespace) in memory."""

    def __init__(
        self,
        client: AsyncClient,
        resource: type[T],
        *,
        namespace: str | None = None,
        watch_timeout: int = 300,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._watch_timeout = watch_timeout
        self._store: dict[Key, T] = {}
        self._listeners: list[Listener] = []
        self.synced = asyncio.Event()
        self.relists = 0

    @property
    def kind(self) -> str:
        return getattr(self._resource, "__name__", str(self._resource))

    def add_listener(self, listener: Listener) -> None:
        """`listener(event_type, obj)` with event_type ADDED, MODIFIED or DELETED; must not block."""
        self._listeners.append(listener)

    def get(self, namespace: str | None, name: str) -> T | None:
        return self._store.get((namespace, name))

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._store.values()))

    def __len__(self) -> int:
        return len(self._store)

    def put(self, obj: T) -> None:
        """Insert an object fetched directly (a GET on a cache miss); the watch will confirm or replace it."""
        self._apply("ADDED" if object_key(obj) not in self._store else "MODIFIED", obj)

    def _scope(self) -> dict[str, str]:
        if issubclass(self._resource, NamespacedResource):
            return {"namespace": self._namespace or "*"}
        return {}

    def _apply(self, event: str, obj: T) -> None:
        key = object_key(obj)
        if event == "DELETED":
            self._store.pop(key, None)
        else:
            self._store[key] = obj
        self._notify(event, obj)

    def _notify(self, event: str, obj: T) -> None:
        for listener in self._listeners:
            try:
                listener(event, obj)
            except Exception:
                log.exception("watch listener failed for %s %s/%s", self.kind, *object_key(obj))

    async def _relist(self) -> str:
        started = time.monotonic()
        listing = self._client.list(self._resource, chunk_size=PAGE_SIZE, **self._scope())
        old = self._store
        fresh: dict[Key, T] = {}
        async for obj in listing:
            key = object_key(obj)
            kept = old.get(key)
            fresh[key] = kept if kept is not None and _version(kept) == _version(obj) else obj
        self._store = fresh  # the swap: every lookup from here on sees the new snapshot
        changes = {"ADDED": 0, "MODIFIED": 0, "DELETED": 0}
        for key, gone in old.items():
            if key not in fresh:
                changes["DELETED"] += 1
                self._notify("DELETED", gone)
        for key, obj in list(fresh.items()):  # a copy: a listener may put() into the store
            before = old.get(key)
            if before is None:
                changes["ADDED"] += 1
                self._notify("ADDED", obj)
            elif before is not obj:
                changes["MODIFIED"] += 1
                self._notify("MODIFIED", obj)
        log.info(
            "%s listed objects=%d seconds=%.2f added=%d modified=%d deleted=%d",
            self.kind,
            len(fresh),
            time.monotonic() - started,
            *changes.values(),
        )
        self.relists += 1
        self.synced.set()
        version: str = listing.resourceVersion
        return version

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion; relist on 410 Gone or any watch failure."""
        backoff = 0.5
        while True:
            progressed = False
            try:
                version = await self._relist()
                async for event, obj in self._client.watch(
                    self._resource,
                    **self._scope(),
                    resource_version=version,
                    server_timeout=self._watch_timeout,
                ):
                    progressed = True
                    backoff = 0.5
                    self._apply(event, obj)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status.code == 410 and progressed:
                    log.info("%s watch expired (410 Gone); relisting", self.kind)
                    continue
                log.warning("%s watch failed: %s; relisting in %.1fs", self.kind, exc, backoff)
            except Exception as exc:
                log.warning("%s watch failed: %s; relisting in %.1fs", self.kind, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)
