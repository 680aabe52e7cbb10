"""kubespiffed's settings: flags with environment-variable defaults, so a Deployment can use either.

Each field of `ServerConfig` declares its own flag: name, help, and for durations and ports the bounds
it must stay within, so a setting and its limits are read (and changed) in one place. `parse_args`
builds the command line from those declarations; every flag also reads `KUBESPIFFED_<FLAG>`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import json
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from kubespiffe.authority.certmanager import IssuerRef
from kubespiffe.authority.keys import KeyType
from kubespiffe.constants import (
    AUDIENCE,
    AUTHORITY_SECRET,
    BUNDLE_CONFIGMAP,
    JWT_TTL_MAX,
    JWT_TTL_MIN,
    SERVER_ID_PATH,
    SERVER_NAME,
    X509_TTL_MAX,
    X509_TTL_MIN,
)
from kubespiffe.federation.fetch import parse_networks
from kubespiffe.federation.oidc import OidcIssuer, OidcIssuerError
from kubespiffe.injection import InjectionSettings
from kubespiffe.registry.models import format_duration, parse_duration
from kubespiffe.server.bundle_configmaps import PEM_KEY, check_pem_key
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def setting(
    default: Any, help: str = "", *, low: Any = None, high: Any = None, required: bool = False
) -> Any:
    """A field that is also a flag: `low`/`high` bound durations and ports (inclusive)."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "required": required})


def _hours(n: float) -> dt.timedelta:
    return dt.timedelta(hours=n)


