"""Trust bundle formats (checklist D and B.10): PEM/DER certificate lists and the SPIFFE bundle JSON.

Includes go-spiffe's spiffebundle testdata cases (missing_kid, multiple_x509, no_keys) rebuilt inline.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID, ObjectIdentifier
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

TD = TrustDomain("example.org")
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def make_ca(key: PrivateKey, common_name: str, extra: bytes = b"") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(TD.id))]), False)
    )
    if extra:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.2"), extra), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
EC_CA = make_ca(EC_KEY, "ec")
EC384_CA = make_ca(EC384_KEY, "ec384")
RSA_CA = make_ca(RSA_KEY, "rsa")
ED_CA = make_ca(ED_KEY, "ed25519")
THREE = [EC_CA, RSA_CA, EC384_CA]


def _padded_ca() -> x509.Certificate:
    """An EC CA whose DER length is not a multiple of 3, so its base64 always ends in '='."""
    while True:
        cert = make_ca(EC_KEY, "padded")
        if len(cert.public_bytes(Encoding.DER)) % 3:
            return cert


PADDED_CA = _padded_ca()
JWT_EC = ec.generate_private_key(ec.SECP256R1()).public_key()
JWT_EC384 = ec.generate_private_key(ec.SECP384R1()).public_key()
JWT_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_numbers(key: PublicKeyTypes) -> object:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_numbers()


def x509_entry(cert: x509.Certificate) -> dict[str, Any]:
    """The bundle JSON entry kubespiffe emits for one CA certificate."""
    document = json.loads(bundle_to_json(Bundle(TD, (cert,))))
    entry: dict[str, Any] = document["keys"][0]
    return entry


def jwt_entry(key: PublicKeyTypes, kid: str = "kid-1") -> dict[str, Any]:
    document = json.loads(bundle_to_json(Bundle(TD, (), {kid: key})))
    entry: dict[str, Any] = document["keys"][0]
    return entry


def parse_doc(document: Any, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    return parse_bundle_json(TD, json.dumps(document).encode(), max_bytes=max_bytes)


# --- PEM -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("certs", [[EC_CA], THREE], ids=["one", "three"])
def test_pem_round_trip(certs: list[x509.Certificate]) -> None:
    pem = certificates_to_pem(certs)
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == len(certs)
    assert parse_pem_certificates(pem) == certs


def test_pem_with_surrounding_text_is_accepted() -> None:
    pem = b"# comment\n" + certificates_to_pem([EC_CA]) + b"\ntrailing words\n"
    assert parse_pem_certificates(pem) == [EC_CA]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   \n", id="whitespace"),
        pytest.param(b"not pem at all", id="text"),
        pytest.param(der(EC_CA), id="der-not-pem"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="garbage-body"),
        pytest.param(
            EC_KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), id="private-key-only"
        ),
    ],
)
def test_pem_refused(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_pem_certificates(data)


def test_certificates_to_pem_of_nothing_is_empty() -> None:
    assert certificates_to_pem([]) == b""
    assert certificates_to_der([]) == b""


# --- DER -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("certs", [[EC_CA], THREE], ids=["one", "three"])
def test_der_round_trip(certs: list[x509.Certificate]) -> None:
    data = certificates_to_der(certs)
    assert data == b"".join(der(c) for c in certs)  # plain concatenation, leaf/CA order kept
    assert parse_der_certificates(data) == certs


def test_der_of_nothing_is_an_empty_list() -> None:
    assert parse_der_certificates(b"") == []


def test_der_with_long_form_three_byte_length() -> None:
    """A certificate over 64 KiB uses a 0x83 length prefix."""
    big = make_ca(EC_KEY, "big", extra=b"\x04" + b"\x00" * 70_000)
    data = der(big)
    assert data[1] == 0x83
    assert parse_der_certificates(data + der(EC_CA)) == [big, EC_CA]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"garbage", id="garbage"),
        pytest.param(b"\x00" * 16, id="zeros"),
        pytest.param(b"\x30", id="lone-tag"),
        pytest.param(b"\x30\x00", id="empty-sequence"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="sequence-not-a-certificate"),
        pytest.param(b"\x30\x80" + b"\x00" * 8, id="indefinite-length"),
        pytest.param(b"\x30\x85\x00\x00\x00\x00\x10", id="five-length-bytes"),
        pytest.param(b"\x30\x82\x01", id="length-bytes-cut"),
        pytest.param(der(EC_CA)[:-1], id="truncated-by-one"),
        pytest.param(der(EC_CA)[:100], id="truncated-header-only"),
        pytest.param(der(EC_CA) + b"\x00", id="trailing-zero"),
        pytest.param(der(EC_CA) + b"\x30", id="trailing-tag"),
        pytest.param(der(EC_CA) + b"junk", id="trailing-junk"),
        pytest.param(der(EC_CA) + der(RSA_CA)[:-5], id="second-truncated"),
        pytest.param(certificates_to_pem([EC_CA]), id="pem-not-der"),
    ],
)
def test_der_refused(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_der_certificates(data)


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


# --- bundle JSON: emitting -------------------------------------------------------------------------------


def test_bundle_json_round_trip() -> None:
    bundle = Bundle(
        TD,
        (EC_CA, RSA_CA, EC384_CA),
        {"ec": JWT_EC, "rsa": JWT_RSA, "ec384": JWT_EC384},
        sequence=42,
        refresh_hint=300,
    )
    parsed = parse_bundle_json(TD, bundle_to_json(bundle))
    assert parsed.trust_domain == TD
    assert parsed.x509_authorities == (EC_CA, RSA_CA, EC384_CA)
    assert set(parsed.jwt_authorities) == {"ec", "rsa", "ec384"}
    for kid, key in bundle.jwt_authorities.items():
        assert public_numbers(parsed.jwt_authorities[kid]) == public_numbers(key)
    assert parsed.sequence == 42
    assert parsed.refresh_hint == 300


def test_bundle_json_without_sequence_or_hint() -> None:
    data = bundle_to_json(Bundle(TD, (EC_CA,)))
    document = json.loads(data)
    assert set(document) == {"keys"}
    parsed = parse_bundle_json(TD, data)
    assert parsed.sequence is None and parsed.refresh_hint is None
    assert parsed.x509_authorities == (EC_CA,)
    assert dict(parsed.jwt_authorities) == {}


def test_empty_bundle_json() -> None:
    data = bundle_to_json(Bundle(TD))
    assert json.loads(data) == {"keys": []}


@pytest.mark.parametrize("cert", [EC_CA, RSA_CA, EC384_CA], ids=["ec", "rsa", "ec384"])
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
    for cert in (EC_CA, RSA_CA, EC384_CA):
        encoded = x509_entry(cert)["x5c"][0]
        if "+" in encoded or "/" in encoded:
            assert "-" not in encoded and "_" not in encoded
            return
    pytest.fail("no test certificate has '+' or '/' in its base64 encoding")


def test_jwt_entries_have_kid_and_use() -> None:
    entry = jwt_entry(JWT_EC, "the-kid")
    assert entry["use"] == "jwt-svid"
    assert entry["kid"] == "the-kid"
    assert entry["kty"] == "EC" and entry["crv"] == "P-256"
    assert "x5c" not in entry and "d" not in entry
    rsa_entry = jwt_entry(JWT_RSA)
    assert rsa_entry["kty"] == "RSA" and set(rsa_entry) == {"kty", "n", "e", "use", "kid"}


def test_jwks_json_has_kid_and_no_use() -> None:
    document = json.loads(jwks_json({"a": JWT_EC, "b": JWT_RSA}))
    assert set(document) == {"keys"}
    assert [k["kid"] for k in document["keys"]] == ["a", "b"]
    for key in document["keys"]:
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


# --- bundle JSON: parsing, checklist D -------------------------------------------------------------------


def test_no_keys_is_refused() -> None:
    """spiffebundle testdata no_keys."""
    with pytest.raises(BundleError, match="keys"):
        parse_doc({"spiffe_sequence": 1})


@pytest.mark.parametrize(
    "document",
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
def test_keys_not_an_array_is_refused(document: Any) -> None:
    with pytest.raises(BundleError):
        parse_doc(document)


def test_empty_keys_is_valid_and_empty() -> None:
    """D.1: `{"keys": []}` fetched successfully means every key was revoked."""
    bundle = parse_bundle_json(TD, b'{"keys": []}')
    assert bundle.x509_authorities == ()
    assert dict(bundle.jwt_authorities) == {}
    assert bundle.trust_domain == TD


def test_trust_domain_comes_from_the_caller() -> None:
    other = TrustDomain("other.org")
    assert parse_bundle_json(other, bundle_to_json(Bundle(TD, (EC_CA,)))).trust_domain == other


def test_missing_kid_is_refused() -> None:
    """spiffebundle testdata missing_kid."""
    entry = jwt_entry(JWT_EC)
    del entry["kid"]
    with pytest.raises(BundleError, match="kid"):
        parse_doc({"keys": [entry]})


@pytest.mark.parametrize("kid", ["", None, 7, ["a"]])
def test_bad_kid_is_refused(kid: Any) -> None:
    entry = jwt_entry(JWT_EC)
    entry["kid"] = kid
    with pytest.raises(BundleError, match="kid"):
        parse_doc({"keys": [entry]})


def test_duplicate_kid_is_refused() -> None:
    with pytest.raises(BundleError, match="duplicate"):
        parse_doc({"keys": [jwt_entry(JWT_EC, "same"), jwt_entry(JWT_RSA, "same")]})


def test_multiple_x509_is_refused() -> None:
    """spiffebundle testdata multiple_x509: x5c with two certificates."""
    entry = x509_entry(EC_CA)
    entry["x5c"] = [b64(der(EC_CA)), b64(der(RSA_CA))]
    with pytest.raises(BundleError, match="exactly one"):
        parse_doc({"keys": [entry]})


@pytest.mark.parametrize("x5c", [[], None, "string", {"0": "x"}], ids=["empty", "null", "string", "object"])
def test_x5c_not_a_one_element_list_is_refused(x5c: Any) -> None:
    entry = x509_entry(EC_CA)
    entry["x5c"] = x5c
    with pytest.raises(BundleError, match="exactly one"):
        parse_doc({"keys": [entry]})


def test_x5c_missing_is_refused() -> None:
    entry = x509_entry(EC_CA)
    del entry["x5c"]
    with pytest.raises(BundleError):
        parse_doc({"keys": [entry]})


@pytest.mark.parametrize(
    ("cert", "other"),
    [(EC_CA, EC384_CA), (EC_CA, RSA_CA), (RSA_CA, EC_CA), (EC_CA, make_ca(EC_KEY, "same key"))],
    ids=["ec-vs-ec384", "ec-vs-rsa", "rsa-vs-ec", "same-key-control"],
)
def test_x5c_key_parameters_must_match(cert: x509.Certificate, other: x509.Certificate) -> None:
    entry = x509_entry(cert)
    entry["x5c"] = [b64(der(other))]
    if other.public_key() == cert.public_key():
        assert parse_doc({"keys": [entry]}).x509_authorities == (other,)
    else:
        with pytest.raises(BundleError, match="do not match"):
            parse_doc({"keys": [entry]})


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
        parse_doc({"keys": [entry]})


def test_base64url_mutation_actually_changes_the_encoding() -> None:
    encoded = b64(der(EC_CA))
    assert "+" in encoded or "/" in encoded


@pytest.mark.parametrize(
    "kty",
    ["OKP", "oct", "ec", "rsa", "", None, 1],
    ids=["okp", "oct", "ec-lc", "rsa-lc", "empty", "null", "int"],
)
def test_unknown_kty_is_ignored(kty: Any) -> None:
    """D.4: that key is ignored, not the whole bundle."""
    odd_x509 = {**x509_entry(EC_CA), "kty": kty}
    odd_jwt = {**jwt_entry(JWT_EC, "odd"), "kty": kty}
    bundle = parse_doc({"keys": [odd_x509, odd_jwt, x509_entry(RSA_CA), jwt_entry(JWT_RSA, "good")]})
    assert bundle.x509_authorities == (RSA_CA,)
    assert set(bundle.jwt_authorities) == {"good"}


def test_okp_key_is_ignored() -> None:
    okp = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "use": "jwt-svid",
    }
    bundle = parse_doc({"keys": [okp, jwt_entry(JWT_EC, "good")]})
    assert set(bundle.jwt_authorities) == {"good"}


@pytest.mark.parametrize("use", ["sig", "enc", "X509-SVID", "JWT-SVID", "x509_svid", "", None, 1], ids=str)
def test_unknown_use_is_ignored(use: Any) -> None:
    odd_x509 = {**x509_entry(EC_CA), "use": use}
    odd_jwt = {**jwt_entry(JWT_EC, "odd"), "use": use}
    bundle = parse_doc({"keys": [odd_x509, odd_jwt, x509_entry(RSA_CA), jwt_entry(JWT_RSA, "good")]})
    assert bundle.x509_authorities == (RSA_CA,)
    assert set(bundle.jwt_authorities) == {"good"}


def test_missing_use_is_ignored() -> None:
    entry = jwt_entry(JWT_EC, "no-use")
    del entry["use"]
    assert dict(parse_doc({"keys": [entry]}).jwt_authorities) == {}


@pytest.mark.parametrize("entry", [[], "key", 1, None], ids=["array", "string", "number", "null"])
def test_key_entry_not_an_object_is_refused(entry: Any) -> None:
    with pytest.raises(BundleError, match="not a JSON object"):
        parse_doc({"keys": [entry]})


def test_private_key_material_is_refused() -> None:
    private = {**jwt_entry(JWT_EC), "d": "AAAA"}
    with pytest.raises(BundleError, match="private"):
        parse_doc({"keys": [private]})


@pytest.mark.parametrize(
    "changes",
    [
        {"x": "AA"},
        {"crv": "P-999"},
        {"crv": 5},
        {"x": []},
    ],
    ids=["short-x", "bad-curve", "curve-number", "x-array"],
)
def test_bad_ec_parameters_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(BundleError, match="invalid"):
        parse_doc({"keys": [{**jwt_entry(JWT_EC), **changes}]})


@pytest.mark.parametrize("changes", [{"n": 5}, {"e": None}], ids=["n-number", "e-null"])
def test_bad_rsa_parameters_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(BundleError, match="invalid"):
        parse_doc({"keys": [{**jwt_entry(JWT_RSA), **changes}]})


def test_unknown_top_level_members_are_ignored() -> None:
    document = {
        "keys": [x509_entry(EC_CA)],
        "spiffe_sequence": 3,
        "issuer": "whoever",
        "nested": {"a": [1, 2]},
        "spiffe_future_member": True,
    }
    bundle = parse_doc(document)
    assert bundle.x509_authorities == (EC_CA,)
    assert bundle.sequence == 3


def test_unknown_members_in_a_key_are_ignored() -> None:
    entry = {**jwt_entry(JWT_EC, "k"), "alg": "ES256", "x-extra": {"a": 1}}
    assert set(parse_doc({"keys": [entry]}).jwt_authorities) == {"k"}


@pytest.mark.parametrize("name", ["spiffe_sequence", "spiffe_refresh_hint"])
@pytest.mark.parametrize(
    "value",
    [-1, True, False, 1.5, 1.0, "1", [1], {"v": 1}],
    ids=["neg", "true", "false", "float", "float-int", "str", "list", "obj"],
)
def test_bad_sequence_and_hint_are_refused(name: str, value: Any) -> None:
    with pytest.raises(BundleError, match=name):
        parse_doc({"keys": [], name: value})


@pytest.mark.parametrize("name", ["spiffe_sequence", "spiffe_refresh_hint"])
def test_null_sequence_and_hint_mean_absent(name: str) -> None:
    bundle = parse_doc({"keys": [], name: None})
    assert getattr(bundle, "sequence" if name == "spiffe_sequence" else "refresh_hint") is None


def test_sequence_is_at_least_64_bit() -> None:
    big = 2**64 - 1
    bundle = parse_doc({"keys": [], "spiffe_sequence": big, "spiffe_refresh_hint": 0})
    assert bundle.sequence == big
    assert bundle.refresh_hint == 0


def test_oversized_is_refused() -> None:
    data = bundle_to_json(Bundle(TD, (EC_CA,)))
    assert parse_bundle_json(TD, data, max_bytes=len(data)).x509_authorities == (EC_CA,)
    with pytest.raises(BundleError, match="larger"):
        parse_bundle_json(TD, data, max_bytes=len(data) - 1)
    padded = b'{"keys": [], "pad": "' + b"x" * MAX_BUNDLE_BYTES + b'"}'
    with pytest.raises(BundleError, match="larger"):
        parse_bundle_json(TD, padded)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="unclosed"),
        pytest.param(b"keys", id="bare-word"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"keys": []} {"keys": []}', id="two-documents"),
        pytest.param(b"{'keys': []}", id="single-quotes"),
        pytest.param(certificates_to_pem([EC_CA]), id="pem"),
        pytest.param(der(EC_CA), id="der"),
    ],
)
def test_non_json_is_refused(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_bundle_json(TD, data)


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"keys": [], "x": ' + b"[" * 100_000])
def test_deeply_nested_json_is_a_bundle_error(data: bytes) -> None:
    assert len(data) < MAX_BUNDLE_BYTES
    with pytest.raises(BundleError):
        parse_bundle_json(TD, data)


# --- properties ------------------------------------------------------------------------------------------

kids = st.text(min_size=1, max_size=30)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(THREE), max_size=3),
    st.dictionaries(kids, st.sampled_from([JWT_EC, JWT_RSA, JWT_EC384]), max_size=4),
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
    document = json.loads(data)
    assert [k["use"] for k in document["keys"]] == ["x509-svid"] * len(certs) + ["jwt-svid"] * len(jwt)


@settings(max_examples=300)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_parsed_or_refused_with_bundle_error(document: Any) -> None:
    for candidate in (document, {"keys": document}, {"keys": [document]}):
        try:
            bundle = parse_doc(candidate)
        except BundleError:
            continue
        assert isinstance(bundle, Bundle)
        assert isinstance(candidate, dict) and isinstance(candidate.get("keys"), list)
