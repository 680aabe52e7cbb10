"""The Ready condition of a registration and the status document kubespiffed writes.

Evaluation is pure and static (no pod involved): Ready=False means kubespiffed never uses the registration,
and the reason says which rule it breaks. lastTransitionTime only moves when Ready's status flips, as the
Kubernetes API conventions ask, so a reason or message change alone does not look like a transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kubespiffe.registry.models import Registration, RegistrationError
from kubespiffe.registry.tenancy import (
    DEFAULT_CLUSTER_DOMAIN,
    TenancyError,
    check_registration,
    tenancy_warnings,
)
from kubespiffe.spiffe.spiffeid import TrustDomain

READY = "Ready"
VALID = "Valid"
VALID_WITH_WARNING = "NamespaceFromPod"


@dataclass(frozen=True, slots=True)
class Condition:
    """A metav1.Condition without its timestamps (those depend on history; see status_document)."""

    type: str
    status: Literal["True", "False"]
    reason: str
    message: str


def evaluate(
    registration: Registration,
    trust_domain: TrustDomain,
    reserved_dns_names: frozenset[str] = frozenset(),
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> Condition:
    """Ready=True with reason Valid (NamespaceFromPod with a warning, see tenancy_warnings), or Ready=False
    with the broken rule as reason and a sentence why."""
    try:
        check_registration(registration, trust_domain, reserved_dns_names, cluster_domain)
    except TenancyError as e:
        return Condition(READY, "False", e.reason, f"Not used: {e}.")
    grants = f"Grants {registration.spec.spiffe_id_template} to the pods it selects."
    warnings = tenancy_warnings(registration)
    if warnings:
        return Condition(
            READY, "True", VALID_WITH_WARNING, " ".join([grants, *(f"Warning: {w}." for w in warnings)])
        )
    return Condition(READY, "True", VALID, grants)


def evaluate_object(
    obj: Mapping[str, Any],
    trust_domain: TrustDomain,
    reserved_dns_names: frozenset[str] = frozenset(),
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> Condition:
    """Like evaluate, for a raw API object, which may not even parse (reasons InvalidSpec, InvalidTTL...)."""
    try:
        registration = Registration.from_object(obj)
    except RegistrationError as e:
        return Condition(READY, "False", e.reason, f"Not used: {e}.")
    return evaluate(registration, trust_domain, reserved_dns_names, cluster_domain)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_document(
    previous: Mapping[str, Any] | None, generation: int, condition: Condition, now: datetime | None = None
) -> dict[str, Any]:
    """The `status` to write. The previous lastTransitionTime is kept while the condition's status holds, so
    an unchanged evaluation yields a document equal to `previous` and the caller can skip the write."""
    transition = _rfc3339(now or datetime.now(UTC))
    for old in (previous or {}).get("conditions") or []:
        if (
            isinstance(old, Mapping)
            and old.get("type") == condition.type
            and old.get("status") == condition.status
            and isinstance(old.get("lastTransitionTime"), str)
        ):
            transition = old["lastTransitionTime"]
    return {
        "observedGeneration": generation,
        "conditions": [
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": transition,
                "observedGeneration": generation,
            }
        ],
    }
