"""Public keys as JWKs (RFC 7517/7518): EC on P-256, P-384, P-521 and secp256k1, and RSA.

Written on `cryptography` alone, so reading a bundle does not load PyJWT: the agent parses bundles from its
first second but validates JWT-SVIDs only when a workload asks, and PyJWT (with the urllib, http and email
modules it pulls in) costs each pod's agent about 5 MB. Only public keys: private members are refused by
the caller (spiffe.bundle) before a JWK reaches here.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

# JOSE curve name -> (curve, coordinate length in bytes)
_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
    "secp256k1": (ec.SECP256K1(), 32),
}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_NAMES = {type(curve).__name__: name for name, (curve, _) in _CURVES.items()}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(value: Any, member: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{member} is not a base64url string")
    # Strict: urlsafe_b64decode alone skips characters outside the alphabet, so "!!" would read as nothing.
    if not _BASE64URL.fullmatch(value):
        raise ValueError(f"{member} is not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{member} is not base64url") from None


def _uint(value: Any, member: str) -> int:
    number = int.from_bytes(_unb64url(value, member), "big")
    if number <= 0:
        raise ValueError(f"{member} must be a positive integer")
    return number


def to_jwk(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> dict[str, str]:
    """The key's public JWK members (kty, crv/x/y or n/e), coordinates at the curve's full length."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        name = _NAMES.get(type(key.curve).__name__)
        if name is None:
            raise ValueError(f"curve {key.curve.name} has no JOSE name")
        size = _CURVES[name][1]
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": name,
            "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big")),
        }
    numbers_rsa = key.public_numbers()
    return {
        "kty": "RSA",
        "n": _b64url(numbers_rsa.n.to_bytes((numbers_rsa.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers_rsa.e.to_bytes((numbers_rsa.e.bit_length() + 7) // 8, "big")),
    }


def from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key a JWK describes; ValueError names what is wrong (unknown kty or curve, a coordinate
    of the wrong length, a point not on the curve, RSA numbers cryptography refuses)."""
    kty = jwk.get("kty")
    if kty == "EC":
        curve = jwk.get("crv")
        if curve not in _CURVES:
            raise ValueError(f"unsupported curve {curve!r}")
        obj, size = _CURVES[curve]
        x, y = _unb64url(jwk.get("x"), "x"), _unb64url(jwk.get("y"), "y")
        if len(x) != size or len(y) != size:
            raise ValueError(f"coordinates must be {size} bytes for curve {curve}")
        point = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), obj)
        return point.public_key()  # ValueError when the point is not on the curve
    if kty == "RSA":
        return rsa.RSAPublicNumbers(_uint(jwk.get("e"), "e"), _uint(jwk.get("n"), "n")).public_key()
    raise ValueError(f"unsupported key type {kty!r}")
