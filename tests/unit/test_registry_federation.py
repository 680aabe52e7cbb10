"""FederatedTrustDomain: every admission rule re-checked by the model, the status document, and the generated
CRD (in sync with deploy/crds, wired to the same patterns)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from kubespiffe.registry import crds
from kubespiffe.registry import federation as fed
from kubespiffe.registry.federation import FederatedTrustDomain, FederationSpecError, federation_status
from kubespiffe.spiffe.bundle import Bundle, parse_bundle_json
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "crds"
TD = TrustDomain("partner.example")
BOOTSTRAP = '{"keys": [], "spiffe_sequence": 1}'
PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


def obj(**spec_changes: Any) -> dict[str, Any]:
    """A valid https_spiffe object with spec fields replaced (None removes one)."""
    spec: dict[str, Any] = {
        "trustDomain": "partner.example",
        "bundleEndpointURL": "https://bundle.partner.example:8443/bundle",
        "bundleEndpointProfile": {
            "type": "https_spiffe",
            "endpointSPIFFEID": "spiffe://partner.example/kubespiffe/kubespiffed",
        },
        "trustDomainBundle": BOOTSTRAP,
    }
    for key, value in spec_changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    return {
        "apiVersion": "kubespiffe.io/v1alpha1",
        "kind": "FederatedTrustDomain",
        "metadata": {"name": "partner", "uid": "uid-1", "generation": 3},
        "spec": spec,
    }


def web(**spec_changes: Any) -> dict[str, Any]:
    changes: dict[str, Any] = {"bundleEndpointProfile": {"type": "https_web"}, "trustDomainBundle": None}
    return obj(**{**changes, **spec_changes})


def with_meta(**changes: Any) -> dict[str, Any]:
    result = obj()
    result["metadata"] = {**result["metadata"], **changes}
    return result


def without(key: str) -> dict[str, Any]:
    result = obj()
    del result[key]
    return result


def test_https_spiffe_object_parses() -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    assert ftd == FederatedTrustDomain(
        name="partner",
        uid="uid-1",
        generation=3,
        trust_domain=TD,
        url="https://bundle.partner.example:8443/bundle",
        profile="https_spiffe",
        endpoint_id=SpiffeId.parse("spiffe://partner.example/kubespiffe/kubespiffed"),
        bootstrap=BOOTSTRAP.encode(),
        status_bundle=None,
        status_sequence=None,
    )


def test_https_web_object_parses_with_and_without_bootstrap() -> None:
    ftd = FederatedTrustDomain.from_object(web())
    assert (ftd.profile, ftd.endpoint_id, ftd.bootstrap) == ("https_web", None, None)
    assert FederatedTrustDomain.from_object(web(trustDomainBundle=PEM)).bootstrap == PEM.encode()


def test_model_is_frozen() -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    with pytest.raises(AttributeError):
        ftd.url = "https://elsewhere/"  # type: ignore[misc]


def test_status_bundle_and_sequence_are_read() -> None:
    document = obj()
    document["status"] = {"bundle": BOOTSTRAP, "sequence": 9}
    ftd = FederatedTrustDomain.from_object(document)
    assert (ftd.status_bundle, ftd.status_sequence) == (BOOTSTRAP.encode(), 9)


@pytest.mark.parametrize(
    "status",
    [
        "not an object",
        {"bundle": 5, "sequence": True},
        {"bundle": "", "sequence": -1},
        {"bundle": None, "sequence": "9"},
    ],
)
def test_malformed_status_is_ignored_not_fatal(status: Any) -> None:
    """kubespiffed rewrites status; a bad one must not make the trust domain unusable."""
    document = obj()
    document["status"] = status
    ftd = FederatedTrustDomain.from_object(document)
    assert (ftd.status_bundle, ftd.status_sequence) == (None, None)


def profile(**fields: Any) -> dict[str, Any]:
    return obj(bundleEndpointProfile=fields)


def url(text: Any) -> dict[str, Any]:
    return web(bundleEndpointURL=text)


INVALID: list[tuple[str, dict[str, Any], str]] = [
    # The envelope.
    ("other apiVersion", {**obj(), "apiVersion": "kubespiffe.io/v1"}, "apiVersion"),
    ("other kind", {**obj(), "kind": "WorkloadRegistration"}, "kind"),
    ("metadata not an object", {**obj(), "metadata": []}, "metadata is not an object"),
    ("generation missing", with_meta(generation=None), "metadata.generation"),
    ("generation zero", with_meta(generation=0), "metadata.generation"),
    ("generation bool", with_meta(generation=True), "metadata.generation"),
    ("generation string", with_meta(generation="3"), "metadata.generation"),
    ("name empty", with_meta(name=""), "metadata.name"),
    ("uid missing", with_meta(uid=None), "metadata.uid"),
    ("spec missing", without("spec"), "spec is not an object"),
    ("spec not an object", {**obj(), "spec": "x"}, "spec is not an object"),
    ("unknown spec field", obj(refreshHint="5m"), "unknown fields: refreshHint"),
    # trustDomain.
    ("trust domain missing", obj(trustDomain=None), "spec.trustDomain"),
    ("trust domain not a string", obj(trustDomain=7), "spec.trustDomain"),
    ("trust domain upper case", obj(trustDomain="Partner.example"), "spec.trustDomain"),
    ("trust domain with scheme", obj(trustDomain="spiffe://partner.example"), "spec.trustDomain"),
    ("trust domain with space", obj(trustDomain="partner example"), "spec.trustDomain"),
    ("trust domain non-ASCII", obj(trustDomain="partnér.example"), "spec.trustDomain"),
    ("trust domain 256 bytes", web(trustDomain="a" * 256), "longer than 255"),
    # bundleEndpointURL.
    ("url missing", obj(bundleEndpointURL=None), "spec.bundleEndpointURL is not"),
    ("url not a string", url(["https://a/"]), "spec.bundleEndpointURL is not"),
    ("url http", url("http://bundle.example/"), "https://"),
    ("url upper-case scheme", url("HTTPS://bundle.example/"), "https://"),
    ("url leading space", url(" https://bundle.example/"), "https://"),
    ("url user and password", url("https://user:pw@bundle.example/"), "userinfo"),
    ("url user only", url("https://user@bundle.example/"), "userinfo"),
    ("url empty userinfo", url("https://@bundle.example/"), "userinfo"),
    ("url userinfo with port", url("https://u@bundle.example:443/"), "userinfo"),
    ("url fragment", url("https://bundle.example/b#frag"), "#fragment"),
    ("url '@' behind a fragment", url("https://bundle.example#@evil/"), "#fragment"),
    ("url no host", url("https:///bundle"), "DNS name or IPv4"),
    ("url host only a dot", url("https://./"), "DNS name or IPv4"),
    ("url host ends with a hyphen", url("https://bundle-/"), "DNS name or IPv4"),
    ("url IPv6 literal", url("https://[::1]/"), "DNS name or IPv4"),
    ("url backslash in host", url("https://bundle.example\\evil/"), "DNS name or IPv4"),
    ("url space in path", url("https://bundle.example/a b"), "printable ASCII"),
    ("url tab in path", url("https://bundle.example/a\tb"), "printable ASCII"),
    ("url trailing newline", url("https://bundle.example/\n"), "printable ASCII"),
    ("url non-ASCII path", url("https://bundle.example/é"), "printable ASCII"),
    ("url non-ASCII host", url("https://bündle.example/"), "DNS name or IPv4"),
    ("url bad percent escape", url("https://bundle.example/%zz"), "percent-encode"),
    ("url truncated percent escape", url("https://bundle.example/%4"), "percent-encode"),
    ("url empty port", url("https://bundle.example:/"), "PORT"),
    ("url port zero", url("https://bundle.example:0/"), "PORT"),
    ("url port with six digits", url("https://bundle.example:100000/"), "PORT"),
    ("url port 65536", url("https://bundle.example:65536/"), "port must be between 1 and 65535"),
    ("url too long", url("https://bundle.example/" + "a" * 2026), "longer than 2048"),
    # bundleEndpointProfile.
    ("profile missing", obj(bundleEndpointProfile=None), "bundleEndpointProfile is not an object"),
    (
        "profile not an object",
        obj(bundleEndpointProfile="https_web"),
        "bundleEndpointProfile is not an object",
    ),
    ("profile unknown field", profile(type="https_web", insecure=True), "unknown fields: insecure"),
    ("profile type missing", profile(), "type None is not one of"),
    ("profile type unknown", profile(type="https"), "'https' is not one of"),
    ("profile type wrong case", profile(type="HTTPS_WEB"), "is not one of"),
    ("https_spiffe without endpoint ID", profile(type="https_spiffe"), "required for https_spiffe"),
    ("endpoint ID empty", profile(type="https_spiffe", endpointSPIFFEID=""), "non-empty string"),
    ("endpoint ID not a string", profile(type="https_spiffe", endpointSPIFFEID=1), "non-empty string"),
    (
        "endpoint ID in another trust domain",
        profile(type="https_spiffe", endpointSPIFFEID="spiffe://other.example/server"),
        "must be in the trust domain partner.example",
    ),
    (
        "endpoint ID in a parent trust domain",
        profile(type="https_spiffe", endpointSPIFFEID="spiffe://example/server"),
        "must be in the trust domain",
    ),
    (
        "endpoint ID without path",
        profile(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example"),
        "must have a path",
    ),
    (
        "endpoint ID with trailing slash",
        profile(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example/"),
        "endpointSPIFFEID",
    ),
    (
        "endpoint ID with dot segment",
        profile(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example/a/./b"),
        "endpointSPIFFEID",
    ),
    (
        "endpoint ID upper-case scheme",
        profile(type="https_spiffe", endpointSPIFFEID="SPIFFE://partner.example/a"),
        "lower case",
    ),
    (
        "endpoint ID upper-case trust domain",
        profile(type="https_spiffe", endpointSPIFFEID="spiffe://PARTNER.example/a"),
        "lower case",
    ),
    (
        "endpoint ID with query",
        profile(type="https_spiffe", endpointSPIFFEID="spiffe://partner.example/a?b"),
        "endpointSPIFFEID",
    ),
    (
        "endpoint ID not SPIFFE",
        profile(type="https_spiffe", endpointSPIFFEID="https://partner.example/a"),
        "endpointSPIFFEID",
    ),
    (
        "https_web with endpoint ID",
        web(bundleEndpointProfile={"type": "https_web", "endpointSPIFFEID": "spiffe://partner.example/a"}),
        "only for https_spiffe",
    ),
    (
        "https_web with empty endpoint ID",
        web(bundleEndpointProfile={"type": "https_web", "endpointSPIFFEID": ""}),
        "only for https_spiffe",
    ),
    # trustDomainBundle.
    ("https_spiffe without bootstrap", obj(trustDomainBundle=None), "required for https_spiffe"),
    ("bootstrap empty", obj(trustDomainBundle=""), "SPIFFE bundle JSON"),
    ("bootstrap not a string", obj(trustDomainBundle={"keys": []}), "is not a string"),
    ("bootstrap neither JSON nor PEM", obj(trustDomainBundle="keys"), "SPIFFE bundle JSON"),
    ("bootstrap with leading space", obj(trustDomainBundle=" " + BOOTSTRAP), "SPIFFE bundle JSON"),
    ("bootstrap PEM private key", web(trustDomainBundle="-----BEGIN PRIVATE KEY-----\n"), "PEM certificates"),
    ("bootstrap 256 KiB + 1", obj(trustDomainBundle="{" + " " * (256 * 1024)), "larger than 262144 bytes"),
    ("bootstrap 256 KiB + 1 of UTF-8", obj(trustDomainBundle="{" + "é" * (128 * 1024)), "larger than"),
    ("bootstrap lone surrogate", obj(trustDomainBundle="{\ud800}"), "not valid Unicode"),
]


@pytest.mark.parametrize(("case", "document", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_objects_are_refused(case: str, document: dict[str, Any], message: str) -> None:
    with pytest.raises(FederationSpecError) as caught:
        FederatedTrustDomain.from_object(document)
    assert message in str(caught.value)


def test_errors_are_value_errors() -> None:
    assert issubclass(FederationSpecError, ValueError)


VALID_URLS = [
    "https://bundle.example",
    "https://bundle.example/",
    "https://BUNDLE.Example/Path",
    "https://203.0.113.7:1/",
    "https://localhost:65535",
    "https://a/b/c?x=1&y=@&z=%2F",
    "https://bundle.example?only=query",
    "https://bundle.example/" + "a" * 2025,
]


@pytest.mark.parametrize("text", VALID_URLS)
def test_valid_urls_are_accepted(text: str) -> None:
    assert FederatedTrustDomain.from_object(url(text)).url == text


def test_bootstrap_may_be_exactly_256_kib_and_pem() -> None:
    exact = "{" + "é" * ((256 * 1024 - 1) // 2) + " "
    assert len(exact.encode()) == 256 * 1024
    assert FederatedTrustDomain.from_object(obj(trustDomainBundle=exact)).bootstrap == exact.encode()
    assert FederatedTrustDomain.from_object(obj(trustDomainBundle=PEM)).bootstrap == PEM.encode()


def test_trust_domain_of_255_bytes_is_accepted() -> None:
    name = "a" * 255
    assert FederatedTrustDomain.from_object(web(trustDomain=name)).trust_domain == TrustDomain(name)


ENDPOINT_IDS = [
    "spiffe://td/a",
    "spiffe://td/a/b.c/_-",
    "spiffe://td/.a/..b/a.",
    "spiffe://td/a/.",
    "spiffe://td/a/../b",
    "spiffe://td/..",
    "spiffe://td/",
    "spiffe://td",
    "spiffe://td//a",
    "spiffe://TD/a",
    "SPIFFE://td/a",
    "spiffe://td/a%20",
    "spiffe://td/a b",
    "spiffe://t d/a",
    "spiffe://../a",
    "spiffe://./a/.",
    "spiffe:///a",
    "spiffe://td/a?x",
]


@pytest.mark.parametrize("text", ENDPOINT_IDS)
def test_endpoint_id_admission_patterns_agree_with_the_spiffe_id_parser(text: str) -> None:
    """The CRD's regexes accept exactly the canonical SPIFFE IDs with a path that SpiffeId.parse accepts."""
    by_patterns = (
        re.fullmatch(fed.ENDPOINT_ID_RE, text) is not None
        and re.search(fed.ENDPOINT_ID_DOT_SEGMENT_RE, text) is None
    )
    try:
        parsed = SpiffeId.parse(text)
        by_parser = str(parsed) == text and parsed.path != ""
    except SpiffeIdError:
        by_parser = False
    assert by_patterns == by_parser


