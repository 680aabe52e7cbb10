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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
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
EC_KEY = ec_key()
EC_CA = make_ca("ec root", key=EC_KEY).cert
RSA_CA = make_ca("rsa root", key=rsa_key()).cert
P384_CA = make_ca("p384 root", key=ec_key(ec.SECP384R1())).cert
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ED_CA = make_ca("ed25519 root", key=ED_KEY).cert  # a CA the SPIFFE bundle format cannot carry
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


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_numbers(key: PublicKeyTypes) -> object:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_numbers()


def _padded_ca() -> x509.Certificate:
    """An EC CA whose DER length is not a multiple of 3, so its base64 always ends in '='."""
    while True:
        cert = make_ca("padded", key=EC_KEY).cert
        if len(der(cert)) % 3:
            return cert


PADDED_CA = _padded_ca()


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


def test_pem_round_trip_of_one_certificate() -> None:
    pem = certificates_to_pem([EC_CA])
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 1
    assert parse_pem_certificates(pem) == [EC_CA]


def test_pem_with_surrounding_text_is_accepted() -> None:
    pem = b"# comment\n" + certificates_to_pem([EC_CA]) + b"\ntrailing words\n"
    assert parse_pem_certificates(pem) == [EC_CA]


PRIVATE_KEY_PEM = ec_key().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
EC_PEM = certificates_to_pem([EC_CA])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no PEM certificates"),
        (b"   \n", "no PEM certificates"),
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
        "whitespace",
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


def test_der_round_trip_of_one_certificate() -> None:
    data = certificates_to_der([EC_CA])
    assert data == der(EC_CA)
    assert parse_der_certificates(data) == [EC_CA]


def test_der_length_forms() -> None:
    tiny = b"\x30\x03\x02\x01\x00"  # short form: walked correctly, then refused as a certificate
    with pytest.raises(BundleError, match="byte 0: not a valid DER certificate"):
        parse_der_certificates(tiny)
    assert der(EC_CA)[1] == 0x82  # two length bytes
    padding = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"), b"\x00" * 70_000)
    big = make_ca("big", extra=[(padding, False)]).cert
    assert der(big)[1] == 0x83  # three length bytes
    assert parse_der_certificates(der(EC_CA) + der(big) + der(EC_CA)) == [EC_CA, big, EC_CA]


def test_der_with_long_form_three_byte_length() -> None:
    """A certificate over 64 KiB uses a 0x83 length prefix."""
    padding = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x04" + b"\x00" * 70_000
    )
    big = make_ca("big", key=EC_KEY, extra=[(padding, False)]).cert
    data = der(big)
    assert data[1] == 0x83
    assert parse_der_certificates(data + der(EC_CA)) == [big, EC_CA]


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
        (b"\x00" * 16, "byte 0: not the start"),
        (b"\x30", "byte 0: not the start"),
        (b"\x30\x03\x02\x01\x01", "byte 0: not a valid DER certificate"),
        (b"\x30\x80" + b"\x00" * 8, "bad DER length"),
        (b"\x30\x85\x00\x00\x00\x00\x10", "bad DER length"),
        (der(EC_CA)[:100], "truncated"),
        (der(EC_CA) + b"junk", "not the start"),
        (der(EC_CA) + der(RSA_CA)[:-5], "truncated"),
        (certificates_to_pem([EC_CA]), "byte 0: not the start"),
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


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_der_garbage_never_crashes(data: bytes) -> None:
    try:
        result = parse_der_certificates(data)
    except BundleError:
        return
    assert result == []  # random bytes are never a certificate; only b"" parses
    assert data == b""


@settings(max_examples=100)
@given(st.integers(min_value=0, max_value=len(der(EC_CA)) + len(der(RSA_CA)) - 1))
def test_der_any_truncation_is_refused(cut: int) -> None:
    data = der(EC_CA) + der(RSA_CA)
    truncated = data[:cut]
    if cut in (0, len(der(EC_CA))):
        assert parse_der_certificates(truncated) == [EC_CA][: 1 if cut else 0]
    else:
        with pytest.raises(BundleError):
            parse_der_certificates(truncated)


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


