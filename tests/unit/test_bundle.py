"""Trust bundle encodings (checklist B.10 and D): PEM and DER certificate lists, SPIFFE bundle JSON, JWKS.

Includes go-spiffe's spiffebundle testdata cases (missing_kid, multiple_x509, no_keys) rebuilt inline.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from kubespiffe.spiffe.bundle import (
    MAX_BUNDLE_BYTES,
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
from tests.unit.certs import der, ec_key, make_ca, rsa_key

TD = TrustDomain("example.org")
EC_CA = make_ca("ec root").cert
RSA_CA = make_ca("rsa root", key=rsa_key()).cert
P384_CA = make_ca("p384 root", key=ec_key(ec.SECP384R1())).cert
CAS = (EC_CA, RSA_CA, P384_CA)
JWT: dict[str, PublicKeyTypes] = {
    "ec256": ec_key().public_key(),
    "ec384": ec_key(ec.SECP384R1()).public_key(),
    "ec521": ec_key(ec.SECP521R1()).public_key(),
    "rsa": rsa_key().public_key(),
}
BUNDLE = Bundle(TD, CAS, JWT, sequence=42, refresh_hint=300)


def document(bundle: Bundle = BUNDLE) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(bundle_to_json(bundle))
    return parsed


def parse(doc: Any) -> Bundle:
    return parse_bundle_json(TD, json.dumps(doc).encode())


def x509_entry(cert: x509.Certificate = EC_CA) -> dict[str, Any]:
    entry: dict[str, Any] = document(Bundle(TD, (cert,)))["keys"][0]
    return entry


def jwt_entry(key: PublicKeyTypes = JWT["ec256"], kid: str = "kid") -> dict[str, Any]:
    entry: dict[str, Any] = document(Bundle(TD, (), {kid: key}))["keys"][0]
    return entry


# --- PEM ----------------------------------------------------------------------------------------------------


def test_pem_round_trip_and_surrounding_text() -> None:
    pem = certificates_to_pem(CAS)
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 3
    assert parse_pem_certificates(pem) == list(CAS)
    commented = (
        b"# example.org roots\n" + pem.replace(b"-----\n-----", b"-----\nsubject=x\n-----") + b"\nend\n"
    )
    assert parse_pem_certificates(commented) == list(CAS)
    assert parse_pem_certificates(pem.replace(b"\n", b"\r\n")) == list(CAS)
    assert certificates_to_pem([]) == b""


PRIVATE_KEY_PEM = ec_key().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
EC_PEM = certificates_to_pem([EC_CA])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no PEM certificates"),
        (b"not pem at all", "no PEM certificates"),
        (der(EC_CA), "no PEM certificates"),
        (PRIVATE_KEY_PEM, "PEM block 0 is a PRIVATE KEY, not a CERTIFICATE"),
        (EC_PEM + PRIVATE_KEY_PEM, "PEM block 1 is a PRIVATE KEY"),
        (EC_PEM + EC_PEM[:-40], "unterminated"),
        (EC_PEM.replace(b"-----END CERTIFICATE-----", b"-----END CRL-----"), "no PEM certificates"),
        (EC_PEM + b"-----BEGIN CERTIFICATE-----\n", "unterminated"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "block 0 is not a valid certificate",
        ),
        (EC_PEM.replace(b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN CERTIFICATE-----\n*"), "not a valid"),
    ],
    ids=[
        "empty",
        "text",
        "der",
        "key-only",
        "cert-and-key",
        "truncated-second",
        "mismatched-end",
        "dangling-begin",
        "garbage-body",
        "bad-base64",
    ],
)
def test_pem_refused(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_pem_certificates(data)


# --- DER (B.10) ---------------------------------------------------------------------------------------------


def test_der_round_trip() -> None:
    data = certificates_to_der(CAS)
    assert data == b"".join(der(c) for c in CAS) and not data.startswith(b"-----")
    assert parse_der_certificates(data) == list(CAS)
    assert parse_der_certificates(b"") == [] and certificates_to_der([]) == b""


def test_der_length_forms() -> None:
    tiny = b"\x30\x03\x02\x01\x00"  # short form: walked correctly, then refused as a certificate
    with pytest.raises(BundleError, match="byte 0: not a valid DER certificate"):
        parse_der_certificates(tiny)
    assert der(EC_CA)[1] == 0x82  # two length bytes
    padding = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"), b"\x00" * 70_000)
    big = make_ca("big", extra=[(padding, False)]).cert
    assert der(big)[1] == 0x83  # three length bytes
    assert parse_der_certificates(der(EC_CA) + der(big) + der(EC_CA)) == [EC_CA, big, EC_CA]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (der(EC_CA)[:-1], "truncated"),
        (der(EC_CA) + b"\x00", "byte .*: not the start"),
        (der(EC_CA) + b"\x30", "not the start"),
        (b"\x31\x03abc", "byte 0: not the start"),
        (b"\x30\x80" + der(EC_CA)[2:], "bad DER length"),  # indefinite length is BER
        (b"\x30\x85\x01\x00\x00\x00\x00", "bad DER length"),
        (b"\x30\x82\x01", "bad DER length"),
        (b"\x30\x82\xff\xff", "truncated"),
        (b"\x30\x00", "not a valid DER certificate"),
        (b"garbage", "not the start"),
    ],
)
def test_der_refused(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_der_certificates(data)


@pytest.mark.parametrize("cut", range(1, 40))
def test_der_every_short_truncation_is_refused(cut: int) -> None:
    with pytest.raises(BundleError):
        parse_der_certificates(certificates_to_der(CAS)[:-cut])


@settings(max_examples=300)
@given(st.binary(max_size=64), st.integers(0, 2))
def test_der_garbage_is_a_bundle_error_or_exactly_the_input(noise: bytes, position: int) -> None:
    data = [noise + der(EC_CA), der(EC_CA) + noise, der(EC_CA)[: len(noise)] + noise][position]
    try:
        certificates = parse_der_certificates(data)
    except BundleError:
        return
    assert certificates_to_der(certificates) == data


# --- SPIFFE bundle JSON: publishing (D.1, D.2, D.5, D.6) ----------------------------------------------------


def test_round_trip() -> None:
    parsed = parse_bundle_json(TD, bundle_to_json(BUNDLE))
    assert parsed == BUNDLE
    assert parsed.trust_domain == TD, "the trust domain comes from the caller, never the document"
    assert (
        parse_bundle_json(TrustDomain("other.org"), bundle_to_json(BUNDLE)).trust_domain.name == "other.org"
    )


@settings(max_examples=50)
@given(st.none() | st.integers(0, 2**70), st.none() | st.integers(0, 2**40))
def test_sequence_and_refresh_hint_round_trip(sequence: int | None, hint: int | None) -> None:
    bundle = Bundle(TD, (EC_CA,), sequence=sequence, refresh_hint=hint)
    doc = document(bundle)
    assert doc.get("spiffe_sequence") == sequence and doc.get("spiffe_refresh_hint") == hint
    assert ("spiffe_sequence" in doc) == (sequence is not None)
    assert parse(doc) == bundle


def test_x509_entries() -> None:
    """One entry per CA, no kid, x5c of exactly one standard-base64 DER certificate, matching parameters."""
    entries = [k for k in document()["keys"] if k["use"] == "x509-svid"]
    assert len(entries) == 3
    for entry, cert in zip(entries, CAS, strict=True):
        assert "kid" not in entry and entry["x5c"] == [base64.b64encode(der(cert)).decode()]
        assert entry["kty"] == ("RSA" if cert is RSA_CA else "EC")
    assert set(entries[0]) == {"kty", "crv", "x", "y", "use", "x5c"}
    assert set(entries[1]) == {"kty", "n", "e", "use", "x5c"}
    assert entries[2]["crv"] == "P-384"


def test_x5c_is_standard_base64_not_base64url() -> None:
    encoded = x509_entry(RSA_CA)["x5c"][0]
    assert {"+", "/"} & set(encoded), "fixture must exercise the characters the two alphabets disagree on"
    url_safe = encoded.replace("+", "-").replace("/", "_")
    with pytest.raises(BundleError, match="not a standard-base64 DER certificate"):
        parse({"keys": [{**x509_entry(RSA_CA), "x5c": [url_safe]}]})


def test_jwt_entries() -> None:
    entries = {k["kid"]: k for k in document()["keys"] if k["use"] == "jwt-svid"}
    assert set(entries) == set(JWT)
    assert [entries[k]["crv"] for k in ("ec256", "ec384", "ec521")] == ["P-256", "P-384", "P-521"]
    assert set(entries["rsa"]) == {"kty", "n", "e", "use", "kid"}
    assert all("x5c" not in e and "d" not in e for e in entries.values())


def test_ec_coordinates_are_padded_to_the_curve_size() -> None:
    """RFC 7518 6.2.1.2: x and y have the full field length even when they start with zero bytes."""
    scalar = 1
    while ec.derive_private_key(scalar, ec.SECP256R1()).public_key().public_numbers().x >= 1 << 248:
        scalar += 1
    key = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    entry = jwt_entry(key)
    assert len(base64.urlsafe_b64decode(entry["x"] + "==")) == 32
    assert parse({"keys": [entry]}).jwt_authorities["kid"] == key


def test_plain_jwks_for_the_workload_api() -> None:
    """Edge case 8: no `use`, which JWKS clients filtering on `sig` would take as "not for me"."""
    keys = json.loads(jwks_json(JWT))["keys"]
    assert [k["kid"] for k in keys] == list(JWT)
    assert all("use" not in k and "x5c" not in k for k in keys)
    assert json.loads(jwks_json({})) == {"keys": []}


@pytest.mark.parametrize(
    "publish",
    [lambda j: bundle_to_json(Bundle(TD, (), j)), jwks_json],
    ids=["bundle", "jwks"],
)
def test_publishing_refuses_an_empty_kid_or_an_unpublishable_key(publish: Callable[[Any], bytes]) -> None:
    with pytest.raises(BundleError, match="non-empty kid"):
        publish({"": JWT["ec256"]})
    with pytest.raises(BundleError, match="Ed25519PublicKey cannot be published"):
        publish({"ed": ed25519.Ed25519PrivateKey.generate().public_key()})


# --- SPIFFE bundle JSON: consuming (D.1, D.3-D.6) -----------------------------------------------------------


def test_empty_key_set_is_valid_and_empty() -> None:
    assert parse({"keys": []}) == Bundle(TD)


def test_unknown_members_kty_and_use_are_ignored() -> None:
    """D.3/D.4 and edge case 10: a future key type or use must not cut the federation."""
    okp = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "use": "jwt-svid",
    }
    doc = {
        "keys": [
            x509_entry(),
            {**okp, "kid": "okp"},
            {"kty": "oct", "k": "c2VjcmV0", "use": "jwt-svid", "kid": "hmac"},
            {**jwt_entry(kid="sig"), "use": "sig"},
            {**jwt_entry(kid="upper"), "use": "JWT-SVID"},
            {k: v for k, v in jwt_entry(kid="no-use").items() if k != "use"},
            {k: v for k, v in jwt_entry(kid="no-kty").items() if k != "kty"},
            {**jwt_entry(kid="kty-null"), "kty": None},
            {**x509_entry(RSA_CA), "use": "x509-SVID"},
            {**jwt_entry(kid="kept"), "alg": "ES256", "future": [1, 2]},
        ],
        "spiffe_future": {"nested": True},
        "spiffe_sequence": 3,
    }
    parsed = parse(doc)
    assert parsed.x509_authorities == (EC_CA,) and list(parsed.jwt_authorities) == ["kept"]
    assert parsed.sequence == 3


def test_kid_on_an_x509_entry_is_ignored() -> None:
    assert parse({"keys": [{**x509_entry(), "kid": "x"}]}).x509_authorities == (EC_CA,)


def with_document(change: Callable[[dict[str, Any]], Any]) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        doc = document()
        change(doc)
        return doc

    return make


def with_x509_key(change: Callable[[dict[str, Any]], Any]) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        entry = x509_entry()
        change(entry)
        return {"keys": [entry]}

    return make


def with_jwt_key(change: Callable[[dict[str, Any]], Any]) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        entry = jwt_entry()
        change(entry)
        return {"keys": [entry]}

    return make


REFUSED: list[tuple[str, Callable[[], Any], str]] = [
    ("no_keys", lambda: {"spiffe_sequence": 1}, "no 'keys' array"),
    ("keys not an array", lambda: {"keys": {"0": x509_entry()}}, "no 'keys' array"),
    ("not an object", lambda: [x509_entry()], "no 'keys' array"),
    ("key not an object", lambda: {"keys": [x509_entry(), "x"]}, r"keys\[1\] is not a JSON object"),
    ("missing_kid", with_jwt_key(lambda k: k.pop("kid")), r"keys\[0\]: a jwt-svid key needs a kid"),
    ("empty kid", with_jwt_key(lambda k: k.update(kid="")), "needs a kid"),
    ("kid not a string", with_jwt_key(lambda k: k.update(kid=7)), "needs a kid"),
    (
        "duplicate kid",
        lambda: {"keys": [jwt_entry(), jwt_entry(JWT["rsa"])]},
        r"keys\[1\]: duplicate kid 'kid'",
    ),
    (
        "multiple_x509",
        with_x509_key(lambda k: k.update(x5c=k["x5c"] * 2)),
        "x5c with exactly one certificate",
    ),
    ("x5c empty", with_x509_key(lambda k: k.update(x5c=[])), "exactly one certificate"),
    ("x5c missing", with_x509_key(lambda k: k.pop("x5c")), "exactly one certificate"),
    ("x5c a string", with_x509_key(lambda k: k.update(x5c=k["x5c"][0])), "exactly one certificate"),
    ("x5c not text", with_x509_key(lambda k: k.update(x5c=[7])), "x5c.0. is not a base64 string"),
    ("x5c bad base64", with_x509_key(lambda k: k.update(x5c=["***"])), "not a standard-base64 DER"),
    ("x5c not DER", with_x509_key(lambda k: k.update(x5c=["AAAA"])), "not a standard-base64 DER"),
    (
        "x5c with a line break",
        with_x509_key(lambda k: k.update(x5c=[k["x5c"][0][:64] + "\n" + k["x5c"][0][64:]])),
        "not a standard-base64 DER",
    ),
    ("x5c non-ASCII", with_x509_key(lambda k: k.update(x5c=["é"])), "not a standard-base64 DER"),
    ("x5c key mismatch", with_x509_key(lambda k: k.update(x5c=x509_entry(P384_CA)["x5c"])), "do not match"),
    (
        "x5c key type mismatch",
        with_x509_key(lambda k: k.update(x5c=x509_entry(RSA_CA)["x5c"])),
        "do not match",
    ),
    ("private EC key", with_jwt_key(lambda k: k.update(d=k["x"])), "must not contain private keys"),
    ("private on x509", with_x509_key(lambda k: k.update(d=k["x"])), "must not contain private keys"),
    ("short EC coordinate", with_jwt_key(lambda k: k.update(x="AAAA")), "key parameters are invalid"),
    ("off-curve point", with_jwt_key(lambda k: k.update(y=k["x"])), "key parameters are invalid"),
    ("unknown curve", with_jwt_key(lambda k: k.update(crv="P-999")), "key parameters are invalid"),
    ("curve not text", with_jwt_key(lambda k: k.update(crv=5)), "key parameters are invalid"),
    ("EC x missing", with_jwt_key(lambda k: k.pop("x")), "key parameters are invalid"),
    ("RSA n missing", lambda: {"keys": [{**jwt_entry(JWT["rsa"]), "n": None}]}, "key parameters are invalid"),
    ("negative sequence", with_document(lambda d: d.update(spiffe_sequence=-1)), "spiffe_sequence must be"),
    ("float sequence", with_document(lambda d: d.update(spiffe_sequence=1.0)), "spiffe_sequence must be"),
    ("string sequence", with_document(lambda d: d.update(spiffe_sequence="1")), "spiffe_sequence must be"),
    ("boolean hint", with_document(lambda d: d.update(spiffe_refresh_hint=True)), "spiffe_refresh_hint must"),
    ("negative hint", with_document(lambda d: d.update(spiffe_refresh_hint=-5)), "spiffe_refresh_hint must"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse(make())


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe{", b'{"keys": [', b"[" * 100_000 + b"]" * 100_000, b"NaN"],
    ids=["empty", "text", "bad-utf8", "truncated", "deep-nesting", "nan"],
)
def test_not_json(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_bundle_json(TD, data)


def test_size_limit() -> None:
    small = b'{"keys": []}'
    assert parse_bundle_json(TD, small, max_bytes=len(small)) == Bundle(TD)
    with pytest.raises(BundleError, match=f"larger than {len(small) - 1} bytes"):
        parse_bundle_json(TD, small, max_bytes=len(small) - 1)
    padded = small[:-1] + b" " * (MAX_BUNDLE_BYTES - len(small)) + b"}"
    assert len(padded) == MAX_BUNDLE_BYTES and parse_bundle_json(TD, padded) == Bundle(TD)
    with pytest.raises(BundleError, match=f"larger than {MAX_BUNDLE_BYTES} bytes"):
        parse_bundle_json(TD, padded + b" ")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200)
@given(
    st.sampled_from(["kty", "use", "kid", "x5c", "x", "y", "crv", "n", "e", "d"]),
    JSON_VALUES,
    st.integers(0, 6),
)
def test_any_member_value_is_a_bundle_error_or_a_bundle(member: str, value: Any, index: int) -> None:
    doc = document()
    doc["keys"][index][member] = value
    try:
        parsed = parse(doc)
    except BundleError:
        return
    assert isinstance(parsed, Bundle) and len(parsed.x509_authorities) + len(parsed.jwt_authorities) <= 7
