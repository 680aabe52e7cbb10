"""FederatedTrustDomain: a foreign trust domain, where its bundle endpoint is, and how to authenticate it.

The same rules as the CRD's admission checks (defence in depth: an object written before a CRD upgrade is
still checked), and the status document kubespiffed writes after every fetch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from kubespiffe.spiffe.bundle import Bundle, bundle_to_json
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

KIND = "FederatedTrustDomain"
PROFILES = ("https_spiffe", "https_web")
MAX_URL_LENGTH = 2048
MAX_BOOTSTRAP_BYTES = 256 * 1024
Profile = Literal["https_spiffe", "https_web"]


class FederationSpecError(ValueError):
    """The object breaks a rule; the message says which."""


@dataclass(frozen=True)
class FederatedTrustDomain:
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
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        try:
            trust_domain = TrustDomain(str(spec.get("trustDomain", "")))
        except SpiffeIdError as exc:
            raise FederationSpecError(f"trustDomain: {exc}") from None
        url = str(spec.get("bundleEndpointURL", ""))
        check_url(url)
        profile_spec = spec.get("bundleEndpointProfile") or {}
        profile = profile_spec.get("type")
        if profile not in PROFILES:
            raise FederationSpecError(f"bundleEndpointProfile.type must be one of {', '.join(PROFILES)}")
        endpoint_id = None
        raw_id = profile_spec.get("endpointSPIFFEID")
        bootstrap = spec.get("trustDomainBundle")
        if profile == "https_spiffe":
            if not raw_id:
                raise FederationSpecError("https_spiffe needs bundleEndpointProfile.endpointSPIFFEID")
            try:
                endpoint_id = SpiffeId.parse(str(raw_id))
            except SpiffeIdError as exc:
                raise FederationSpecError(f"endpointSPIFFEID: {exc}") from None
            if endpoint_id.trust_domain != trust_domain or not endpoint_id.path:
                raise FederationSpecError(f"endpointSPIFFEID must be a workload ID in {trust_domain}")
            if not bootstrap:
                raise FederationSpecError(
                    "https_spiffe needs trustDomainBundle to authenticate the first fetch"
                )
        elif raw_id:
            raise FederationSpecError("endpointSPIFFEID is only for the https_spiffe profile")
        if bootstrap and len(str(bootstrap)) > MAX_BOOTSTRAP_BYTES:
            raise FederationSpecError(f"trustDomainBundle is larger than {MAX_BOOTSTRAP_BYTES} bytes")
        sequence = status.get("sequence")
        return cls(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation", 0)),
            trust_domain=trust_domain,
            url=url,
            profile=profile,
            endpoint_id=endpoint_id,
            bootstrap=str(bootstrap).encode() if bootstrap else None,
            status_bundle=str(status["bundle"]).encode() if status.get("bundle") else None,
            status_sequence=int(sequence) if isinstance(sequence, int) else None,
        )


def check_url(url: str) -> None:
    """https only, a host, no userinfo (SPIFFE federation E.2)."""
    if len(url) > MAX_URL_LENGTH:
        raise FederationSpecError(f"bundleEndpointURL is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise FederationSpecError("bundleEndpointURL must be an https:// URL")
    if "@" in parts.netloc:
        raise FederationSpecError("bundleEndpointURL must not carry userinfo")
    if not parts.hostname:
        raise FederationSpecError("bundleEndpointURL has no host")


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def federation_status(
    ftd: FederatedTrustDomain,
    bundle: Bundle | None,
    previous_conditions: list[Mapping[str, Any]],
    now: dt.datetime,
    next_refresh: dt.datetime,
    reason: str,
    message: str,
) -> dict[str, Any]:
    """The status after a fetch. `bundle` None (a failed fetch) leaves the last good bundle untouched:
    a merge patch without the `bundle` key keeps it. lastTransitionTime moves only when Ready flips."""
    ready = "True" if bundle is not None else "False"
    transition = _rfc3339(now)
    for old in previous_conditions:
        if old.get("type") == "Ready" and old.get("status") == ready and old.get("lastTransitionTime"):
            transition = str(old["lastTransitionTime"])
    status: dict[str, Any] = {
        "observedGeneration": ftd.generation,
        "lastRefreshTime": _rfc3339(now),
        "nextRefreshTime": _rfc3339(next_refresh),
        "conditions": [
            {
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": message[:32768],
                "lastTransitionTime": transition,
                "observedGeneration": ftd.generation,
            }
        ],
    }
    if bundle is not None:
        status["bundle"] = bundle_to_json(bundle).decode()
        status["sequence"] = bundle.sequence or 0
    return status
