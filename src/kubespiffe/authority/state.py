"""The authority's persisted state: X.509 CAs and JWT signing keys, each with a lifecycle state.

Stored as one versioned JSON document (`authority.json`) in a Secret, plus `ca.crt` (the PEM trust bundle)
for humans and tools. Every key carries a state (prepared, active, retired) so that rotation can keep a
journal of what is published and what signs without changing the format.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class X509Entry:
    id: str
    state: KeyState
    authority: X509Authority
    created_at: dt.datetime


@dataclass(frozen=True)
class JwtEntry:
    kid: str
    state: KeyState
    key: SigningKey
    created_at: dt.datetime
    not_after: dt.datetime


def new_kid() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class AuthorityState:
    x509: tuple[X509Entry, ...]
    jwt: tuple[JwtEntry, ...]

    @classmethod
    def new(
        cls, authority: X509Authority, jwt_key_type: KeyType = KeyType.EC_P256, now: dt.datetime | None = None
    ) -> AuthorityState:
        created = now or dt.datetime.now(dt.UTC)
        jwt_key = JwtEntry(
            new_kid(),
            "active",
            generate_key(jwt_key_type),
            created,
            authority.certificate.not_valid_after_utc,
        )
        return cls((X509Entry(new_kid(), "active", authority, created),), (jwt_key,))

    def active_x509(self) -> X509Authority:
        for entry in self.x509:
            if entry.state == "active":
                return entry.authority
        raise StateError("the authority has no active X.509 CA")

    def active_jwt(self) -> tuple[str, SigningKey]:
        for entry in self.jwt:
            if entry.state == "active":
                return entry.kid, entry.key
        raise StateError("the authority has no active JWT signing key")

    def trust_bundle(self) -> list[Certificate]:
        """Every published X.509 authority (prepared ones are published ahead, retired ones until expiry)."""
        return [e.authority.certificate for e in self.x509]

    def jwt_authorities(self) -> dict[str, PublicKeyTypes]:
        return {e.kid: e.key.public_key() for e in self.jwt}

    def to_secret_data(self) -> dict[str, str]:
        document = {
            "version": FORMAT_VERSION,
            "x509": [
                {
                    "id": e.id,
                    "state": e.state,
                    "createdAt": e.created_at.isoformat(),
                    "certificate": e.authority.certificate.public_bytes(Encoding.PEM).decode(),
                    "chain": [c.public_bytes(Encoding.PEM).decode() for c in e.authority.chain],
                    "key": key_to_pem(e.authority.key),
                }
                for e in self.x509
            ],
            "jwt": [
                {
                    "kid": e.kid,
                    "state": e.state,
                    "createdAt": e.created_at.isoformat(),
                    "notAfter": e.not_after.isoformat(),
                    "key": key_to_pem(e.key),
                }
                for e in self.jwt
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
            x509_entries = tuple(_x509_entry(e) for e in document["x509"])
            jwt_entries = tuple(_jwt_entry(e) for e in document["jwt"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{DOCUMENT_KEY} is malformed: {exc}") from None
        state = cls(x509_entries, jwt_entries)
        state.active_x509()
        state.active_jwt()
        return state


def _state(value: Any) -> KeyState:
    if value not in _STATES:
        raise ValueError(f"unknown key state {value!r}")
    result: KeyState = value
    return result


def _x509_entry(raw: Mapping[str, Any]) -> X509Entry:
    certificate = x509.load_pem_x509_certificate(raw["certificate"].encode())
    key = key_from_pem(raw["key"])
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError(f"X.509 CA {raw['id']}: key does not match its certificate")
    chain = tuple(x509.load_pem_x509_certificate(c.encode()) for c in raw.get("chain", []))
    return X509Entry(
        str(raw["id"]),
        _state(raw["state"]),
        X509Authority(key, certificate, chain),
        dt.datetime.fromisoformat(raw["createdAt"]),
    )


def _jwt_entry(raw: Mapping[str, Any]) -> JwtEntry:
    return JwtEntry(
        str(raw["kid"]),
        _state(raw["state"]),
        key_from_pem(raw["key"]),
        dt.datetime.fromisoformat(raw["createdAt"]),
        dt.datetime.fromisoformat(raw["notAfter"]),
    )
