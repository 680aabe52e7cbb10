"""JWT-SVID minting and validation rules (checklist section C)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from hypothesis import given
from hypothesis import strategies as st

from kubespiffe.spiffe.jwtsvid import JwtSvidError, algorithm_for, mint, validate
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.org")
ID = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
EC = ec.generate_private_key(ec.SECP256R1())
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
BUNDLES: dict[TrustDomain, dict[str, PublicKeyTypes]] = {TD: {"ec": EC.public_key(), "rsa": RSA.public_key()}}


def _now() -> dt.datetime:
    """Fresh per call: the suite may run for minutes after this module is imported."""
    return dt.datetime.now(dt.UTC)


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims, _ = token.split(".")

    def decode(part: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return value

    return decode(header), decode(claims)


@pytest.mark.parametrize(("key", "kid", "alg"), [(EC, "ec", "ES256"), (RSA, "rsa", "RS256")])
def test_minted_token_has_only_spec_header_and_claims(key: Any, kid: str, alg: str) -> None:
    token = mint(key, kid, ID, ["aud1"], dt.timedelta(minutes=5), _now())
    header, claims = _parts(token)
    assert header == {"alg": alg, "kid": kid, "typ": "JWT"}
    assert set(claims) == {"sub", "aud", "exp", "iat"}
    assert claims["sub"] == str(ID) and claims["aud"] == "aud1"
    assert claims["exp"] - claims["iat"] == 300
    assert validate(token, "aud1", BUNDLES, _now()).spiffe_id == ID


def test_several_audiences_and_issuer() -> None:
    token = mint(EC, "ec", ID, ["a", "b"], dt.timedelta(minutes=1), _now(), issuer="https://oidc.example.org")
    _, claims = _parts(token)
    assert claims["aud"] == ["a", "b"] and claims["iss"] == "https://oidc.example.org"
    assert validate(token, "b", BUNDLES, _now()).claims["aud"] == ["a", "b"]


def test_algorithm_for_key_types() -> None:
    assert algorithm_for(ec.generate_private_key(ec.SECP384R1())) == "ES384"
    with pytest.raises(JwtSvidError):
        algorithm_for(cast(Any, object()))


@pytest.mark.parametrize("audience", [[], [""]])
def test_mint_needs_an_audience(audience: list[str]) -> None:
    with pytest.raises(JwtSvidError, match="audience"):
        mint(EC, "ec", ID, audience, dt.timedelta(minutes=5), _now())


def test_mint_refuses_trust_domain_id_as_subject() -> None:
    with pytest.raises(JwtSvidError, match="workload ID"):
        mint(EC, "ec", TD.id, ["a"], dt.timedelta(minutes=5), _now())


def _claims(**changes: Any) -> dict[str, Any]:
    base = {"sub": str(ID), "aud": "a", "exp": int(_now().timestamp()) + 300, "iat": int(_now().timestamp())}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


OTHER = ec.generate_private_key(ec.SECP256R1())
REFUSED: list[tuple[str, Callable[[], str], str]] = [
    (
        "alg none",
        lambda: jwt.encode(_claims(), cast(Any, None), algorithm="none", headers={"kid": "ec"}),
        "algorithm",
    ),
    ("HS256", lambda: jwt.encode(_claims(), "s" * 32, algorithm="HS256", headers={"kid": "ec"}), "algorithm"),
    ("no kid", lambda: jwt.encode(_claims(), EC, algorithm="ES256"), "kid"),
    (
        "unknown kid",
        lambda: jwt.encode(_claims(), EC, algorithm="ES256", headers={"kid": "zz"}),
        "not in the JWT bundle",
    ),
    (
        "wrong key",
        lambda: jwt.encode(_claims(), OTHER, algorithm="ES256", headers={"kid": "ec"}),
        "signature",
    ),
    (
        "expired",
        lambda: jwt.encode(
            _claims(exp=int(_now().timestamp()) - 1), EC, algorithm="ES256", headers={"kid": "ec"}
        ),
        "expired",
    ),
    ("no exp", lambda: jwt.encode(_claims(exp=None), EC, algorithm="ES256", headers={"kid": "ec"}), "exp"),
    (
        "wrong aud",
        lambda: jwt.encode(_claims(aud="b"), EC, algorithm="ES256", headers={"kid": "ec"}),
        "audience",
    ),
    (
        "aud list",
        lambda: jwt.encode(_claims(aud=["b", "c"]), EC, algorithm="ES256", headers={"kid": "ec"}),
        "audience",
    ),
    ("no aud", lambda: jwt.encode(_claims(aud=None), EC, algorithm="ES256", headers={"kid": "ec"}), "aud"),
    (
        "bad typ",
        lambda: jwt.encode(_claims(), EC, algorithm="ES256", headers={"kid": "ec", "typ": "at+jwt"}),
        "typ",
    ),
    (
        "extra header",
        lambda: jwt.encode(_claims(), EC, algorithm="ES256", headers={"kid": "ec", "x5u": "u"}),
        "header",
    ),
    (
        "sub not spiffe",
        lambda: jwt.encode(_claims(sub="bob"), EC, algorithm="ES256", headers={"kid": "ec"}),
        "sub",
    ),
    (
        "foreign td",
        lambda: jwt.encode(_claims(sub="spiffe://other.org/x"), EC, algorithm="ES256", headers={"kid": "ec"}),
        "no JWT bundle",
    ),
    ("two parts", lambda: "a.b", "compact"),
    ("not base64 json", lambda: "!!.@@.##", "well-formed"),
    ("empty", lambda: "", "empty"),
    # Found by fuzzing (tests/fuzz, jwtsvid and jwtsvid_signed): both escaped as TypeError or
    # UnicodeEncodeError. A trusted (say, federated) key can sign any exp; argv can carry lone surrogates.
    (
        "exp a string",
        lambda: jwt.encode(
            _claims(exp=str(int(_now().timestamp()) + 300)), EC, "ES256", headers={"kid": "ec"}
        ),
        "exp",
    ),
    ("not ASCII", lambda: mint(EC, "ec", ID, ["a"], dt.timedelta(minutes=5), _now()) + "\udcff", "ASCII"),
    # Found by fuzzing (tests/fuzz, jwtsvid): an unhashable alg escaped as TypeError, unsigned.
    ("alg a list", lambda: _unsigned({"alg": ["ES256"], "kid": "ec"}, _claims()), "algorithm"),
    # Found by fuzzing (tests/fuzz, jwtsvid): PyJWT raised TypeError for a key of the other type, unsigned.
    ("RS256 for an EC key", lambda: _unsigned({"alg": "RS256", "kid": "ec"}, _claims()), "does not fit"),
    ("ES256 for an RSA key", lambda: _unsigned({"alg": "ES256", "kid": "rsa"}, _claims()), "does not fit"),
]


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.AAAA"


@pytest.mark.parametrize(("case", "token", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_validation_refuses(case: str, token: Callable[[], str], message: str) -> None:
    with pytest.raises(JwtSvidError, match=message):
        validate(token(), "a", BUNDLES, _now())


def test_validation_uses_only_the_subjects_trust_domain_keys() -> None:
    foreign = jwt.encode(_claims(sub="spiffe://other.org/w"), EC, algorithm="ES256", headers={"kid": "ec"})
    with pytest.raises(JwtSvidError, match="no JWT bundle"):
        validate(foreign, "a", BUNDLES, _now())
    assert (
        validate(foreign, "a", {**BUNDLES, OTHER_TD: {"ec": EC.public_key()}}, _now()).spiffe_id.trust_domain
        == OTHER_TD
    )


def test_empty_expected_audience_is_refused_not_ignored() -> None:
    token = mint(EC, "ec", ID, ["a"], dt.timedelta(minutes=5), _now())
    with pytest.raises(JwtSvidError, match="audience is empty"):
        validate(token, "", BUNDLES, _now())


@given(
    st.lists(
        st.text(alphabet="abcdefghij-_.:/", min_size=1, max_size=20), min_size=1, max_size=4, unique=True
    )
)
def test_any_audience_list_round_trips(audience: list[str]) -> None:
    token = mint(EC, "ec", ID, audience, dt.timedelta(minutes=5), _now())
    for each in audience:
        assert validate(token, each, BUNDLES, _now()).spiffe_id == ID
