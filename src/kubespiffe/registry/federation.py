"""FederatedTrustDomain: a foreign trust domain, where its bundle endpoint is, and how to authenticate it.

`FederatedTrustDomain.from_object` re-checks every rule the CRD's schema and CEL rules apply at admission
(defence in depth: an object written before a CRD upgrade is still checked). The bounds and patterns here are
the single source the CRD generator (crds.py) reads, and they are written in the subset of regular-expression
syntax that Python's `re` and the API server's RE2 read alike (no escapes, no POSIX classes). The one rule
admission applies that this module cannot is that `trustDomain` never changes (there is no old object here).

`federation_status` builds the status document kubespiffed writes after every fetch (SPIFFE federation E.6-7:
keep the last good bundle when a fetch fails).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from kubespiffe.constants import API_VERSION
from kubespiffe.errors import InvalidInput
from kubespiffe.registry.models import TRUST_DOMAIN_NAME_RE
from kubespiffe.spiffe.bundle import Bundle, bundle_to_json
from kubespiffe.spiffe.spiffeid import MAX_ID_BYTES, SpiffeId, SpiffeIdError, TrustDomain

KIND: Final = "FederatedTrustDomain"
PROFILES: Final = ("https_spiffe", "https_web")
Profile = Literal["https_spiffe", "https_web"]

MAX_URL_LENGTH: Final = 2048
MAX_PORT: Final = 65535
MAX_BOOTSTRAP_BYTES: Final = 256 * 1024
MAX_ENDPOINT_ID_LENGTH: Final = MAX_ID_BYTES
MAX_CONDITION_MESSAGE: Final = 32768

URL_SCHEME_PREFIX: Final = "https://"
# Something before the first '/', '?' or '#' contains '@': user[:password]@ (SPIFFE federation E.2).
URL_USERINFO_RE: Final = "^https://[^/?#]*@"
# https://HOST[:PORT][/PATH][?QUERY]: HOST a DNS name or an IPv4 address (no IPv6 literal), everything
# printable ASCII with '%' only in valid escapes, no '#fragment'. The character class [!"$&-~] is 0x21-0x7E
# without '#' (0x23) and '%' (0x25).
URL_RE: Final = (
    '^https://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[1-9][0-9]{0,4})?([/?]([!"$&-~]|%[0-9A-Fa-f]{2})*)?$'
)
ENDPOINT_ID_RE: Final = "^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$"
ENDPOINT_ID_DOT_SEGMENT_RE: Final = "^spiffe://[^/]*(/[^/]*)*/[.][.]?(/|$)"
BOOTSTRAP_PREFIXES: Final = ("{", "-----BEGIN CERTIFICATE-----")

READY: Final = "Ready"
FETCHED: Final = "Fetched"
FETCH_FAILED: Final = "FetchFailed"
BOOTSTRAPPED: Final = "Bootstrapped"


class FederationSpecError(InvalidInput):
    """The object breaks a rule; the message says which (and names the field)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise FederationSpecError(message)