def test_bundle_json_round_trip_field_by_field() -> None:
    bundle = Bundle(
        TD,
        (EC_CA, RSA_CA, P384_CA),
        {"ec": JWT["ec256"], "rsa": JWT["rsa"], "ec384": JWT["ec384"]},
        sequence=42,
        refresh_hint=300,
    )
    parsed = parse_bundle_json(TD, bundle_to_json(bundle))
    assert parsed.trust_domain == TD
    assert parsed.x509_authorities == (EC_CA, RSA_CA, P384_CA)
    assert set(parsed.jwt_authorities) == {"ec", "rsa", "ec384"}
    for kid, key in bundle.jwt_authorities.items():
        assert public_numbers(parsed.jwt_authorities[kid]) == public_numbers(key)
    assert parsed.sequence == 42
    assert parsed.refresh_hint == 300


def test_bundle_json_without_sequence_or_hint() -> None:
    data = bundle_to_json(Bundle(TD, (EC_CA,)))
    assert set(json.loads(data)) == {"keys"}
    parsed = parse_bundle_json(TD, data)
    assert parsed.sequence is None and parsed.refresh_hint is None
    assert parsed.x509_authorities == (EC_CA,)
    assert dict(parsed.jwt_authorities) == {}


def test_empty_bundle_json() -> None:
    assert json.loads(bundle_to_json(Bundle(TD))) == {"keys": []}


@pytest.mark.parametrize("cert", [EC_CA, RSA_CA, P384_CA], ids=["ec", "rsa", "ec384"])
def test_x509_entries_have_no_kid_and_standard_base64_x5c(cert: x509.Certificate) -> None:
    entry = x509_entry(cert)
    assert entry["use"] == "x509-svid"
    assert "kid" not in entry
    assert len(entry["x5c"]) == 1
    assert entry["x5c"][0] == base64.b64encode(der(cert)).decode()  # standard alphabet, padded
    assert base64.b64decode(entry["x5c"][0], validate=True) == der(cert)
    assert entry["kty"] == ("RSA" if isinstance(cert.public_key(), rsa.RSAPublicKey) else "EC")
    assert "d" not in entry


def test_x5c_uses_the_standard_alphabet_not_base64url() -> None:
    """Pick a certificate whose base64 contains '+' or '/', so base64url would differ."""
    for cert in (EC_CA, RSA_CA, P384_CA):
        encoded = x509_entry(cert)["x5c"][0]
        if "+" in encoded or "/" in encoded:
            assert "-" not in encoded and "_" not in encoded
            return
    pytest.fail("no test certificate has '+' or '/' in its base64 encoding")


def test_jwt_entries_have_kid_and_use() -> None:
    entry = jwt_entry(JWT["ec256"], "the-kid")
    assert entry["use"] == "jwt-svid"
    assert entry["kid"] == "the-kid"
    assert entry["kty"] == "EC" and entry["crv"] == "P-256"
    assert "x5c" not in entry and "d" not in entry
    rsa_entry = jwt_entry(JWT["rsa"])
    assert rsa_entry["kty"] == "RSA" and set(rsa_entry) == {"kty", "n", "e", "use", "kid"}


def test_jwks_json_has_kid_and_no_use() -> None:
    jwks = json.loads(jwks_json({"a": JWT["ec256"], "b": JWT["rsa"]}))
    assert set(jwks) == {"keys"}
    assert [k["kid"] for k in jwks["keys"]] == ["a", "b"]
    for key in jwks["keys"]:
        assert "use" not in key
        assert "x5c" not in key
        assert "d" not in key
    assert json.loads(jwks_json({})) == {"keys": []}


def test_unpublishable_key_type_is_refused() -> None:
    with pytest.raises(BundleError):
        bundle_to_json(Bundle(TD, (), {"ed": ED_KEY.public_key()}))
    with pytest.raises(BundleError):
        bundle_to_json(Bundle(TD, (ED_CA,)))
    with pytest.raises(BundleError):
        jwks_json({"ed": ED_KEY.public_key()})


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


def test_trust_domain_comes_from_the_caller() -> None:
    other = TrustDomain("other.org")
    assert parse_bundle_json(other, bundle_to_json(Bundle(TD, (EC_CA,)))).trust_domain == other


