"""Which pods' grants may have changed: the signal behind the issuer API's WatchIdentity (push, not poll).

The registry's watch listeners call `changed(namespace, pod)` (a pod was added, modified or deleted),
`changed(namespace)` (a WorkloadRegistration of, or the labels of, that namespace) or `changed_everywhere()`
(a ClusterWorkloadRegistration). A stream waits only for its own pod's keys, so a pod's status updates
wake that pod's stream alone and a registration wakes its namespace's, not every stream in the cluster.

    with changes.watching(namespace, pod_name) as changed:   # register first,
        grant = registry.identities(pod)                     # then read the caches,
        await changed.wait()                                 # so nothing in between is missed

Only waiting streams hold entries (one Event each, dropped when the `with` ends): bounded by open streams.
Listeners run synchronously on the event loop, so `changed` never races a registration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

Key = tuple[str, str | None]  # (namespace, pod name or None for the whole namespace)


class Changes:
    def __init__(self) -> None:
        self._waiting: dict[Key, set[asyncio.Event]] = {}

    def __len__(self) -> int:
        """Streams waiting (for tests and metrics)."""
        return len({event for events in self._waiting.values() for event in events})

    @contextlib.contextmanager
    def watching(self, namespace: str, pod: str) -> Iterator[asyncio.Event]:
        """An Event set when the pod, its namespace or any cluster-scoped registration changes."""
        event = asyncio.Event()
        keys: tuple[Key, Key] = ((namespace, None), (namespace, pod))
        for key in keys:
            self._waiting.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            for key in keys:
                waiting = self._waiting.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiting[key]

    def changed(self, namespace: str, pod: str | None = None) -> None:
        for event in self._waiting.get((namespace, pod), ()):
            event.set()

    def changed_everywhere(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()
