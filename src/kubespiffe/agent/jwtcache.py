"""The agent's JWT-SVID cache: answers per (identity, audiences) until half-life, at most `size` of them.

A workload asking for many distinct audiences would otherwise grow the agent without limit (issue 12:
5,000 audiences took it from 64 to 83 MiB). An entry is not served from its refresh time on and, when the
cache is full, the least recently used one leaves; more audiences than fit cost mints, not memory.

    cache = JwtCache(1024)
    cache.put(key, Entry(svids, refresh_at), now)
    cache.get(key, now)    # Entry(svids, refresh_at), or None when absent or due for a refresh
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # an annotation only: `kubespiffe probe` reads DEFAULT_SIZE without cryptography
    from kubespiffe.agent.issuer_client import JWTSVID

DEFAULT_SIZE = 1024
Key = tuple[str, tuple[str, ...]]  # (spiffe_id or "" for all, sorted audiences)


class Entry(NamedTuple):
    svids: Sequence[JWTSVID]
    refresh_at: dt.datetime


class JwtCache:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 0:
            raise ValueError(f"the JWT-SVID cache size must be 0 or more, not {size}")
        self.size = size
        self._entries: OrderedDict[Key, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: dt.datetime) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.refresh_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Key, entry: Entry, now: dt.datetime) -> None:
        if self.size == 0 or now >= entry.refresh_at:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            # O(1): an entry past its refresh time is dropped when next asked for, or ages out as here.
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
