"""SPIFFE ID and DNS name templates: parsing (the same rules the CRD's CEL enforces) and rendering for a pod.

A template is literal text with placeholders in braces. Braces never occur in a SPIFFE ID or a DNS name, so
there is no escaping: a `{` or `}` that does not belong to a known placeholder is an error.

The regular expressions below are shared with the generated CRD (crds.py), so the API server and this module
accept exactly the same templates. They use `[.]`, `[{]` and `[}]` instead of backslash escapes so that they
read the same in Python, in RE2 and inside a CEL string literal, and they contain no quote characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

# Kubernetes name syntax (apimachinery validation): a DNS-1123 label is at most 63 characters, a subdomain
# at most 253; a label key is an optional DNS-subdomain prefix and '/' before a name of at most 63.
DNS_LABEL = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_SUBDOMAIN = f"{DNS_LABEL}([.]{DNS_LABEL})*"
DNS_SUBDOMAIN_MAX = 253
LABEL_NAME = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = f"({DNS_SUBDOMAIN}/)?{LABEL_NAME}"
LABEL_KEY_MAX = DNS_SUBDOMAIN_MAX + 1 + 63
"""Bounds a selector's label key. The prefix's own 253 limit is not checked apart: no pod can carry a key
breaking it, so such a selector simply never matches. Keys inside templates are bounded by the template."""
LABEL_VALUE_MAX = 63
LABEL_KEY_RE = f"^{LABEL_KEY}$"
LABEL_VALUE_RE = f"^({LABEL_NAME})?$"
DNS_SUBDOMAIN_RE = f"^{DNS_SUBDOMAIN}$"

TRUST_DOMAIN = "trustDomain"
NAMESPACE = "namespace"
SERVICE_ACCOUNT = "serviceAccount"
POD_NAME = "podName"
POD_UID = "podUID"
NODE_NAME = "nodeName"
LABEL = "label"
POD_PLACEHOLDERS = (NAMESPACE, SERVICE_ACCOUNT, POD_NAME, POD_UID, NODE_NAME)
"""Placeholders valued from the pod alone; DNS name templates allow only these and {label:KEY}."""

SPIFFE_ID_TEMPLATE_MAX = 512
DNS_NAME_TEMPLATE_MAX = 512
DEFAULT_SPIFFE_ID_TEMPLATE = "spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"


def _placeholder_re(names: tuple[str, ...]) -> str:
    return "[{](" + "|".join(names) + f"|{LABEL}:{LABEL_KEY})[}}]"


_SPIFFE_PLACEHOLDER = _placeholder_re((TRUST_DOMAIN, *POD_PLACEHOLDERS))
_DNS_PLACEHOLDER = _placeholder_re(POD_PLACEHOLDERS)

SPIFFE_PLACEHOLDERS_RE = f"^([^{{}}]|{_SPIFFE_PLACEHOLDER})*$"
"""Every brace belongs to a known placeholder (SPIFFE ID templates)."""
SPIFFE_SHAPE_RE = (
    f"^spiffe://([{{]{TRUST_DOMAIN}[}}]|[a-z0-9._-]+)(/([-A-Za-z0-9._]|{_SPIFFE_PLACEHOLDER})+)+$"
)
"""`spiffe://`, then `{trustDomain}` or a literal trust domain, then one or more non-empty path segments."""
DOT_SEGMENT_RE = "/[.]{1,2}(/|$)"
"""Found anywhere (unanchored, as CEL's matches() searches): a `.` or `..` path segment."""

DNS_PLACEHOLDERS_RE = f"^([^{{}}]|{_DNS_PLACEHOLDER})*$"
"""Every brace belongs to a placeholder allowed in DNS names (no {trustDomain})."""
_DNS_ATOM = f"([-a-z0-9]|{_DNS_PLACEHOLDER})+"
DNS_SHAPE_RE = f"^{_DNS_ATOM}([.]{_DNS_ATOM})*$"
"""Lower-case letters, digits, '-' and placeholders, in dot-separated non-empty labels."""


class TemplateError(InvalidInput):
    """A template that cannot be parsed, or cannot be rendered for a given pod; the message says why."""


@dataclass(frozen=True, slots=True)
class Placeholder:
    """`{name}`, or `{label:KEY}` with `name == "label"` and `label_key == KEY`."""

    name: str
    label_key: str | None = None

    def __str__(self) -> str:
        return f"{{{self.name}:{self.label_key}}}" if self.label_key is not None else f"{{{self.name}}}"


Part = str | Placeholder


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: `text` as written, `parts` its literal strings and placeholders in order."""

    text: str
    parts: tuple[Part, ...]

    def segments(self, separator: str) -> tuple[tuple[Part, ...], ...]:
        """The parts split at `separator` in literal text; placeholders never contain a separator."""
        result: list[tuple[Part, ...]] = []
        current: list[Part] = []
        for part in self.parts:
            if isinstance(part, Placeholder):
                current.append(part)
                continue
            pieces = part.split(separator)
            for piece in pieces[:-1]:
                if piece:
                    current.append(piece)
                result.append(tuple(current))
                current = []
            if pieces[-1]:
                current.append(pieces[-1])
        result.append(tuple(current))
        return tuple(result)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What a template may use from a pod; `node_name` is "" until the pod is scheduled."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str
    labels: Mapping[str, str] = field(hash=False)


_TOKEN = re.compile(r"\{([^{}]*)\}|[{}]|[^{}]+")
_LABEL_KEY = re.compile(LABEL_KEY_RE)


def parse_template(text: str, allowed: tuple[str, ...] = (TRUST_DOMAIN, *POD_PLACEHOLDERS)) -> Template:
    """Split `text` into literals and placeholders; refuse stray braces and placeholders not in `allowed`."""
    parts: list[Part] = []
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token in ("{", "}"):
            raise TemplateError(
                f"template {text!r} has an unbalanced {token!r} at offset {match.start()}; "
                "braces may only surround a placeholder"
            )
        inner = match.group(1)
        if inner is None:
            parts.append(token)
            continue
        name, colon, key = inner.partition(":")
        if colon and name == LABEL:
            if not _LABEL_KEY.fullmatch(key):
                raise TemplateError(f"template {text!r}: {key!r} in {token} is not a valid label key")
            parts.append(Placeholder(LABEL, key))
        elif not colon and name in allowed:
            parts.append(Placeholder(name))
        else:
            known = " ".join(f"{{{n}}}" for n in allowed)
            raise TemplateError(
                f"template {text!r} has the unknown placeholder {token}; known: {known} {{label:KEY}}"
            )
    return Template(text, tuple(parts))


def parse_spiffe_id_template(text: str) -> Template:
    """A SPIFFE ID template: `spiffe://{trustDomain}/...` or `spiffe://<literal trust domain>/...`."""
    if len(text) > SPIFFE_ID_TEMPLATE_MAX:
        raise TemplateError(f"SPIFFE ID template is longer than {SPIFFE_ID_TEMPLATE_MAX} characters")
    if not text.startswith("spiffe://"):
        raise TemplateError(f"SPIFFE ID template {text!r} does not start with 'spiffe://'")
    template = parse_template(text)
    if not re.fullmatch(SPIFFE_SHAPE_RE, text):
        raise TemplateError(
            f"SPIFFE ID template {text!r} must be spiffe://{{trustDomain}} or spiffe:// and a lower-case "
            "trust domain name, followed by one or more /segments made of A-Z a-z 0-9 . _ - and placeholders"
        )
    if re.search(DOT_SEGMENT_RE, text):
        raise TemplateError(f"SPIFFE ID template {text!r} has a '.' or '..' path segment")
    return template


def parse_dns_name_template(text: str) -> Template:
    """A DNS name template; without placeholders it must already be a valid lower-case DNS name."""
    if len(text) > DNS_NAME_TEMPLATE_MAX:
        raise TemplateError(f"DNS name template is longer than {DNS_NAME_TEMPLATE_MAX} characters")
    if "*" in text:
        raise TemplateError(f"DNS name template {text!r}: wildcard DNS names are not supported")
    template = parse_template(text, POD_PLACEHOLDERS)
    if not re.fullmatch(DNS_SHAPE_RE, text):
        raise TemplateError(
            f"DNS name template {text!r} must be dot-separated non-empty labels made of lower-case "
            "letters, digits, '-' and placeholders"
        )
    if "{" not in text and not is_dns_name(text):
        raise TemplateError(f"DNS name template {text!r} is not a valid DNS name: {DNS_NAME_RULE}")
    return template


DNS_NAME_RULE = (
    f"at most {DNS_SUBDOMAIN_MAX} characters in dot-separated labels of at most 63 lower-case letters, "
    "digits and '-', each starting and ending with a letter or digit (RFC 1123)"
)


def is_dns_name(name: str) -> bool:
    """A lower-case RFC 1123 DNS name, i.e. a Kubernetes DNS subdomain (no wildcard, no trailing dot)."""
    return len(name) <= DNS_SUBDOMAIN_MAX and re.fullmatch(DNS_SUBDOMAIN_RE, name) is not None


def _value(placeholder: Placeholder, facts: PodFacts, trust_domain: TrustDomain | None) -> str:
    """One placeholder's value; empty values and '/' are refused so every placeholder fills exactly one
    non-empty piece of a segment (tenancy's static check relies on it)."""
    if placeholder.name == LABEL:
        assert placeholder.label_key is not None
        value = facts.labels.get(placeholder.label_key)
        if value is None:
            raise TemplateError(f"the pod has no label {placeholder.label_key!r} for {placeholder}")
    elif placeholder.name == TRUST_DOMAIN:
        assert trust_domain is not None, "parse_dns_name_template refuses {trustDomain}"
        value = trust_domain.name
    else:
        value = {
            NAMESPACE: facts.namespace,
            SERVICE_ACCOUNT: facts.service_account,
            POD_NAME: facts.pod_name,
            POD_UID: facts.pod_uid,
            NODE_NAME: facts.node_name,
        }[placeholder.name]
    if not value:
        raise TemplateError(f"{placeholder} is empty for this pod")
    if "/" in value:
        raise TemplateError(f"{placeholder} is {value!r}, which contains '/'")
    return value


def _render(template: Template, facts: PodFacts, trust_domain: TrustDomain | None) -> str:
    return "".join(
        _value(part, facts, trust_domain) if isinstance(part, Placeholder) else part
        for part in template.parts
    )


def render_spiffe_id(template: Template, facts: PodFacts, trust_domain: TrustDomain) -> SpiffeId:
    """The SPIFFE ID `template` grants to the pod described by `facts`."""
    text = _render(template, facts, trust_domain)
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as e:
        raise TemplateError(f"{template} renders {text!r}, which is not a valid SPIFFE ID: {e}") from e


def render_dns_name(template: Template, facts: PodFacts) -> str:
    """The DNS name `template` grants to the pod described by `facts`, validated as an RFC 1123 name."""
    name = _render(template, facts, None)
    if not is_dns_name(name):
        raise TemplateError(f"{template} renders {name!r}, which is not a valid DNS name: {DNS_NAME_RULE}")
    return name
