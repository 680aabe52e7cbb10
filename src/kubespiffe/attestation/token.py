"""Verify pod-bound ServiceAccount tokens (projected tokens) and extract who they speak for.

Verification is local: signature against the cluster's OIDC JWKS (cached, refetched when a token names an
unknown `kid`), then issuer, audience, expiry, not-before and an algorithm allow-list. When local
verification cannot decide (the JWKS cannot be fetched, or the `kid` is still unknown after a refetch) the
API server's TokenReview decides instead. Every refusal is a TokenRejected with one sentence for the log;
the token itself never appears in a message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from kubespiffe.errors import KubespiffeError

log = logging.getLogger(__name__)

# Asymmetric algorithms only: a ServiceAccount token is never HMAC-signed and never unsigned.
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
MAX_TOKEN_BYTES = 6 * 1024  # projected tokens are 1-2 KiB; gRPC itself refuses metadata past 8 KiB
_JWKS_MIN_REFRESH_SECONDS = 10.0
_CACHE_SIZE = 10_000


class TokenRejected(KubespiffeError):
    """The token does not prove a pod identity; str(exc) is a sentence safe to log and return."""


@dataclass(frozen=True)
class PodClaims:
    """What a verified pod-bound token says about its bearer."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str | None
    expires_at: dt.datetime


JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]
TokenReviewer = Callable[[str, str], Awaitable[Mapping[str, Any]]]


class JwksCache:
    """The API server's signing keys, refetched at most every few seconds when an unknown kid shows up."""

    def __init__(self, fetch: JwksFetcher) -> None:
        self._fetch = fetch
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -_JWKS_MIN_REFRESH_SECONDS
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at >= _JWKS_MIN_REFRESH_SECONDS:
                await self.refresh()
        return self._keys.get(kid)

    async def refresh(self) -> None:
        self._fetched_at = time.monotonic()
        document = await self._fetch()
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []):
            try:
                key = jwt.PyJWK.from_dict(dict(entry))
            except jwt.PyJWTError as exc:
                log.warning("ignoring unusable key in the cluster JWKS: %s", exc)
                continue
            if key.key_id:
                keys[key.key_id] = key
        self._keys = keys
        log.info("cluster JWKS loaded: %d key(s)", len(keys))


class TokenVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: JwksCache,
        review: TokenReviewer | None = None,
        algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
        leeway: dt.timedelta = dt.timedelta(seconds=5),
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._jwks = jwks
        self._review = review
        self._algorithms = algorithms
        self._leeway = leeway
        self._cache: dict[bytes, PodClaims] = {}

    async def verify(self, token: str) -> PodClaims:
        """Verified claims; a token seen before is answered from a cache keyed by its SHA-256, until exp.

        Agents present the same token for every renewal until the kubelet rotates it, so the signature is
        checked once per token, not once per issuance. The pod binding is still checked every time.
        """
        if not token:
            raise TokenRejected("no token was presented")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected(f"token is larger than {MAX_TOKEN_BYTES} bytes")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None and cached.expires_at.timestamp() > time.time():
            return cached
        claims = await self._verify(token)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[digest] = claims
        return claims

    async def _verify(self, token: str) -> PodClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"token is not a well-formed JWT ({exc})") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise TokenRejected(f"token algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("token header has no key id (kid)")
        try:
            key = await self._jwks.key(kid)
        except Exception as exc:
            log.warning("cluster JWKS unavailable (%s); asking TokenReview", exc)
            return await self._fallback(token, "the cluster JWKS is unavailable")
        if key is None:
            return await self._fallback(token, f"token key id {kid!r} is not in the cluster JWKS")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"token audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"token issuer is not {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("token signature does not verify with the cluster's key") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"token is invalid ({exc})") from None
        return _pod_claims(claims)

    async def _fallback(self, token: str, why: str) -> PodClaims:
        if self._review is None:
            raise TokenRejected(why)
        _precheck_unverified(token, self.issuer, self.audience)
        status = await self._review(token, self.audience)
        if not status.get("authenticated"):
            error = status.get("error") or "not authenticated"
            raise TokenRejected(f"TokenReview refused the token: {error}")
        if self.audience not in status.get("audiences", []):
            raise TokenRejected(f"TokenReview did not confirm audience {self.audience!r}")
        return _claims_from_review(status.get("user", {}), token)


def _precheck_unverified(token: str, issuer: str, audience: str) -> None:
    """Spare the API server tokens that cannot be ours: wrong issuer or audience, or already expired."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenRejected(f"token is not a well-formed JWT ({exc})") from None
    if claims.get("iss") != issuer:
        raise TokenRejected(f"token issuer is not {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud or []
    if audience not in audiences:
        raise TokenRejected(f"token audience is not {audience!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp < time.time():
        raise TokenRejected("token has expired")


def _pod_claims(claims: Mapping[str, Any]) -> PodClaims:
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, Mapping):
        raise TokenRejected("token carries no kubernetes.io claims; it is not a ServiceAccount token")
    pod = k8s.get("pod")
    if not isinstance(pod, Mapping) or not pod.get("name") or not pod.get("uid"):
        raise TokenRejected("token is not bound to a pod; mount a projected ServiceAccount token")
    service_account = k8s.get("serviceaccount") or {}
    node = k8s.get("node") or {}
    namespace, sa_name = k8s.get("namespace"), service_account.get("name")
    if not namespace or not sa_name:
        raise TokenRejected("token does not name its namespace and service account")
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{sa_name}":
        raise TokenRejected("token subject does not match its kubernetes.io claims")
    return PodClaims(
        namespace=str(namespace),
        service_account=str(sa_name),
        pod_name=str(pod["name"]),
        pod_uid=str(pod["uid"]),
        node_name=str(node["name"]) if node.get("name") else None,
        expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
    )


def _claims_from_review(user: Mapping[str, Any], token: str) -> PodClaims:
    """TokenReview's user info: system:serviceaccount:<ns>:<sa> plus the pod in `extra`."""
    username = str(user.get("username", ""))
    parts = username.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        raise TokenRejected("TokenReview says the token is not a ServiceAccount token")
    extra = user.get("extra") or {}

    def one(key: str) -> str | None:
        values = extra.get(f"authentication.kubernetes.io/{key}") or []
        return str(values[0]) if values else None

    pod_name, pod_uid = one("pod-name"), one("pod-uid")
    if not pod_name or not pod_uid:
        raise TokenRejected("token is not bound to a pod; mount a projected ServiceAccount token")
    exp = json.loads(jwt.utils.base64url_decode(token.split(".")[1])).get("exp", 0)
    return PodClaims(
        namespace=parts[2],
        service_account=parts[3],
        pod_name=pod_name,
        pod_uid=pod_uid,
        node_name=one("node-name"),
        expires_at=dt.datetime.fromtimestamp(int(exp), dt.UTC),
    )
