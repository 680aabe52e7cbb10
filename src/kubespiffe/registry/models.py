"""Typed models of WorkloadRegistration and ClusterWorkloadRegistration, built from API objects.

`Registration.from_object` re-checks everything the CRD's schema and CEL rules refuse at admission (defence
in depth: an object written before a CRD upgrade, or through a storage path that skipped validation, must not
reach the issuer). The bounds and patterns here are the single source the CRD generator (crds.py) reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from kubespiffe.constants import API_VERSION, JWT_TTL_MAX, JWT_TTL_MIN, X509_TTL_MAX, X509_TTL_MIN
from kubespiffe.errors import InvalidInput
from kubespiffe.registry.template import (
    DEFAULT_SPIFFE_ID_TEMPLATE,
    DNS_SUBDOMAIN_MAX,
    DNS_SUBDOMAIN_RE,
    LABEL_KEY_MAX,
    LABEL_KEY_RE,
    LABEL_VALUE_MAX,
    LABEL_VALUE_RE,
    Template,
    TemplateError,
    parse_dns_name_template,
    parse_spiffe_id_template,
)
from kubespiffe.spiffe.spiffeid import SpiffeIdError, TrustDomain

NAMESPACED_KIND: Final = "WorkloadRegistration"
CLUSTER_KIND: Final = "ClusterWorkloadRegistration"
Kind = Literal["WorkloadRegistration", "ClusterWorkloadRegistration"]

# Go-style durations restricted to what people write for TTLs: hours, minutes, seconds, in that order, whole
# numbers. The digit counts keep every match far below CEL's duration range, so duration() cannot overflow.
DURATION_RE: Final = "^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$"
DURATION_MAX_LENGTH: Final = 24

MAX_SERVICE_ACCOUNT_NAMES: Final = 64
MAX_DNS_NAME_TEMPLATES: Final = 32
MAX_FEDERATES_WITH: Final = 32
MAX_HINT_LENGTH: Final = 256
MAX_MATCH_LABELS: Final = 64
MAX_MATCH_EXPRESSIONS: Final = 32
MAX_EXPRESSION_VALUES: Final = 64
TRUST_DOMAIN_NAME_RE: Final = "^[a-z0-9._-]+$"
OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class RegistrationError(InvalidInput):
    """An object admission would have refused. `reason` is the Ready condition reason it leads to."""

    def __init__(self, message: str, reason: str = "InvalidSpec") -> None:
        super().__init__(message)
        self.reason = reason


def format_duration(value: timedelta) -> str:
    """Go-style text (`1h30m`, `90s`) that parse_duration reads back; used for the CRD's CEL bounds."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (
        (f"{hours}h" if hours else "")
        + (f"{minutes}m" if minutes else "")
        + (f"{seconds}s" if seconds else "")
    )
    return text or "0s"


def parse_duration(text: str) -> timedelta:
    """Parse `1h`, `30m`, `90s`, `1h30m` (the DURATION_RE subset of Go's time.ParseDuration)."""
    match = re.fullmatch(DURATION_RE, text) if len(text) <= DURATION_MAX_LENGTH else None
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration such as 1h, 30m, 90s or 1h30m")
    h, m, s = (int(g[:-1]) if g else 0 for g in match.groups())
    return timedelta(hours=h, minutes=m, seconds=s)


def parse_ttl(text: str, lowest: timedelta, highest: timedelta) -> timedelta:
    """A duration within [lowest, highest]; the CRD's CEL rule applies the same bounds."""
    value = parse_duration(text)
    if not lowest <= value <= highest:
        raise ValueError(
            f"{text!r} is outside the allowed range {format_duration(lowest)}..{format_duration(highest)}"
        )
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RegistrationError(message)


def _is_label_key(key: str) -> bool:
    return len(key) <= LABEL_KEY_MAX and re.fullmatch(LABEL_KEY_RE, key) is not None