@pytest.mark.parametrize(
    "kty",
    ["OKP", "oct", "ec", "rsa", "", None, 1],
    ids=["okp", "oct", "ec-lc", "rsa-lc", "empty", "null", "int"],
)
def test_unknown_kty_is_ignored(kty: Any) -> None:
    """D.4: that key is ignored, not the whole bundle."""
    odd_x509 = {**x509_entry(EC_CA), "kty": kty}
    odd_jwt = {**jwt_entry(JWT["ec256"], "odd"), "kty": kty}
    bundle = parse({"keys": [odd_x509, odd_jwt, x509_entry(RSA_CA), jwt_entry(JWT["rsa"], "good")]})
    assert bundle.x509_authorities == (RSA_CA,)
    assert set(bundle.jwt_authorities) == {"good"}


def test_okp_key_is_ignored() -> None:
    okp = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "use": "jwt-svid",
    }
    bundle = parse({"keys": [okp, jwt_entry(JWT["ec256"], "good")]})
    assert set(bundle.jwt_authorities) == {"good"}


@pytest.mark.parametrize("use", ["sig", "enc", "X509-SVID", "JWT-SVID", "x509_svid", "", None, 1], ids=str)
def test_unknown_use_is_ignored(use: Any) -> None:
    odd_x509 = {**x509_entry(EC_CA), "use": use}
    odd_jwt = {**jwt_entry(JWT["ec256"], "odd"), "use": use}
    bundle = parse({"keys": [odd_x509, odd_jwt, x509_entry(RSA_CA), jwt_entry(JWT["rsa"], "good")]})
    assert bundle.x509_authorities == (RSA_CA,)
    assert set(bundle.jwt_authorities) == {"good"}


def test_missing_use_is_ignored() -> None:
    entry = jwt_entry(JWT["ec256"], "no-use")
    del entry["use"]
    assert dict(parse({"keys": [entry]}).jwt_authorities) == {}


def test_unknown_top_level_members_are_ignored() -> None:
    doc = {
        "keys": [x509_entry(EC_CA)],
        "spiffe_sequence": 3,
        "issuer": "whoever",
        "nested": {"a": [1, 2]},
        "spiffe_future_member": True,
    }
    bundle = parse(doc)
    assert bundle.x509_authorities == (EC_CA,)
    assert bundle.sequence == 3


def test_unknown_members_in_a_key_are_ignored() -> None:
    entry = {**jwt_entry(JWT["ec256"], "k"), "alg": "ES256", "x-extra": {"a": 1}}
    assert set(parse({"keys": [entry]}).jwt_authorities) == {"k"}


@pytest.mark.parametrize("name", ["spiffe_sequence", "spiffe_refresh_hint"])
def test_null_sequence_and_hint_mean_absent(name: str) -> None:
    bundle = parse({"keys": [], name: None})
    assert getattr(bundle, "sequence" if name == "spiffe_sequence" else "refresh_hint") is None


def test_sequence_is_at_least_64_bit() -> None:
    big = 2**64 - 1
    bundle = parse({"keys": [], "spiffe_sequence": big, "spiffe_refresh_hint": 0})
    assert bundle.sequence == big
    assert bundle.refresh_hint == 0


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
    ("kid null", with_jwt_key(lambda k: k.update(kid=None)), "kid"),
    ("kid a list", with_jwt_key(lambda k: k.update(kid=["a"])), "kid"),
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
    (
        "multiple_x509, two different certificates",
        with_x509_key(lambda k: k.update(x5c=[b64(der(EC_CA)), b64(der(RSA_CA))])),
        "exactly one",
    ),
    ("x5c empty", with_x509_key(lambda k: k.update(x5c=[])), "exactly one certificate"),
    ("x5c null", with_x509_key(lambda k: k.update(x5c=None)), "exactly one"),
    ("x5c a literal string", with_x509_key(lambda k: k.update(x5c="string")), "exactly one"),
    ("x5c an object", with_x509_key(lambda k: k.update(x5c={"0": "x"})), "exactly one"),
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
    ("two-character EC x", with_jwt_key(lambda k: k.update(x="AA")), "invalid"),
    ("EC x an array", with_jwt_key(lambda k: k.update(x=[])), "invalid"),
    ("RSA n a number", lambda: {"keys": [{**jwt_entry(JWT["rsa"]), "n": 5}]}, "invalid"),
    ("RSA e null", lambda: {"keys": [{**jwt_entry(JWT["rsa"]), "e": None}]}, "invalid"),
    ("private EC key, short d", with_jwt_key(lambda k: k.update(d="AAAA")), "private"),
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
    "doc",
    [
        pytest.param({"keys": None}, id="null"),
        pytest.param({"keys": {}}, id="object"),
        pytest.param({"keys": "x"}, id="string"),
        pytest.param({"Keys": []}, id="wrong-case"),
        pytest.param([], id="array"),
        pytest.param(None, id="null-document"),
        pytest.param("keys", id="string-document"),
        pytest.param(1, id="number-document"),
    ],
)
def test_keys_not_an_array_is_refused(doc: Any) -> None:
    with pytest.raises(BundleError):
        parse(doc)


