"""SPIFFE IDs and trust domains, per SPIFFE-ID.md (checklist section A).

Parsing is strict where the spec says MUST and lenient only where it says so: the scheme and the trust
domain are case-insensitive on input and always emitted in lower case; the path is case-sensitive.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from kubespiffe.errors import InvalidInput

SCHEME = "spiffe"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TD_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


class SpiffeIdError(InvalidInput):
    """A string that is not a valid SPIFFE ID, trust domain or path; the message says which rule broke."""


def validate_trust_domain_name(name: str) -> None:
    """Raise SpiffeIdError unless `name` is a valid (already lower-cased) trust domain name."""
    if not name:
        raise SpiffeIdError("trust domain is missing")
    bad = sorted(set(name) - _TD_CHARS)
    if bad:
        raise SpiffeIdError(f"trust domain {name!r} has characters outside [a-z0-9._-]: {''.join(bad)!r}")
    if len(name) > MAX_TRUST_DOMAIN_BYTES:  # ASCII only by now: characters are bytes
        raise SpiffeIdError(f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")


def validate_path(path: str) -> None:
    """Raise SpiffeIdError unless `path` is empty or a valid SPIFFE ID path (`/seg/seg`)."""
    if path == "":
        return
    if not path.startswith("/"):
        raise SpiffeIdError(f"path {path!r} must start with '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise SpiffeIdError(f"path {path!r} has an empty segment or a trailing '/'")
        if segment in (".", ".."):
            raise SpiffeIdError(f"path {path!r} has a '{segment}' segment")
        bad = sorted(set(segment) - _SEGMENT_CHARS)
        if bad:
            raise SpiffeIdError(
                f"path segment {segment!r} has characters outside [a-zA-Z0-9._-]: {''.join(bad)!r}"
            )


@dataclass(frozen=True, order=True, slots=True)
class TrustDomain:
    """A trust domain name such as `example.org` (never with a scheme)."""

    name: str

    def __post_init__(self) -> None:
        validate_trust_domain_name(self.name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept `example.org` or `spiffe://example.org` (no path); both fold to lower case."""
        if not text.isascii():  # before folding: some non-ASCII letters lower-case to ASCII (U+212A -> k)
            raise SpiffeIdError(f"trust domain {text!r} is not ASCII")
        if "://" in text:
            spiffe_id = SpiffeId.parse(text)
            if spiffe_id.path:
                raise SpiffeIdError(f"{text!r} has a path; a trust domain has none")
            return spiffe_id.trust_domain
        return cls(text.lower())

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own ID, `spiffe://<name>`, as carried by its signing CAs."""
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, order=True, slots=True)
class SpiffeId:
    """`spiffe://<trust domain><path>`; `path` is "" for the trust domain's own ID."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        validate_path(self.path)
        if len(str(self)) > MAX_ID_BYTES:  # validated parts are ASCII: characters are bytes
            raise SpiffeIdError(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse a SPIFFE ID string, refusing everything SPIFFE-ID.md forbids."""
        if not text:
            raise SpiffeIdError("SPIFFE ID is empty")
        if not text.isascii():  # every valid character is ASCII; refuse before any case folding
            raise SpiffeIdError(f"{text!r} has non-ASCII characters")
        if len(text) > MAX_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() != SCHEME:
            raise SpiffeIdError(f"{text!r} does not start with 'spiffe://'")
        if "?" in rest or "#" in rest:
            raise SpiffeIdError(f"{text!r} has a query or fragment")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            raise SpiffeIdError(f"{text!r} has userinfo")
        if ":" in authority:
            raise SpiffeIdError(f"{text!r} has a port")
        if "%" in text:
            raise SpiffeIdError(f"{text!r} is percent-encoded")
        return cls(TrustDomain(authority.lower()), slash + path)

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain, *segments: str) -> SpiffeId:
        """Build an ID from path segments, each validated on its own (a '/' inside one is refused)."""
        for segment in segments:
            if "/" in segment:
                raise SpiffeIdError(f"path segment {segment!r} contains '/'")
            validate_path("/" + segment)
        return cls(trust_domain, "".join("/" + s for s in segments))

    def member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def is_under(self, prefix: SpiffeId) -> bool:
        """True when this ID equals `prefix` or lies below it segment-wise (`/ns/a` is not under `/ns/ab`)."""
        if self.trust_domain != prefix.trust_domain:
            return False
        return self.path == prefix.path or self.path.startswith(prefix.path + "/")

    def __str__(self) -> str:
        return f"{SCHEME}://{self.trust_domain.name}{self.path}"
