"""Which identities a pod gets: the registrations selecting it, rendered, checked and put in a stable order.

Order is oldest creationTimestamp first, ties broken by kind, namespace and name. The first identity is the
pod's default (the SPIFFE Workload API hands the first SVID to clients that know of only one), so adding a
registration appends identities and never changes an existing pod's default. Two registrations created within
the same second tie on the timestamp (it has second resolution) and are ordered by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from kubespiffe.registry.models import NAMESPACED_KIND, Registration, RegistrationKey
from kubespiffe.registry.selector import selector_matches
from kubespiffe.registry.template import PodFacts, TemplateError, render_dns_name, render_spiffe_id
from kubespiffe.registry.tenancy import (
    DEFAULT_CLUSTER_DOMAIN,
    TenancyError,
    check_dns_name,
    check_registration,
    check_spiffe_id,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain


@dataclass(frozen=True, slots=True)
class Identity:
    """One identity granted to a pod; TTLs of None mean kubespiffed's defaults."""

    spiffe_id: SpiffeId
    dns_names: tuple[str, ...]
    x509_ttl: timedelta | None
    jwt_ttl: timedelta | None
    federates_with: tuple[TrustDomain, ...]
    hint: str | None
    registration: RegistrationKey


class Skipped(NamedTuple):
    """A registration that selects the pod but grants it nothing, and why (a sentence for the log)."""

    registration: RegistrationKey
    reason: str


@dataclass(frozen=True, slots=True)
class MatchResult:
    identities: tuple[Identity, ...]
    skipped: tuple[Skipped, ...]

    @property
    def default(self) -> Identity | None:
        return self.identities[0] if self.identities else None


def order_key(registration: Registration) -> tuple[object, ...]:
    """Oldest first, then kind, namespace, name: a total order that a new registration cannot reshuffle."""
    return (
        registration.creation_timestamp,
        registration.kind,
        registration.namespace or "",
        registration.name,
    )


def selects(registration: Registration, pod: PodFacts, namespace_labels: Mapping[str, str]) -> bool:
    """Whether the registration's selectors pick this pod (validity is checked separately)."""
    spec = registration.spec
    if registration.kind == NAMESPACED_KIND and registration.namespace != pod.namespace:
        return False
    if spec.service_account_names and pod.service_account not in spec.service_account_names:
        return False
    return selector_matches(spec.pod_selector, pod.labels) and selector_matches(
        spec.namespace_selector, namespace_labels
    )


def _render(
    registration: Registration,
    pod: PodFacts,
    trust_domain: TrustDomain,
    reserved_dns_names: frozenset[str],
    cluster_domain: str,
) -> Identity:
    spec = registration.spec
    spiffe_id = render_spiffe_id(spec.spiffe_id_template, pod, trust_domain)
    check_spiffe_id(registration, spiffe_id, trust_domain, pod.namespace)
    dns_names: list[str] = []
    for template in spec.dns_name_templates:
        name = render_dns_name(template, pod)
        check_dns_name(name, reserved_dns_names, registration, cluster_domain)
        if name not in dns_names:
            dns_names.append(name)
    return Identity(
        spiffe_id=spiffe_id,
        dns_names=tuple(dns_names),
        x509_ttl=spec.x509_svid_ttl,
        jwt_ttl=spec.jwt_svid_ttl,
        federates_with=spec.federates_with,
        hint=spec.hint,
        registration=registration.key,
    )


def identities_for(
    pod: PodFacts,
    namespace_labels: Mapping[str, str],
    registrations: Iterable[Registration],
    trust_domain: TrustDomain,
    reserved_dns_names: frozenset[str],
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> MatchResult:
    """The pod's identities in stable order, and the selecting registrations that granted nothing, with why.

    A registration failing a static check (not Ready) or failing to render for this pod is skipped whole;
    a later registration repeating an earlier SPIFFE ID or non-empty hint is skipped too (the Workload API
    requires hints to be unique among the SVIDs it returns).
    """
    identities: list[Identity] = []
    skipped: list[Skipped] = []
    seen_ids: dict[SpiffeId, RegistrationKey] = {}
    seen_hints: dict[str, RegistrationKey] = {}
    for registration in sorted(registrations, key=order_key):
        if not selects(registration, pod, namespace_labels):
            continue
        key = registration.key
        try:
            check_registration(registration, trust_domain, reserved_dns_names, cluster_domain)
        except TenancyError as e:
            skipped.append(Skipped(key, f"not Ready ({e.reason}): {e}"))
            continue
        try:
            identity = _render(registration, pod, trust_domain, reserved_dns_names, cluster_domain)
        except TemplateError as e:
            skipped.append(Skipped(key, f"cannot render for this pod: {e}"))
            continue
        except TenancyError as e:
            skipped.append(Skipped(key, f"refused ({e.reason}): {e}"))
            continue
        if identity.spiffe_id in seen_ids:
            reason = f"duplicate: {identity.spiffe_id} is already granted by {seen_ids[identity.spiffe_id]}"
            skipped.append(Skipped(key, reason))
            continue
        if identity.hint and identity.hint in seen_hints:
            reason = f"duplicate: hint {identity.hint!r} is already used by {seen_hints[identity.hint]}"
            skipped.append(Skipped(key, reason))
            continue
        seen_ids[identity.spiffe_id] = key
        if identity.hint:
            seen_hints[identity.hint] = key
        identities.append(identity)
    return MatchResult(tuple(identities), tuple(skipped))
