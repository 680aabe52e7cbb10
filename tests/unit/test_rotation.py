"""The rotation plan: publish ahead, activate after the grace period, drop when nothing signed is valid."""

from __future__ import annotations

import datetime as dt

import pytest

from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.rotation import RotationPolicy, plan
from kubespiffe.authority.state import AuthorityState, Slot, StateError, new_slot
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.spiffe.spiffeid import TrustDomain

TD = TrustDomain("example.org")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
POLICY = RotationPolicy(
    refresh_hint=dt.timedelta(minutes=5),
    max_x509_ttl=dt.timedelta(hours=1),
    max_jwt_ttl=dt.timedelta(minutes=30),
)


def _slot(now: dt.datetime, ttl: dt.timedelta = dt.timedelta(days=10)) -> Slot:
    return new_slot(create_self_signed_ca(TD, KeyType.EC_P256, ttl, now), KeyType.EC_P256, "prepared", now)


def _initial() -> AuthorityState:
    return AuthorityState.new(create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(days=10), T0), now=T0)


def test_nothing_happens_in_the_first_half_of_the_ca_life() -> None:
    state = _initial()
    assert plan(state, POLICY, T0 + dt.timedelta(days=4), lambda: _slot(T0)) is state


def test_full_rotation_cycle() -> None:
    state = _initial()
    old = state.active
    half = T0 + dt.timedelta(days=5, minutes=1)
    prepared = plan(state, POLICY, half, lambda: _slot(half))
    assert prepared.sequence == state.sequence + 1, "publishing a new key bumps the sequence"
    assert prepared.active.id == old.id, "the new slot signs nothing yet"
    assert prepared.prepared is not None
    assert len(prepared.trust_bundle()) == 2 and len(prepared.jwt_authorities()) == 2

    early = half + POLICY.publish_ahead - dt.timedelta(seconds=1)
    assert plan(prepared, POLICY, early, lambda: _slot(early)) is prepared, "not before 3x the refresh hint"

    later = half + POLICY.publish_ahead
    active = plan(prepared, POLICY, later, lambda: _slot(later))
    assert active.active.id == prepared.prepared.id
    assert active.sequence == prepared.sequence, "activation publishes nothing new"
    retired = [s for s in active.slots if s.state == "retired"]
    assert [s.id for s in retired] == [old.id]

    before_safe = later + POLICY.max_x509_ttl - dt.timedelta(seconds=1)
    assert plan(active, POLICY, before_safe, lambda: _slot(before_safe)) is active, (
        "old SVIDs may still be valid"
    )
    safe = later + POLICY.max_x509_ttl
    dropped = plan(active, POLICY, safe, lambda: _slot(safe))
    assert [s.id for s in dropped.slots] == [active.active.id]
    assert dropped.sequence == active.sequence + 1, "removing a key bumps the sequence"


def test_operator_request_prepares_at_once_and_grace_still_applies() -> None:
    state = _initial()
    now = T0 + dt.timedelta(hours=1)
    prepared = plan(state, POLICY, now, lambda: _slot(now), rotate_requested=True)
    assert prepared.prepared is not None
    assert (
        plan(prepared, POLICY, now + dt.timedelta(minutes=1), lambda: _slot(now), rotate_requested=True)
        is prepared
    )


def test_short_lived_ca_rotates_early_and_retired_slot_goes_at_ca_expiry() -> None:
    policy = RotationPolicy(dt.timedelta(minutes=1), dt.timedelta(hours=2), dt.timedelta(minutes=1))
    state = AuthorityState.new(
        create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(minutes=10), T0), now=T0
    )
    end = state.active.not_after
    # Half-life is 5 min, but the grace period (3 min) must fit before expiry twice over: prepare at 4 min.
    at = end - 2 * policy.publish_ahead
    assert plan(state, policy, at - dt.timedelta(seconds=1), lambda: _slot(at)) is state
    prepared = plan(state, policy, at, lambda: _slot(at))
    activated = plan(prepared, policy, at + policy.publish_ahead, lambda: _slot(at))
    assert activated.active.id != state.active.id and end > at + policy.publish_ahead
    assert len(plan(activated, policy, end - dt.timedelta(seconds=1), lambda: _slot(at)).slots) == 2
    assert len(plan(activated, policy, end, lambda: _slot(at)).slots) == 1


def test_transitions_refuse_impossible_steps() -> None:
    state = _initial()
    with pytest.raises(StateError, match="no prepared"):
        state.activate(T0)
    prepared = state.prepare(_slot(T0))
    with pytest.raises(StateError, match="already exists"):
        prepared.prepare(_slot(T0))


def test_state_round_trips_through_the_secret() -> None:
    state = _initial().prepare(_slot(T0))
    restored = AuthorityState.from_secret_data(state.to_secret_data())
    assert restored.sequence == state.sequence
    assert [(s.id, s.state, s.jwt_kid) for s in restored.slots] == [
        (s.id, s.state, s.jwt_kid) for s in state.slots
    ]
    assert restored.trust_bundle() == state.trust_bundle()