def _is_label_value(value: str) -> bool:
    return len(value) <= LABEL_VALUE_MAX and re.fullmatch(LABEL_VALUE_RE, value) is not None


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One `matchExpressions` entry; In and NotIn need values, Exists and DoesNotExist take none."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(_is_label_key(self.key), f"{self.key!r} is not a valid label key")
        _check(self.operator in OPERATORS, f"operator {self.operator!r} is not one of {', '.join(OPERATORS)}")
        needs_values = self.operator in ("In", "NotIn")
        _check(
            needs_values == bool(self.values),
            f"operator {self.operator} " + ("needs values" if needs_values else "takes no values"),
        )
        _check(len(self.values) <= MAX_EXPRESSION_VALUES, f"more than {MAX_EXPRESSION_VALUES} values")
        for value in self.values:
            _check(_is_label_value(value), f"{value!r} is not a valid label value")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes LabelSelector; every label and every expression must match (an empty one matches all)."""

    match_labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    match_expressions: tuple[LabelRequirement, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "match_labels", MappingProxyType(dict(self.match_labels)))
        _check(len(self.match_labels) <= MAX_MATCH_LABELS, f"more than {MAX_MATCH_LABELS} matchLabels")
        _check(
            len(self.match_expressions) <= MAX_MATCH_EXPRESSIONS,
            f"more than {MAX_MATCH_EXPRESSIONS} matchExpressions",
        )
        for key, value in self.match_labels.items():
            _check(_is_label_key(key), f"{key!r} is not a valid label key")
            _check(_is_label_value(value), f"{value!r} (label {key!r}) is not a valid label value")


def _doc(json_name: str, description: str) -> dict[str, str]:
    """Field metadata: the JSON name and the description the CRD shows in `kubectl explain`."""
    return {"json": json_name, "description": description}


@dataclass(frozen=True, slots=True)
class RegistrationSpec:
    """What a registration selects and what identity it grants. Field metadata feeds the CRD generator."""

    spiffe_id_template: Template = field(
        default=parse_spiffe_id_template(DEFAULT_SPIFFE_ID_TEMPLATE),
        metadata=_doc(
            "spiffeIDTemplate",
            "The SPIFFE ID granted to each selected pod. Placeholders: {trustDomain} {namespace} "
            "{serviceAccount} {podName} {podUID} {nodeName} {label:KEY}. The trust domain part is "
            "{trustDomain} or the literal trust domain name. A WorkloadRegistration may only grant IDs "
            "under spiffe://<trust domain>/ns/<its namespace>/; no registration may grant "
            "spiffe://<trust domain>/kubespiffe/...",
        ),
    )
    service_account_names: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "serviceAccountNames",
            "Select only pods running as one of these service accounts; empty or absent selects any.",
        ),
    )
    pod_selector: LabelSelector | None = field(
        default=None,
        metadata=_doc("podSelector", "Select only pods whose labels match; absent selects all pods."),
    )
    namespace_selector: LabelSelector | None = field(
        default=None,
        metadata=_doc(
            "namespaceSelector",
            "Select only pods in namespaces whose labels match; absent selects all namespaces.",
        ),
    )
    dns_name_templates: tuple[Template, ...] = field(
        default=(),
        metadata=_doc(
            "dnsNameTemplates",
            "DNS names for the X.509-SVID. Placeholders: {namespace} {serviceAccount} {podName} {podUID} "
            "{nodeName} {label:KEY}. Each must render a lower-case RFC 1123 name; wildcards are not allowed.",
        ),
    )
    x509_svid_ttl: timedelta | None = field(
        default=None,
        metadata=_doc(
            "x509SVIDTTL",
            f"Lifetime of X.509-SVIDs, e.g. 1h or 1h30m, between {format_duration(X509_TTL_MIN)} and "
            f"{format_duration(X509_TTL_MAX)}; absent uses kubespiffed's default.",
        ),
    )
    jwt_svid_ttl: timedelta | None = field(
        default=None,
        metadata=_doc(
            "jwtSVIDTTL",
            f"Lifetime of JWT-SVIDs, e.g. 5m, between {format_duration(JWT_TTL_MIN)} and "
            f"{format_duration(JWT_TTL_MAX)}; absent uses kubespiffed's default.",
        ),
    )
    federates_with: tuple[TrustDomain, ...] = field(
        default=(),
        metadata=_doc(
            "federatesWith",
            "Trust domain names (e.g. partner.example) whose bundles the selected pods also receive.",
        ),
    )
    hint: str | None = field(
        default=None,
        metadata=_doc(
            "hint",
            "Tells a workload with several identities what this one is for (the Workload API hint), "
            "e.g. internal or external.",
        ),
    )


def spec_json_names() -> dict[str, str]:
    """Python field name -> JSON field name, for every spec field."""
    return {f.name: f.metadata["json"] for f in fields(RegistrationSpec)}


class RegistrationKey(NamedTuple):
    """Identifies a registration in logs and in match results; `namespace` is None for cluster ones."""

    kind: Kind
    namespace: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Registration:
    """A WorkloadRegistration (namespace set) or ClusterWorkloadRegistration (namespace None)."""

    kind: Kind
    name: str
    namespace: str | None
    uid: str
    generation: int
    creation_timestamp: datetime
    spec: RegistrationSpec

    def __post_init__(self) -> None:
        _check(self.kind in (NAMESPACED_KIND, CLUSTER_KIND), f"kind {self.kind!r} is not a registration")
        if self.kind == NAMESPACED_KIND:
            _check(bool(self.namespace), f"a {NAMESPACED_KIND} needs a namespace")
            _check(
                self.spec.namespace_selector is None,
                f"namespaceSelector is only allowed on a {CLUSTER_KIND}",
            )
        else:
            _check(self.namespace is None, f"a {CLUSTER_KIND} has no namespace")
        _check(self.creation_timestamp.tzinfo is not None, "creationTimestamp must carry a time zone")

    @property
    def key(self) -> RegistrationKey:
        return RegistrationKey(self.kind, self.namespace, self.name)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Registration:
        """Build from a Kubernetes JSON object; RegistrationError says what admission would have refused."""
        api_version = obj.get("apiVersion")
        _check(api_version == API_VERSION, f"apiVersion {api_version!r} is not {API_VERSION}")
        kind = obj.get("kind")
        if kind not in (NAMESPACED_KIND, CLUSTER_KIND):
            raise RegistrationError(f"kind {kind!r} is not a registration")
        meta = _mapping(obj.get("metadata"), "metadata")
        name = _string(meta.get("name"), "metadata.name")
        generation = meta.get("generation")
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
            raise RegistrationError(f"metadata.generation {generation!r} is not a positive integer")
        timestamp = _string(meta.get("creationTimestamp"), "metadata.creationTimestamp")
        try:
            created = datetime.fromisoformat(timestamp)
        except ValueError as e:
            raise RegistrationError(f"metadata.creationTimestamp {timestamp!r} is not RFC 3339") from e
        namespace = meta.get("namespace") or None
        if kind == NAMESPACED_KIND:
            namespace = _string(namespace, "metadata.namespace")
        spec = _parse_spec(_mapping(obj.get("spec", {}), "spec"), kind == CLUSTER_KIND)
        return cls(
            kind=kind,
            name=name,
            namespace=namespace,
            uid=_string(meta.get("uid"), "metadata.uid"),
            generation=generation,
            creation_timestamp=created,
            spec=spec,
        )


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RegistrationError(f"{where} is not an object")
    return value


def _string(value: Any, where: str, max_length: int | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise RegistrationError(f"{where} is not a non-empty string")
    _check(max_length is None or len(value) <= max_length, f"{where} is longer than {max_length} characters")
    return value


def _strings(value: Any, where: str, max_items: int) -> tuple[str, ...]:
    _check(isinstance(value, list), f"{where} is not a list")
    _check(len(value) <= max_items, f"{where} has more than {max_items} items")
    items = tuple(_string(item, f"{where}[{i}]") for i, item in enumerate(value))
    _check(len(set(items)) == len(items), f"{where} has duplicate items")
    return items


def _selector(value: Any, where: str) -> LabelSelector:
    obj = _mapping(value, where)
    unknown = set(obj) - {"matchLabels", "matchExpressions"}
    _check(not unknown, f"{where} has unknown fields {sorted(unknown)}")
    labels = _mapping(obj.get("matchLabels", {}), f"{where}.matchLabels")
    for key, label in labels.items():
        _check(isinstance(label, str), f"{where}.matchLabels[{key!r}] is not a string")
    expressions = obj.get("matchExpressions", [])
    _check(isinstance(expressions, list), f"{where}.matchExpressions is not a list")
    requirements = []
    for i, item in enumerate(expressions):
        at = f"{where}.matchExpressions[{i}]"
        expr = _mapping(item, at)
        values = expr.get("values", [])
        _check(
            isinstance(values, list) and all(isinstance(v, str) for v in values),
            f"{at}.values is not a list of strings",
        )
        key, operator = expr.get("key", ""), expr.get("operator", "")
        _check(isinstance(key, str) and isinstance(operator, str), f"{at}: key and operator must be strings")
        try:
            requirement = LabelRequirement(key, operator, tuple(values))
        except RegistrationError as e:
            raise RegistrationError(f"{at}: {e}") from e
        requirements.append(requirement)
    try:
        return LabelSelector(dict(labels), tuple(requirements))
    except RegistrationError as e:
        raise RegistrationError(f"{where}: {e}") from e


def _ttl(value: Any, where: str, lowest: timedelta, highest: timedelta) -> timedelta:
    try:
        return parse_ttl(_string(value, where), lowest, highest)
    except ValueError as e:
        raise RegistrationError(f"{where}: {e}", reason="InvalidTTL") from e


def _template(value: Any, where: str, parse: Any) -> Template:
    try:
        result: Template = parse(_string(value, where))
    except TemplateError as e:
        raise RegistrationError(f"{where}: {e}", reason="InvalidTemplate") from e
    return result


def _parse_spec(spec: Mapping[str, Any], cluster: bool) -> RegistrationSpec:
    names = spec_json_names()
    allowed = set(names.values()) - (set() if cluster else {names["namespace_selector"]})
    unknown = sorted(set(spec) - allowed)
    _check(not unknown, f"spec has fields this kind does not have: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    if "spiffeIDTemplate" in spec:
        values["spiffe_id_template"] = _template(
            spec["spiffeIDTemplate"], "spec.spiffeIDTemplate", parse_spiffe_id_template
        )
    if "serviceAccountNames" in spec:
        where = "spec.serviceAccountNames"
        accounts = _strings(spec["serviceAccountNames"], where, MAX_SERVICE_ACCOUNT_NAMES)
        for account in accounts:
            _check(
                len(account) <= DNS_SUBDOMAIN_MAX and re.fullmatch(DNS_SUBDOMAIN_RE, account) is not None,
                f"{where}: {account!r} is not a valid service account name",
            )
        values["service_account_names"] = accounts
    for key in ("podSelector", "namespaceSelector"):
        if key in spec:
            values["pod_selector" if key == "podSelector" else "namespace_selector"] = _selector(
                spec[key], f"spec.{key}"
            )
    if "dnsNameTemplates" in spec:
        texts = _strings(spec["dnsNameTemplates"], "spec.dnsNameTemplates", MAX_DNS_NAME_TEMPLATES)
        values["dns_name_templates"] = tuple(
            _template(text, f"spec.dnsNameTemplates[{i}]", parse_dns_name_template)
            for i, text in enumerate(texts)
        )
    if "x509SVIDTTL" in spec:
        values["x509_svid_ttl"] = _ttl(spec["x509SVIDTTL"], "spec.x509SVIDTTL", X509_TTL_MIN, X509_TTL_MAX)
    if "jwtSVIDTTL" in spec:
        values["jwt_svid_ttl"] = _ttl(spec["jwtSVIDTTL"], "spec.jwtSVIDTTL", JWT_TTL_MIN, JWT_TTL_MAX)
    if "federatesWith" in spec:
        domains = _strings(spec["federatesWith"], "spec.federatesWith", MAX_FEDERATES_WITH)
        try:
            values["federates_with"] = tuple(TrustDomain(d) for d in domains)
        except SpiffeIdError as e:
            raise RegistrationError(f"spec.federatesWith: {e}") from e
    if "hint" in spec:
        values["hint"] = _string(spec["hint"], "spec.hint", MAX_HINT_LENGTH)
    return RegistrationSpec(**values)