@pytest.mark.parametrize("entry", [[], "key", 1, None], ids=["array", "string", "number", "null"])
def test_key_entry_not_an_object_is_refused(entry: Any) -> None:
    with pytest.raises(BundleError, match="not a JSON object"):
        parse({"keys": [entry]})


@pytest.mark.parametrize(
    ("cert", "other"),
    [(RSA_CA, EC_CA), (EC_CA, make_ca("same key", key=EC_KEY).cert)],
    ids=["rsa-vs-ec", "same-key-control"],
)
def test_x5c_key_parameters_must_match(cert: x509.Certificate, other: x509.Certificate) -> None:
    entry = x509_entry(cert)
    entry["x5c"] = [b64(der(other))]
    if other.public_key() == cert.public_key():
        assert parse({"keys": [entry]}).x509_authorities == (other,)
    else:
        with pytest.raises(BundleError, match="do not match"):
            parse({"keys": [entry]})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("!!!not base64!!!", id="symbols"),
        pytest.param(b64(der(EC_CA)).replace("+", "-").replace("/", "_"), id="base64url"),
        pytest.param(b64(der(PADDED_CA)).rstrip("="), id="unpadded"),
        pytest.param(b64(der(EC_CA))[:-8], id="truncated"),
        pytest.param(b64(b"not a certificate"), id="base64-of-garbage"),
        pytest.param(b64(der(EC_CA))[:40] + "\n" + b64(der(EC_CA))[40:], id="embedded-newline"),
        pytest.param(12345, id="number"),
        pytest.param(None, id="null"),
    ],
)
def test_bad_x5c_content_is_refused(value: Any) -> None:
    entry = x509_entry(EC_CA)
    assert value != entry["x5c"][0]
    entry["x5c"] = [value]
    with pytest.raises(BundleError):
        parse({"keys": [entry]})


def test_base64url_mutation_actually_changes_the_encoding() -> None:
    encoded = b64(der(EC_CA))
    assert "+" in encoded or "/" in encoded


