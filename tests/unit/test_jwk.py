"""spiffe.jwk: public keys as JWKs, without PyJWT, agreeing with PyJWT wherever both accept a key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from kubespiffe.spiffe.jwk import from_jwk, to_jwk

CURVES = [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1()]


@pytest.mark.parametrize("curve", CURVES, ids=lambda c: c.name)
def test_ec_round_trip_and_pyjwt_agree(curve: ec.EllipticCurve) -> None:
    for _ in range(20):  # short coordinates (leading zero bytes) must keep the curve's full length
        key = ec.generate_private_key(curve).public_key()
        jwk = to_jwk(key)
        assert from_jwk(jwk) == key
        assert ECAlgorithm.from_jwk(jwk) == key
        assert {k: v for k, v in json.loads(ECAlgorithm.to_jwk(key)).items() if k in jwk} == jwk


@pytest.mark.parametrize("bits", [2048, 3072])
def test_rsa_round_trip_and_pyjwt_agree(bits: int) -> None:
    key = rsa.generate_private_key(65537, bits).public_key()
    jwk = to_jwk(key)
    assert from_jwk(jwk) == key and RSAAlgorithm.from_jwk(jwk) == key
    assert {k: v for k, v in json.loads(RSAAlgorithm.to_jwk(key)).items() if k in jwk} == jwk


P256 = to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
RSA = to_jwk(rsa.generate_private_key(65537, 2048).public_key())


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({}, "unsupported key type None"),
        ({"kty": "oct", "k": "AAAA"}, "unsupported key type 'oct'"),
        ({**P256, "crv": "P-224"}, "unsupported curve 'P-224'"),
        ({**P256, "crv": "P-384"}, "coordinates must be 48 bytes"),
        ({**P256, "x": P256["x"][:-4]}, "coordinates must be 32 bytes"),
        ({**P256, "x": 7}, "x is not a base64url string"),
        ({**P256, "y": "!!!!"}, "y is not base64url"),
        ({**P256, "y": P256["x"]}, None),  # a point not on the curve: cryptography's own message
        ({**RSA, "e": "AA"}, "e must be a positive integer"),
        ({**RSA, "n": None}, "n is not a base64url string"),
        ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, None),  # cryptography refuses a toy modulus
    ],
)
def test_bad_jwks_are_value_errors(jwk: dict[str, Any], message: str | None) -> None:
    with pytest.raises(ValueError, match=message):
        from_jwk(jwk)


def test_a_curve_without_a_jose_name_cannot_be_published() -> None:
    with pytest.raises(ValueError, match="no JOSE name"):
        to_jwk(ec.generate_private_key(ec.SECP224R1()).public_key())


def test_the_agent_does_not_load_pyjwt_to_read_bundles() -> None:
    import subprocess
    import sys

    code = "import kubespiffe.agent.run, sys; print('jwt' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
