"""The authority's persisted state: a journal of signing slots and the bundle sequence.

A slot is one X.509 CA and one JWT signing key that rotate together, in one lifecycle state:
prepared (published in the bundle, signs nothing yet) -> active (signs) -> retired (published until
nothing it signed is still valid) -> dropped. `sequence` grows whenever the published key set changes,
so every replica and every restart publishes the same spiffe_sequence for the same bundle.

Stored as one versioned JSON document (`authority.json`) in a Secret, plus `ca.crt` (the PEM trust
bundle) for humans and tools.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import Certificate

from kubespiffe.authority.keys import KeyType, SigningKey, generate_key, key_from_pem, key_to_pem
from kubespiffe.authority.x509ca import X509Authority

FORMAT_VERSION = 1
DOCUMENT_KEY = "authority.json"
BUNDLE_KEY = "ca.crt"
KeyState = Literal["prepared", "active", "retired"]
_STATES = ("prepared", "active", "retired")


class StateError(ValueError):
    """The Secret does not hold a usable authority document."""


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

    def active_jwt(self) -> tuple[str, SigningKey]:
        return self.active.jwt_kid, self.active.jwt_key

    def trust_bundle(self) -> list[Certificate]:
        """Every published X.509 authority: prepared (ahead of use), active, and retired (until safe)."""
        return [s.authority.certificate for s in self.slots]

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
                    "chain": [c.public_bytes(Encoding.PEM).decode() for c in s.authority.chain],
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
        if not data or DOCUMENT_KEY not in data:
            raise StateError(f"the Secret has no {DOCUMENT_KEY}")
        try:
            document = json.loads(base64.b64decode(data[DOCUMENT_KEY]))
        except ValueError:
            raise StateError(f"{DOCUMENT_KEY} is not base64-encoded JSON") from None
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
            raise StateError(
                f"{DOCUMENT_KEY} has an unsupported version (this kubespiffed reads {FORMAT_VERSION})"
            )
        try:
            state = cls(tuple(_slot(s) for s in document["slots"]), int(document["sequence"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{DOCUMENT_KEY} is malformed: {exc}") from None
        state.active  # noqa: B018 (validates: exactly one active slot)
        return state


def _state(value: Any) -> KeyState:
    if value not in _STATES:
        raise ValueError(f"unknown key state {value!r}")
    result: KeyState = value
    return result


def _slot(raw: Mapping[str, Any]) -> Slot:
    certificate = x509.load_pem_x509_certificate(raw["certificate"].encode())
    key = key_from_pem(raw["key"])
    if key.public_key() != certificate.public_key():
        raise ValueError(f"slot {raw['id']}: the CA key does not match its certificate")
    chain = tuple(x509.load_pem_x509_certificate(c.encode()) for c in raw.get("chain", []))
    return Slot(
        id=str(raw["id"]),
        state=_state(raw["state"]),
        since=dt.datetime.fromisoformat(raw["since"]),
        authority=X509Authority(key, certificate, chain),
        jwt_kid=str(raw["jwtKid"]),
        jwt_key=key_from_pem(raw["jwtKey"]),
    )
