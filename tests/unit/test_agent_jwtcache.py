"""The agent's JWT-SVID cache: bounded (least recently used leave first) and never past an entry's refresh."""

from __future__ import annotations

import datetime as dt

import pytest

from kubespiffe.agent.issuer_client import JWTSVID
from kubespiffe.agent.jwtcache import Entry, JwtCache
from kubespiffe.spiffe.spiffeid import SpiffeId

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


def _entry(token: str, refresh_in: float = 150) -> Entry:
    svid = JWTSVID(SpiffeId.parse("spiffe://example.org/w"), token, "", NOW + 2 * refresh_in * SECOND)
    return Entry([svid], NOW + refresh_in * SECOND)


def _key(audience: str) -> tuple[str, tuple[str, ...]]:
    return ("", (audience,))


def test_least_recently_used_entries_leave_first() -> None:
    cache = JwtCache(3)
    for name in "abc":
        cache.put(_key(name), _entry(name), NOW)
    assert cache.get(_key("a"), NOW) is not None  # a is now the most recently used
    cache.put(_key("d"), _entry("d"), NOW)
    assert len(cache) == 3
    assert cache.get(_key("b"), NOW) is None
    assert all(cache.get(_key(name), NOW) is not None for name in "acd")


def test_many_distinct_audiences_stay_within_the_bound() -> None:
    cache = JwtCache(100)
    for i in range(5000):
        cache.put(_key(f"aud-{i}"), _entry(str(i)), NOW)
    assert len(cache) == 100
    assert cache.get(_key("aud-4999"), NOW) is not None and cache.get(_key("aud-0"), NOW) is None


def test_an_entry_is_not_served_from_its_refresh_time_on() -> None:
    cache = JwtCache(3)
    cache.put(_key("a"), _entry("a", refresh_in=10), NOW)
    assert cache.get(_key("a"), NOW + 9 * SECOND) is not None
    assert cache.get(_key("a"), NOW + 10 * SECOND) is None
    assert len(cache) == 0


def test_size_zero_caches_nothing_and_negative_is_refused() -> None:
    cache = JwtCache(0)
    cache.put(_key("a"), _entry("a"), NOW)
    assert cache.get(_key("a"), NOW) is None
    with pytest.raises(ValueError, match="0 or more"):
        JwtCache(-1)
