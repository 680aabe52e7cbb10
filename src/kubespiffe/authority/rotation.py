"""When to prepare, activate and drop signing slots (pure; the Lease holder applies the plan).

- prepare: at half the active CA's lifetime (earlier if the grace period would not fit in the rest), or
  at once when an operator asks (`kubespiffe ca rotate`);
  the new slot is published (sequence bumped) and signs nothing yet;
- activate: once the prepared slot has been published for `publish_ahead` (3x the refresh hint by
  default), so federated peers polling at the hint have fetched it before any SVID chains to it;
- drop: a retired slot stays published until nothing it signed can still be valid: its SVIDs expire by
  min(retired + max X.509-SVID TTL, CA expiry), its JWT-SVIDs by retired + max JWT-SVID TTL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kubespiffe.authority.state import AuthorityState, Slot
from kubespiffe.spiffe.x509svid import half_life


@dataclass(frozen=True)
class RotationPolicy:
    refresh_hint: dt.timedelta
    max_x509_ttl: dt.timedelta
    max_jwt_ttl: dt.timedelta
    publish_ahead_factor: int = 3

    @property
    def publish_ahead(self) -> dt.timedelta:
        return self.refresh_hint * self.publish_ahead_factor


def prepare_due(slot: Slot, policy: RotationPolicy, now: dt.datetime) -> bool:
    """At half the CA's life, or earlier when the grace period would not fit in what is left."""
    start, end = slot.authority.certificate.not_valid_before_utc, slot.not_after
    return now >= min(half_life(start, end), end - 2 * policy.publish_ahead)


def safe_to_drop(slot: Slot, policy: RotationPolicy, now: dt.datetime) -> bool:
    x509_done = min(slot.since + policy.max_x509_ttl, slot.not_after)
    jwt_done = slot.since + policy.max_jwt_ttl
    return slot.state == "retired" and now >= max(x509_done, jwt_done)


Step = Literal["drop", "activate", "prepare"]


def next_step(
    state: AuthorityState, policy: RotationPolicy, now: dt.datetime, rotate_requested: bool = False
) -> Step | None:
    """What `plan` would do now, so a caller can make a new slot (which may take a network call) first."""
    if any(safe_to_drop(s, policy, now) for s in state.slots):
        return "drop"
    prepared = state.prepared
    if prepared is not None:
        return "activate" if now >= prepared.since + policy.publish_ahead else None
    if rotate_requested or prepare_due(state.active, policy, now):
        return "prepare"
    return None


def plan(
    state: AuthorityState,
    policy: RotationPolicy,
    now: dt.datetime,
    make_slot: Callable[[], Slot],
    rotate_requested: bool = False,
) -> AuthorityState:
    """The next state (the same object when nothing is due). One step per call, in journal order."""
    step = next_step(state, policy, now, rotate_requested)
    if step == "drop":
        return state.drop({s.id for s in state.slots if safe_to_drop(s, policy, now)})
    if step == "activate":
        return state.activate(now)
    if step == "prepare":
        return state.prepare(make_slot())
    return state
