"""Token verification logic with an in-test JWKS (the real API server's JWKS is exercised in integration)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kubespiffe.attestation.token import JwksCache, PodClaims, TokenRejected, TokenVerifier

ISSUER = "https://kubernetes.default.svc.cluster.local"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    )
    doc: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**doc, "kid": kid, "use": "sig"}


class Jwks:
    """Counts fetches, so the refetch-on-unknown-kid behaviour is observable."""

    def __init__(self, *keys: tuple[Any, str]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.fail = False

    async def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.fail:
            raise ConnectionError("api server down")
        return {"keys": [_jwk(k, kid) for k, kid in self.keys]}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": ["kubespiffe"],
        "sub": "system:serviceaccount:team:web",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io": {
            "namespace": "team",
            "serviceaccount": {"name": "web", "uid": "sa-uid"},
            "pod": {"name": "web-1", "uid": "pod-uid"},
            "node": {"name": "node-a", "uid": "node-uid"},
        },
    }
    return {**base, **changes}


def sign(payload: Mapping[str, Any], key: Any = KEY, kid: str = "k1", alg: str = "RS256") -> str:
    return jwt.encode(dict(payload), key, algorithm=alg, headers={"kid": kid})


def verifier(jwks: Jwks, review: Any = None) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience="kubespiffe", jwks=JwksCache(jwks), review=review)


async def test_valid_token_gives_pod_claims() -> None:
    result = await verifier(Jwks((KEY, "k1"))).verify(sign(claims()))
    assert result == PodClaims(
        namespace="team",
        service_account="web",
        pod_name="web-1",
        pod_uid="pod-uid",
        node_name="node-a",
        expires_at=result.expires_at,
        service_account_uid="sa-uid",
    )
    assert result.expires_at > dt.datetime.now(dt.UTC)


async def test_es256_token_is_accepted() -> None:
    assert (
        await verifier(Jwks((EC_KEY, "e1"))).verify(sign(claims(), EC_KEY, "e1", "ES256"))
    ).pod_uid == "pod-uid"


# Claims are built when the test runs, not at collection: a long suite would otherwise run these with
# tokens that expired in the meantime (and every case would fail as "expired").
@pytest.mark.parametrize(
    ("make_claims", "message"),
    [
        (lambda: claims(exp=int(time.time()) - 60), "expired"),
        (lambda: claims(nbf=int(time.time()) + 600, iat=int(time.time()) + 600), "not valid yet"),
        (lambda: claims(aud=["other"]), "audience"),
        (lambda: claims(aud="other"), "audience"),
        (lambda: claims(aud=["kubespiffe", "https://kubernetes.default.svc"]), "not exactly 'kubespiffe'"),
        (lambda: claims(aud=["other", "kubespiffe"]), "not exactly 'kubespiffe'"),
        (
            lambda: claims(
                **{"kubernetes.io": {**claims()["kubernetes.io"], "serviceaccount": {"name": "web"}}}
            ),
            "UID",
        ),
        (lambda: claims(iss="https://evil"), "issuer"),
        (lambda: {k: v for k, v in claims().items() if k != "exp"}, "exp"),
        (lambda: claims(**{"kubernetes.io": None}), "no kubernetes.io claims"),
        (
            lambda: claims(**{"kubernetes.io": {**claims()["kubernetes.io"], "pod": None}}),
            "not bound to a pod",
        ),
        (lambda: claims(sub="system:serviceaccount:other:web"), "subject does not match"),
    ],
)
async def test_claims_are_checked(make_claims: Callable[[], dict[str, Any]], message: str) -> None:
    with pytest.raises(TokenRejected, match=message):
        await verifier(Jwks((KEY, "k1"))).verify(sign(make_claims()))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: jwt.encode(claims(), cast(Any, None), algorithm="none", headers={"kid": "k1"}),
            "'none' is not allowed",
        ),
        (lambda: jwt.encode(claims(), "secret" * 8, algorithm="HS256", headers={"kid": "k1"}), "'HS256'"),
        (lambda: jwt.encode(claims(), KEY, algorithm="RS256"), "no key id"),
        (lambda: sign(claims())[:-30], "signature does not verify"),
        (lambda: sign(claims()).rsplit(".", 1)[0], "not a well-formed JWT"),
        (lambda: "a" * 7000, "larger than"),
        (lambda: "", "no token"),
        (lambda: sign(claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048)), "signature"),
    ],
)
async def test_malformed_and_forged_tokens(make: Any, message: str) -> None:
    with pytest.raises(TokenRejected, match=message):
        await verifier(Jwks((KEY, "k1"))).verify(make())


async def test_unknown_kid_refetches_the_jwks_and_uses_the_new_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kubespiffe.attestation.token._JWKS_MIN_REFRESH_SECONDS", 0.0)
    jwks = Jwks((KEY, "k1"))
    v = verifier(jwks)
    await v.verify(sign(claims()))
    await v.verify(sign(claims()))
    assert jwks.fetches == 1
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys.append((rotated, "k2"))
    assert (await v.verify(sign(claims(), rotated, "k2"))).pod_name == "web-1"
    assert jwks.fetches == 2


async def test_unknown_kid_is_refused_without_token_review() -> None:
    """Issuer, audience and expiry are public: a forged token with a made-up kid must cost no API call."""
    jwks = Jwks((KEY, "k1"))
    reviews: list[str] = []

    async def review(token: str, audience: str) -> Mapping[str, Any]:
        reviews.append(audience)
        return {"authenticated": False, "error": "invalid signature"}

    v = verifier(jwks, review)
    for i in range(50):
        with pytest.raises(TokenRejected, match="not in the cluster JWKS"):
            await v.verify(sign(claims(jti=str(i)), kid=f"unknown-{i}"))
    assert jwks.fetches == 1, "the JWKS is refetched at most every 10 s"
    assert reviews == []


def _refusing_review(reviews: list[str]) -> Any:
    async def review(token: str, audience: str) -> Mapping[str, Any]:
        reviews.append(token)
        return {"authenticated": False, "error": "invalid signature"}

    return review


async def test_token_review_refusals_are_remembered() -> None:
    jwks = Jwks((KEY, "k1"))
    jwks.fail = True
    reviews: list[str] = []
    v = verifier(jwks, _refusing_review(reviews))
    token = sign(claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for _ in range(100):
        with pytest.raises(TokenRejected, match="TokenReview refused"):
            await v.verify(token)
    assert len(reviews) == 1


async def test_token_reviews_are_rate_bounded_globally() -> None:
    jwks = Jwks((KEY, "k1"))
    jwks.fail = True
    reviews: list[str] = []
    v = TokenVerifier(
        issuer=ISSUER,
        audience="kubespiffe",
        jwks=JwksCache(jwks),
        review=_refusing_review(reviews),
        review_rate=3,
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refusals = []
    for i in range(100):
        with pytest.raises(TokenRejected) as caught:
            await v.verify(sign(claims(jti=str(i)), other))
        refusals.append(str(caught.value))
    assert len(reviews) <= 4, "a burst of `rate`, plus what refills while the loop runs"
    assert sum("busy" in r for r in refusals) >= 90


async def test_token_review_decides_when_jwks_is_unavailable() -> None:
    jwks = Jwks((KEY, "k1"))
    jwks.fail = True

    async def review(token: str, audience: str) -> Mapping[str, Any]:
        return {
            "authenticated": True,
            "audiences": [audience],
            "user": {
                "username": "system:serviceaccount:team:web",
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["web-1"],
                    "authentication.kubernetes.io/pod-uid": ["pod-uid"],
                },
            },
        }

    result = await verifier(jwks, review).verify(sign(claims()))
    assert (result.namespace, result.service_account, result.pod_uid, result.node_name) == (
        "team",
        "web",
        "pod-uid",
        None,
    )


async def test_token_review_is_not_asked_about_tokens_that_cannot_be_ours() -> None:
    jwks = Jwks((KEY, "k1"))
    jwks.fail = True

    async def review(token: str, audience: str) -> Mapping[str, Any]:
        raise AssertionError("TokenReview must not be called")

    for bad, message in (
        (claims(iss="https://evil"), "issuer"),
        (claims(aud=["x"]), "audience"),
        (claims(exp=int(time.time()) - 5), "expired"),
    ):
        with pytest.raises(TokenRejected, match=message):
            await verifier(jwks, review).verify(sign(bad))


async def test_token_review_without_pod_binding_is_refused() -> None:
    jwks = Jwks()
    jwks.fail = True

    async def review(token: str, audience: str) -> Mapping[str, Any]:
        return {
            "authenticated": True,
            "audiences": [audience],
            "user": {"username": "system:serviceaccount:a:b"},
        }

    with pytest.raises(TokenRejected, match="not bound to a pod"):
        await verifier(jwks, review).verify(sign(claims(), kid="nope"))


async def test_verified_tokens_are_cached_until_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier(Jwks((KEY, "k1")))
    checked: list[str] = []
    real = v._verify

    async def counting(token: str, digest: bytes) -> PodClaims:
        checked.append(token)
        return await real(token, digest)

    monkeypatch.setattr(v, "_verify", counting)
    token = sign(claims(exp=int(time.time()) + 60))
    first = await v.verify(token)
    assert await v.verify(token) == first
    assert len(checked) == 1
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 120)
    await v.verify(token)
    assert len(checked) == 2, "an expired cache entry must not answer"


async def _settled(jwks: Jwks, review: Any = None) -> TokenVerifier:
    """A verifier whose JWKS was fetched just now, as at a call's start in a running kubespiffed."""
    v = verifier(jwks, review)
    await v.verify(sign(claims(jti="warm-up")))
    return v


