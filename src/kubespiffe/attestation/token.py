"""Verify pod-bound ServiceAccount tokens (projected tokens) and extract who they speak for.

Verification is local: signature against the cluster's OIDC JWKS (cached, refetched at most every
10 s when a token names an unknown `kid`), then issuer, audience (exactly one: ours), expiry, not-before
and an algorithm allow-list. A `kid` still unknown after a refetch is refused here: anyone can forge a
token with the public claims (issuer, audience, expiry) and a made-up `kid`, so such tokens must not cost
the API server anything.

`verify_now` goes as far without I/O, for a call's start: a token without a valid signature is refused
before its caller's request is even read, and it says when only a fetch or a TokenReview can decide.

TokenReview decides only when the JWKS cannot be had at all (the API server does not serve it, or the
fetch failed). Then each distinct token costs at most one TokenReview per `REFUSAL_TTL_SECONDS` (refusals
are remembered, in a bounded cache), and TokenReviews are bounded globally by a token bucket
(`review_rate` per second); a token over the bound is refused, and the agent retries.

Every refusal is a TokenRejected with one sentence for the log; the token itself never appears in a
message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from prometheus_client import Counter

from kubespiffe.errors import KubespiffeError

log = logging.getLogger(__name__)

# Asymmetric algorithms only: a ServiceAccount token is never HMAC-signed and never unsigned.
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
MAX_TOKEN_BYTES = 6 * 1024  # projected tokens are 1-2 KiB; gRPC itself refuses metadata past 8 KiB
_JWKS_MIN_REFRESH_SECONDS = 10.0
_CACHE_SIZE = 10_000
REFUSAL_TTL_SECONDS = 30.0
DEFAULT_REVIEW_RATE = 5.0

TOKEN_REVIEWS = Counter(
    "kubespiffe_token_reviews_total",
    "TokenReview decisions while the cluster JWKS is unavailable, by outcome (rate_limited: not asked)",
    ["outcome"],
)


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
    service_account_uid: str | None = None
    """The ServiceAccount's UID, checked against the live ServiceAccount (a recreated one differs)."""


JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]
TokenReviewer = Callable[[str, str], Awaitable[Mapping[str, Any]]]


class JwksCache:
    """The API server's signing keys, refetched at most every few seconds when an unknown kid shows up."""

    def __init__(self, fetch: JwksFetcher) -> None:
        self._fetch = fetch
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -_JWKS_MIN_REFRESH_SECONDS
        self._failed = False
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key, None if the JWKS has no such kid; raises if the JWKS could not be had (the last fetch
        failed), so the caller can tell "unknown key" (refuse) from "keys unknown" (ask TokenReview)."""
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at >= _JWKS_MIN_REFRESH_SECONDS:
                await self.refresh()
            elif kid not in self._keys and self._failed:
                raise ConnectionError("the last fetch of the cluster JWKS failed")
        return self._keys.get(kid)

    def key_now(self, kid: str) -> jwt.PyJWK | None:
        """The key if the JWKS as last fetched has it (no I/O)."""
        return self._keys.get(kid)

    @property
    def settled(self) -> bool:
        """Whether a kid missing now would still be missing after `key`: the last fetch succeeded and the
        next is not due yet."""
        return not self._failed and not self._due()

    def refresh_soon(self) -> None:
        """Fetch in the background if a fetch is due: a kid seen only at a call's start (a call that never
        sends its request never reaches `key`) is then settled within a fetch's time."""
        if self._due() and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_if_due())

    def _due(self) -> bool:
        return time.monotonic() - self._fetched_at >= _JWKS_MIN_REFRESH_SECONDS

    async def _refresh_if_due(self) -> None:
        async with self._lock:
            if not self._due():
                return
            try:
                await self.refresh()
            except Exception as exc:  # the next due fetch tries again; `key` reports it to callers
                log.warning("cluster JWKS fetch failed: %s", exc)

    async def refresh(self) -> None:
        self._fetched_at = time.monotonic()
        self._failed = True
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
        self._failed = False
        log.info("cluster JWKS loaded: %d key(s)", len(keys))


