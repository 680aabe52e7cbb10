"""kubespiffed's settings: flags with environment-variable defaults, so a Deployment can use either."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import dataclass

from kubespiffe.authority.keys import KeyType
from kubespiffe.registry.models import format_duration, parse_duration
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

SERVER_ID_PATH = "/kubespiffe/kubespiffed"


@dataclass(frozen=True)
class ServerConfig:
    trust_domain: TrustDomain
    namespace: str
    kubeconfig: str | None = None
    listen_host: str = "0.0.0.0"  # noqa: S104 (in a pod, the Service reaches the pod IP)
    port: int = 8443
    health_port: int = 8444
    audience: str = "kubespiffe"
    token_issuer: str | None = None
    authority_secret: str = "kubespiffe-authority"  # noqa: S105 (a Secret name)
    ca_key_type: KeyType = KeyType.EC_P256
    ca_ttl: dt.timedelta = dt.timedelta(days=365)
    x509_svid_ttl: dt.timedelta = dt.timedelta(hours=1)
    jwt_svid_ttl: dt.timedelta = dt.timedelta(minutes=5)
    jwt_key_type: KeyType = KeyType.EC_P256
    jwt_issuer: str | None = None
    service_name: str = "kubespiffed"
    bundle_endpoint_port: int = 8445
    bundle_refresh_hint: dt.timedelta = dt.timedelta(minutes=5)
    bundle_endpoint_web_secret: str | None = None
    federation_min_refresh: dt.timedelta = dt.timedelta(seconds=30)
    bundle_configmap: str = "kubespiffe-bundle"
    federation_max_refresh: dt.timedelta = dt.timedelta(hours=1)

    @property
    def server_id(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, SERVER_ID_PATH)

    @property
    def server_dns_names(self) -> tuple[str, ...]:
        """The Service's names; kubespiffed's certificate carries them and no workload may be granted them."""
        svc, ns = self.service_name, self.namespace
        return (svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"KUBESPIFFED_{name}", default)


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="kubespiffed",
        description="Issue SPIFFE X.509-SVIDs to pods that prove themselves with pod-bound tokens.",
        epilog="Every flag also reads KUBESPIFFED_<FLAG> (upper case, '-' as '_').",
    )
    parser.add_argument("--trust-domain", default=_env("TRUST_DOMAIN"), required=not _env("TRUST_DOMAIN"))
    parser.add_argument(
        "--namespace",
        default=_env("NAMESPACE") or _service_account_namespace() or "kubespiffe-system",
        help="namespace kubespiffed runs in; its authority Secret lives there",
    )
    parser.add_argument("--kubeconfig", default=_env("KUBECONFIG"), help="default: in-cluster config")
    parser.add_argument("--listen-host", default=_env("LISTEN_HOST", "0.0.0.0"))  # noqa: S104
    parser.add_argument("--port", type=int, default=_env("PORT", "8443"))
    parser.add_argument("--health-port", type=int, default=_env("HEALTH_PORT", "8444"))
    parser.add_argument("--audience", default=_env("AUDIENCE", "kubespiffe"))
    parser.add_argument(
        "--token-issuer", default=_env("TOKEN_ISSUER"), help="default: from the API server's OIDC discovery"
    )
    parser.add_argument("--authority-secret", default=_env("AUTHORITY_SECRET", "kubespiffe-authority"))
    parser.add_argument(
        "--ca-key-type",
        choices=[k.value for k in KeyType],
        default=_env("CA_KEY_TYPE", KeyType.EC_P256.value),
    )
    parser.add_argument("--ca-ttl", default=_env("CA_TTL", "8760h"))
    parser.add_argument("--x509-svid-ttl", default=_env("X509_SVID_TTL", "1h"), help="default X.509-SVID TTL")
    parser.add_argument("--jwt-svid-ttl", default=_env("JWT_SVID_TTL", "5m"), help="default JWT-SVID TTL")
    parser.add_argument(
        "--jwt-key-type",
        choices=[k.value for k in KeyType],
        default=_env("JWT_KEY_TYPE", KeyType.EC_P256.value),
        help="ec-p256 signs ES256; rsa-2048 signs RS256 (for clouds that accept only RSA)",
    )
    parser.add_argument(
        "--jwt-issuer", default=_env("JWT_ISSUER"), help="`iss` claim of JWT-SVIDs (optional)"
    )
    parser.add_argument("--service-name", default=_env("SERVICE_NAME", "kubespiffed"))
    parser.add_argument(
        "--bundle-endpoint-port",
        type=int,
        default=_env("BUNDLE_ENDPOINT_PORT", "8445"),
        help="SPIFFE bundle endpoint (HTTPS); 0 turns it off",
    )
    parser.add_argument(
        "--bundle-refresh-hint",
        default=_env("BUNDLE_REFRESH_HINT", "5m"),
        help="spiffe_refresh_hint published",
    )
    parser.add_argument(
        "--bundle-endpoint-web-secret",
        default=_env("BUNDLE_ENDPOINT_WEB_SECRET"),
        help="serve the https_web profile with this kubernetes.io/tls Secret (tls.crt, tls.key) in the "
        "namespace; default: the https_spiffe profile with kubespiffed's own SVID",
    )
    parser.add_argument(
        "--federation-min-refresh",
        default=_env("FEDERATION_MIN_REFRESH", "30s"),
        help="poll federated bundle endpoints no more often than this, whatever their refresh hint",
    )
    parser.add_argument(
        "--federation-max-refresh",
        default=_env("FEDERATION_MAX_REFRESH", "1h"),
        help="and at least this often",
    )
    parser.add_argument(
        "--bundle-configmap",
        default=_env("BUNDLE_CONFIGMAP", "kubespiffe-bundle"),
        help="publish the trust bundle as this ConfigMap in every namespace ('' turns it off)",
    )
    args = parser.parse_args(argv)
    try:
        return ServerConfig(
            trust_domain=TrustDomain.parse(args.trust_domain),
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            listen_host=args.listen_host,
            port=args.port,
            health_port=args.health_port,
            audience=args.audience,
            token_issuer=args.token_issuer,
            authority_secret=args.authority_secret,
            ca_key_type=KeyType(args.ca_key_type),
            ca_ttl=_bounded("--ca-ttl", args.ca_ttl, dt.timedelta(hours=1), dt.timedelta(days=3650)),
            x509_svid_ttl=_bounded(
                "--x509-svid-ttl", args.x509_svid_ttl, dt.timedelta(minutes=1), dt.timedelta(days=30)
            ),
            jwt_svid_ttl=_bounded(
                "--jwt-svid-ttl", args.jwt_svid_ttl, dt.timedelta(seconds=30), dt.timedelta(hours=24)
            ),
            jwt_key_type=KeyType(args.jwt_key_type),
            jwt_issuer=args.jwt_issuer,
            service_name=args.service_name,
            bundle_endpoint_port=args.bundle_endpoint_port,
            bundle_refresh_hint=_bounded(
                "--bundle-refresh-hint",
                args.bundle_refresh_hint,
                dt.timedelta(seconds=1),
                dt.timedelta(days=1),
            ),
            bundle_endpoint_web_secret=args.bundle_endpoint_web_secret,
            bundle_configmap=args.bundle_configmap,
            federation_min_refresh=_bounded(
                "--federation-min-refresh",
                args.federation_min_refresh,
                dt.timedelta(seconds=1),
                dt.timedelta(hours=1),
            ),
            federation_max_refresh=_bounded(
                "--federation-max-refresh",
                args.federation_max_refresh,
                dt.timedelta(seconds=1),
                dt.timedelta(days=1),
            ),
        )
    except ValueError as exc:
        parser.error(str(exc))


def _bounded(flag: str, text: str, lowest: dt.timedelta, highest: dt.timedelta) -> dt.timedelta:
    value = parse_duration(text)
    if not lowest <= value <= highest:
        raise ValueError(f"{flag} must be between {format_duration(lowest)} and {format_duration(highest)}")
    return value


def _service_account_namespace() -> str | None:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None