# The status document.

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)


def bundle(sequence: int | None = 4) -> Bundle:
    return Bundle(TD, (), {"k1": ec.generate_private_key(ec.SECP256R1()).public_key()}, sequence)


def test_status_after_a_successful_fetch() -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    fetched = bundle()
    status = federation_status(ftd, fetched, [], NOW, LATER, fed.FETCHED, "sequence 4")
    assert status == {
        "observedGeneration": 3,
        "lastRefreshTime": "2030-01-02T03:04:05Z",
        "nextRefreshTime": "2030-01-02T03:09:05Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Fetched",
                "message": "sequence 4",
                "lastTransitionTime": "2030-01-02T03:04:05Z",
                "observedGeneration": 3,
            }
        ],
        "bundle": status["bundle"],
        "sequence": 4,
    }
    assert parse_bundle_json(TD, status["bundle"].encode()).jwt_authorities.keys() == {"k1"}
    assert json.loads(status["bundle"])["spiffe_sequence"] == 4


def test_failed_fetch_leaves_the_last_good_bundle_alone() -> None:
    """A merge patch without `bundle` and `sequence` keeps the ones status already holds (E.7)."""
    ftd = FederatedTrustDomain.from_object(obj())
    status = federation_status(ftd, None, [], NOW, LATER, fed.FETCH_FAILED, "connection refused")
    assert "bundle" not in status and "sequence" not in status
    assert status["conditions"][0]["status"] == "False"
    assert status["conditions"][0]["reason"] == "FetchFailed"


