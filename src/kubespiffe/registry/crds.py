"""Generate the WorkloadRegistration, ClusterWorkloadRegistration and FederatedTrustDomain CRDs.

`python -m kubespiffe.registry.crds OUTDIR` writes one YAML file per CRD. Every bound, pattern and
description comes from models.py and template.py, so the API server refuses exactly what
`Registration.from_object` refuses. Every string and list has a maximum size: the API server estimates the
worst-case cost of each CEL rule from those bounds and refuses a CRD whose rules could cost too much.

CEL rules are written `guard || check` where an earlier rule already reports the guard's failure, so a bad
value gets one precise message rather than several overlapping ones.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from kubespiffe import constants
from kubespiffe.registry import federation as fed
from kubespiffe.registry import models as m
from kubespiffe.registry import template as t
from kubespiffe.spiffe.spiffeid import MAX_TRUST_DOMAIN_BYTES

Schema = dict[str, Any]

_SPIFFE_PLACEHOLDER_LIST = (
    "{trustDomain} {namespace} {serviceAccount} {podName} {podUID} {nodeName} {label:KEY}"
)
_DNS_PLACEHOLDER_LIST = "{namespace} {serviceAccount} {podName} {podUID} {nodeName} {label:KEY}"


def _lit(text: str) -> str:
    """A CEL single-quoted string literal; the shared patterns avoid quotes and backslashes by design."""
    if "'" in text or "\\" in text:
        raise ValueError(f"{text!r} cannot be embedded in a CEL literal as is")
    return f"'{text}'"


def _rule(rule: str, message: str) -> Schema:
    return {"rule": rule, "message": message}


def _string(description: str, max_length: int, **extra: Any) -> Schema:
    return {"type": "string", "description": description, "maxLength": max_length, **extra}


def _set_of(description: str, items: Schema, max_items: int) -> Schema:
    return {
        "type": "array",
        "description": description,
        "maxItems": max_items,
        "x-kubernetes-list-type": "set",
        "items": items,
    }


def _spiffe_id_template(description: str, default: str) -> Schema:
    starts = "self.startsWith('spiffe://')"
    placeholders = f"self.matches({_lit(t.SPIFFE_PLACEHOLDERS_RE)})"
    return _string(
        description,
        t.SPIFFE_ID_TEMPLATE_MAX,
        minLength=1,
        default=default,
        **{
            "x-kubernetes-validations": [
                _rule(starts, "spiffeIDTemplate must start with spiffe://"),
                _rule(
                    placeholders,
                    f"spiffeIDTemplate may only use the placeholders {_SPIFFE_PLACEHOLDER_LIST} "
                    "(KEY a label key); '{' and '}' may only surround a placeholder",
                ),
                _rule(
                    f"!{starts} || !{placeholders} || self.matches({_lit(t.SPIFFE_SHAPE_RE)})",
                    "spiffeIDTemplate must be spiffe://{trustDomain} or spiffe:// and a lower-case trust "
                    "domain name, followed by one or more /segments made of A-Z a-z 0-9 . _ - "
                    "and placeholders",
                ),
                _rule(
                    f"!self.matches({_lit(t.DOT_SEGMENT_RE)})",
                    "spiffeIDTemplate must not have a '.' or '..' path segment",
                ),
            ]
        },
    )


def _dns_name_templates(description: str) -> Schema:
    no_wildcard = "!self.contains('*')"
    placeholders = f"self.matches({_lit(t.DNS_PLACEHOLDERS_RE)})"
    shape = f"self.matches({_lit(t.DNS_SHAPE_RE)})"
    item = _string(
        "A DNS name template.",
        t.DNS_NAME_TEMPLATE_MAX,
        minLength=1,
        **{
            "x-kubernetes-validations": [
                _rule(no_wildcard, "wildcard DNS names are not supported"),
                _rule(
                    placeholders,
                    f"a DNS name template may only use the placeholders {_DNS_PLACEHOLDER_LIST} "
                    "(KEY a label key); '{' and '}' may only surround a placeholder",
                ),
                _rule(
                    f"self.contains('*') || !{placeholders} || {shape}",
                    "a DNS name template must be dot-separated non-empty labels made of lower-case letters, "
                    "digits, '-' and placeholders",
                ),
                _rule(
                    f"!{shape} || self.contains('{{') || "
                    f"(size(self) <= {t.DNS_SUBDOMAIN_MAX} && self.matches({_lit(t.DNS_SUBDOMAIN_RE)}))",
                    f"a DNS name template without placeholders must be a valid DNS name: {t.DNS_NAME_RULE}",
                ),
            ]
        },
    )
    return _set_of(description, item, m.MAX_DNS_NAME_TEMPLATES)


def _ttl(description: str, json_name: str, lowest: timedelta, highest: timedelta) -> Schema:
    low, high = m.format_duration(lowest), m.format_duration(highest)
    rule = (
        f"self.matches({_lit(m.DURATION_RE)}) && self != '' && "
        f"duration(self) >= duration({_lit(low)}) && duration(self) <= duration({_lit(high)})"
    )
    return _string(
        description,
        m.DURATION_MAX_LENGTH,
        minLength=1,
        **{
            "x-kubernetes-validations": [
                _rule(
                    rule,
                    f"{json_name} must be a duration in whole hours, minutes and seconds such as 1h, 90s or "
                    f"1h30m, between {low} and {high}",
                )
            ]
        },
    )


def _label_value(description: str) -> Schema:
    return _string(description, t.LABEL_VALUE_MAX, pattern=t.LABEL_VALUE_RE)


def _label_selector(description: str) -> Schema:
    requirement = {
        "type": "object",
        "description": "A label requirement: key, operator and, for In and NotIn, values.",
        "required": ["key", "operator"],
        "properties": {
            "key": _string("The label key.", t.LABEL_KEY_MAX, pattern=t.LABEL_KEY_RE),
            "operator": {
                "type": "string",
                "description": "In, NotIn, Exists or DoesNotExist.",
                "enum": list(m.OPERATORS),
            },
            "values": {
                "type": "array",
                "description": "Non-empty for In and NotIn, absent for Exists and DoesNotExist.",
                "maxItems": m.MAX_EXPRESSION_VALUES,
                "x-kubernetes-list-type": "atomic",
                "items": _label_value("A label value."),
            },
        },
        "x-kubernetes-validations": [
            _rule(
                "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                "In and NotIn need values; Exists and DoesNotExist take none",
            )
        ],
    }
    return {
        "type": "object",
        "description": description,
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchLabels": {
                "type": "object",
                "description": "Labels that must all be present with exactly these values.",
                "maxProperties": m.MAX_MATCH_LABELS,
                "additionalProperties": _label_value("The label's value."),
                "x-kubernetes-validations": [
                    _rule(
                        f"self.all(k, size(k) <= {t.LABEL_KEY_MAX} && k.matches({_lit(t.LABEL_KEY_RE)}))",
                        "matchLabels keys must be valid label keys ([prefix/]name)",
                    )
                ],
            },
            "matchExpressions": {
                "type": "array",
                "description": "Requirements that must all hold.",
                "maxItems": m.MAX_MATCH_EXPRESSIONS,
                "x-kubernetes-list-type": "atomic",
                "items": requirement,
            },
        },
    }


def _spec_property(name: str, description: str, default: Any) -> Schema:
    """The schema of one spec field, by Python field name (a new model field without one fails loudly)."""
    if name == "spiffe_id_template":
        return _spiffe_id_template(description, default.text)
    if name == "service_account_names":
        account = _string("A service account name.", t.DNS_SUBDOMAIN_MAX, pattern=t.DNS_SUBDOMAIN_RE)
        return _set_of(description, account, m.MAX_SERVICE_ACCOUNT_NAMES)
    if name in ("pod_selector", "namespace_selector"):
        return _label_selector(description)
    if name == "dns_name_templates":
        return _dns_name_templates(description)
    if name == "x509_svid_ttl":
        return _ttl(description, "x509SVIDTTL", constants.X509_TTL_MIN, constants.X509_TTL_MAX)
    if name == "jwt_svid_ttl":
        return _ttl(description, "jwtSVIDTTL", constants.JWT_TTL_MIN, constants.JWT_TTL_MAX)
    if name == "federates_with":
        domain = _string("A trust domain name.", MAX_TRUST_DOMAIN_BYTES, pattern=m.TRUST_DOMAIN_NAME_RE)
        return _set_of(description, domain, m.MAX_FEDERATES_WITH)
    if name == "hint":
        return _string(description, m.MAX_HINT_LENGTH, minLength=1)
    raise LookupError(f"RegistrationSpec.{name} has no CRD schema")


def _status_schema() -> Schema:
    condition = {
        "type": "object",
        "description": "A metav1.Condition.",
        "required": ["type", "status", "reason", "message", "lastTransitionTime"],
        "properties": {
            "type": _string("Condition type; kubespiffed sets Ready.", 316),
            "status": {
                "type": "string",
                "description": "True, False or Unknown.",
                "enum": ["True", "False", "Unknown"],
            },
            "reason": _string(
                "CamelCase reason: Valid, or the rule the registration breaks.",
                1024,
                minLength=1,
                pattern="^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            ),
            "message": _string("Why, in a sentence.", 32768),
            "lastTransitionTime": {
                "type": "string",
                "format": "date-time",
                "description": "When status last changed.",
            },
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "description": "The metadata.generation this condition was computed from.",
            },
        },
    }
    return {
        "type": "object",
        "description": "Written by kubespiffed.",
        "properties": {
            "observedGeneration": {
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "description": "The metadata.generation kubespiffed last evaluated.",
            },
            "conditions": {
                "type": "array",
                "description": "Ready=False: kubespiffed does not use this registration (reason says why).",
                "maxItems": 8,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": condition,
            },
        },
    }


_DESCRIPTIONS = {
    m.NAMESPACED_KIND: (
        "Grants SPIFFE identities to pods of its own namespace. It may only grant IDs under "
        "spiffe://<trust domain>/ns/<its namespace>/; one that would grant anything else is Ready=False "
        "and never used."
    ),
    m.CLUSTER_KIND: (
        "Grants SPIFFE identities to pods of the namespaces it selects, anywhere in the trust domain except "
        "spiffe://<trust domain>/kubespiffe/..., which is reserved for kubespiffe itself."
    ),
}
_SHORT_NAMES = {m.NAMESPACED_KIND: "wreg", m.CLUSTER_KIND: "cwreg"}


def crd(kind: m.Kind) -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) for one registration kind."""
    cluster = kind == m.CLUSTER_KIND
    spec_properties = {
        f.metadata["json"]: _spec_property(f.name, f.metadata["description"], f.default)
        for f in fields(m.RegistrationSpec)
        if cluster or f.name != "namespace_selector"
    }
    return _document(
        kind,
        "Cluster" if cluster else "Namespaced",
        _SHORT_NAMES[kind],
        [
            {"name": "SPIFFE ID Template", "type": "string", "jsonPath": ".spec.spiffeIDTemplate"},
            *_READY_COLUMNS,
        ],
        _DESCRIPTIONS[kind],
        {
            "type": "object",
            "description": "Which pods, and the identity they get.",
            "default": {},
            "properties": spec_properties,
        },
        _status_schema(),
    )