@pytest.mark.parametrize("name", ["spiffe_sequence", "spiffe_refresh_hint"])
@pytest.mark.parametrize(
    "value",
    [-1, True, False, 1.5, 1.0, "1", [1], {"v": 1}],
    ids=["neg", "true", "false", "float", "float-int", "str", "list", "obj"],
)
def test_bad_sequence_and_hint_are_refused(name: str, value: Any) -> None:
    with pytest.raises(BundleError, match=name):
        parse({"keys": [], name: value})


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="text"),
        pytest.param(b"\xff\xfe{", id="bad-utf8"),
        pytest.param(b'{"keys": [', id="truncated"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
        pytest.param(b"NaN", id="nan"),
        pytest.param(b"{", id="unclosed"),
        pytest.param(b"keys", id="bare-word"),
        pytest.param(b"\xff\xfe{}", id="not-utf8-object"),
        pytest.param(b'{"keys": []} {"keys": []}', id="two-documents"),
        pytest.param(b"{'keys': []}", id="single-quotes"),
        pytest.param(certificates_to_pem([EC_CA]), id="pem"),
        pytest.param(der(EC_CA), id="der"),
    ],
)
def test_not_json(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_bundle_json(TD, data)


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"keys": [], "x": ' + b"[" * 100_000])
def test_deeply_nested_json_is_a_bundle_error(data: bytes) -> None:
    assert len(data) < MAX_BUNDLE_BYTES
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


def test_oversized_is_refused() -> None:
    data = bundle_to_json(Bundle(TD, (EC_CA,)))
    assert parse_bundle_json(TD, data, max_bytes=len(data)).x509_authorities == (EC_CA,)
    with pytest.raises(BundleError, match="larger"):
        parse_bundle_json(TD, data, max_bytes=len(data) - 1)
    padded = b'{"keys": [], "pad": "' + b"x" * MAX_BUNDLE_BYTES + b'"}'
    with pytest.raises(BundleError, match="larger"):
        parse_bundle_json(TD, padded)


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


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(CAS), max_size=3),
    st.dictionaries(
        st.text(min_size=1, max_size=30),
        st.sampled_from([JWT["ec256"], JWT["rsa"], JWT["ec384"]]),
        max_size=4,
    ),
    st.none() | st.integers(min_value=0, max_value=2**64),
    st.none() | st.integers(min_value=0, max_value=2**31),
)
def test_bundle_round_trip_property(
    certs: list[x509.Certificate],
    jwt: dict[str, PublicKeyTypes],
    sequence: int | None,
    hint: int | None,
) -> None:
    bundle = Bundle(TD, tuple(certs), jwt, sequence, hint)
    data = bundle_to_json(bundle)
    parsed = parse_bundle_json(TD, data)
    assert parsed.x509_authorities == tuple(certs)
    assert list(parsed.jwt_authorities) == list(jwt)
    for kid, key in jwt.items():
        assert public_numbers(parsed.jwt_authorities[kid]) == public_numbers(key)
    assert (parsed.sequence, parsed.refresh_hint) == (sequence, hint)
    assert bundle_to_json(parsed) == data
    doc = json.loads(data)
    assert [k["use"] for k in doc["keys"]] == ["x509-svid"] * len(certs) + ["jwt-svid"] * len(jwt)


@settings(max_examples=300)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_parsed_or_refused_with_bundle_error(doc: Any) -> None:
    for candidate in (doc, {"keys": doc}, {"keys": [doc]}):
        try:
            bundle = parse(candidate)
        except BundleError:
            continue
        assert isinstance(bundle, Bundle)
        assert isinstance(candidate, dict) and isinstance(candidate.get("keys"), list)


def _x5c_bundle(certificate_der: bytes) -> bytes:
    document = json.loads(bundle_to_json(Bundle(TD, (EC_CA,))))
    document["keys"][0]["x5c"] = [base64.b64encode(certificate_der).decode()]
    return json.dumps(document).encode()


@pytest.mark.parametrize("broken", ["point off the curve", "unknown key algorithm"])
def test_an_x5c_certificate_whose_key_cannot_be_loaded_is_a_bundle_error(broken: str) -> None:
    """Found by fuzzing (tests/fuzz, bundle_json/bundle_der): cryptography parses a certificate's key
    only when asked, so a peer's x5c with a broken key escaped as ValueError or UnsupportedAlgorithm."""
    certificate = der(EC_CA)
    point = EC_KEY.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ec_public_key_oid = bytes.fromhex("06072a8648ce3d0201")
    if broken == "point off the curve":
        certificate = certificate.replace(point, point[:-1] + bytes([point[-1] ^ 1]))
    else:
        certificate = certificate.replace(ec_public_key_oid, ec_public_key_oid[:-1] + b"\x09")
    with pytest.raises(BundleError, match="x5c"):
        parse_bundle_json(TD, _x5c_bundle(certificate))


def _bad_version(certificate: x509.Certificate) -> bytes:
    """The certificate with X.509 version 11 (the [0] INTEGER 2 of v3 made 10)."""
    data = der(certificate)
    assert data.count(bytes.fromhex("a003020102")) == 1
    return data.replace(bytes.fromhex("a003020102"), bytes.fromhex("a00302010a"))


@pytest.mark.parametrize(
    "parse",
    [
        parse_der_certificates,
        lambda data: parse_pem_certificates(
            b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(data) + b"-----END CERTIFICATE-----\n"
        ),
        lambda data: parse_bundle_json(TD, _x5c_bundle(data)),
    ],
    ids=["DER", "PEM", "x5c"],
)
def test_a_certificate_with_an_unknown_version_is_a_bundle_error(parse: Callable[[bytes], object]) -> None:
    """Found by fuzzing (tests/fuzz, bundle_der): cryptography's InvalidVersion is not a ValueError."""
    with pytest.raises(BundleError):
        parse(_bad_version(EC_CA))
