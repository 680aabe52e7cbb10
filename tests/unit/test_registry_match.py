"""Matching pods to registrations: selection, validity, rendering failures, stable order, dedupe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kubespiffe.registry.match import MatchResult, identities_for
from kubespiffe.registry.models import CLUSTER_KIND, NAMESPACED_KIND, Registration, RegistrationKey
from kubespiffe.registry.template import PodFacts
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
RESERVED = frozenset({"kubespiffed.kubespiffe.svc"})
POD = PodFacts(
    "team-a", "api", "api-0", "uid-0", "node-1", {"app": "api", "tier": "backend", "owner": "Blue_1"}
)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def reg(
    name: str,
    namespace: str | None = "team-a",
    minute: int = 0,
    **spec: Any,
) -> Registration:
    metadata: dict[str, Any] = {
        "name": name,
        "uid": f"uid-{name}",
        "generation": 1,
        "creationTimestamp": (T0 + timedelta(minutes=minute)).isoformat(),
    }
    if namespace:
        metadata["namespace"] = namespace
    return Registration.from_object(
        {
            "apiVersion": "kubespiffe.io/v1alpha1",
            "kind": NAMESPACED_KIND if namespace else CLUSTER_KIND,
            "metadata": metadata,
            "spec": spec,
        }
    )


def match(
    *registrations: Registration, pod: PodFacts = POD, ns_labels: dict[str, str] | None = None
) -> MatchResult:
    return identities_for(pod, ns_labels or {"env": "prod"}, registrations, TD, RESERVED)


def ids(result: MatchResult) -> list[str]:
    return [str(i.spiffe_id) for i in result.identities]


def test_default_registration_grants_the_service_account_identity() -> None:
    result = match(reg("default"))
    assert ids(result) == ["spiffe://example.org/ns/team-a/sa/api"]
    assert result.default is not None
    assert result.default.registration == RegistrationKey(NAMESPACED_KIND, "team-a", "default")
    assert result.skipped == ()


def test_identity_carries_the_registration_settings() -> None:
    result = match(
        reg(
            "full",
            dnsNameTemplates=["{podName}.{namespace}.svc", "api.team-a", "{label:app}.team-a"],
            x509SVIDTTL="2h",
            jwtSVIDTTL="5m",
            federatesWith=["partner.example"],
            hint="internal",
        )
    )
    (identity,) = result.identities
    assert identity.spiffe_id == SpiffeId.parse("spiffe://example.org/ns/team-a/sa/api")
    assert identity.dns_names == ("api-0.team-a.svc", "api.team-a")
    assert (identity.x509_ttl, identity.jwt_ttl) == (timedelta(hours=2), timedelta(minutes=5))
    assert identity.federates_with == (TrustDomain("partner.example"),)
    assert identity.hint == "internal"


def test_namespaced_registrations_select_only_their_own_namespace() -> None:
    result = match(reg("here"), reg("elsewhere", namespace="team-b"))
    assert [i.registration.name for i in result.identities] == ["here"]
    assert result.skipped == ()


def test_service_account_names_and_pod_selector_filter() -> None:
    result = match(
        reg(
            "sa-match",
            serviceAccountNames=["worker", "api"],
            spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/1",
        ),
        reg(
            "sa-miss",
            serviceAccountNames=["worker"],
            spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/2",
        ),
        reg(
            "sel-match",
            podSelector={"matchLabels": {"app": "api"}},
            spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/3",
        ),
        reg(
            "sel-miss",
            podSelector={"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["backend"]}]},
            spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/4",
        ),
    )
    assert [i.registration.name for i in result.identities] == ["sa-match", "sel-match"]


def test_cluster_registrations_select_by_namespace_labels() -> None:
    prod = reg(
        "prod",
        None,
        namespaceSelector={"matchLabels": {"env": "prod"}},
        spiffeIDTemplate="spiffe://{trustDomain}/prod/{podName}",
    )
    dev = reg(
        "dev",
        None,
        namespaceSelector={"matchLabels": {"env": "dev"}},
        spiffeIDTemplate="spiffe://{trustDomain}/dev/{podName}",
    )
    anywhere = reg("any", None, spiffeIDTemplate="spiffe://{trustDomain}/any/{podName}")
    assert ids(match(prod, dev, anywhere)) == [
        "spiffe://example.org/any/api-0",
        "spiffe://example.org/prod/api-0",
    ]
    assert ids(match(prod, dev, anywhere, ns_labels={"env": "dev"})) == [
        "spiffe://example.org/any/api-0",
        "spiffe://example.org/dev/api-0",
    ]


def test_registrations_that_are_not_ready_are_never_used() -> None:
    escape = reg("escape", spiffeIDTemplate="spiffe://{trustDomain}/ns/team-b/sa/{serviceAccount}")
    reserved = reg("reserved", None, spiffeIDTemplate="spiffe://{trustDomain}/kubespiffe/x")
    dns = reg("dns", dnsNameTemplates=["kubespiffed.kubespiffe.svc"])
    result = match(escape, reserved, dns)
    assert result.identities == ()
    assert [(s.registration.name, s.reason.split(":")[0]) for s in result.skipped] == [
        ("reserved", "not Ready (ReservedID)"),
        ("dns", "not Ready (ReservedDNSName)"),
        ("escape", "not Ready (TenancyViolation)"),
    ]


def test_rendering_failures_skip_only_that_registration() -> None:
    result = match(
        reg(
            "missing-label", minute=0, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/{label:absent}"
        ),
        reg("bad-dns", minute=1, dnsNameTemplates=["{label:tier}.team-a", "{label:owner}.team-a"]),
        reg("ok", minute=2),
    )
    assert [i.registration.name for i in result.identities] == ["ok"]
    assert [s.registration.name for s in result.skipped] == ["missing-label", "bad-dns"]
    assert "no label 'absent'" in result.skipped[0].reason
    assert result.skipped[0].reason.startswith("cannot render for this pod")
    assert "'Blue_1.team-a', which is not a valid DNS name" in result.skipped[1].reason


def test_rendered_ids_are_rechecked_for_the_reserved_path() -> None:
    pod = PodFacts("kubespiffe", "api", "p", "u", "n", {})
    result = match(reg("ns-first", None, spiffeIDTemplate="spiffe://{trustDomain}/{namespace}/x"), pod=pod)
    assert result.identities == ()
    assert result.skipped[0].reason.startswith("refused (ReservedID)")


def test_rendered_dns_names_are_rechecked_for_reserved_names() -> None:
    pod = PodFacts("kubespiffe", "kubespiffed", "p", "u", "n", {})
    result = match(reg("dns", "kubespiffe", dnsNameTemplates=["{serviceAccount}.{namespace}.svc"]), pod=pod)
    assert result.identities == ()
    assert result.skipped[0].reason.startswith("refused (ReservedDNSName)")


def test_order_is_oldest_first_then_kind_namespace_name() -> None:
    older = reg("zz-older", minute=0, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/older")
    tie_ns_b = reg("a-tie", minute=5, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/tie-b")
    tie_ns_a = reg("b-tie", minute=5, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/tie-a")
    tie_cluster = reg("z-tie", None, minute=5, spiffeIDTemplate="spiffe://{trustDomain}/tie-cluster")
    newer = reg("a-newer", minute=9, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/newer")
    result = match(newer, tie_ns_a, tie_cluster, older, tie_ns_b)
    assert [i.registration.name for i in result.identities] == [
        "zz-older",
        "z-tie",
        "a-tie",
        "b-tie",
        "a-newer",
    ]


def test_duplicate_spiffe_ids_collapse_to_the_first() -> None:
    first = reg("first", minute=0, hint="one")
    second = reg("second", minute=1, hint="two", dnsNameTemplates=["x.team-a"])
    cluster = reg(
        "cluster",
        None,
        minute=2,
        spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}",
    )
    result = match(cluster, second, first)
    assert [i.registration.name for i in result.identities] == ["first"]
    assert result.identities[0].dns_names == ()
    assert [s.registration.name for s in result.skipped] == ["second", "cluster"]
    assert "already granted by WorkloadRegistration team-a/first" in result.skipped[0].reason


def test_duplicate_hints_are_dropped_as_the_workload_api_requires() -> None:
    a = reg("a", minute=0, hint="internal", spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/a")
    b = reg("b", minute=1, hint="internal", spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/b")
    c = reg("c", minute=2, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/c")
    d = reg("d", minute=3, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/d")
    result = match(a, b, c, d)
    assert [i.registration.name for i in result.identities] == ["a", "c", "d"]
    assert "hint 'internal' is already used" in result.skipped[0].reason


def test_duplicate_dns_names_within_one_registration_collapse() -> None:
    result = match(reg("r", dnsNameTemplates=["{serviceAccount}.team-a", "api.team-a"]))
    assert result.identities[0].dns_names == ("api.team-a",)


def test_no_match_gives_no_default() -> None:
    result = match(reg("other", namespace="team-b"))
    assert result.default is None


_pool = [
    reg(f"r{i}", namespace if i % 3 else None, minute=i % 4, spiffeIDTemplate=template)
    for i, (namespace, template) in enumerate(
        [
            ("team-a", "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"),
            ("team-a", "spiffe://{trustDomain}/ns/{namespace}/p/{podName}"),
            ("team-a", "spiffe://{trustDomain}/c/{podName}"),
            ("team-a", "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"),
            ("team-a", "spiffe://{trustDomain}/ns/{namespace}/x"),
            ("team-a", "spiffe://{trustDomain}/ns/{namespace}/y"),
            ("team-a", "spiffe://{trustDomain}/ns/{namespace}/{label:absent}"),
            ("team-a", "spiffe://{trustDomain}/ns/b/escape"),
        ]
    )
]


@given(st.permutations(_pool), st.integers(min_value=0, max_value=len(_pool)))
def test_order_does_not_depend_on_input_order_and_new_registrations_append(
    registrations: list[Registration], keep: int
) -> None:
    assert match(*registrations) == match(*_pool)
    newest = reg("newest", minute=60, spiffeIDTemplate="spiffe://{trustDomain}/ns/{namespace}/newest")
    before = match(*registrations[:keep]).identities
    after = match(*registrations[:keep], newest).identities
    assert after[: len(before)] == before
    assert [i.registration.name for i in after[len(before) :]] == ["newest"]


def test_a_pod_label_cannot_pick_another_namespaces_id() -> None:
    """Issue 12, finding 3: `/ns/<X>/` from pod labels is refused unless X is the pod's namespace."""
    template = "spiffe://{trustDomain}/{label:p1}/{label:p2}/sa/{label:p3}"
    cluster = reg("labels", None, spiffeIDTemplate=template)
    pod = PodFacts("team-a", "api", "p", "u", "n", {"p1": "ns", "p2": "other", "p3": "db"})
    result = match(cluster, pod=pod)
    assert result.identities == ()
    assert result.skipped[0].reason.startswith("refused (ForeignNamespaceID)")
    own = PodFacts("team-a", "api", "p", "u", "n", {"p1": "ns", "p2": "team-a", "p3": "db"})
    assert ids(match(cluster, pod=own)) == ["spiffe://example.org/ns/team-a/sa/db"]


def test_a_namespaced_registration_cannot_grant_foreign_dns_names() -> None:
    """Issue 12, finding 2."""
    result = match(reg("dns", dnsNameTemplates=["kubernetes.default.svc"]))
    assert result.identities == ()
    assert result.skipped[0].reason.startswith("not Ready (DNSNameOutsideNamespace)")