@dataclass(frozen=True)
class ServerConfig:
    trust_domain: TrustDomain = setting(None, "the trust domain kubespiffed issues for", required=True)
    namespace: str = setting("", "namespace kubespiffed runs in; its authority Secret lives there")
    kubeconfig: str | None = setting(None, "default: in-cluster config")
    listen_host: str = setting("0.0.0.0", "address every port listens on")  # noqa: S104 (Service -> pod IP)
    port: int = setting(8443, "issuer API (gRPC over TLS)", low=1, high=65535)
    health_port: int = setting(8444, "health, readiness and metrics (HTTPS)", low=1, high=65535)
    audience: str = setting(AUDIENCE, "audience pods' projected tokens must carry")
    token_issuer: str | None = setting(None, "default: from the API server's OIDC discovery")
    authority_secret: str = setting(AUTHORITY_SECRET, "Secret holding the CA and JWT keys")
    ca_key_type: KeyType = setting(KeyType.EC_P256, "key type of the self-signed CA")
    ca_ttl: dt.timedelta = setting(_hours(8760), "CA lifetime", low=_hours(1), high=_hours(87600))
    x509_svid_ttl: dt.timedelta = setting(
        _hours(1), "default X.509-SVID TTL", low=X509_TTL_MIN, high=X509_TTL_MAX
    )
    jwt_svid_ttl: dt.timedelta = setting(
        dt.timedelta(minutes=5), "default JWT-SVID TTL", low=JWT_TTL_MIN, high=JWT_TTL_MAX
    )
    jwt_key_type: KeyType = setting(
        KeyType.EC_P256, "ec-p256 signs ES256; rsa-2048 signs RS256 (for clouds that accept only RSA)"
    )
    jwt_issuer: str | None = setting(None, "`iss` claim of JWT-SVIDs (optional)")
    service_name: str = setting(SERVER_NAME, "kubespiffed's Service (its DNS names go in its certificate)")
    bundle_endpoint_port: int = setting(
        8445, "SPIFFE bundle endpoint (HTTPS); 0 turns it off", low=0, high=65535
    )
    bundle_refresh_hint: dt.timedelta = setting(
        dt.timedelta(minutes=5), "spiffe_refresh_hint published", low=dt.timedelta(seconds=1), high=_hours(24)
    )
    bundle_endpoint_web_secret: str | None = setting(
        None,
        "serve the https_web profile with this kubernetes.io/tls Secret (tls.crt, tls.key) in the "
        "namespace; default: the https_spiffe profile with kubespiffed's own SVID",
    )
    federation_min_refresh: dt.timedelta = setting(
        dt.timedelta(seconds=30),
        "poll federated bundle endpoints no more often than this, whatever their refresh hint",
        low=dt.timedelta(seconds=1),
        high=_hours(1),
    )
    bundle_configmap: str = setting(
        BUNDLE_CONFIGMAP, "publish the trust bundle as this ConfigMap in every namespace ('' turns it off)"
    )
    federation_max_refresh: dt.timedelta = setting(
        _hours(1), "and at least this often", low=dt.timedelta(seconds=1), high=_hours(24)
    )
    webhook_port: int = setting(
        0, "sidecar-injection webhook (HTTPS, POST /inject); 0 turns it off", low=0, high=65535
    )
    webhook_configuration: str = setting(
        "", "MutatingWebhookConfiguration whose caBundle kubespiffed keeps equal to its CA bundle"
    )
    agent_image: str | None = setting(None, "image of the injected agent (required with --webhook-port)")
    agent_image_pull_policy: str = setting("IfNotPresent", "imagePullPolicy of the injected agent")
    agent_server: str | None = setting(
        None, "HOST:PORT the injected agent dials (default: <service-name>.<namespace>.svc:443)"
    )
    agent_resources: str | None = setting(
        None, 'resources of the injected agent as JSON, e.g. {"requests": {"memory": "64Mi"}}'
    )
    oidc_port: int = setting(
        0, "OIDC discovery for clouds (HTTPS: discovery document and JWKS); 0 turns it off", low=0, high=65535
    )
    oidc_issuer: str | None = setting(
        None,
        "public https URL of the OIDC issuer: the discovery document's `issuer` and the `iss` of every "
        "JWT-SVID, byte for byte (required with --oidc-port; supersedes --jwt-issuer)",
    )
    oidc_tls_secret: str | None = setting(
        None, "kubernetes.io/tls Secret (tls.crt, tls.key) in the namespace the OIDC port serves"
    )
    bundle_configmap_key: str = setting(
        PEM_KEY, "key of the PEM bundle in the bundle ConfigMap (e.g. trust-bundle.pem, as trust-manager)"
    )
    # Bounds on what callers can make kubespiffed do (docs/security.md says why each one exists).
    token_review_rate: int = setting(
        5,
        "TokenReviews per second at most, asked only while the cluster JWKS cannot be had",
        low=1,
        high=1000,
    )
    cluster_domain: str = setting(
        "cluster.local", "cluster DNS domain: namespaced registrations may grant <name>.<ns>.svc.<this>"
    )
    max_streams_per_pod: int = setting(
        4, "open WatchBundles streams per pod (UID); more are refused (RESOURCE_EXHAUSTED)", low=1, high=1000
    )
    max_concurrent_rpcs: int = setting(
        4096, "issuer API calls in flight at once, streams included; more are refused", low=1, high=1_000_000
    )
    grpc_max_connection_idle: dt.timedelta = setting(
        dt.timedelta(minutes=5),
        "close issuer API connections with no call in flight for this long",
        low=dt.timedelta(seconds=1),
        high=_hours(24),
    )
    grpc_handshake_timeout: dt.timedelta = setting(
        dt.timedelta(seconds=10),
        "close issuer API connections that have not finished TLS and HTTP/2 setup by then, and end "
        "calls whose token only I/O can verify that have not sent their request by then",
        low=dt.timedelta(seconds=1),
        high=dt.timedelta(minutes=5),
    )
    federation_allowed_networks: str = setting(
        "",
        "comma-separated CIDRs bundle endpoints (and their redirects) may resolve to although loopback, "
        "link-local or private (e.g. 10.0.0.0/8 for peers on the same network); default: none",
    )
    pod_certificate_signer: str = setting(
        "",
        "sign PodCertificateRequests for this signer name (e.g. kubespiffe.io/svid) and publish its "
        "ClusterTrustBundles; needs certificates.k8s.io/v1beta1 ('' turns it off)",
    )
    upstream_ca_secret: str = setting(
        "",
        "sign kubespiffed's CAs as intermediates with the CA in this Secret of the namespace (tls.crt, "
        "tls.key, optional ca.crt); the bundle then holds its root ('' turns it off)",
    )
    upstream_cert_manager_issuer: str = setting(
        "",
        "get kubespiffed's CAs as intermediates from this cert-manager issuer, kind/name[/group] "
        "(e.g. ClusterIssuer/corp-ca) through CertificateRequests ('' turns it off)",
    )
    workers: int = setting(
        1,
        "processes serving the issuer API on its port (SO_REUSEPORT); the first also does the Lease "
        "holder's work and the HTTPS endpoints; each one holds its own watch caches (memory x N)",
        low=1,
        high=16,
    )

    @property
    def jwt_svid_issuer(self) -> str | None:
        """`iss` of JWT-SVIDs: --oidc-issuer, else the older --jwt-issuer (`oidc()` refuses two values)."""
        return self.oidc_issuer or self.jwt_issuer

    def oidc(self) -> OidcIssuer | None:
        """The OIDC issuer (None when not configured); ValueError says which flag is wrong."""
        if not self.oidc_issuer:
            if self.oidc_port:
                raise ValueError("--oidc-port needs --oidc-issuer, the public URL relying parties fetch")
            return None
        try:
            issuer = OidcIssuer.parse(self.oidc_issuer)
        except OidcIssuerError as exc:
            raise ValueError(f"--oidc-issuer {self.oidc_issuer!r}: {exc}") from None
        if self.jwt_issuer and self.jwt_issuer != self.oidc_issuer:
            raise ValueError("--jwt-issuer differs from --oidc-issuer; set only --oidc-issuer")
        if self.oidc_port and not self.oidc_tls_secret:
            raise ValueError("--oidc-port needs --oidc-tls-secret, the kubernetes.io/tls Secret it serves")
        return issuer

    def upstream_issuer(self) -> IssuerRef | None:
        """The cert-manager issuer to ask (None when not configured); ValueError says which flag is wrong."""
        if not self.upstream_cert_manager_issuer:
            return None
        if self.upstream_ca_secret:
            raise ValueError("--upstream-ca-secret and --upstream-cert-manager-issuer exclude each other")
        try:
            return IssuerRef.parse(self.upstream_cert_manager_issuer)
        except ValueError as exc:
            raise ValueError(f"--upstream-cert-manager-issuer: {exc}") from None

    def injection(self) -> InjectionSettings:
        """The sidecar to inject; ValueError says what is wrong with the agent flags."""
        if not self.agent_image:
            raise ValueError("--agent-image is required with --webhook-port")
        extra: dict[str, Any] = {}
        if self.agent_resources:
            try:
                extra["resources"] = json.loads(self.agent_resources)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--agent-resources is not JSON: {exc}") from None
            if not isinstance(extra["resources"], dict):
                raise ValueError("--agent-resources must be a JSON object")
        return InjectionSettings(
            image=self.agent_image,
            namespace=self.namespace,
            image_pull_policy=self.agent_image_pull_policy,
            service=self.service_name,
            server_name=self.service_name,
            audience=self.audience,
            bundle_configmap=self.bundle_configmap or BUNDLE_CONFIGMAP,
            bundle_key=self.bundle_configmap_key,
            server_address=self.agent_server,
            # An upstream root names no trust domain, so the agent cannot learn it from the bundle.
            trust_domain=str(self.trust_domain)
            if self.upstream_ca_secret or self.upstream_cert_manager_issuer
            else "",
            **extra,
        )

    @property
    def server_id(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, SERVER_ID_PATH)

    @property
    def server_dns_names(self) -> tuple[str, ...]:
        """The Service's names; kubespiffed's certificate carries them and no workload may be granted them."""
        svc, ns = self.service_name, self.namespace
        return (svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str | None:
    return os.environ.get(f"KUBESPIFFED_{name.upper()}")


def _text(value: Any) -> str | None:
    """A default as the command line would spell it."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return format_duration(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def _convert(kind: Any, text: str) -> Any:
    """Flag text to the field's type; a ValueError here becomes a usage error."""
    if kind is TrustDomain:
        return TrustDomain.parse(text)
    if kind is dt.timedelta:
        return parse_duration(text)
    if kind is int:
        return int(text)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(text)
    return text


def _check_bounds(value: Any, low: Any, high: Any) -> None:
    if low is None or value is None or low <= value <= high:
        return
    lo, hi = (format_duration(b) if isinstance(b, dt.timedelta) else b for b in (low, high))
    raise ValueError(f"must be between {lo} and {hi}")


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="kubespiffed",
        description="Issue X.509- and JWT-SVIDs to pods that prove who they are with pod-bound tokens.",
        epilog="Every flag also reads KUBESPIFFED_<FLAG> (upper case, '-' as '_').",
    )
    hints = typing.get_type_hints(ServerConfig)
    kinds: dict[str, Any] = {}
    for f in fields(ServerConfig):
        kind = hints[f.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # X | None -> X
        kinds[f.name] = kind
        env = _env(f.name)
        default = env if env is not None else _text(f.default)
        if f.name == "namespace" and not default:
            default = _service_account_namespace() or "kubespiffe-system"
        choices = [k.value for k in kind] if isinstance(kind, type) and issubclass(kind, enum.Enum) else None
        parser.add_argument(
            _flag(f.name),
            default=default,
            required=f.metadata["required"] and default is None,
            choices=choices,
            help=f.metadata["help"],
        )
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for f in fields(ServerConfig):
        text = args[f.name]
        try:
            value = None if text is None else _convert(kinds[f.name], text)
            _check_bounds(value, f.metadata["low"], f.metadata["high"])
        except ValueError as exc:
            parser.error(f"{_flag(f.name)} {text!r}: {exc}")
        values[f.name] = value
    config = ServerConfig(**values)
    if config.webhook_port:
        try:
            config.injection()
        except ValueError as exc:
            parser.error(str(exc))
    try:
        config.oidc()
        parse_networks(config.federation_allowed_networks)
        check_pem_key(config.bundle_configmap_key)
        config.upstream_issuer()
    except ValueError as exc:
        parser.error(str(exc))
    return config


def _service_account_namespace() -> str | None:
    try:
        with open(_SA_NAMESPACE) as f:
            return f.read().strip() or None
    except OSError:
        return None