def test_bundle_without_sequence_reports_zero() -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    assert federation_status(ftd, bundle(None), [], NOW, LATER, fed.FETCHED, "")["sequence"] == 0


def previous(status: str, when: str = "2029-12-31T00:00:00Z") -> list[Any]:
    return [
        "garbage",
        {"type": "Other", "status": status, "lastTransitionTime": "2000-01-01T00:00:00Z"},
        {"type": "Ready", "status": status, "reason": "X", "message": "", "lastTransitionTime": when},
    ]


@pytest.mark.parametrize(
    ("old", "fetched", "expected"),
    [
        ("True", True, "2029-12-31T00:00:00Z"),
        ("False", False, "2029-12-31T00:00:00Z"),
        ("True", False, "2030-01-02T03:04:05Z"),
        ("False", True, "2030-01-02T03:04:05Z"),
        ("Unknown", True, "2030-01-02T03:04:05Z"),
    ],
)
def test_last_transition_time_moves_only_when_ready_flips(old: str, fetched: bool, expected: str) -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    status = federation_status(ftd, bundle() if fetched else None, previous(old), NOW, LATER, "R", "m")
    assert status["conditions"][0]["lastTransitionTime"] == expected


def test_empty_previous_transition_time_is_not_kept() -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    status = federation_status(ftd, None, previous("False", ""), NOW, LATER, "R", "m")
    assert status["conditions"][0]["lastTransitionTime"] == "2030-01-02T03:04:05Z"


