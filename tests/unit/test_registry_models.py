"""TTL parsing and bounds, and Registration.from_object refusing what admission refuses."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubespiffe.constants import JWT_TTL_MAX, JWT_TTL_MIN, X509_TTL_MAX, X509_TTL_MIN
from kubespiffe.registry.models import (
    CLUSTER_KIND,
    NAMESPACED_KIND,
    LabelRequirement,
    LabelSelector,
    Registration,
    RegistrationError,
    RegistrationKey,
    format_duration,
    parse_duration,
    parse_ttl,
)
from kubespiffe.spiffe.spiffeid import TrustDomain


def obj(kind: str = NAMESPACED_KIND, spec: Any = None, **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "web",
        "uid": "3c1e",
        "generation": 2,
        "creationTimestamp": "2025-03-01T12:00:00Z",
    }
    if kind == NAMESPACED_KIND:
        metadata["namespace"] = "team-a"
    metadata.update(meta)
    result: dict[str, Any] = {"apiVersion": "kubespiffe.io/v1alpha1", "kind": kind, "metadata": metadata}
    if spec is not None:
        result["spec"] = spec
    return result


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h0m5s", timedelta(hours=1, seconds=5)),
        ("90m", timedelta(minutes=90)),
        ("720h", timedelta(days=30)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "1d", "1.5h", "300ms", "-1h", "1H", " 1m", "1m ", "30m1h", "h", "1h1h", "123456h", "1"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "lowest", "highest", "ok"),
    [
        ("1m", X509_TTL_MIN, X509_TTL_MAX, True),
        ("59s", X509_TTL_MIN, X509_TTL_MAX, False),
        ("720h", X509_TTL_MIN, X509_TTL_MAX, True),
        ("720h1s", X509_TTL_MIN, X509_TTL_MAX, False),
        ("30s", JWT_TTL_MIN, JWT_TTL_MAX, True),
        ("29s", JWT_TTL_MIN, JWT_TTL_MAX, False),
        ("24h", JWT_TTL_MIN, JWT_TTL_MAX, True),
        ("1440m1s", JWT_TTL_MIN, JWT_TTL_MAX, False),
    ],
)
def test_parse_ttl_bounds_are_inclusive(text: str, lowest: timedelta, highest: timedelta, ok: bool) -> None:
    if ok:
        assert lowest <= parse_ttl(text, lowest, highest) <= highest
    else:
        with pytest.raises(ValueError, match="outside the allowed range"):
            parse_ttl(text, lowest, highest)


@given(st.integers(min_value=0, max_value=99999 * 3600))
def test_format_duration_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


def test_from_object_reads_every_field() -> None:
    spec = {
        "spiffeIDTemplate": "spiffe://{trustDomain}/ns/{namespace}/app/{label:app}",
        "serviceAccountNames": ["api", "worker"],
        "podSelector": {
            "matchLabels": {"app": "api"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
        },
        "dnsNameTemplates": ["{podName}.{namespace}.svc", "api.example.com"],
        "x509SVIDTTL": "2h",
        "jwtSVIDTTL": "5m",
        "federatesWith": ["partner.example"],
        "hint": "internal",
    }
    registration = Registration.from_object(obj(spec=spec))
    assert registration.key == RegistrationKey(NAMESPACED_KIND, "team-a", "web")
    assert str(registration.key) == "WorkloadRegistration team-a/web"
    assert (registration.uid, registration.generation) == ("3c1e", 2)
    assert registration.creation_timestamp == datetime(2025, 3, 1, 12, tzinfo=UTC)
    s = registration.spec
    assert s.spiffe_id_template.text == spec["spiffeIDTemplate"]
    assert s.service_account_names == ("api", "worker")
    assert s.pod_selector == LabelSelector({"app": "api"}, (LabelRequirement("tier", "In", ("a", "b")),))
    assert [t.text for t in s.dns_name_templates] == spec["dnsNameTemplates"]
    assert (s.x509_svid_ttl, s.jwt_svid_ttl) == (timedelta(hours=2), timedelta(minutes=5))
    assert s.federates_with == (TrustDomain("partner.example"),)
    assert s.hint == "internal"
    assert s.namespace_selector is None


@pytest.mark.parametrize("spec", [None, {}])
def test_absent_spec_fields_take_the_crd_defaults(spec: Any) -> None:
    s = Registration.from_object(obj(spec=spec)).spec
    assert s.spiffe_id_template.text == "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"
    assert (s.service_account_names, s.dns_name_templates, s.federates_with) == ((), (), ())
    assert (s.pod_selector, s.x509_svid_ttl, s.jwt_svid_ttl, s.hint) == (None, None, None, None)


def test_cluster_registration_has_no_namespace_and_may_select_namespaces() -> None:
    spec = {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}
    registration = Registration.from_object(obj(CLUSTER_KIND, spec=spec, namespace=""))
    assert registration.namespace is None
    assert str(registration.key) == "ClusterWorkloadRegistration web"
    assert registration.spec.namespace_selector == LabelSelector({}, (LabelRequirement("team", "Exists"),))


def test_selector_labels_are_read_only() -> None:
    labels = {"app": "api"}
    selector = LabelSelector(labels)
    labels["app"] = "changed"
    assert selector.match_labels == {"app": "api"}
    with pytest.raises(TypeError):
        selector.match_labels["x"] = "y"  # type: ignore[index]


_BAD_OBJECTS: list[tuple[dict[str, Any], str, str]] = [
    ({**obj(), "apiVersion": "kubespiffe.io/v1"}, "InvalidSpec", "apiVersion 'kubespiffe.io/v1'"),
    ({**obj(), "kind": "Pod"}, "InvalidSpec", "kind 'Pod' is not a registration"),
    ({**obj(), "metadata": None}, "InvalidSpec", "metadata is not an object"),
    (obj(name=""), "InvalidSpec", "metadata.name is not a non-empty string"),
    (obj(namespace=None), "InvalidSpec", "metadata.namespace"),
    (obj(CLUSTER_KIND, namespace="team-a"), "InvalidSpec", "has no namespace"),
    (obj(generation=0), "InvalidSpec", "metadata.generation 0"),
    (obj(generation=True), "InvalidSpec", "metadata.generation True"),
    (obj(creationTimestamp="yesterday"), "InvalidSpec", "is not RFC 3339"),
    (obj(creationTimestamp="2025-03-01T12:00:00"), "InvalidSpec", "time zone"),
    (obj(uid=None), "InvalidSpec", "metadata.uid"),
    (obj(spec=[]), "InvalidSpec", "spec is not an object"),
    (obj(spec={"selector": {}}), "InvalidSpec", "fields this kind does not have: selector"),
    (obj(spec={"namespaceSelector": {}}), "InvalidSpec", "does not have: namespaceSelector"),
    (
        obj(spec={"spiffeIDTemplate": "spiffe://{trustDomain}/{x}"}),
        "InvalidTemplate",
        "spec.spiffeIDTemplate",
    ),
    (obj(spec={"spiffeIDTemplate": 7}), "InvalidSpec", "spec.spiffeIDTemplate is not a non-empty string"),
    (obj(spec={"dnsNameTemplates": ["a.example", "*.example"]}), "InvalidTemplate", "dnsNameTemplates[1]"),
    (obj(spec={"dnsNameTemplates": "a.example"}), "InvalidSpec", "spec.dnsNameTemplates is not a list"),
    (obj(spec={"dnsNameTemplates": ["a.example"] * 2}), "InvalidSpec", "duplicate items"),
    (obj(spec={"dnsNameTemplates": [f"a{i}.x" for i in range(33)]}), "InvalidSpec", "more than 32 items"),
    (obj(spec={"x509SVIDTTL": "10s"}), "InvalidTTL", "spec.x509SVIDTTL: '10s' is outside"),
    (obj(spec={"jwtSVIDTTL": "1d"}), "InvalidTTL", "spec.jwtSVIDTTL: '1d' is not a duration"),
    (obj(spec={"jwtSVIDTTL": 60}), "InvalidTTL", "spec.jwtSVIDTTL is not a non-empty string"),
    (obj(spec={"serviceAccountNames": ["API"]}), "InvalidSpec", "'API' is not a valid service account name"),
    (obj(spec={"serviceAccountNames": [""]}), "InvalidSpec", "serviceAccountNames[0]"),
    (obj(spec={"federatesWith": ["Partner.example"]}), "InvalidSpec", "spec.federatesWith"),
    (obj(spec={"federatesWith": ["spiffe://partner.example"]}), "InvalidSpec", "spec.federatesWith"),
    (obj(spec={"hint": ""}), "InvalidSpec", "spec.hint"),
    (obj(spec={"hint": "h" * 257}), "InvalidSpec", "spec.hint is longer than 256"),
    (obj(spec={"podSelector": {"matchLabels": {"bad key": "x"}}}), "InvalidSpec", "'bad key' is not a valid"),
    (obj(spec={"podSelector": {"matchLabels": {"app": "-x"}}}), "InvalidSpec", "'-x' (label 'app')"),
    (obj(spec={"podSelector": {"matchLabels": {"app": 1}}}), "InvalidSpec", "matchLabels['app'] is not"),
    (obj(spec={"podSelector": {"matchFields": {}}}), "InvalidSpec", "unknown fields ['matchFields']"),
    (
        obj(spec={"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
        "InvalidSpec",
        "matchExpressions[0]: operator In needs values",
    ),
    (
        obj(
            spec={"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}
        ),
        "InvalidSpec",
        "operator Exists takes no values",
    ),
    (
        obj(spec={"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}),
        "InvalidSpec",
        "operator 'Gt' is not one of",
    ),
    (
        obj(spec={"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}}),
        "InvalidSpec",
        "values is not a list of strings",
    ),
    (
        obj(spec={"podSelector": {"matchExpressions": [{"operator": "Exists"}]}}),
        "InvalidSpec",
        "'' is not a valid label key",
    ),
    (
        obj(spec={"podSelector": {"matchLabels": {f"k{i}": "v" for i in range(65)}}}),
        "InvalidSpec",
        "more than 64 matchLabels",
    ),
    # Found while writing the fuzz target (tests/fuzz, registration): escaped as TypeError from len().
    (
        obj(spec={"podSelector": {"matchExpressions": [{"key": 1, "operator": "Exists"}]}}),
        "InvalidSpec",
        "key and operator must be strings",
    ),
    (
        obj(spec={"podSelector": {"matchExpressions": [{"key": "a", "operator": ["In"], "values": ["x"]}]}}),
        "InvalidSpec",
        "key and operator must be strings",
    ),
]


@pytest.mark.parametrize(("bad", "reason", "message"), _BAD_OBJECTS)
def test_from_object_refuses_what_admission_refuses(bad: dict[str, Any], reason: str, message: str) -> None:
    with pytest.raises(RegistrationError, match=re.escape(message)) as caught:
        Registration.from_object(bad)
    assert caught.value.reason == reason


def test_a_registration_at_every_size_limit_is_accepted() -> None:
    key = ".".join(["k" * 63] * 3) + "/" + "n" * 63
    selector = {
        "matchLabels": {f"x.io/k{i}": "v" * 63 for i in range(64)},
        "matchExpressions": [{"key": key, "operator": "NotIn", "values": [f"v{j}" for j in range(64)]}] * 32,
    }
    dns = []
    for i in range(32):
        text = f"x{i}.{{label:{key}}}"
        while len(text) + 10 <= 512:
            text += ".{podName}"
        dns.append(text)
    spec = {
        "spiffeIDTemplate": "spiffe://{trustDomain}" + "/{podName}" * 49,
        "serviceAccountNames": [f"sa-{i}" for i in range(64)],
        "podSelector": selector,
        "namespaceSelector": selector,
        "dnsNameTemplates": dns,
        "federatesWith": [f"td{i}.example" for i in range(32)],
        "hint": "h" * 256,
    }
    assert len(spec["spiffeIDTemplate"]) == 512
    assert all(len(text) > 500 for text in dns)
    registration = Registration.from_object(obj(CLUSTER_KIND, spec=spec))
    assert len(registration.spec.dns_name_templates) == 32
