"""The tenancy rule, statically on templates and again on every rendered ID and DNS name."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kubespiffe.registry.models import CLUSTER_KIND, NAMESPACED_KIND, Kind, Registration, RegistrationSpec
from kubespiffe.registry.template import (
    PodFacts,
    TemplateError,
    parse_dns_name_template,
    parse_spiffe_id_template,
    render_spiffe_id,
)
from kubespiffe.registry.tenancy import (
    TenancyError,
    check_dns_name,
    check_registration,
    check_spiffe_id,
    check_spiffe_id_template,
    tenancy_warnings,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
DEFAULT = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"


def reg(template: str, kind: Kind = NAMESPACED_KIND, dns: tuple[str, ...] = ()) -> Registration:
    return Registration(
        kind=kind,
        name="r",
        namespace="a" if kind == NAMESPACED_KIND else None,
        uid="u",
        generation=1,
        creation_timestamp=datetime(2025, 1, 1, tzinfo=UTC),
        spec=RegistrationSpec(
            spiffe_id_template=parse_spiffe_id_template(template),
            dns_name_templates=tuple(parse_dns_name_template(d) for d in dns),
        ),
    )


@pytest.mark.parametrize(
    "template",
    [
        "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}",
        "spiffe://{trustDomain}/ns/{namespace}/{podName}",
        "spiffe://example.org/ns/a/sa/{serviceAccount}",
        "spiffe://{trustDomain}/ns/a/x",
        "spiffe://example.org/ns/{namespace}/kubespiffe/x",
        "spiffe://{trustDomain}/ns/{namespace}/{label:ns}/y",
    ],
)
def test_namespaced_templates_under_their_namespace_are_allowed(template: str) -> None:
    check_spiffe_id_template(reg(template), TD)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("spiffe://{trustDomain}/ns/b/sa/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/ns/ab/sa/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/ns/a-b/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/ns/{namespace}", "TenancyViolation"),
        ("spiffe://{trustDomain}/ns/{namespace}{podName}/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/ns/{label:ns}/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/ns/{serviceAccount}/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/{namespace}/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/nsx/{namespace}/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/{label:prefix}/ns/{namespace}/x", "TenancyViolation"),
        ("spiffe://{trustDomain}/x/ns/{namespace}/y", "TenancyViolation"),
        ("spiffe://{trustDomain}/sa/{serviceAccount}", "TenancyViolation"),
        ("spiffe://{trustDomain}/kubespiffe/ns/{namespace}/x", "ReservedID"),
        ("spiffe://other.org/ns/{namespace}/x", "ForeignTrustDomain"),
        ("spiffe://example.org.evil/ns/{namespace}/x", "ForeignTrustDomain"),
    ],
)
def test_namespaced_escape_attempts_are_refused(template: str, reason: str) -> None:
    with pytest.raises(TenancyError) as caught:
        check_spiffe_id_template(reg(template), TD)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "template",
    [
        "spiffe://{trustDomain}/ns/b/sa/x",
        "spiffe://{trustDomain}/{podName}",
        "spiffe://example.org/db/{label:app}",
        "spiffe://{trustDomain}/kubespiffex/y",
        "spiffe://{trustDomain}/x/kubespiffe",
    ],
)
def test_cluster_registrations_may_grant_any_path_but_the_reserved_one(template: str) -> None:
    check_spiffe_id_template(reg(template, CLUSTER_KIND), TD)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("spiffe://{trustDomain}/kubespiffe", "ReservedID"),
        ("spiffe://{trustDomain}/kubespiffe/kubespiffed", "ReservedID"),
        ("spiffe://example.org/kubespiffe/{podName}", "ReservedID"),
        ("spiffe://other.org/x", "ForeignTrustDomain"),
    ],
)
def test_cluster_registrations_are_refused_the_reserved_path_and_foreign_domains(
    template: str, reason: str
) -> None:
    with pytest.raises(TenancyError) as caught:
        check_spiffe_id_template(reg(template, CLUSTER_KIND), TD)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("kind", "spiffe_id", "reason"),
    [
        (NAMESPACED_KIND, "spiffe://example.org/ns/a", "TenancyViolation"),
        (NAMESPACED_KIND, "spiffe://example.org/ns/ab/x", "TenancyViolation"),
        (NAMESPACED_KIND, "spiffe://example.org/ns/b/x", "TenancyViolation"),
        (NAMESPACED_KIND, "spiffe://other.org/ns/a/x", "ForeignTrustDomain"),
        (CLUSTER_KIND, "spiffe://other.org/x", "ForeignTrustDomain"),
        (CLUSTER_KIND, "spiffe://example.org/kubespiffe", "ReservedID"),
        (CLUSTER_KIND, "spiffe://example.org/kubespiffe/x/y", "ReservedID"),
        (NAMESPACED_KIND, "spiffe://example.org/kubespiffe/ns/a/x", "ReservedID"),
    ],
)
def test_rendered_ids_are_checked_again(kind: Kind, spiffe_id: str, reason: str) -> None:
    template = (
        "spiffe://{trustDomain}/ns/{namespace}/x" if kind == NAMESPACED_KIND else "spiffe://{trustDomain}/x"
    )
    with pytest.raises(TenancyError) as caught:
        check_spiffe_id(reg(template, kind), SpiffeId.parse(spiffe_id), TD)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("kind", "spiffe_id"),
    [
        (NAMESPACED_KIND, "spiffe://example.org/ns/a/x"),
        (NAMESPACED_KIND, "spiffe://example.org/ns/a/kubespiffe"),
        (CLUSTER_KIND, "spiffe://example.org/ns/b/x"),
        (CLUSTER_KIND, "spiffe://example.org/kubespiffex"),
    ],
)
def test_rendered_ids_within_the_rule_pass(kind: Kind, spiffe_id: str) -> None:
    template = (
        "spiffe://{trustDomain}/ns/{namespace}/x" if kind == NAMESPACED_KIND else "spiffe://{trustDomain}/x"
    )
    check_spiffe_id(reg(template, kind), SpiffeId.parse(spiffe_id), TD)


RESERVED = frozenset({"kubespiffed.kubespiffe.svc", "kubespiffed.kubespiffe.svc.cluster.local"})


@pytest.mark.parametrize("kind", [NAMESPACED_KIND, CLUSTER_KIND])
def test_kubespiffeds_own_dns_names_are_never_granted(kind: Kind) -> None:
    template = "spiffe://{trustDomain}/ns/{namespace}/x"
    with pytest.raises(TenancyError) as caught:
        check_registration(reg(template, kind, dns=("w.a.svc", "kubespiffed.kubespiffe.svc")), TD, RESERVED)
    assert caught.value.reason == "ReservedDNSName"
    with pytest.raises(TenancyError):
        check_dns_name("KUBESPIFFED.kubespiffe.svc.cluster.local", RESERVED)
    check_dns_name("kubespiffed.kubespiffe.svc.example", RESERVED)
    check_registration(reg(template, CLUSTER_KIND, dns=("{podName}.kubespiffe.svc",)), TD, RESERVED)


# Soundness of the static check: any namespaced template it accepts renders, for any pod of that namespace
# whatever its names and labels, only IDs the render-time check accepts too.
_segment = st.lists(
    st.sampled_from(
        ["ns", "a", "ab", "b", "kubespiffe", "x", "{namespace}", "{serviceAccount}", "{podName}", "{label:k}"]
    ),
    min_size=1,
    max_size=2,
).map("".join)
_template = st.tuples(
    st.sampled_from(["{trustDomain}", "example.org", "other.org"]), st.lists(_segment, min_size=1, max_size=5)
).map(lambda p: f"spiffe://{p[0]}/" + "/".join(p[1]))
_name = st.sampled_from(["a", "b", "ns", "kubespiffe", "a.b", "x-1"])
_label = st.sampled_from(["a", "ns", "kubespiffe", "b", "..x", "x.."])


@given(_template, st.sampled_from([NAMESPACED_KIND, CLUSTER_KIND]), _name, _name, _label)
def test_static_check_is_sound(text: str, kind: Kind, account: str, pod: str, label: str) -> None:
    try:
        registration = reg(text, kind)
        check_spiffe_id_template(registration, TD)
    except (TemplateError, TenancyError):
        assume(False)
        return
    facts = PodFacts("a", account, pod, "uid", "node", {"k": label})
    rendered = render_spiffe_id(registration.spec.spiffe_id_template, facts, TD)
    if kind == NAMESPACED_KIND:
        check_spiffe_id(registration, rendered, TD)
        assert rendered.path.startswith("/ns/a/")
    else:
        assert rendered.member_of(TD)


# Issue 12, finding 2: a namespaced registration grants DNS names under its own namespace only.
@pytest.mark.parametrize(
    "dns",
    [
        "{podName}.a",
        "{podName}.a.svc",
        "{podName}.{namespace}.svc",
        "web.{namespace}.svc.cluster.local",
        "{label:app}.a.svc.cluster.local",
        "x.y.a",
    ],
)
def test_namespaced_dns_names_under_their_namespace_are_allowed(dns: str) -> None:
    check_registration(reg(DEFAULT, dns=(dns,)), TD, RESERVED)


@pytest.mark.parametrize(
    "dns",
    [
        "kubernetes.default.svc",
        "db.other.svc.cluster.local",
        "www.google.com",
        "a",
        "a.svc",
        "{namespace}.svc",
        "{podName}.{label:ns}.svc",
        "{podName}.a.svc.other.domain",
        "{podName}.a.svc.cluster",
        "{podName}.xa.svc",
        "{podName}.{namespace}x.svc",
    ],
)
def test_namespaced_dns_names_outside_their_namespace_are_refused(dns: str) -> None:
    with pytest.raises(TenancyError) as caught:
        check_registration(reg(DEFAULT, dns=(dns,)), TD, RESERVED)
    assert caught.value.reason == "DNSNameOutsideNamespace"


def test_cluster_domain_is_configurable() -> None:
    check_registration(
        reg(DEFAULT, dns=("w.a.svc.corp.example",)), TD, RESERVED, cluster_domain="corp.example"
    )
    with pytest.raises(TenancyError):
        check_registration(reg(DEFAULT, dns=("w.a.svc.cluster.local",)), TD, RESERVED, cluster_domain="corp")


def test_rendered_dns_names_are_checked_against_the_namespace() -> None:
    registration = reg(DEFAULT)
    check_dns_name("web-1.a.svc", RESERVED, registration)
    check_dns_name("Web-1.A.svc.cluster.local", RESERVED, registration)
    for name in ("web.b.svc", "a.svc", "x.a.svc.elsewhere", "kubernetes.default.svc"):
        with pytest.raises(TenancyError):
            check_dns_name(name, RESERVED, registration)
    check_dns_name("www.google.com", RESERVED, reg("spiffe://{trustDomain}/x", CLUSTER_KIND))


def test_cluster_registrations_may_grant_any_dns_name() -> None:
    check_registration(reg("spiffe://{trustDomain}/x", CLUSTER_KIND, dns=("www.example.com",)), TD, RESERVED)


# Issue 12, finding 3: a rendered /ns/<X>/ ID is refused unless X is the pod's namespace, whatever the kind.
@pytest.mark.parametrize("kind", [NAMESPACED_KIND, CLUSTER_KIND])
def test_rendered_ns_ids_must_name_the_pods_namespace(kind: Kind) -> None:
    template = (
        "spiffe://{trustDomain}/ns/{namespace}/x" if kind == NAMESPACED_KIND else "spiffe://{trustDomain}/x"
    )
    registration = reg(template, kind)
    check_spiffe_id(registration, SpiffeId.parse("spiffe://example.org/ns/a/sa/db"), TD, pod_namespace="a")
    with pytest.raises(TenancyError) as caught:
        check_spiffe_id(
            registration, SpiffeId.parse("spiffe://example.org/ns/other/sa/db"), TD, pod_namespace="a"
        )
    assert caught.value.reason in ("ForeignNamespaceID", "TenancyViolation")
    if kind == CLUSTER_KIND:
        assert caught.value.reason == "ForeignNamespaceID"
        check_spiffe_id(registration, SpiffeId.parse("spiffe://example.org/nsx/other"), TD, pod_namespace="a")
        check_spiffe_id(
            registration, SpiffeId.parse("spiffe://example.org/x/ns/other"), TD, pod_namespace="a"
        )


@pytest.mark.parametrize(
    ("template", "warned"),
    [
        ("spiffe://{trustDomain}/{label:p1}/{label:p2}/x", True),
        ("spiffe://{trustDomain}/ns/{label:team}/x", True),
        ("spiffe://{trustDomain}/ns/{serviceAccount}", True),
        ("spiffe://{trustDomain}/{podName}/{namespace}x", True),
        ("spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}", False),
        ("spiffe://{trustDomain}/cluster/{label:a}/{label:b}", False),
        ("spiffe://{trustDomain}/{label:a}", False),
        ("spiffe://{trustDomain}/ns/kube-system/x", False),
    ],
)
def test_pod_controlled_namespace_segment_is_warned_about(template: str, warned: bool) -> None:
    warnings = tenancy_warnings(reg(template, CLUSTER_KIND))
    assert bool(warnings) == warned
    assert all("namespace segment" in w for w in warnings)
