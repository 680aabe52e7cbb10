"""Trust bundle encodings (checklist D and B.10): SPIFFE bundle JSON, plain JWKS, PEM and DER lists."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import create_self_signed_ca
from kubespiffe.spiffe.bundle import (
    Bundle,
    BundleError,
    bundle_to_json,
    certificates_to_der,
    certificates_to_pem,
    jwks_json,
    parse_bundle_json,
    parse_der_certificates,
    parse_pem_certificates,
)
from kubespiffe.spiffe.spiffeid import TrustDomain

TD = TrustDomain("example.org")
NOW = dt.datetime.now(dt.UTC)
CAS = [
    create_self_signed_ca(TD, t, dt.timedelta(days=1), NOW).certificate
    for t in (KeyType.EC_P256, KeyType.RSA_2048)
]
JWT: dict[str, PublicKeyTypes] = {
    "ec": ec.generate_private_key(ec.SECP256R1()).public_key(),
    "rsa": rsa.generate_private_key(65537, 2048).public_key(),
}
BUNDLE = Bundle(TD, tuple(CAS), JWT, sequence=42, refresh_hint=300)


def _doc() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(bundle_to_json(BUNDLE))
    return document


def test_round_trip_with_sequence_and_hint() -> None:
    parsed = parse_bundle_json(TD, bundle_to_json(BUNDLE))
    assert parsed.x509_authorities == BUNDLE.x509_authorities
    assert set(parsed.jwt_authorities) == {"ec", "rsa"}
    assert (parsed.sequence, parsed.refresh_hint) == (42, 300)


def test_published_shape() -> None:
    doc = _doc()
    x509_keys = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    jwt_keys = [k for k in doc["keys"] if k["use"] == "jwt-svid"]
    assert len(x509_keys) == 2 and len(jwt_keys) == 2
    for key in x509_keys:
        assert "kid" not in key and len(key["x5c"]) == 1
        der = base64.b64decode(key["x5c"][0], validate=True)  # standard base64, not base64url
        assert der in [c.public_bytes(Encoding.DER) for c in CAS]
    assert all(k["kid"] for k in jwt_keys)
    assert doc["spiffe_sequence"] == 42 and doc["spiffe_refresh_hint"] == 300


def test_plain_jwks_has_kids_and_no_use() -> None:
    keys = json.loads(jwks_json(JWT))["keys"]
    assert {k["kid"] for k in keys} == {"ec", "rsa"} and all("use" not in k for k in keys)


def test_empty_key_set_is_valid_and_means_no_keys() -> None:
    parsed = parse_bundle_json(TD, b'{"keys": []}')
    assert parsed.x509_authorities == () and dict(parsed.jwt_authorities) == {}


def test_unknown_members_kty_and_use_are_ignored() -> None:
    doc = _doc()
    doc["future"] = {"x": 1}
    doc["keys"].append({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "use": "jwt-svid", "kid": "okp"})
    doc["keys"].append({**doc["keys"][2], "use": "something-else", "kid": "other"})
    parsed = parse_bundle_json(TD, json.dumps(doc).encode())
    assert set(parsed.jwt_authorities) == {"ec", "rsa"} and len(parsed.x509_authorities) == 2


def _with(change: Any) -> bytes:
    doc = _doc()
    change(doc)
    return json.dumps(doc).encode()


REFUSED = [
    ("missing_kid", lambda d: d["keys"][2].pop("kid"), "needs a kid"),
    ("multiple_x509", lambda d: d["keys"][0].update(x5c=d["keys"][0]["x5c"] * 2), "exactly one certificate"),
    ("x5c key mismatch", lambda d: d["keys"][0].update(x5c=d["keys"][1]["x5c"]), "do not match"),
    ("bad base64", lambda d: d["keys"][0].update(x5c=["***"]), "base64"),
    ("duplicate kid", lambda d: d["keys"].append(dict(d["keys"][2])), "duplicate kid"),
    ("no keys", lambda d: d.pop("keys"), "no 'keys'"),
    ("negative sequence", lambda d: d.update(spiffe_sequence=-1), "spiffe_sequence"),
    ("boolean hint", lambda d: d.update(spiffe_refresh_hint=True), "spiffe_refresh_hint"),
    ("private key", lambda d: d["keys"][2].update(d="AAAA"), "private keys"),
    ("bad key parameters", lambda d: d["keys"][2].update(x="AAAA"), "invalid"),
]


@pytest.mark.parametrize(("case", "change", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_malformed_bundles_are_refused(case: str, change: Any, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_bundle_json(TD, _with(change))


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"keys": {}}', b'{"keys": [1]}'])
def test_not_a_key_set(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_bundle_json(TD, data)


def test_size_limit() -> None:
    with pytest.raises(BundleError, match="larger than"):
        parse_bundle_json(TD, b'{"keys": []}' + b" " * 100, max_bytes=50)


def test_pem_and_der_lists() -> None:
    pem = certificates_to_pem(CAS)
    assert parse_pem_certificates(pem) == CAS
    der = certificates_to_der(CAS)
    assert not der.startswith(b"-----") and parse_der_certificates(der) == CAS
    with pytest.raises(BundleError):
        parse_pem_certificates(b"no certificates here")
    for bad in (der[:-5], der + b"\x00", b"\x30\x82\xff\xff", b"garbage"):
        with pytest.raises(BundleError):
            parse_der_certificates(bad)