@dataclass(frozen=True, slots=True)
class FederatedTrustDomain:
    """One FederatedTrustDomain object: the spec, plus the last good bundle its status carries."""

    name: str
    uid: str
    generation: int
    trust_domain: TrustDomain
    url: str
    profile: Profile
    endpoint_id: SpiffeId | None
    bootstrap: bytes | None
    status_bundle: bytes | None
    status_sequence: int | None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> FederatedTrustDomain:
        """Build from a Kubernetes JSON object; FederationSpecError says what admission would have refused."""
        _check(
            obj.get("apiVersion") == API_VERSION, f"apiVersion {obj.get('apiVersion')!r} is not {API_VERSION}"
        )
        _check(obj.get("kind") == KIND, f"kind {obj.get('kind')!r} is not {KIND}")
        meta = _mapping(obj.get("metadata"), "metadata")
        generation = meta.get("generation")
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
            raise FederationSpecError(f"metadata.generation {generation!r} is not a positive integer")
        spec = _mapping(obj.get("spec"), "spec")
        unknown = sorted(set(spec) - set(SPEC_FIELDS))
        _check(not unknown, f"spec has unknown fields: {', '.join(unknown)}")
        trust_domain = parse_trust_domain(spec.get("trustDomain"))
        url = _string(spec.get("bundleEndpointURL"), "spec.bundleEndpointURL")
        check_url(url)
        profile, endpoint_id = parse_profile(spec.get("bundleEndpointProfile"), trust_domain)
        bootstrap = None
        if "trustDomainBundle" in spec:
            bootstrap = parse_bootstrap(spec["trustDomainBundle"])
        _check(
            profile != "https_spiffe" or bootstrap is not None,
            "spec.trustDomainBundle is required for https_spiffe (the bootstrap bundle authenticates the "
            "first fetch)",
        )
        status_bundle, status_sequence = _status(obj.get("status"))
        return cls(
            name=_string(meta.get("name"), "metadata.name"),
            uid=_string(meta.get("uid"), "metadata.uid"),
            generation=generation,
            trust_domain=trust_domain,
            url=url,
            profile=profile,
            endpoint_id=endpoint_id,
            bootstrap=bootstrap,
            status_bundle=status_bundle,
            status_sequence=status_sequence,
        )


SPEC_FIELDS: Final = ("trustDomain", "bundleEndpointURL", "bundleEndpointProfile", "trustDomainBundle")
PROFILE_FIELDS: Final = ("type", "endpointSPIFFEID")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    _check(isinstance(value, Mapping), f"{where} is not an object")
    result: Mapping[str, Any] = value
    return result


def _string(value: Any, where: str) -> str:
    _check(isinstance(value, str) and value != "", f"{where} is not a non-empty string")
    result: str = value
    return result


def parse_trust_domain(value: Any) -> TrustDomain:
    """A trust domain name exactly as written: lower-case [a-z0-9._-], at most 255 bytes, no scheme."""
    text = _string(value, "spec.trustDomain")
    _check(
        re.fullmatch(TRUST_DOMAIN_NAME_RE, text) is not None,
        f"spec.trustDomain {text!r} must be a trust domain name: lower-case letters, digits, '.', '_', '-'",
    )
    try:
        return TrustDomain(text)
    except SpiffeIdError as e:
        raise FederationSpecError(f"spec.trustDomain: {e}") from None


def check_url(url: str) -> None:
    """https only, a DNS name or IPv4 host, no userinfo, no fragment, at most 2048 characters (E.2)."""
    where = "spec.bundleEndpointURL"
    _check(len(url) <= MAX_URL_LENGTH, f"{where} is longer than {MAX_URL_LENGTH} characters")
    _check(url.startswith(URL_SCHEME_PREFIX), f"{where} must be an https:// URL")
    _check(re.match(URL_USERINFO_RE, url) is None, f"{where} must not carry userinfo (user:password@)")
    match = re.fullmatch(URL_RE, url)
    if match is None:
        raise FederationSpecError(
            f"{where} must be https://HOST[:PORT][/PATH][?QUERY] with a DNS name or IPv4 address as HOST, in "
            "printable ASCII (percent-encode anything else), without a #fragment"
        )
    port = match.group(2)
    _check(port is None or int(port[1:]) <= MAX_PORT, f"{where} port must be between 1 and {MAX_PORT}")


