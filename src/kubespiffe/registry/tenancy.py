"""The tenancy rule: who may grant which SPIFFE IDs and DNS names.

- A WorkloadRegistration grants only IDs strictly under `spiffe://<td>/ns/<its namespace>/`, so a namespace
  admin cannot mint another namespace's identity.
- No registration, cluster-scoped included, grants `spiffe://<td>/kubespiffe` or anything under it: that
  path is kubespiffe's own. Nor any ID outside the trust domain, nor one of kubespiffed's own DNS names.

Each rule is checked twice. Statically, on the template (the registration's Ready condition): a namespaced
template must begin with the segments `{trustDomain}` or the literal trust domain, then `ns`, then
`{namespace}` or the literal namespace name, followed by at least one more segment. That check is sound
because rendering fills every placeholder with a non-empty value free of '/' (template.py refuses others),
so each segment of the template renders to exactly one segment of the ID, and a namespaced registration only
ever renders for pods of its own namespace, so `{namespace}` is that namespace. Then again on every rendered
ID and DNS name, so a bug in either half cannot by itself hand out a foreign identity.
"""

from __future__ import annotations

from kubespiffe.errors import InvalidInput
from kubespiffe.registry.models import NAMESPACED_KIND, Registration
from kubespiffe.registry.template import NAMESPACE, TRUST_DOMAIN, Part, Placeholder, Template
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

RESERVED_SEGMENT = "kubespiffe"


class TenancyError(InvalidInput):
    """A registration or rendered identity that breaks the tenancy rule; `reason` names the rule."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def reserved_prefix(trust_domain: TrustDomain) -> SpiffeId:
    """`spiffe://<td>/kubespiffe`: this ID and everything under it belong to kubespiffe itself."""
    return SpiffeId(trust_domain, "/" + RESERVED_SEGMENT)


def namespace_prefix(trust_domain: TrustDomain, namespace: str) -> SpiffeId:
    """`spiffe://<td>/ns/<namespace>`; a namespaced registration grants only IDs strictly below it."""
    return SpiffeId.from_segments(trust_domain, "ns", namespace)


def _is(segment: tuple[Part, ...], placeholder: str, literal: str) -> bool:
    return segment in ((Placeholder(placeholder),), (literal,))


def check_spiffe_id_template(registration: Registration, trust_domain: TrustDomain) -> None:
    """Raise TenancyError unless every ID the registration's template can render is allowed (static)."""
    template: Template = registration.spec.spiffe_id_template
    authority, *path = template.segments("/")[2:]  # drop "spiffe:" and the empty piece between "//"
    if not _is(authority, TRUST_DOMAIN, trust_domain.name):
        raise TenancyError(
            f"{template} names a trust domain other than {trust_domain}; use {{trustDomain}}",
            "ForeignTrustDomain",
        )
    if path[:1] == [(RESERVED_SEGMENT,)]:
        raise TenancyError(
            f"{template} is under {reserved_prefix(trust_domain)}, which is reserved for kubespiffe",
            "ReservedID",
        )
    if registration.kind == NAMESPACED_KIND:
        assert registration.namespace is not None
        if not (len(path) >= 3 and path[0] == ("ns",) and _is(path[1], NAMESPACE, registration.namespace)):
            raise TenancyError(
                f"a {NAMESPACED_KIND} may only grant IDs under "
                f"spiffe://{{trustDomain}}/ns/{{namespace}}/, and {template} is not",
                "TenancyViolation",
            )


def check_spiffe_id(registration: Registration, spiffe_id: SpiffeId, trust_domain: TrustDomain) -> None:
    """Raise TenancyError unless the registration may grant this rendered ID."""
    if not spiffe_id.member_of(trust_domain):
        raise TenancyError(f"{spiffe_id} is not in the trust domain {trust_domain}", "ForeignTrustDomain")
    if spiffe_id.is_under(reserved_prefix(trust_domain)):
        raise TenancyError(
            f"{spiffe_id} is under {reserved_prefix(trust_domain)}, which is reserved for kubespiffe",
            "ReservedID",
        )
    if registration.kind == NAMESPACED_KIND:
        assert registration.namespace is not None
        prefix = namespace_prefix(trust_domain, registration.namespace)
        if spiffe_id == prefix or not spiffe_id.is_under(prefix):
            raise TenancyError(
                f"a {NAMESPACED_KIND} in {registration.namespace} may only grant IDs under {prefix}/, "
                f"not {spiffe_id}",
                "TenancyViolation",
            )


def check_dns_name_templates(registration: Registration, reserved_dns_names: frozenset[str]) -> None:
    """Raise TenancyError if a literal DNS name template is one of kubespiffed's own names (static)."""
    for template in registration.spec.dns_name_templates:
        check_dns_name(template.text, reserved_dns_names)


def check_dns_name(name: str, reserved_dns_names: frozenset[str]) -> None:
    """Raise TenancyError if `name` is one of kubespiffed's own DNS names (compared case-insensitively)."""
    if name.lower() in {n.lower() for n in reserved_dns_names}:
        raise TenancyError(f"the DNS name {name} is reserved for kubespiffed", "ReservedDNSName")


def check_registration(
    registration: Registration, trust_domain: TrustDomain, reserved_dns_names: frozenset[str]
) -> None:
    """Every static tenancy check; a registration failing one is not Ready and never used."""
    check_spiffe_id_template(registration, trust_domain)
    check_dns_name_templates(registration, reserved_dns_names)