def test_times_are_written_in_utc_and_naive_times_are_refused() -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    plus_two = dt.timezone(dt.timedelta(hours=2))
    status = federation_status(ftd, None, [], NOW.astimezone(plus_two), LATER, "R", "m")
    assert status["lastRefreshTime"] == "2030-01-02T03:04:05Z"
    with pytest.raises(ValueError, match="time zone"):
        federation_status(ftd, None, [], NOW.replace(tzinfo=None), LATER, "R", "m")


def test_long_messages_are_cut_to_the_schema_bound() -> None:
    ftd = FederatedTrustDomain.from_object(obj())
    status = federation_status(ftd, None, [], NOW, LATER, "R", "x" * 40000)
    assert len(status["conditions"][0]["message"]) == 32768


# The generated CRD.


def crd_schema() -> dict[str, Any]:
    result: dict[str, Any] = crds.federation_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def test_committed_crd_equals_generated_output() -> None:
    committed = (DEPLOY / "federatedtrustdomains.kubespiffe.io.yaml").read_text()
    assert committed == crds.render_federation(), "run: python -m kubespiffe.registry.crds deploy/crds"
    assert yaml.safe_load(committed) == crds.federation_crd()


def test_names_scope_columns_and_subresources() -> None:
    document = crds.federation_crd()
    assert document["metadata"]["name"] == "federatedtrustdomains.kubespiffe.io"
    spec = document["spec"]
    assert (spec["group"], spec["scope"]) == ("kubespiffe.io", "Cluster")
    assert spec["names"]["kind"] == "FederatedTrustDomain"
    assert spec["names"]["plural"] == "federatedtrustdomains"
    assert spec["names"]["shortNames"] == ["ftd"]
    assert spec["names"]["categories"] == ["kubespiffe"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert columns == [
        ("Trust Domain", ".spec.trustDomain"),
        ("Profile", ".spec.bundleEndpointProfile.type"),
        ("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        ("Sequence", ".status.sequence"),
        ("Last Refresh", ".status.lastRefreshTime"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    assert crd_schema()["required"] == ["spec"]


def test_spec_fields_match_the_model_and_are_described_and_bounded() -> None:
    spec = crd_schema()["properties"]["spec"]
    assert list(spec["properties"]) == list(fed.SPEC_FIELDS)
    assert list(spec["properties"]["bundleEndpointProfile"]["properties"]) == list(fed.PROFILE_FIELDS)
    assert spec["required"] == ["trustDomain", "bundleEndpointURL", "bundleEndpointProfile"]
    for path, node in walk(spec):
        assert node.get("description"), f"{path} has no description"
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path} has no maxLength"
    properties = spec["properties"]
    assert properties["trustDomain"]["maxLength"] == 255
    assert properties["trustDomain"]["pattern"] == "^[a-z0-9._-]+$"
    assert properties["bundleEndpointURL"]["maxLength"] == 2048
    assert properties["trustDomainBundle"]["maxLength"] == 256 * 1024
    assert properties["bundleEndpointProfile"]["properties"]["type"]["enum"] == ["https_spiffe", "https_web"]


def rules() -> dict[str, list[str]]:
    return {
        path: [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        for path, node in walk(crd_schema())
        if "x-kubernetes-validations" in node
    }


def test_cel_rules_use_the_models_patterns() -> None:
    found = rules()
    assert set(found) == {
        ".spec",
        ".spec.trustDomain",
        ".spec.bundleEndpointURL",
        ".spec.bundleEndpointProfile",
        ".spec.bundleEndpointProfile.endpointSPIFFEID",
        ".spec.trustDomainBundle",
    }
    assert found[".spec.trustDomain"] == ["self == oldSelf"]
    url_rules = found[".spec.bundleEndpointURL"]
    assert url_rules[0] == "self.startsWith('https://')"
    assert url_rules[1] == f"!self.matches('{fed.URL_USERINFO_RE}')"
    assert f"self.matches('{fed.URL_RE}')" in url_rules[2]
    assert "int(url(self).getPort()) <= 65535" in url_rules[3]
    id_rules = found[".spec.bundleEndpointProfile.endpointSPIFFEID"]
    assert id_rules == [
        f"self.matches('{fed.ENDPOINT_ID_RE}')",
        f"!self.matches('{fed.ENDPOINT_ID_DOT_SEGMENT_RE}')",
    ]
    assert "size(bytes(self)) <= 262144" in found[".spec.trustDomainBundle"]
    assert any("'spiffe://' + self.trustDomain + '/'" in rule for rule in found[".spec"])
    assert any("has(self.trustDomainBundle)" in rule for rule in found[".spec"])


def test_status_schema_carries_the_fetch_outcome() -> None:
    status = crd_schema()["properties"]["status"]["properties"]
    assert {
        "bundle",
        "sequence",
        "lastRefreshTime",
        "nextRefreshTime",
        "observedGeneration",
        "conditions",
    } <= (set(status))
    assert status["sequence"]["minimum"] == 0
    assert status["lastRefreshTime"]["format"] == "date-time"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    reason = status["conditions"]["items"]["properties"]["reason"]
    for value in (fed.FETCHED, fed.FETCH_FAILED, fed.BOOTSTRAPPED):
        assert re.fullmatch(reason["pattern"], value)


def test_registration_crds_are_not_changed_by_the_federation_kind() -> None:
    """Building the federation CRD mutates a fresh status schema, never the registration kinds' one."""
    before = copy.deepcopy(crds.crd("WorkloadRegistration"))
    crds.federation_crd()
    assert crds.crd("WorkloadRegistration") == before
    committed = (DEPLOY / crds.filename("WorkloadRegistration")).read_text()
    assert committed == crds.render("WorkloadRegistration")
