"""The tenancy rule: who may grant which SPIFFE IDs and DNS names.

- A WorkloadRegistration grants only IDs strictly under `spiffe://<td>/ns/<its namespace>/`, so a namespace
  admin cannot mint another namespace's identity.
- A WorkloadRegistration grants only DNS names under its own namespace: `<name>.<ns>`, `<name>.<ns>.svc`
  or `<name>.<ns>.svc.<cluster domain>`. The CA is trusted in every namespace, so a name another namespace's
  clients resolve (`db.other.svc`, `kubernetes.default.svc`, `www.example.com`) would let one namespace
  impersonate another's service. Wider names need a ClusterWorkloadRegistration.
- No registration, cluster-scoped included, grants `spiffe://<td>/kubespiffe` or anything under it: that
  path is kubespiffe's own. Nor any ID outside the trust domain, nor one of kubespiffed's own DNS names.
- At issuance, whatever the kind, a rendered ID `spiffe://<td>/ns/<X>/...` is granted only to pods of
  namespace X: `/ns/<X>/` is the namespace's own path, and a ClusterWorkloadRegistration whose template
  takes those segments from pod labels would otherwise let a pod pick another namespace's ID.
  `tenancy_warnings` names such templates (status says so while they stay Ready).

Each rule is checked twice. Statically, on the template (the registration's Ready condition): a namespaced
template must begin with the segments `{trustDomain}` or the literal trust domain, then `ns`, then
`{namespace}` or the literal namespace name, followed by at least one more segment. That check is sound
because rendering fills every placeholder with a non-empty value free of '/' (template.py refuses others),
so each segment of the template renders to exactly one segment of the ID, and a namespaced registration only
ever renders for pods of its own namespace, so `{namespace}` is that namespace. Then again on every rendered
ID and DNS name, so a bug in either half cannot by itself hand out a foreign identity. The DNS rule's
static check is sound the same way: the suffix `.{namespace}[.svc[.<cluster domain>]]` is literal text or
`{namespace}` (no dots in a namespace name), and at least one label must precede it.
"""

from __future__ import annotations

from kubespiffe.errors import InvalidInput
from kubespiffe.registry.models import NAMESPACED_KIND, Registration
from kubespiffe.registry.template import NAMESPACE, TRUST_DOMAIN, Part, Placeholder, Template
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

RESERVED_SEGMENT = "kubespiffe"
NAMESPACE_SEGMENT = "ns"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


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


def check_spiffe_id(
    registration: Registration,
    spiffe_id: SpiffeId,
    trust_domain: TrustDomain,
    pod_namespace: str | None = None,
) -> None:
    """Raise TenancyError unless the registration may grant this rendered ID (to a pod of `pod_namespace`;
    None only where there is no pod, e.g. checking a literal template)."""
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
    segments = spiffe_id.path.split("/")[1:]
    foreign = len(segments) >= 2 and segments[0] == NAMESPACE_SEGMENT and segments[1] != pod_namespace
    if pod_namespace is not None and foreign:
        raise TenancyError(
            f"{spiffe_id} is namespace {segments[1]}'s ID; a pod in {pod_namespace} is never granted it",
            "ForeignNamespaceID",
        )


def _pod_controlled(segment: tuple[Part, ...]) -> bool:
    return any(isinstance(p, Placeholder) and p.name != TRUST_DOMAIN for p in segment)


def tenancy_warnings(registration: Registration) -> list[str]:
    """Sentences about what is allowed but may surprise: a template whose namespace segment (`/ns/<X>/`)
    the pod controls. Issuance refuses such IDs unless X is the pod's namespace, so pods may get nothing."""
    path = registration.spec.spiffe_id_template.segments("/")[3:]
    if len(path) < 2:
        return []
    first, second = path[0], path[1]
    may_be_ns = first == (NAMESPACE_SEGMENT,) or _pod_controlled(first)
    if may_be_ns and _pod_controlled(second) and second != (Placeholder(NAMESPACE),):
        return [
            f"{registration.spec.spiffe_id_template} lets the pod's names or labels fill the namespace "
            "segment of /ns/<namespace>/; IDs naming another namespace than the pod's are refused at issuance"
        ]
    return []


def _dns_suffixes(namespace: tuple[Part, ...], cluster_domain: str) -> list[tuple[tuple[Part, ...], ...]]:
    return [
        (namespace,),
        (namespace, ("svc",)),
        (namespace, ("svc",), *((label,) for label in cluster_domain.split("."))),
    ]


def check_dns_name_templates(
    registration: Registration,
    reserved_dns_names: frozenset[str],
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> None:
    """Raise TenancyError if a literal DNS name template is one of kubespiffed's own names, or if a
    namespaced registration's template can render a name outside its namespace (static)."""
    templates = registration.spec.dns_name_templates
    for template in templates:
        check_dns_name(template.text, reserved_dns_names)
    if registration.kind != NAMESPACED_KIND:
        return
    assert registration.namespace is not None
    for template in templates:
        labels = template.segments(".")
        allowed = (
            suffix
            for namespace in ((Placeholder(NAMESPACE),), (registration.namespace,))
            for suffix in _dns_suffixes(namespace, cluster_domain)
        )
        if not any(len(labels) > len(s) and labels[-len(s) :] == s for s in allowed):
            raise TenancyError(
                f"a {NAMESPACED_KIND} may only grant DNS names under its namespace ({{name}}.{{namespace}}, "
                f"{{name}}.{{namespace}}.svc or {{name}}.{{namespace}}.svc.{cluster_domain}), and "
                f"{template} is not",
                "DNSNameOutsideNamespace",
            )


def check_dns_name(
    name: str,
    reserved_dns_names: frozenset[str],
    registration: Registration | None = None,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> None:
    """Raise TenancyError if `name` is one of kubespiffed's own DNS names (compared case-insensitively), or
    outside the namespace of `registration` when that is namespaced (a rendered name, at issuance)."""
    lowered = name.lower()
    if lowered in {n.lower() for n in reserved_dns_names}:
        raise TenancyError(f"the DNS name {name} is reserved for kubespiffed", "ReservedDNSName")
    if registration is None or registration.kind != NAMESPACED_KIND:
        return
    ns = registration.namespace
    suffixes = (f".{ns}", f".{ns}.svc", f".{ns}.svc.{cluster_domain.lower()}")
    if not any(lowered.endswith(s) and len(lowered) > len(s) for s in suffixes):
        raise TenancyError(
            f"a {NAMESPACED_KIND} in {ns} may only grant DNS names under {ns}, not {name}",
            "DNSNameOutsideNamespace",
        )


def check_registration(
    registration: Registration,
    trust_domain: TrustDomain,
    reserved_dns_names: frozenset[str],
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> None:
    """Every static tenancy check; a registration failing one is not Ready and never used."""
    check_spiffe_id_template(registration, trust_domain)
    check_dns_name_templates(registration, reserved_dns_names, cluster_domain)