def parse_profile(value: Any, trust_domain: TrustDomain) -> tuple[Profile, SpiffeId | None]:
    """The profile type, and the endpoint SPIFFE ID (https_spiffe only): a workload ID in `trust_domain`."""
    where = "spec.bundleEndpointProfile"
    profile = _mapping(value, where)
    unknown = sorted(set(profile) - set(PROFILE_FIELDS))
    _check(not unknown, f"{where} has unknown fields: {', '.join(unknown)}")
    kind = profile.get("type")
    if kind not in PROFILES:
        raise FederationSpecError(f"{where}.type {kind!r} is not one of {', '.join(PROFILES)}")
    if kind == "https_web":
        _check("endpointSPIFFEID" not in profile, f"{where}.endpointSPIFFEID is only for https_spiffe")
        return "https_web", None
    _check("endpointSPIFFEID" in profile, f"{where}.endpointSPIFFEID is required for https_spiffe")
    text = _string(profile["endpointSPIFFEID"], f"{where}.endpointSPIFFEID")
    try:
        endpoint_id = SpiffeId.parse(text)
    except SpiffeIdError as e:
        raise FederationSpecError(f"{where}.endpointSPIFFEID: {e}") from None
    # SpiffeId.parse folds the scheme and trust domain to lower case; admission takes only the canonical form.
    _check(str(endpoint_id) == text, f"{where}.endpointSPIFFEID {text!r} must be written in lower case")
    _check(
        endpoint_id.trust_domain == trust_domain,
        f"{where}.endpointSPIFFEID {text!r} must be in the trust domain {trust_domain}",
    )
    _check(
        endpoint_id.path != "",
        f"{where}.endpointSPIFFEID {text!r} must have a path (the endpoint server's workload ID)",
    )
    return "https_spiffe", endpoint_id


def parse_bootstrap(value: Any) -> bytes:
    """The bootstrap bundle as UTF-8: SPIFFE bundle JSON or PEM certificates, at most 256 KiB."""
    where = "spec.trustDomainBundle"
    if not isinstance(value, str):
        raise FederationSpecError(f"{where} is not a string")
    try:
        data = value.encode()
    except UnicodeEncodeError:
        raise FederationSpecError(f"{where} is not valid Unicode") from None
    _check(len(data) <= MAX_BOOTSTRAP_BYTES, f"{where} is larger than {MAX_BOOTSTRAP_BYTES} bytes")
    _check(
        value.startswith(BOOTSTRAP_PREFIXES),
        f"{where} must be SPIFFE bundle JSON (starting with '{{') or PEM certificates (starting with "
        "-----BEGIN CERTIFICATE-----)",
    )
    return data


def _status(value: Any) -> tuple[bytes | None, int | None]:
    """The last good bundle and its sequence; a malformed status is ignored (kubespiffed rewrites it)."""
    status = value if isinstance(value, Mapping) else {}
    bundle = status.get("bundle")
    sequence = status.get("sequence")
    return (
        bundle.encode("utf-8", "replace") if isinstance(bundle, str) and bundle else None,
        sequence if isinstance(sequence, int) and not isinstance(sequence, bool) and sequence >= 0 else None,
    )


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def federation_status(
    ftd: FederatedTrustDomain,
    bundle: Bundle | None,
    previous_conditions: Sequence[Any],
    now: dt.datetime,
    next_refresh: dt.datetime,
    reason: str,
    message: str,
) -> dict[str, Any]:
    """The status after a fetch: Ready=True with the fetched `bundle`, or Ready=False (`bundle` None).

    A failed fetch leaves the last good bundle alone: the document has no `bundle` or `sequence` key, and a
    merge patch without them keeps what status holds. lastTransitionTime moves only when Ready's status
    flips, as the Kubernetes API conventions ask."""
    if now.tzinfo is None or next_refresh.tzinfo is None:
        raise ValueError("federation_status needs times with a time zone")
    ready = "True" if bundle is not None else "False"
    transition = _rfc3339(now)
    for old in previous_conditions:
        if (
            isinstance(old, Mapping)
            and old.get("type") == READY
            and old.get("status") == ready
            and isinstance(old.get("lastTransitionTime"), str)
            and old["lastTransitionTime"]
        ):
            transition = old["lastTransitionTime"]
    status: dict[str, Any] = {
        "observedGeneration": ftd.generation,
        "lastRefreshTime": _rfc3339(now),
        "nextRefreshTime": _rfc3339(next_refresh),
        "conditions": [
            {
                "type": READY,
                "status": ready,
                "reason": reason,
                "message": message[:MAX_CONDITION_MESSAGE],
                "lastTransitionTime": transition,
                "observedGeneration": ftd.generation,
            }
        ],
    }
    if bundle is not None:
        status["bundle"] = bundle_to_json(bundle).decode()
        status["sequence"] = bundle.sequence or 0
    return status