_READY = '.status.conditions[?(@.type=="Ready")]'
_READY_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "priority": 1},
]
_AGE_COLUMN: dict[str, Any] = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _document(
    kind: str,
    scope: str,
    short_name: str,
    columns: list[dict[str, Any]],
    description: str,
    spec: Schema,
    status: Schema,
) -> dict[str, Any]:
    """The CRD envelope all kubespiffe.io kinds share: one version, with a status subresource."""
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{constants.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubespiffe"},
        },
        "spec": {
            "group": constants.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["kubespiffe"],
            },
            "versions": [
                {
                    "name": constants.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [*columns, _AGE_COLUMN],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "properties": {
                                "apiVersion": {"type": "string", "description": "APIVersion of this object."},
                                "kind": {"type": "string", "description": "Kind of this object."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def _federation_spec() -> Schema:
    https = f"self.startsWith({_lit(fed.URL_SCHEME_PREFIX)})"
    userinfo = f"self.matches({_lit(fed.URL_USERINFO_RE)})"
    shape = f"self.matches({_lit(fed.URL_RE)})"
    url = _string(
        "The peer's SPIFFE bundle endpoint: https://HOST[:PORT][/PATH][?QUERY], HOST a DNS name or an IPv4 "
        "address; no userinfo, no fragment.",
        fed.MAX_URL_LENGTH,
        minLength=1,
        **{
            "x-kubernetes-validations": [
                _rule(https, "bundleEndpointURL must be an https:// URL"),
                _rule(f"!{userinfo}", "bundleEndpointURL must not carry userinfo (user:password@)"),
                _rule(
                    f"!{https} || {userinfo} || {shape}",
                    "bundleEndpointURL must be https://HOST[:PORT][/PATH][?QUERY] with a DNS name or IPv4 "
                    "address as HOST, in printable ASCII (percent-encode anything else), without a #fragment",
                ),
                _rule(
                    f"!{shape} || (isURL(self) && url(self).getHost() != '' && "
                    f"(url(self).getPort() == '' || int(url(self).getPort()) <= {fed.MAX_PORT}))",
                    f"bundleEndpointURL port must be between 1 and {fed.MAX_PORT}",
                ),
            ]
        },
    )
    endpoint_id = _string(
        "https_spiffe only: the exact SPIFFE ID the endpoint's X.509-SVID must carry, a workload ID (with a "
        "path) in trustDomain.",
        fed.MAX_ENDPOINT_ID_LENGTH,
        minLength=1,
        **{
            "x-kubernetes-validations": [
                _rule(
                    f"self.matches({_lit(fed.ENDPOINT_ID_RE)})",
                    "endpointSPIFFEID must be spiffe://<trust domain>/<path>: a lower-case trust domain name "
                    "and one or more /segments made of A-Z a-z 0-9 . _ -",
                ),
                _rule(
                    f"!self.matches({_lit(fed.ENDPOINT_ID_DOT_SEGMENT_RE)})",
                    "endpointSPIFFEID must not have a '.' or '..' path segment",
                ),
            ]
        },
    )
    profile = {
        "type": "object",
        "description": "How to authenticate the endpoint (a SPIFFE federation profile; never a fallback).",
        "required": ["type"],
        "properties": {
            "type": {
                "type": "string",
                "enum": list(fed.PROFILES),
                "description": "https_spiffe (the endpoint presents an X.509-SVID) or https_web (a WebPKI "
                "certificate naming the host).",
            },
            "endpointSPIFFEID": endpoint_id,
        },
        "x-kubernetes-validations": [
            _rule(
                "self.type != 'https_spiffe' || has(self.endpointSPIFFEID)",
                "https_spiffe needs endpointSPIFFEID",
            ),
            _rule(
                "self.type != 'https_web' || !has(self.endpointSPIFFEID)",
                "endpointSPIFFEID is only for https_spiffe",
            ),
        ],
    }
    starts = " || ".join(f"self.startsWith({_lit(prefix)})" for prefix in fed.BOOTSTRAP_PREFIXES)
    bootstrap = _string(
        "Bootstrap bundle (SPIFFE bundle JSON, or PEM certificates), at most 256 KiB: authenticates the "
        "first https_spiffe fetch, and is served to workloads until the first fetch succeeds. Required for "
        "https_spiffe.",
        fed.MAX_BOOTSTRAP_BYTES,
        minLength=1,
        **{
            "x-kubernetes-validations": [
                _rule(
                    starts,
                    "trustDomainBundle must be SPIFFE bundle JSON (starting with '{') or PEM certificates "
                    "(starting with -----BEGIN CERTIFICATE-----)",
                ),
                _rule(
                    f"size(bytes(self)) <= {fed.MAX_BOOTSTRAP_BYTES}",
                    f"trustDomainBundle must be at most {fed.MAX_BOOTSTRAP_BYTES} bytes of UTF-8",
                ),
            ]
        },
    )
    trust_domain = _string(
        "The foreign trust domain name, e.g. partner.example (no spiffe://). Cannot change: the status "
        "bundle belongs to it; delete and recreate instead.",
        MAX_TRUST_DOMAIN_BYTES,
        minLength=1,
        pattern=m.TRUST_DOMAIN_NAME_RE,
        **{"x-kubernetes-validations": [_rule("self == oldSelf", "trustDomain cannot change")]},
    )
    properties = {
        "trustDomain": trust_domain,
        "bundleEndpointURL": url,
        "bundleEndpointProfile": profile,
        "trustDomainBundle": bootstrap,
    }
    if list(properties) != list(fed.SPEC_FIELDS):
        raise LookupError("federation.SPEC_FIELDS and the FederatedTrustDomain CRD schema disagree")
    return {
        "type": "object",
        "description": "The foreign trust domain, its bundle endpoint and how to authenticate it.",
        "required": ["trustDomain", "bundleEndpointURL", "bundleEndpointProfile"],
        "properties": properties,
        "x-kubernetes-validations": [
            _rule(
                "self.bundleEndpointProfile.type != 'https_spiffe' || has(self.trustDomainBundle)",
                "https_spiffe needs trustDomainBundle (the bootstrap bundle)",
            ),
            _rule(
                "!has(self.bundleEndpointProfile.endpointSPIFFEID) || self.bundleEndpointProfile"
                ".endpointSPIFFEID.startsWith('spiffe://' + self.trustDomain + '/')",
                "endpointSPIFFEID must be in trustDomain: spiffe://<trustDomain>/<path>",
            ),
        ],
    }


def _federation_status() -> Schema:
    status = _status_schema()
    status["description"] = "Written by the kubespiffed Lease holder after every fetch."
    conditions = status["properties"]["conditions"]
    conditions["description"] = (
        f"Ready=True (reason {fed.FETCHED}): the last fetch succeeded. Ready=False (reason "
        f"{fed.FETCH_FAILED}): it failed and the last good bundle, or the bootstrap bundle, is still served."
    )
    conditions["items"]["properties"]["reason"]["description"] = (
        f"CamelCase reason: {fed.FETCHED}, {fed.FETCH_FAILED} or {fed.BOOTSTRAPPED}."
    )
    status["properties"].update(
        {
            # The fetcher accepts bundles up to spiffe.bundle.MAX_BUNDLE_BYTES, so this holds any of them.
            "bundle": _string("The last good bundle (SPIFFE bundle JSON).", fed.MAX_BOOTSTRAP_BYTES * 4),
            "sequence": {
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "description": "spiffe_sequence of that bundle (0 when it has none).",
            },
            "lastRefreshTime": {
                "type": "string",
                "format": "date-time",
                "description": "Last fetch attempt.",
            },
            "nextRefreshTime": {
                "type": "string",
                "format": "date-time",
                "description": "Next fetch attempt.",
            },
        }
    )
    return status


def federation_crd() -> dict[str, Any]:
    """FederatedTrustDomain: the same admission rules as registry.federation.FederatedTrustDomain."""
    document = _document(
        fed.KIND,
        "Cluster",
        "ftd",
        [
            {"name": "Trust Domain", "type": "string", "jsonPath": ".spec.trustDomain"},
            {"name": "Profile", "type": "string", "jsonPath": ".spec.bundleEndpointProfile.type"},
            *_READY_COLUMNS,
            {"name": "Sequence", "type": "integer", "jsonPath": ".status.sequence"},
            {"name": "Last Refresh", "type": "date", "jsonPath": ".status.lastRefreshTime"},
        ],
        "A foreign trust domain whose bundle kubespiffed fetches and hands to workloads whose registrations "
        "list it in federatesWith.",
        _federation_spec(),
        _federation_status(),
    )
    document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["required"] = ["spec"]
    return document


_HEADER = "# Generated by `python -m kubespiffe.registry.crds deploy/crds`; do not edit.\n"


def render(kind: m.Kind) -> str:
    """The YAML text committed under deploy/crds/."""
    return _HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def render_federation() -> str:
    """The FederatedTrustDomain YAML text committed under deploy/crds/."""
    return _HEADER + yaml.safe_dump(federation_crd(), sort_keys=False, width=120)


def filename(kind: m.Kind | str) -> str:
    return f"{kind.lower()}s.{constants.GROUP}.yaml"


def write(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    kinds: tuple[m.Kind, ...] = (m.NAMESPACED_KIND, m.CLUSTER_KIND)
    for kind in kinds:
        path = outdir / filename(kind)
        path.write_text(render(kind))
        written.append(path)
    path = outdir / filename(fed.KIND)
    path.write_text(render_federation())
    written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kubespiffe.registry.crds OUTDIR", file=sys.stderr)
        return 2
    for path in write(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
