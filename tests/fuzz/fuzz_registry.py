"""Fuzz targets for the registry's objects: SPIFFE ID and DNS name templates (parsed, then rendered with
hostile pod facts), Registration.from_object and FederatedTrustDomain.from_object on arbitrary JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from kubespiffe.constants import API_VERSION
from kubespiffe.registry import template as t
from kubespiffe.registry.federation import FederatedTrustDomain, FederationSpecError
from kubespiffe.registry.models import Registration, RegistrationError
from kubespiffe.registry.template import (
    PodFacts,
    Template,
    TemplateError,
    is_dns_name,
    parse_dns_name_template,
    parse_spiffe_id_template,
    render_dns_name,
    render_spiffe_id,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from tests.fuzz.common import Target, fields, quoted

TRUST_DOMAIN = TrustDomain("example.org")


def _facts(values: list[str]) -> PodFacts:
    """Namespace, service account, pod name, pod UID, node name, then `key=value` labels, one a line."""
    namespace, account, pod, uid, node, labels = values
    pairs = (line.partition("=") for line in labels.split("\n") if line)
    return PodFacts(namespace, account, pod, uid, node, {k: v for k, _, v in pairs})


def _cel_accepts_spiffe(text: str) -> bool:
    """The CRD's rules for spiffeIDTemplate (crds.py), evaluated on the same regular expressions."""
    return (
        1 <= len(text) <= t.SPIFFE_ID_TEMPLATE_MAX
        and text.startswith("spiffe://")
        and re.fullmatch(t.SPIFFE_PLACEHOLDERS_RE, text) is not None
        and re.fullmatch(t.SPIFFE_SHAPE_RE, text) is not None
        and re.search(t.DOT_SEGMENT_RE, text) is None
    )


def _cel_accepts_dns(text: str) -> bool:
    """The CRD's rules for a dnsNameTemplates item (crds.py), evaluated on the same regular expressions."""
    return (
        1 <= len(text) <= t.DNS_NAME_TEMPLATE_MAX
        and "*" not in text
        and re.fullmatch(t.DNS_PLACEHOLDERS_RE, text) is not None
        and re.fullmatch(t.DNS_SHAPE_RE, text) is not None
        and ("{" in text or is_dns_name(text))
    )


def _parsed(parse: Callable[[str], Template], text: str) -> Template | None:
    try:
        return parse(text)
    except TemplateError:
        return None


def template_spiffe(data: bytes) -> None:
    """Accepted exactly when the CRD accepts; text round-trips; rendering gives a valid ID under the
    literal or configured trust domain, or a TemplateError, whatever the pod's facts are."""
    text, *facts = fields(data, 7)
    template = _parsed(parse_spiffe_id_template, text)
    assert (template is not None) == _cel_accepts_spiffe(text), "template parser and CRD rules disagree"
    if template is None:
        return
    assert "".join(str(p) for p in template.parts) == text
    try:
        rendered = render_spiffe_id(template, _facts(facts), TRUST_DOMAIN)
    except TemplateError:
        return
    assert SpiffeId.parse(str(rendered)) == rendered and rendered.path


def template_dns(data: bytes) -> None:
    text, *facts = fields(data, 7)
    template = _parsed(parse_dns_name_template, text)
    assert (template is not None) == _cel_accepts_dns(text), "template parser and CRD rules disagree"
    if template is None:
        return
    assert "".join(str(p) for p in template.parts) == text
    try:
        name = render_dns_name(template, _facts(facts))
    except TemplateError:
        return
    assert is_dns_name(name)


def registration(data: bytes) -> None:
    """Any JSON object in, a Registration or a RegistrationError out; an accepted one keeps its kind's
    rules (a namespace only on the namespaced kind) and its templates re-parse to themselves."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(document, dict):
        return  # the watch hands over JSON objects only
    try:
        result = Registration.from_object(document)
    except RegistrationError:
        return
    assert result.kind == document["kind"] and document["apiVersion"] == API_VERSION
    assert (result.namespace is not None) == (result.kind == "WorkloadRegistration")
    spec = result.spec
    assert parse_spiffe_id_template(spec.spiffe_id_template.text) == spec.spiffe_id_template
    assert all(parse_dns_name_template(d.text) == d for d in spec.dns_name_templates)


def federation(data: bytes) -> None:
    """Any JSON object in, a FederatedTrustDomain or a FederationSpecError out; an accepted one fetches
    from an https URL and, for https_spiffe, names an endpoint ID in its own trust domain."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(document, dict):
        return
    try:
        ftd = FederatedTrustDomain.from_object(document)
    except FederationSpecError:
        return
    assert ftd.url.startswith("https://") and ftd.generation >= 1
    assert (ftd.endpoint_id is not None) == (ftd.profile == "https_spiffe")
    assert ftd.endpoint_id is None or (
        ftd.endpoint_id.trust_domain == ftd.trust_domain and ftd.endpoint_id.path
    )
    assert ftd.profile != "https_spiffe" or ftd.bootstrap is not None


_PLACEHOLDERS = (
    *(f"{{{n}}}".encode() for n in (t.TRUST_DOMAIN, *t.POD_PLACEHOLDERS)),
    b"{label:",
    b"{label:app}",
    b"{label:example.com/app}",
)

TARGETS = (
    Target("template_spiffe", template_spiffe, max_len=1024, dictionary=(b"spiffe://", b"/", *_PLACEHOLDERS)),
    Target("template_dns", template_dns, max_len=1024, dictionary=(b".", b"-", b"*", *_PLACEHOLDERS)),
    Target(
        "registration",
        registration,
        max_len=8192,
        dictionary=quoted(
            "apiVersion kind metadata spec name namespace uid generation creationTimestamp",
            "WorkloadRegistration ClusterWorkloadRegistration spiffeIDTemplate serviceAccountNames",
            "podSelector namespaceSelector dnsNameTemplates x509SVIDTTL jwtSVIDTTL federatesWith hint",
            "matchLabels matchExpressions key operator values In Exists",
            API_VERSION,
        ),
    ),
    Target(
        "federation",
        federation,
        max_len=4096,
        dictionary=quoted(
            "apiVersion kind metadata spec status name uid generation trustDomain bundleEndpointURL",
            "type bundle bundleEndpointProfile endpointSPIFFEID trustDomainBundle https_spiffe",
            "https_web FederatedTrustDomain",
            API_VERSION,
        ),
    ),
)
