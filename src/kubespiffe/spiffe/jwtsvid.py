"""JWT-SVID rules (JWT-SVID.md, checklist section C): what a valid JWT-SVID is, for minting and validating.

Validation checks the algorithm first (only the asymmetric JOSE algorithms the spec lists), requires a
`kid`, allows only `typ` JWT/JOSE, then verifies the signature with the key of that kid in the JWT bundle of
the trust domain named by `sub` (never another trust domain's), then exp and aud.

PyJWT is imported by `mint` and `validate` when first called, not with this module: the in-pod agent
imports this module at start but validates JWT-SVIDs only when a workload asks, and PyJWT (with the
urllib, http and email modules it loads) costs each agent about 5 MB.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
MAX_TOKEN_BYTES = 64 * 1024


class JwtSvidError(InvalidInput):
    """Not a valid JWT-SVID for this audience; the message names the rule."""


@dataclass(frozen=True)
class ValidatedJwtSvid:
    spiffe_id: SpiffeId
    claims: Mapping[str, Any]


def algorithm_for(key: PrivateKeyTypes) -> str:
    """ES256/ES384 for P-256/P-384 keys, RS256 for RSA keys (some cloud providers accept only RS256)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    raise JwtSvidError(f"unsupported JWT signing key type {type(key).__name__}")


def mint(
    key: PrivateKeyTypes,
    kid: str,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    ttl: dt.timedelta,
    now: dt.datetime,
    issuer: str | None = None,
) -> str:
    """A JWT-SVID: header exactly {alg, kid, typ}; claims sub, aud, exp, iat (and iss when configured)."""
    if not audience or any(not a for a in audience):
        raise JwtSvidError("a JWT-SVID needs at least one non-empty audience")
    if not spiffe_id.path:
        raise JwtSvidError("a JWT-SVID subject must be a workload ID, not a trust domain ID")
    claims: dict[str, Any] = {
        "sub": str(spiffe_id),
        "aud": audience[0] if len(audience) == 1 else list(audience),
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    if issuer:
        claims["iss"] = issuer
    import jwt

    return jwt.encode(claims, key, algorithm=algorithm_for(key), headers={"kid": kid, "typ": "JWT"})  # type: ignore[arg-type]


def _segment_json(token: str, index: int) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtSvidError("a JWT-SVID must be a JWS in compact serialization (three dot-separated parts)")
    try:
        segment = parts[index]
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise JwtSvidError("token is not well-formed base64url JSON") from None
    if not isinstance(value, dict):
        raise JwtSvidError("token header and claims must be JSON objects")
    return value


def validate(
    token: str,
    audience: str,
    bundles: Mapping[TrustDomain, Mapping[str, PublicKeyTypes]],
    now: dt.datetime,
) -> ValidatedJwtSvid:
    if not token:
        raise JwtSvidError("token is empty")
    if not audience:
        raise JwtSvidError("audience is empty")
    if len(token) > MAX_TOKEN_BYTES:
        raise JwtSvidError(f"token is larger than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():  # base64url and dots; PyJWT would fail to encode a lone surrogate
        raise JwtSvidError("token is not ASCII (a JWS compact serialization never is)")
    header = _segment_json(token, 0)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:  # a list is not even hashable
        raise JwtSvidError(f"algorithm {alg!r} is not allowed for JWT-SVIDs")
    extra = set(header) - ALLOWED_HEADER
    if extra:
        raise JwtSvidError(f"header has fields other than alg, kid, typ: {sorted(extra)}")
    if header.get("typ") not in (None, "JWT", "JOSE"):
        raise JwtSvidError(f"typ {header.get('typ')!r} is not JWT or JOSE")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtSvidError("header has no key id (kid)")
    unverified = _segment_json(token, 1)
    try:
        subject = SpiffeId.parse(str(unverified.get("sub", "")))
    except SpiffeIdError as exc:
        raise JwtSvidError(f"sub is not a SPIFFE ID: {exc}") from None
    keys = bundles.get(subject.trust_domain)
    if keys is None:
        raise JwtSvidError(f"no JWT bundle for trust domain {subject.trust_domain}")
    key = keys.get(kid)
    if key is None:
        raise JwtSvidError(f"key id {kid!r} is not in the JWT bundle of {subject.trust_domain}")
    # PyJWT raises TypeError for a key of the other type; ES* needs an EC key, RS*/PS* an RSA key.
    if not isinstance(key, ec.EllipticCurvePublicKey if alg.startswith("ES") else rsa.RSAPublicKey):
        raise JwtSvidError(f"algorithm {alg} does not fit the {type(key).__name__} of key id {kid!r}")
    import jwt

    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            audience=audience,
            options={"require": ["sub", "aud", "exp"], "verify_iat": False},
            leeway=dt.timedelta(seconds=0),
        )
    except jwt.ExpiredSignatureError:
        raise JwtSvidError("token has expired") from None
    except jwt.InvalidAudienceError:
        raise JwtSvidError(f"audience {audience!r} is not in the token's aud") from None
    except jwt.InvalidSignatureError:
        raise JwtSvidError("signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise JwtSvidError(f"token has no {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        raise JwtSvidError(f"token is invalid: {exc}") from None
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):  # PyJWT also takes "123" (int() works)
        raise JwtSvidError("exp is not a number (RFC 7519 NumericDate)")
    if exp <= now.timestamp():
        raise JwtSvidError("token has expired")
    return ValidatedJwtSvid(subject, claims)