async def test_verify_now_verifies_a_new_token_at_once_and_caches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call's start (server.callbounds) needs no I/O for a valid token whose key the JWKS has."""
    jwks = Jwks((KEY, "k1"))
    v = await _settled(jwks)
    token = sign(claims(exp=int(time.time()) + 60))
    claimed = v.verify_now(token)
    assert claimed is not None and claimed.pod_uid == "pod-uid"

    async def no_io(token: str, digest: bytes) -> PodClaims:
        raise AssertionError("verify must answer from the cache")

    monkeypatch.setattr(v, "_verify", no_io)
    assert await v.verify(token) == claimed
    assert jwks.fetches == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: "", "no token"),
        (lambda: "a" * 7000, "larger than"),
        (lambda: sign(claims()) + "\udcff", "ASCII"),
        (lambda: "not.a.jwt", "not a well-formed JWT"),
        (lambda: jwt.encode(claims(), "secret" * 8, algorithm="HS256", headers={"kid": "k1"}), "'HS256'"),
        (lambda: jwt.encode(claims(), KEY, algorithm="RS256"), "no key id"),
        (lambda: sign(claims(), rsa.generate_private_key(65537, 2048)), "signature does not verify"),
        (lambda: sign(claims(), kid="made-up"), "not in the cluster JWKS"),
        (lambda: sign(claims(exp=int(time.time()) - 60)), "expired"),
        (lambda: sign(claims(aud=["kubespiffe", "api"])), "not exactly 'kubespiffe'"),
        (lambda: sign(claims(**{"kubernetes.io": None})), "no kubernetes.io claims"),
    ],
)
async def test_verify_now_refuses_what_verify_refuses(make: Callable[[], str], message: str) -> None:
    jwks = Jwks((KEY, "k1"))
    v = await _settled(jwks)
    token = make()
    with pytest.raises(TokenRejected, match=message):
        v.verify_now(token)
    with pytest.raises(TokenRejected, match=message):
        await v.verify(token)
    assert jwks.fetches == 1, "a made-up kid right after a fetch costs no other"


