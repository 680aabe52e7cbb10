"""The Ready condition and the status document, including lastTransitionTime bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubespiffe.registry.models import Registration
from kubespiffe.registry.status import Condition, evaluate, evaluate_object, status_document
from kubespiffe.spiffe.spiffeid import TrustDomain

TD = TrustDomain("example.org")
T0 = datetime(2025, 5, 1, 8, 0, 0, tzinfo=UTC)


def obj(spec: dict[str, Any], kind: str = "WorkloadRegistration") -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "r",
        "uid": "u",
        "generation": 3,
        "creationTimestamp": "2025-01-01T00:00:00Z",
    }
    if kind == "WorkloadRegistration":
        metadata["namespace"] = "team-a"
    return {"apiVersion": "kubespiffe.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "kind", "status", "reason", "message"),
    [
        ({}, "WorkloadRegistration", "True", "Valid", "Grants spiffe://{trustDomain}/ns/{namespace}/sa/"),
        (
            {"spiffeIDTemplate": "spiffe://{trustDomain}/ns/team-b/x"},
            "WorkloadRegistration",
            "False",
            "TenancyViolation",
            "Not used: a WorkloadRegistration may only grant IDs under spiffe://{trustDomain}/ns/{namespace}/",
        ),
        (
            {"spiffeIDTemplate": "spiffe://{trustDomain}/kubespiffe/x"},
            "ClusterWorkloadRegistration",
            "False",
            "ReservedID",
            "reserved for kubespiffe",
        ),
        (
            {"spiffeIDTemplate": "spiffe://elsewhere.org/x"},
            "ClusterWorkloadRegistration",
            "False",
            "ForeignTrustDomain",
            "names a trust domain other than example.org",
        ),
        (
            {"dnsNameTemplates": ["kubespiffed.kubespiffe.svc"]},
            "WorkloadRegistration",
            "False",
            "ReservedDNSName",
            "the DNS name kubespiffed.kubespiffe.svc is reserved",
        ),
    ],
)
def test_evaluate(spec: dict[str, Any], kind: str, status: str, reason: str, message: str) -> None:
    reserved = frozenset({"kubespiffed.kubespiffe.svc"})
    condition = evaluate(Registration.from_object(obj(spec, kind)), TD, reserved)
    assert (condition.type, condition.status, condition.reason) == ("Ready", status, reason)
    assert message in condition.message
    assert condition.message.endswith(".")
    assert evaluate_object(obj(spec, kind), TD, reserved) == condition


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"spiffeIDTemplate": "spiffe://{trustDomain}/{nope}"}, "InvalidTemplate"),
        ({"x509SVIDTTL": "45d"}, "InvalidTTL"),
        ({"hint": 5}, "InvalidSpec"),
    ],
)
def test_evaluate_object_reports_objects_that_do_not_parse(spec: dict[str, Any], reason: str) -> None:
    condition = evaluate_object(obj(spec), TD)
    assert (condition.status, condition.reason) == ("False", reason)
    assert condition.message.startswith("Not used: spec.")


READY = Condition("Ready", "True", "Valid", "Grants it.")
NOT_READY = Condition("Ready", "False", "TenancyViolation", "Not used.")


def test_first_status_uses_now_and_the_generation() -> None:
    status = status_document(None, 3, READY, T0)
    assert status == {
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Valid",
                "message": "Grants it.",
                "lastTransitionTime": "2025-05-01T08:00:00Z",
                "observedGeneration": 3,
            }
        ],
    }


def test_unchanged_status_keeps_the_transition_time_and_is_idempotent() -> None:
    first = status_document({}, 3, READY, T0)
    again = status_document(first, 3, READY, T0 + timedelta(hours=1))
    assert again == first


def test_new_generation_with_same_status_keeps_the_transition_time() -> None:
    first = status_document(None, 3, READY, T0)
    later = status_document(first, 4, Condition("Ready", "True", "Valid", "Other."), T0 + timedelta(hours=1))
    assert later["observedGeneration"] == 4
    assert later["conditions"][0]["lastTransitionTime"] == "2025-05-01T08:00:00Z"
    assert later["conditions"][0]["message"] == "Other."


def test_a_flip_moves_the_transition_time() -> None:
    first = status_document(None, 3, READY, T0)
    flipped = status_document(first, 4, NOT_READY, T0 + timedelta(minutes=5))
    assert flipped["conditions"][0]["lastTransitionTime"] == "2025-05-01T08:05:00Z"
    assert flipped["conditions"][0]["reason"] == "TenancyViolation"
    back = status_document(flipped, 5, READY, T0 + timedelta(minutes=9))
    assert back["conditions"][0]["lastTransitionTime"] == "2025-05-01T08:09:00Z"


def test_malformed_previous_status_is_ignored() -> None:
    previous = {
        "conditions": [None, {"type": "Ready", "status": "True"}, {"type": "Other", "status": "True"}]
    }
    status = status_document(previous, 1, READY, T0)
    assert status["conditions"][0]["lastTransitionTime"] == "2025-05-01T08:00:00Z"


def test_now_defaults_to_the_current_time_in_utc() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = status_document(None, 1, READY)["conditions"][0]["lastTransitionTime"]
    assert before <= datetime.fromisoformat(stamp) <= datetime.now(UTC)
