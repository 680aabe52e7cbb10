"""OIDC discovery: our JWT-SVID keys for relying parties outside SPIFFE (AWS, GCP, Azure, any OIDC library).

    issuer = OidcIssuer.parse("https://oidc.example.com")   # OidcIssuerError unless a usable https URL
    issuer.discovery_path, issuer.jwks_path                  # where the two documents are served
    discovery_document(issuer, own_bundle)                   # /.well-known/openid-configuration
    jwks_document(own_bundle)                                # the JWKS it points to

Both documents are derived from the own bundle of the bundle set, the one the bundle endpoint and the
Workload API publish, so a key is in the JWKS exactly while it is in the bundle: from the moment it is
prepared (published `publish_ahead` before it signs anything), through its active time, until it is
dropped as retired (no JWT-SVID it signed can still be valid). Federated bundles are never published
here: the issuer vouches only for its own trust domain.

What relying parties need, and why each member is there:

* `issuer` is the configured URL byte for byte; kubespiffed puts the same string in every JWT-SVID's `iss`
  (verifiers compare the two exactly).
* `jwks_uri` is `<issuer without a trailing '/'>/keys` (the path SPIRE's discovery provider uses, so a
  migration keeps its URLs).
* `id_token_signing_alg_values_supported` lists the algorithms of the keys published now (ES256 for P-256,
  ES384 for P-384, RS256 for RSA); go-oidc restricts verification to this list.
* Each JWK carries `kid`, `use: sig` and `alg`. RFC 7517 makes `use` and `alg` optional, but some
  verifiers drop keys without them (Keycloak and Kafka's OAuth plugin asked SPIRE for `use`, others for
  `alg`) and none is known to refuse them. The SPIFFE `jwt-svid` use of the bundle endpoint would make
  OIDC libraries discard every key, which is why this is a document of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.bundle import Bundle, jwks_json

CONTENT_TYPE = "application/json"
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
JWKS_SUFFIX = "/keys"
# AWS IAM refuses provider URLs longer than this; GCP and Azure allow more, but one issuer serves all three.
MAX_ISSUER_LENGTH = 255
_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class OidcIssuerError(InvalidInput):
    """An issuer URL relying parties could not use; the message names the rule."""


@dataclass(frozen=True)
class OidcIssuer:
    """A public issuer URL: https, a host, an optional port and path, nothing else."""

    url: str

    @classmethod
    def parse(cls, url: str) -> OidcIssuer:
        """Refused: anything but https, no host, userinfo, a query or fragment (OIDC Discovery 1.0, 4.1,
        and AWS's rule for provider URLs), whitespace or non-ASCII characters (compared byte for byte, so
        a stray space would make every token fail), and URLs longer than MAX_ISSUER_LENGTH."""
        if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
            raise OidcIssuerError("the issuer URL must be printable ASCII without whitespace")
        if len(url) > MAX_ISSUER_LENGTH:
            raise OidcIssuerError(f"the issuer URL is longer than {MAX_ISSUER_LENGTH} characters")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
        except ValueError as exc:
            raise OidcIssuerError(f"the issuer URL is malformed: {exc}") from None
        if parts.scheme != "https":
            raise OidcIssuerError("the issuer URL must start with https://")
        if not parts.hostname:
            raise OidcIssuerError("the issuer URL has no host")
        if "@" in parts.netloc:
            raise OidcIssuerError("the issuer URL must not contain userinfo")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise OidcIssuerError("the issuer URL must not have a query or fragment")
        return cls(url)

    @property
    def _base(self) -> str:
        return self.url.rstrip("/")

    @property
    def _path(self) -> str:
        return urlsplit(self.url).path.rstrip("/")

    @property
    def discovery_path(self) -> str:
        """Where verifiers look: the issuer's path + /.well-known/openid-configuration (OIDC Discovery 4)."""
        return self._path + DISCOVERY_SUFFIX

    @property
    def jwks_path(self) -> str:
        return self._path + JWKS_SUFFIX

    @property
    def jwks_uri(self) -> str:
        return self._base + JWKS_SUFFIX


def signing_algorithm(key: PublicKeyTypes) -> str:
    """The JOSE algorithm kubespiffe signs JWT-SVIDs with for this key (spiffe.jwtsvid.algorithm_for)."""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_ALGORITHMS:
        return _CURVE_ALGORITHMS[key.curve.name]
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    raise OidcIssuerError(f"no JOSE algorithm for a {type(key).__name__} JWT authority")


def _compact(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def jwks_document(bundle: Bundle) -> bytes:
    """Every JWT authority of `bundle` (prepared, active, retired) with kid, `use: sig` and `alg`."""
    keys = json.loads(jwks_json(bundle.jwt_authorities))["keys"]
    for jwk in keys:
        jwk["use"] = "sig"
        jwk["alg"] = signing_algorithm(bundle.jwt_authorities[jwk["kid"]])
    return _compact({"keys": keys})


def discovery_document(issuer: OidcIssuer, bundle: Bundle) -> bytes:
    """The OpenID Provider Metadata a verifier needs to check an ID token: issuer, JWKS and algorithms."""
    algorithms = sorted({signing_algorithm(key) for key in bundle.jwt_authorities.values()})
    return _compact(
        {
            "issuer": issuer.url,
            "jwks_uri": issuer.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algorithms,
            "claims_supported": ["sub", "aud", "exp", "iat", "iss"],
        }
    )