async def test_verify_now_leaves_a_new_kid_to_a_fetch_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kid the JWKS lacks, once a fetch is due: only the fetch can tell (the API server may have
    rotated its key), and it starts at once, so made-up kids are refused at the start from then on."""
    monkeypatch.setattr("kubespiffe.attestation.token._JWKS_MIN_REFRESH_SECONDS", 0.05)
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = Jwks((KEY, "k1"))
    v = await _settled(jwks)
    await asyncio.sleep(0.06)
    jwks.keys.append((rotated, "k2"))
    assert v.verify_now(sign(claims(), rotated, "k2")) is None
    assert v.verify_now(sign(claims(), kid="made-up")) is None, "the fetch has not answered yet"
    with pytest.raises(TokenRejected, match="issuer"):
        v.verify_now(sign(claims(iss="https://evil"), kid="made-up-too"))  # what can never be ours
    await asyncio.sleep(0.01)
    assert jwks.fetches == 2, "one fetch for both"
    assert v.verify_now(sign(claims(), rotated, "k2")) is not None
    with pytest.raises(TokenRejected, match="not in the cluster JWKS"):
        v.verify_now(sign(claims(), kid="made-up"))


async def test_verify_now_leaves_tokens_to_token_review_while_the_jwks_is_unavailable() -> None:
    jwks = Jwks((KEY, "k1"))
    jwks.fail = True
    reviews: list[str] = []
    v = verifier(jwks, _refusing_review(reviews))
    token = sign(claims())
    assert v.verify_now(token) is None
    with pytest.raises(TokenRejected, match="TokenReview refused"):
        await v.verify(token)
    with pytest.raises(TokenRejected, match="TokenReview refused"):
        v.verify_now(token)  # the refusal is remembered: refused at the start, no second review
    with pytest.raises(TokenRejected, match="expired"):
        v.verify_now(sign(claims(exp=int(time.time()) - 60)))
    assert len(reviews) == 1


# Found by fuzzing (tests/fuzz, token*): each escaped as another exception (UnicodeEncodeError,
# OverflowError/ValueError from datetime) instead of TokenRejected.
async def test_a_non_ascii_token_is_refused() -> None:
    with pytest.raises(TokenRejected, match="ASCII"):
        await verifier(Jwks((KEY, "k1"))).verify(sign(claims()) + "\udcff")


async def test_an_expiry_beyond_datetime_is_refused() -> None:
    with pytest.raises(TokenRejected, match="expiry"):
        await verifier(Jwks((KEY, "k1"))).verify(sign(claims(exp=10**20)))


async def test_an_expiry_beyond_datetime_is_refused_after_token_review() -> None:
    async def review(token: str, audience: str) -> Mapping[str, Any]:
        user = {
            "username": "system:serviceaccount:team:web",
            "extra": {
                "authentication.kubernetes.io/pod-name": ["web-1"],
                "authentication.kubernetes.io/pod-uid": ["u"],
            },
        }
        return {"authenticated": True, "audiences": [audience], "user": user}

    jwks = Jwks((KEY, "k1"))
    jwks.fail = True
    with pytest.raises(TokenRejected, match="expiry"):
        await verifier(jwks, review).verify(sign(claims(exp=1e300)))
