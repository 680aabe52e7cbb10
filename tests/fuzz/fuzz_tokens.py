"""Fuzz targets for the token paths: pod tokens (attestation.token) and JWT-SVIDs (spiffe.jwtsvid).

Three ways into TokenVerifier.verify, each against an in-memory JWKS with one fixed key, no API server,
each also through `verify_now` (a call's start), which must refuse only what `verify` refuses:

- `token`: the input is the token. Forged tokens stop at the header, kid and signature checks.
- `token_signed`: the input is the claims segment, signed here with the JWKS key, so the claim checks
  after the signature (what a token the API server signed could carry) are reached too.
- `token_review`: the JWKS cannot be fetched, so the unverified prechecks and the TokenReview fallback
  run; the in-memory TokenReview authenticates every token it is asked about, as a stand-in for a real
  one, so the claims that are read from the token's unverified payload get exercised.

`jwtsvid` and `jwtsvid_signed` do the same for JWT-SVID validation (the agent's ValidateJWTSVID).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import jwt

from kubespiffe.attestation.token import JwksCache, PodClaims, TokenRejected, TokenVerifier
from kubespiffe.spiffe.jwtsvid import JwtSvidError, validate
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from tests.fuzz.common import Target, fixed_ec_key

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "kubespiffe"
KID = "k1"
KEY = fixed_ec_key(0x6B75626573706966666531)
_JWK = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())), "kid": KID, "use": "sig"}
_LOOP = asyncio.new_event_loop()
logging.getLogger("kubespiffe.attestation.token").setLevel(logging.ERROR)  # one warning per input otherwise
_REVIEWED_USER = {
    "username": "system:serviceaccount:team:web",
    "uid": "sa-uid",
    "extra": {
        "authentication.kubernetes.io/pod-name": ["web-1"],
        "authentication.kubernetes.io/pod-uid": ["pod-uid"],
        "authentication.kubernetes.io/node-name": ["node-a"],
    },
}


async def _jwks() -> Mapping[str, Any]:
    return {"keys": [_JWK]}


async def _no_jwks() -> Mapping[str, Any]:
    raise ConnectionError("the API server does not serve its JWKS (fuzz stand-in)")


async def _review(token: str, audience: str) -> Mapping[str, Any]:
    return {"authenticated": True, "audiences": [audience], "user": _REVIEWED_USER}


def sign(payload: bytes, kid: str = KID) -> str:
    """The payload bytes as a compact JWS signed by KEY (PyJWS signs bytes as they are)."""
    return jwt.api_jws.encode(payload, KEY, algorithm="ES256", headers={"kid": kid})


def _check_refusal(token: str, message: str) -> None:
    """Refusals are logged and returned: they must not carry the token (a short one may occur by chance)."""
    assert token not in message or len(token) < 8, "a refusal message must not carry the token"


def _verifier(jwks_up: bool) -> TokenVerifier:
    jwks = JwksCache(_jwks if jwks_up else _no_jwks)
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=jwks, review=_review)


async def _at_the_start(token: str, jwks_up: bool) -> PodClaims | TokenRejected | None:
    """`verify_now` as a call's start sees it: the JWKS fetched before (when it can be)."""
    verifier = _verifier(jwks_up)
    if jwks_up:
        with contextlib.suppress(TokenRejected):
            await verifier.verify(sign(b'{"warm":1}'))  # refused, but the JWKS is fetched
    try:
        return verifier.verify_now(token)
    except TokenRejected as exc:
        _check_refusal(token, str(exc))
        return exc


def _verify(token: str, *, jwks_up: bool) -> PodClaims | None:
    early = _LOOP.run_until_complete(_at_the_start(token, jwks_up))
    try:
        claims = _LOOP.run_until_complete(_verifier(jwks_up).verify(token))
    except TokenRejected as exc:
        _check_refusal(token, str(exc))
        assert not isinstance(early, PodClaims), "accepted at a call's start, refused by verify"
        return None
    # A call's start refuses only what `verify` refuses, and agrees with it on what it accepts.
    assert not isinstance(early, TokenRejected), f"refused at the start only: {early}"
    assert early is None or early == claims
    assert all(isinstance(v, str) and v for v in (claims.namespace, claims.service_account))
    assert all(isinstance(v, str) and v for v in (claims.pod_name, claims.pod_uid))
    assert claims.expires_at.tzinfo is not None
    assert claims.expires_at.timestamp() > time.time() - 60  # leeway is 5 s
    return claims


def token(data: bytes) -> None:
    _verify(data.decode("utf-8", "surrogateescape"), jwks_up=True)


def token_signed(data: bytes) -> None:
    claims = _verify(sign(data), jwks_up=True)
    if claims is not None:
        document = json.loads(data)
        assert document["iss"] == ISSUER and document["aud"] in (AUDIENCE, [AUDIENCE])
        assert document["sub"] == f"system:serviceaccount:{claims.namespace}:{claims.service_account}"


def token_review(data: bytes) -> None:
    claims = _verify(data.decode("utf-8", "surrogateescape"), jwks_up=False)
    if claims is not None:
        assert (claims.namespace, claims.service_account, claims.pod_uid) == ("team", "web", "pod-uid")


JWT_TRUST_DOMAIN = TrustDomain("example.org")
JWT_AUDIENCE = "spiffe://example.org/audience"
_BUNDLES = {JWT_TRUST_DOMAIN: {KID: KEY.public_key()}}


def _validate(token: str) -> None:
    try:
        svid = validate(token, JWT_AUDIENCE, _BUNDLES, dt.datetime.now(dt.UTC))
    except JwtSvidError:
        return
    assert svid.spiffe_id.trust_domain == JWT_TRUST_DOMAIN
    assert SpiffeId.parse(svid.claims["sub"]) == svid.spiffe_id  # the trust domain comes out lower-cased
    aud = svid.claims["aud"]
    assert aud == JWT_AUDIENCE if isinstance(aud, str) else JWT_AUDIENCE in aud


def jwtsvid(data: bytes) -> None:
    _validate(data.decode("utf-8", "surrogateescape"))


def jwtsvid_signed(data: bytes) -> None:
    _validate(sign(data))


_CLAIM_WORDS = (
    b'"iss"',
    b'"aud"',
    b'"sub"',
    b'"exp"',
    b'"iat"',
    b'"nbf"',
    b'"kubernetes.io"',
    b'"namespace"',
    b'"serviceaccount"',
    b'"pod"',
    b'"node"',
    b'"name"',
    b'"uid"',
    b"1e999",
    b"4102444800",
    b'"system:serviceaccount:team:web"',
    f'"{ISSUER}"'.encode(),
    f'"{AUDIENCE}"'.encode(),
)
_JWT_WORDS = (b".", b"eyJ", b"ES256", b"none", b"HS256", b"kid")

TARGETS = (
    Target("token", token, max_len=2048, dictionary=_JWT_WORDS),
    Target("token_signed", token_signed, max_len=2048, dictionary=_CLAIM_WORDS),
    Target("token_review", token_review, max_len=2048, dictionary=_JWT_WORDS),
    Target("jwtsvid", jwtsvid, max_len=2048, dictionary=_JWT_WORDS),
    Target(
        "jwtsvid_signed",
        jwtsvid_signed,
        max_len=2048,
        dictionary=(*_CLAIM_WORDS, f'"{JWT_AUDIENCE}"'.encode(), b'"spiffe://example.org/w"'),
    ),
)
