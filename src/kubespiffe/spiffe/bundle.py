"""Trust bundles: X.509 authorities as PEM/DER, and the SPIFFE bundle format (checklist section D).

A bundle never names its trust domain, so it is always handled as a (trust domain, bundle) pair.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from kubespiffe.spiffe.spiffeid import TrustDomain

MAX_BUNDLE_BYTES = 1 << 20
X509_SVID_USE = "x509-svid"
JWT_SVID_USE = "jwt-svid"
_KNOWN_KTY = ("EC", "RSA")


class BundleError(ValueError):
    """A malformed bundle document or certificate list; the message says what is wrong."""


@dataclass(frozen=True)
class Bundle:
    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: Mapping[str, PublicKeyTypes] = field(default_factory=dict)
    sequence: int | None = None
    refresh_hint: int | None = None


def parse_pem_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise BundleError("no PEM certificates found (expected -----BEGIN CERTIFICATE----- blocks)") from None
    return certificates


def certificates_to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)


def certificates_to_der(certificates: Sequence[x509.Certificate]) -> bytes:
    """Concatenated DER, as the Workload API carries certificates (never PEM on the wire)."""
    return b"".join(c.public_bytes(Encoding.DER) for c in certificates)


def parse_der_certificates(data: bytes) -> list[x509.Certificate]:
    """Split concatenated DER certificates by walking each outer SEQUENCE's length."""
    certificates: list[x509.Certificate] = []
    offset = 0
    while offset < len(data):
        if data[offset] != 0x30 or offset + 2 > len(data):
            raise BundleError(f"byte {offset}: not the start of a DER certificate")
        length = data[offset + 1]
        header = 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or offset + 2 + count > len(data):
                raise BundleError(f"byte {offset}: bad DER length")
            length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
            header += count
        end = offset + header + length
        if end > len(data):
            raise BundleError(f"byte {offset}: DER certificate is truncated")
        try:
            certificates.append(x509.load_der_x509_certificate(data[offset:end]))
        except ValueError:
            raise BundleError(f"byte {offset}: not a valid DER certificate") from None
        offset = end
    return certificates


def _b64url(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _public_jwk(key: PublicKeyTypes) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key))
    elif isinstance(key, rsa.RSAPublicKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(key))
    else:
        raise BundleError(f"key type {type(key).__name__} cannot be published in a bundle")
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}


def bundle_to_json(bundle: Bundle) -> bytes:
    keys: list[dict[str, Any]] = []
    for certificate in bundle.x509_authorities:
        jwk = _public_jwk(certificate.public_key())
        jwk["use"] = X509_SVID_USE
        jwk["x5c"] = [base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()]
        keys.append(jwk)
    for kid, key in bundle.jwt_authorities.items():
        keys.append({**_public_jwk(key), "use": JWT_SVID_USE, "kid": kid})
    document: dict[str, Any] = {"keys": keys}
    if bundle.sequence is not None:
        document["spiffe_sequence"] = bundle.sequence
    if bundle.refresh_hint is not None:
        document["spiffe_refresh_hint"] = bundle.refresh_hint
    return json.dumps(document, separators=(",", ":")).encode()


def jwks_json(jwt_authorities: Mapping[str, PublicKeyTypes]) -> bytes:
    """A plain JWKS of JWT signing keys, as the Workload API's JWT bundles carry them.

    `use` is omitted: some clients filter on `use: sig` and would drop `jwt-svid` keys (edge case 8).
    """
    keys = [{**_public_jwk(key), "kid": kid} for kid, key in jwt_authorities.items()]
    return json.dumps({"keys": keys}, separators=(",", ":")).encode()


def _load_jwk(jwk: Mapping[str, Any]) -> PublicKeyTypes:
    if "d" in jwk:
        raise BundleError("a bundle must not contain private keys")
    try:
        algorithm = ECAlgorithm if jwk["kty"] == "EC" else RSAAlgorithm
        key = algorithm.from_jwk(dict(jwk))
    except (KeyError, ValueError, TypeError, PyJWTError) as exc:
        raise BundleError(f"key parameters are invalid: {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):  # unreachable without "d"; for types
        raise BundleError("a bundle must not contain private keys")
    return key


def parse_bundle_json(trust_domain: TrustDomain, data: bytes, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    if len(data) > max_bytes:
        raise BundleError(f"bundle is larger than {max_bytes} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting fits well within the size limit
        raise BundleError("bundle is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BundleError("bundle has no 'keys' array (it must be a JWK Set)")
    x509_authorities: list[x509.Certificate] = []
    jwt_authorities: dict[str, PublicKeyTypes] = {}
    for index, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            raise BundleError(f"keys[{index}] is not a JSON object")
        use, kty = jwk.get("use"), jwk.get("kty")
        if use not in (X509_SVID_USE, JWT_SVID_USE) or kty not in _KNOWN_KTY:
            continue  # unknown use or kty: ignore this key, not the bundle (D.4)
        key = _load_jwk(jwk)
        if use == X509_SVID_USE:
            x5c = jwk.get("x5c")
            if not isinstance(x5c, list) or len(x5c) != 1:
                raise BundleError(f"keys[{index}]: an x509-svid key needs x5c with exactly one certificate")
            try:
                certificate = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
            except (ValueError, TypeError):
                raise BundleError(f"keys[{index}]: x5c is not a base64 DER certificate") from None
            if _public_jwk(certificate.public_key()) != _public_jwk(key):
                raise BundleError(f"keys[{index}]: key parameters do not match the x5c certificate")
            x509_authorities.append(certificate)
        else:
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                raise BundleError(f"keys[{index}]: a jwt-svid key needs a kid")
            if kid in jwt_authorities:
                raise BundleError(f"keys[{index}]: duplicate kid {kid!r}")
            jwt_authorities[kid] = key
    sequence = document.get("spiffe_sequence")
    hint = document.get("spiffe_refresh_hint")
    for name, value in (("spiffe_sequence", sequence), ("spiffe_refresh_hint", hint)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise BundleError(f"{name} must be a non-negative integer")
    return Bundle(trust_domain, tuple(x509_authorities), jwt_authorities, sequence, hint)
