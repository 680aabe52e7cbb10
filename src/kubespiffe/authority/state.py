"""The authority's persisted state: a journal of signing slots and the bundle sequence.

A slot is one X.509 CA and one JWT signing key that rotate together, in one lifecycle state:
prepared (published in the bundle, signs nothing yet) -> active (signs) -> retired (published until
nothing it signed is still valid) -> dropped. `sequence` grows whenever the published key set changes,
so every replica and every restart publishes the same spiffe_sequence for the same bundle.

Stored as one versioned JSON document (`authority.json`) in a Secret, plus `ca.crt` (the PEM trust
bundle) for humans and tools. Version 1:

    {"version": 1, "sequence": <int >= 1>, "slots": [{"id", "state", "since" (ISO 8601 with zone),
     "certificate" (PEM), "chain" ([PEM], above the CA), "key" (PKCS#8 PEM), "jwtKid", "jwtKey"}]}

"chain" is empty for a self-signed CA; under an upstream CA it runs from the CA's issuer to the upstream
trust anchor, each certificate issued by the next (checked on read). The bundle publishes each slot's
anchor, once: the upstream root rather than the intermediates that sign.

A new field that old readers may ignore keeps version 1; anything else needs version 2, which this
reader refuses rather than misread.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import Certificate

from kubespiffe.authority.keys import KeyType, SigningKey, generate_key, key_from_pem, key_to_pem
from kubespiffe.authority.x509ca import X509Authority
from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.x509svid import check_signing_ca

FORMAT_VERSION = 1
DOCUMENT_KEY = "authority.json"
BUNDLE_KEY = "ca.crt"
KeyState = Literal["prepared", "active", "retired"]
_STATES = ("prepared", "active", "retired")


class StateError(InvalidInput):
    """The Secret does not hold a usable authority document."""


class JwtSigningKey(NamedTuple):
    """The key JWT-SVIDs are signed with now, and the `kid` their header names."""

    kid: str
    key: SigningKey


def new_kid() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Slot:
    id: str
    state: KeyState
    since: dt.datetime  # when it entered `state`
    authority: X509Authority
    jwt_kid: str
    jwt_key: SigningKey

    @property
    def not_after(self) -> dt.datetime:
        return self.authority.certificate.not_valid_after_utc


def new_slot(authority: X509Authority, jwt_key_type: KeyType, state: KeyState, now: dt.datetime) -> Slot:
    return Slot(new_kid(), state, now, authority, new_kid(), generate_key(jwt_key_type))


@dataclass(frozen=True)
class AuthorityState:
    slots: tuple[Slot, ...]
    sequence: int = 1

    @classmethod
    def new(
        cls, authority: X509Authority, jwt_key_type: KeyType = KeyType.EC_P256, now: dt.datetime | None = None
    ) -> AuthorityState:
        return cls((new_slot(authority, jwt_key_type, "active", now or dt.datetime.now(dt.UTC)),))

    def _in(self, state: KeyState) -> list[Slot]:
        return [s for s in self.slots if s.state == state]

    @property
    def active(self) -> Slot:
        active = self._in("active")
        if len(active) != 1:
            raise StateError(f"the authority has {len(active)} active slots; exactly one is required")
        return active[0]

    @property
    def prepared(self) -> Slot | None:
        prepared = self._in("prepared")
        return prepared[0] if prepared else None

    def active_x509(self) -> X509Authority:
        return self.active.authority

    def active_jwt(self) -> JwtSigningKey:
        return JwtSigningKey(self.active.jwt_kid, self.active.jwt_key)

    def trust_bundle(self) -> list[Certificate]:
        """Every published X.509 authority: the trust anchor of each slot, prepared (ahead of use), active
        and retired (until safe), each once (intermediates under one upstream root share it)."""
        anchors: list[Certificate] = []
        for slot in self.slots:
            anchor = slot.authority.trust_anchor
            if anchor not in anchors:
                anchors.append(anchor)
        return anchors

    def jwt_authorities(self) -> dict[str, PublicKeyTypes]:
        return {s.jwt_kid: s.jwt_key.public_key() for s in self.slots}

    # Transitions. Each returns a new state; `sequence` moves only when the published key set changes.

    def prepare(self, slot: Slot) -> AuthorityState:
        if self.prepared is not None:
            raise StateError("a prepared slot already exists; activate it first")
        return AuthorityState((*self.slots, replace(slot, state="prepared")), self.sequence + 1)

    def activate(self, now: dt.datetime) -> AuthorityState:
        prepared = self.prepared
        if prepared is None:
            raise StateError("no prepared slot to activate")
        current = self.active
        slots = tuple(
            replace(s, state="active", since=now)
            if s is prepared
            else replace(s, state="retired", since=now)
            if s is current
            else s
            for s in self.slots
        )
        return AuthorityState(slots, self.sequence)

    def drop(self, slot_ids: set[str]) -> AuthorityState:
        kept = tuple(s for s in self.slots if s.id not in slot_ids)
        if len(kept) == len(self.slots):
            return self
        return AuthorityState(kept, self.sequence + 1)

    # Persistence.

    def to_secret_data(self) -> dict[str, str]:
        document = {
            "version": FORMAT_VERSION,
            "sequence": self.sequence,
            "slots": [
                {
                    "id": s.id,
                    "state": s.state,
                    "since": s.since.isoformat(),
                    "certificate": s.authority.certificate.public_bytes(Encoding.PEM).decode(),
                    "chain": [c.public_bytes(Encoding.PEM).decode() for c in s.authority.above],
                    "key": key_to_pem(s.authority.key),
                    "jwtKid": s.jwt_kid,
                    "jwtKey": key_to_pem(s.jwt_key),
                }
                for s in self.slots
            ],
        }
        bundle = b"".join(c.public_bytes(Encoding.PEM) for c in self.trust_bundle())
        return {
            DOCUMENT_KEY: base64.b64encode(json.dumps(document).encode()).decode(),
            BUNDLE_KEY: base64.b64encode(bundle).decode(),
        }

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> AuthorityState:
        """Read `to_secret_data` output back; anything else is a StateError naming what is wrong."""
        if not data or DOCUMENT_KEY not in data:
            raise StateError(f"the Secret has no {DOCUMENT_KEY}")
        try:
            document = json.loads(base64.b64decode(data[DOCUMENT_KEY], validate=True))
        except (TypeError, ValueError):
            raise StateError(f"{DOCUMENT_KEY} is not base64-encoded JSON") from None
        version = document.get("version") if isinstance(document, dict) else None
        if type(version) is not int or version != FORMAT_VERSION:
            raise StateError(
                f"{DOCUMENT_KEY} has an unsupported version (this kubespiffed reads {FORMAT_VERSION})"
            )
        try:
            slots = document["slots"]
            sequence = document["sequence"]
            if not isinstance(slots, list) or not slots:
                raise ValueError("slots must be a non-empty list")
            if type(sequence) is not int or sequence < 1:
                raise ValueError("sequence must be a positive integer")
            state = cls(tuple(_slot(s) for s in slots), sequence)
        except (KeyError, TypeError, ValueError, AttributeError, UnsupportedAlgorithm) as exc:
            raise StateError(f"{DOCUMENT_KEY} is malformed: {exc}") from None
        _check_journal(state)
        return state


def _check_journal(state: AuthorityState) -> None:
    """What the transitions guarantee, checked again on read: unique ids, one active, at most one prepared."""
    ids = [s.id for s in state.slots]
    if len(set(ids)) != len(ids):
        raise StateError(f"{DOCUMENT_KEY} has two slots with the same id")
    if len(state._in("prepared")) > 1:
        raise StateError(f"{DOCUMENT_KEY} has more than one prepared slot")
    state.active  # noqa: B018 (raises StateError unless exactly one slot is active)


def _state(value: Any) -> KeyState:
    if value not in _STATES:
        raise ValueError(f"unknown key state {value!r}")
    result: KeyState = value
    return result


def _text(raw: Mapping[str, Any], field: str) -> str:
    value = raw[field]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string")
    return value


def _slot(raw: Mapping[str, Any]) -> Slot:
    slot_id = _text(raw, "id")
    certificate = x509.load_pem_x509_certificate(_text(raw, "certificate").encode())
    check_signing_ca(certificate)
    key = key_from_pem(_text(raw, "key"))
    if key.public_key() != certificate.public_key():
        raise ValueError(f"slot {slot_id}: the CA key does not match its certificate")
    above = tuple(x509.load_pem_x509_certificate(c.encode()) for c in raw.get("chain", []))
    for child, issuer in zip((certificate, *above), above, strict=False):
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise ValueError(
                f"slot {slot_id}: the chain is broken above {child.subject.rfc4514_string()}"
            ) from None
    since = dt.datetime.fromisoformat(_text(raw, "since"))
    if since.tzinfo is None:
        raise ValueError(f"slot {slot_id}: since has no time zone")
    return Slot(
        id=slot_id,
        state=_state(raw["state"]),
        since=since,
        authority=X509Authority(key, certificate, above),
        jwt_kid=_text(raw, "jwtKid"),
        jwt_key=key_from_pem(_text(raw, "jwtKey")),
    )