class _RateBound:
    """A token bucket: `rate` per second on average, bursts of up to `rate` (at least one)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


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
        review_rate: float = DEFAULT_REVIEW_RATE,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._jwks = jwks
        self._review = review
        self._algorithms = algorithms
        self._leeway = leeway
        self._cache: dict[bytes, PodClaims] = {}
        self._refused: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._review_bound = _RateBound(review_rate)

    async def verify(self, token: str) -> PodClaims:
        """Verified claims; a token seen before is answered from a cache keyed by its SHA-256, until exp.

        Agents present the same token for every renewal until the kubelet rotates it, so the signature is
        checked once per token, not once per issuance. The pod binding is still checked every time.
        """
        digest = _digest(token)
        cached = self._cached(digest)
        if cached is not None:
            return cached
        claims = await self._verify(token, digest)
        self._remember(digest, claims)
        return claims

    def verify_now(self, token: str) -> PodClaims | None:
        """`verify` as far as it goes without I/O, for a call's start (server.callbounds).

        The claims of a token verified now or before (cached as `verify` caches them); TokenRejected when
        the token is refused whatever the API server would say; None when only I/O can decide: its kid is
        not in the JWKS as last fetched and a fetch is due (started here), or the JWKS cannot be had and
        TokenReview decides. Tokens without a valid signature thus never wait at all."""
        digest = _digest(token)
        cached = self._cached(digest)
        if cached is not None:
            return cached
        refused = self._refused.get(digest)
        if refused is not None and refused[0] > time.monotonic():
            raise TokenRejected(refused[1])
        alg, kid = self._header(token)
        key = self._jwks.key_now(kid)
        if key is None:
            if self._jwks.settled:
                raise TokenRejected(f"token key id {kid!r} is not in the cluster JWKS")
            self._jwks.refresh_soon()
            _precheck_unverified(token, self.issuer, self.audience)
            return None
        claims = self._decode(token, key, alg)
        self._remember(digest, claims)
        return claims

    def _remember(self, digest: bytes, claims: PodClaims) -> None:
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[digest] = claims

    def _cached(self, digest: bytes) -> PodClaims | None:
        cached = self._cache.get(digest)
        if cached is not None and cached.expires_at.timestamp() > time.time():
            return cached
        return None

    async def _verify(self, token: str, digest: bytes) -> PodClaims:
        alg, kid = self._header(token)
        try:
            key = await self._jwks.key(kid)
        except Exception as exc:
            log.warning("cluster JWKS unavailable (%s); asking TokenReview", exc)
            return await self._fallback(token, digest)
        if key is None:
            raise TokenRejected(f"token key id {kid!r} is not in the cluster JWKS")
        return self._decode(token, key, alg)

    def _header(self, token: str) -> tuple[str, str]:
        """The token's algorithm (an allowed one) and key id."""
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
        return str(alg), kid

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> PodClaims:
        """Signature and claims, checked with the cluster's key."""
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
        _check_audience(claims.get("aud"), self.audience)
        return _pod_claims(claims)

    async def _fallback(self, token: str, digest: bytes) -> PodClaims:
        """TokenReview, for when the JWKS cannot be had: once per token per REFUSAL_TTL, rate-bounded."""
        if self._review is None:
            raise TokenRejected("the cluster JWKS is unavailable")
        _precheck_unverified(token, self.issuer, self.audience)
        refused = self._refused.get(digest)
        if refused is not None and refused[0] > time.monotonic():
            TOKEN_REVIEWS.labels("cached_refusal").inc()
            raise TokenRejected(refused[1])
        if not self._review_bound.take():
            TOKEN_REVIEWS.labels("rate_limited").inc()
            raise TokenRejected("the cluster JWKS is unavailable and TokenReview is busy; retry later")
        try:
            status = await self._review(token, self.audience)
            if not status.get("authenticated"):
                error = status.get("error") or "not authenticated"
                raise TokenRejected(f"TokenReview refused the token: {error}")
            if self.audience not in status.get("audiences", []):
                raise TokenRejected(f"TokenReview did not confirm audience {self.audience!r}")
            claims = _claims_from_review(status.get("user", {}), token)
        except TokenRejected as exc:
            TOKEN_REVIEWS.labels("refused").inc()
            self._remember_refusal(digest, str(exc))
            raise
        TOKEN_REVIEWS.labels("authenticated").inc()
        return claims

    def _remember_refusal(self, digest: bytes, message: str) -> None:
        self._refused.pop(digest, None)
        while len(self._refused) >= _CACHE_SIZE:
            self._refused.popitem(last=False)
        self._refused[digest] = (time.monotonic() + REFUSAL_TTL_SECONDS, message)


def _digest(token: str) -> bytes:
    """The token's cache key, once it is shaped like a token at all."""
    if not token:
        raise TokenRejected("no token was presented")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected(f"token is larger than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():
        raise TokenRejected("token is not ASCII (a JWS compact serialization never is)")
    return hashlib.sha256(token.encode()).digest()


def _check_audience(aud: object, audience: str) -> None:
    """Exactly our audience: a token valid for others too (say, the API server) is a credential
    kubespiffed must not hold."""
    if aud != audience and aud != [audience]:
        raise TokenRejected(f"token audience is not exactly {audience!r}")


def _precheck_unverified(token: str, issuer: str, audience: str) -> None:
    """Spare the API server tokens that cannot be ours: wrong issuer or audience, or already expired."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenRejected(f"token is not a well-formed JWT ({exc})") from None
    if claims.get("iss") != issuer:
        raise TokenRejected(f"token issuer is not {issuer!r}")
    _check_audience(claims.get("aud"), audience)
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp < time.time():
        raise TokenRejected("token has expired")


def _expires_at(exp: Any) -> dt.datetime:
    """`exp` as a datetime; one the API server would never sign (past year 9999) is refused, not raised."""
    try:
        return dt.datetime.fromtimestamp(int(exp), dt.UTC)
    except (ValueError, TypeError, OverflowError, OSError):
        raise TokenRejected("token expiry is not a usable time") from None


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
    sa_uid = service_account.get("uid")
    if not sa_uid:
        raise TokenRejected("token does not name its service account's UID")
    return PodClaims(
        namespace=str(namespace),
        service_account=str(sa_name),
        pod_name=str(pod["name"]),
        pod_uid=str(pod["uid"]),
        node_name=str(node["name"]) if node.get("name") else None,
        expires_at=_expires_at(claims["exp"]),
        service_account_uid=str(sa_uid),
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
        expires_at=_expires_at(exp),
        service_account_uid=str(user["uid"]) if user.get("uid") else None,
    )
