"""Template parsing (same acceptance as the CRD's CEL rules) and rendering for a pod."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubespiffe.registry.template import (
    DNS_PLACEHOLDERS_RE,
    DNS_SHAPE_RE,
    DNS_SUBDOMAIN_RE,
    DOT_SEGMENT_RE,
    SPIFFE_PLACEHOLDERS_RE,
    SPIFFE_SHAPE_RE,
    Placeholder,
    PodFacts,
    TemplateError,
    is_dns_name,
    parse_dns_name_template,
    parse_spiffe_id_template,
    parse_template,
    render_dns_name,
    render_spiffe_id,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
POD = PodFacts(
    namespace="team-a",
    service_account="api",
    pod_name="api-7d9f-x2x",
    pod_uid="0f8e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
    node_name="node-1",
    labels={"app": "api", "example.com/tier": "Backend_1", "empty": ""},
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}",
            "spiffe://example.org/ns/team-a/sa/api",
        ),
        ("spiffe://example.org/pod/{podName}", "spiffe://example.org/pod/api-7d9f-x2x"),
        (
            "spiffe://{trustDomain}/uid/{podUID}",
            "spiffe://example.org/uid/0f8e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        ),
        ("spiffe://{trustDomain}/node/{nodeName}/x", "spiffe://example.org/node/node-1/x"),
        ("spiffe://{trustDomain}/app/{label:app}", "spiffe://example.org/app/api"),
        ("spiffe://{trustDomain}/t/{label:example.com/tier}", "spiffe://example.org/t/Backend_1"),
        ("spiffe://{trustDomain}/{namespace}-{serviceAccount}.v1", "spiffe://example.org/team-a-api.v1"),
        ("spiffe://{trustDomain}/td/{trustDomain}", "spiffe://example.org/td/example.org"),
    ],
)
def test_render_spiffe_id_fills_every_placeholder(template: str, expected: str) -> None:
    assert render_spiffe_id(parse_spiffe_id_template(template), POD, TD) == SpiffeId.parse(expected)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("spiffe://{trustDomain}/{bogus}", "unknown placeholder {bogus}"),
        ("spiffe://{trustDomain}/{Namespace}", "unknown placeholder {Namespace}"),
        ("spiffe://{trustDomain}/{ namespace}", "unknown placeholder"),
        ("spiffe://{trustDomain}/{label}", "unknown placeholder {label}"),
        ("spiffe://{trustDomain}/{podname}", "unknown placeholder"),
        ("spiffe://{trustDomain}/{namespace:x}", "unknown placeholder"),
        ("spiffe://{trustDomain}/{label:}", "not a valid label key"),
        ("spiffe://{trustDomain}/{label:bad key}", "not a valid label key"),
        ("spiffe://{trustDomain}/{label:-app}", "not a valid label key"),
        ("spiffe://{trustDomain}/{label:a/b/c}", "not a valid label key"),
        ("spiffe://{trustDomain/x", "unbalanced '{'"),
        ("spiffe://{trustDomain}/x}", "unbalanced '}'"),
        ("spiffe://{trustDomain}/{{namespace}}", "unbalanced"),
        ("spiffe://{trustDomain}/{}", "unknown placeholder {}"),
        ("http://{trustDomain}/x", "does not start with 'spiffe://'"),
        ("{trustDomain}/x", "does not start with 'spiffe://'"),
        ("spiffe://{trustDomain}", "one or more /segments"),
        ("spiffe://{trustDomain}/", "one or more /segments"),
        ("spiffe://{trustDomain}/a//b", "one or more /segments"),
        ("spiffe://{trustDomain}/a/", "one or more /segments"),
        ("spiffe://Example.org/a", "lower-case"),
        ("spiffe://{namespace}.example.org/a", "lower-case"),
        ("spiffe://{trustDomain}/a b", "A-Z a-z 0-9"),
        ("spiffe://{trustDomain}/a%2F", "A-Z a-z 0-9"),
        ("spiffe://{trustDomain}/x/./y", "'.' or '..' path segment"),
        ("spiffe://{trustDomain}/x/..", "'.' or '..' path segment"),
        ("spiffe://{trustDomain}/" + "a" * 500, "longer than 512"),
    ],
)
def test_parse_spiffe_id_template_refuses(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        parse_spiffe_id_template(template)


def test_parse_template_splits_literals_and_placeholders() -> None:
    template = parse_template("a{namespace}b{label:x.io/y}")
    assert template.parts == ("a", Placeholder("namespace"), "b", Placeholder("label", "x.io/y"))
    assert str(template.parts[3]) == "{label:x.io/y}"


def test_segments_never_split_a_label_key_with_a_slash() -> None:
    template = parse_spiffe_id_template("spiffe://{trustDomain}/ns/{label:x.io/ns}/a{podName}")
    assert template.segments("/")[2:] == (
        (Placeholder("trustDomain"),),
        ("ns",),
        (Placeholder("label", "x.io/ns"),),
        ("a", Placeholder("podName")),
    )


@pytest.mark.parametrize(
    ("labels", "node", "message"),
    [
        ({}, "node-1", "no label 'app'"),
        ({"app": ""}, "node-1", "{label:app} is empty"),
        ({"app": "a/b"}, "node-1", "contains '/'"),
        ({"app": "."}, "node-1", "not a valid SPIFFE ID"),
        ({"app": "x"}, "", "{nodeName} is empty"),
    ],
)
def test_render_spiffe_id_refuses_what_a_pod_cannot_fill(
    labels: dict[str, str], node: str, message: str
) -> None:
    template = parse_spiffe_id_template("spiffe://{trustDomain}/{label:app}/{nodeName}")
    pod = PodFacts("team-a", "api", "p", "u", node, labels)
    with pytest.raises(TemplateError, match=re.escape(message)):
        render_spiffe_id(template, pod, TD)


def test_render_refuses_an_id_over_the_spiffe_length_limit() -> None:
    template = parse_spiffe_id_template("spiffe://{trustDomain}/" + "/".join(["{podName}"] * 10))
    pod = PodFacts("a", "b", "p" * 253, "u", "n", {})
    with pytest.raises(TemplateError, match="not a valid SPIFFE ID"):
        render_spiffe_id(template, pod, TD)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{podName}.{namespace}.svc", "api-7d9f-x2x.team-a.svc"),
        ("{serviceAccount}.{namespace}.svc.cluster.local", "api.team-a.svc.cluster.local"),
        ("{label:app}-{nodeName}.example.com", "api-node-1.example.com"),
        ("p{podUID}.example", "p0f8e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b.example"),
        ("api.example.com", "api.example.com"),
    ],
)
def test_render_dns_name(template: str, expected: str) -> None:
    assert render_dns_name(parse_dns_name_template(template), POD) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("*.example.com", "wildcard"),
        ("{podName}.*", "wildcard"),
        ("{trustDomain}.example", "unknown placeholder {trustDomain}"),
        ("Api.example.com", "lower-case"),
        ("api_x.example.com", "lower-case"),
        (".example.com", "dot-separated non-empty labels"),
        ("example.com.", "dot-separated non-empty labels"),
        ("a..b", "dot-separated non-empty labels"),
        ("-a.example", "not a valid DNS name"),
        ("a-.example", "not a valid DNS name"),
        ("a" * 64 + ".example", "not a valid DNS name"),
        (".".join(["a" * 63] * 4) + ".b", "not a valid DNS name"),
        ("{podName.svc", "unbalanced"),
    ],
)
def test_parse_dns_name_template_refuses(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        parse_dns_name_template(template)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"example.com/tier": "Backend_1"}, "not a valid DNS name"),
        ({}, "no label 'example.com/tier'"),
    ],
)
def test_render_dns_name_refuses_invalid_results(labels: dict[str, str], message: str) -> None:
    template = parse_dns_name_template("{label:example.com/tier}.example")
    pod = PodFacts("team-a", "api", "p", "u", "n", labels)
    with pytest.raises(TemplateError, match=re.escape(message)):
        render_dns_name(template, pod)


def test_render_dns_name_refuses_a_result_over_253_characters() -> None:
    template = parse_dns_name_template("{podName}.{podName}")
    pod = PodFacts("a", "b", ".".join(["p" * 60] * 3), "u", "n", {})
    with pytest.raises(TemplateError, match="not a valid DNS name"):
        render_dns_name(template, pod)


# Random strings built from the pieces templates are made of, to compare the parser (a tokenizer) with the
# regular expressions the CRD gives to CEL. Agreement here means the API server and kubespiffed accept the
# same templates.
_PIECES = [
    "spiffe://",
    "{trustDomain}",
    "{namespace}",
    "{serviceAccount}",
    "{podName}",
    "{podUID}",
    "{nodeName}",
    "{label:app}",
    "{label:x.io/y}",
    "{label:}",
    "{label:-a}",
    "{bogus}",
    "{",
    "}",
    "/",
    ".",
    "..",
    "-",
    "_",
    "*",
    "a",
    "Z",
    "9",
    "example.org",
    " ",
    ":",
]
_template_text = st.lists(st.sampled_from(_PIECES), max_size=10).map("".join)


def _cel_accepts_spiffe(text: str) -> bool:
    return (
        len(text) <= 512
        and text.startswith("spiffe://")
        and re.fullmatch(SPIFFE_PLACEHOLDERS_RE, text) is not None
        and re.fullmatch(SPIFFE_SHAPE_RE, text) is not None
        and re.search(DOT_SEGMENT_RE, text) is None
    )


def _cel_accepts_dns(text: str) -> bool:
    literal_ok = "{" in text or (len(text) <= 253 and re.fullmatch(DNS_SUBDOMAIN_RE, text) is not None)
    return (
        0 < len(text) <= 512
        and "*" not in text
        and re.fullmatch(DNS_PLACEHOLDERS_RE, text) is not None
        and re.fullmatch(DNS_SHAPE_RE, text) is not None
        and literal_ok
    )


def _accepts(parse: object, text: str) -> bool:
    try:
        parse(text)  # type: ignore[operator]
    except TemplateError:
        return False
    return True


_spiffe_text = st.tuples(st.sampled_from(["{trustDomain}/", "example.org/", ""]), _template_text).map(
    lambda p: "spiffe://" + p[0] + p[1]
)


@given(st.one_of(_template_text, _spiffe_text))
def test_spiffe_id_template_parser_agrees_with_the_cel_regexes(text: str) -> None:
    assert _accepts(parse_spiffe_id_template, text) == _cel_accepts_spiffe(text)


@given(_template_text.filter(bool))
def test_dns_name_template_parser_agrees_with_the_cel_regexes(text: str) -> None:
    assert _accepts(parse_dns_name_template, text) == _cel_accepts_dns(text)


_dns_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
_subdomain = st.lists(_dns_label, min_size=1, max_size=3).map(".".join)
_label_value = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?\Z")


@given(
    namespace=_dns_label,
    account=_subdomain,
    pod=_subdomain,
    node=_subdomain,
    uid=st.uuids().map(str),
    app=_label_value,
)
def test_every_valid_pod_renders_the_default_template(
    namespace: str, account: str, pod: str, node: str, uid: str, app: str
) -> None:
    facts = PodFacts(namespace, account, pod, uid, node, {"app": app})
    template = parse_spiffe_id_template(
        "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}/{label:app}"
    )
    rendered = render_spiffe_id(template, facts, TD)
    assert rendered.path == f"/ns/{namespace}/sa/{account}/{app}"
    dns = render_dns_name(parse_dns_name_template("{podName}.{namespace}.{nodeName}"), facts)
    assert dns == f"{pod}.{namespace}.{node}"
    assert is_dns_name(dns)
