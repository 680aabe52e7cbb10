"""The authority: key handling, the signing-CA profile (B.6/B.7), the leaf profile (B.1-B.5) for any CSR,
CSR refusals, and the persisted state round trip through Secret data."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st

from kubespiffe.authority.keys import KeyType, generate_key, key_from_pem, key_to_pem
from kubespiffe.authority.state import (
    BUNDLE_KEY,
    DOCUMENT_KEY,
    AuthorityState,
    StateError,
    new_slot,
)
from kubespiffe.authority.x509ca import (
    CLOCK_SKEW,
    MAX_CSR_BYTES,
    CsrError,
    X509Authority,
    create_self_signed_ca,
    load_csr,
    sign_x509_svid,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import check_leaf, check_signing_ca, id_from_certificate, verify_chain

TD = TrustDomain("example.org")
NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
ID = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
CA_TTL = dt.timedelta(days=7)
LEAF_TTL = dt.timedelta(hours=1)
CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@functools.cache
def ca_for(key_type: KeyType) -> X509Authority:
    return create_self_signed_ca(TD, key_type, CA_TTL, NOW)


@functools.cache
def csr_key(kind: str) -> CsrKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "k256":
        return ec.generate_private_key(ec.SECP256K1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    bits = int(kind.removeprefix("rsa"))
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_csr(
    key: CsrKey,
    subject: x509.Name | None = None,
    extensions: list[x509.ExtensionType] | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr")])
    )
    for extension in extensions or []:
        builder = builder.add_extension(extension, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(Encoding.DER)


def spki(key: CsrKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def public_numbers(key: Any) -> Any:
    return key.public_numbers()


def sign(
    csr_der: bytes,
    *,
    authority: X509Authority | None = None,
    spiffe_id: SpiffeId = ID,
    dns_names: list[str] | None = None,
    ttl: dt.timedelta = LEAF_TTL,
    now: dt.datetime = NOW,
) -> x509.Certificate:
    return sign_x509_svid(
        authority or ca_for(KeyType.EC_P256), load_csr(csr_der), spiffe_id, dns_names or [], ttl, now
    )


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


# --- keys ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "kind", "size"),
    [
        (KeyType.EC_P256, ec.EllipticCurvePrivateKey, 256),
        (KeyType.EC_P384, ec.EllipticCurvePrivateKey, 384),
        (KeyType.RSA_2048, rsa.RSAPrivateKey, 2048),
        (KeyType.RSA_3072, rsa.RSAPrivateKey, 3072),
    ],
)
def test_generate_key(key_type: KeyType, kind: type, size: int) -> None:
    key = ca_for(key_type).key
    assert isinstance(key, kind)
    assert key.key_size == size


@pytest.mark.parametrize("key_type", list(KeyType))
def test_key_pem_round_trip(key_type: KeyType) -> None:
    key = ca_for(key_type).key
    pem = key_to_pem(key)
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    again = key_from_pem(pem)
    assert public_numbers(again.public_key()) == public_numbers(key.public_key())
    assert again.private_numbers() == key.private_numbers()


def test_key_values_are_distinct() -> None:
    assert {k.value for k in KeyType} == {"ec-p256", "ec-p384", "rsa-2048", "rsa-3072"}
    first = generate_key(KeyType.EC_P256)
    second = generate_key(KeyType.EC_P256)
    assert public_numbers(first.public_key()) != public_numbers(second.public_key())


def test_key_from_pem_refuses_other_key_types() -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    with pytest.raises(ValueError, match=r"(?i)Ed25519|supported"):
        key_from_pem(pem)


@pytest.mark.parametrize(
    "pem", ["", "garbage", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_key_from_pem_refuses_garbage(pem: str) -> None:
    with pytest.raises(ValueError):
        key_from_pem(pem)


# --- CA profile (B.6, B.7) -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KeyType))
def test_ca_profile(key_type: KeyType) -> None:
    authority = ca_for(key_type)
    cert = authority.certificate
    check_signing_ca(cert)
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is True
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert not usage.value.key_encipherment and not usage.value.key_agreement
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert id_from_certificate(cert) == TD.id
    assert len(cert.subject) > 0
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)  # self-signed
    assert public_numbers(cert.public_key()) == public_numbers(authority.key.public_key())
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + CA_TTL
    assert authority.chain == ()
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_ca_signature_hash_follows_the_key() -> None:
    assert isinstance(ca_for(KeyType.EC_P256).certificate.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(ca_for(KeyType.EC_P384).certificate.signature_hash_algorithm, hashes.SHA384)
    assert isinstance(ca_for(KeyType.RSA_2048).certificate.signature_hash_algorithm, hashes.SHA256)


def test_each_ca_has_a_distinct_key_and_serial() -> None:
    a = create_self_signed_ca(TD, KeyType.EC_P256, CA_TTL, NOW)
    b = create_self_signed_ca(TD, KeyType.EC_P256, CA_TTL, NOW)
    assert a.certificate.serial_number != b.certificate.serial_number
    assert a.certificate.subject != b.certificate.subject  # the serial is part of the subject
    assert public_numbers(a.key.public_key()) != public_numbers(b.key.public_key())


# --- leaf profile (B.1-B.5) ------------------------------------------------------------------------------


@pytest.mark.parametrize("ca_type", list(KeyType))
@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048", "rsa3072"])
def test_leaf_profile(ca_type: KeyType, kind: str) -> None:
    authority = ca_for(ca_type)
    key = csr_key(kind)
    leaf = sign(make_csr(key), authority=authority, dns_names=["web.default.svc"])
    assert check_leaf(leaf) == ID
    assert verify_chain([leaf], {TD: [authority.certificate]}, NOW) == ID
    assert public_numbers(leaf.public_key()) == public_numbers(key.public_key())
    constraints = ext(leaf, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    assert usage.value.key_encipherment is isinstance(key, rsa.RSAPrivateKey)
    assert set(ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ID)]
    assert san.get_values_for_type(x509.DNSName) == ["web.default.svc"]
    assert len(leaf.subject) > 0
    assert leaf.issuer == authority.certificate.subject
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(authority.certificate, x509.SubjectKeyIdentifier).value.digest
    )
    assert leaf.not_valid_before_utc == NOW - CLOCK_SKEW
    assert leaf.not_valid_after_utc == NOW + LEAF_TTL
    leaf.verify_directly_issued_by(authority.certificate)


def test_leaf_without_dns_names_has_a_subject_and_only_the_uri() -> None:
    leaf = sign(make_csr(csr_key("p256")))
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert not leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(ID))]
    assert check_leaf(leaf) == ID


def test_csr_cannot_ask_for_ca_rights_names_or_subject() -> None:
    key = csr_key("p256")
    spoofed = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "kubespiffe CA example.org"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
        ]
    )
    csr_der = make_csr(
        key,
        subject=spoofed,
        extensions=[
            x509.BasicConstraints(ca=True, path_length=None),
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.OCSP_SIGNING]),
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("evil.example.com"),
                    x509.UniformResourceIdentifier("spiffe://example.org/ns/kube-system/sa/admin"),
                    x509.UniformResourceIdentifier("spiffe://other.org/x"),
                    x509.RFC822Name("root@example.org"),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
        ],
    )
    leaf = sign(csr_der, dns_names=["web.default.svc"])
    assert check_leaf(leaf) == ID
    assert ext(leaf, x509.BasicConstraints).value.ca is False
    usage = ext(leaf, x509.KeyUsage).value
    assert not usage.key_cert_sign and not usage.crl_sign and not usage.content_commitment
    assert set(ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(ID)), x509.DNSName("web.default.svc")]
    assert leaf.subject != spoofed
    assert "Evil Corp" not in leaf.subject.rfc4514_string()
    assert "CA" not in leaf.subject.rfc4514_string()
    csr_extension_oids = {e.oid for e in x509.load_der_x509_csr(csr_der).extensions}
    leaf_oids = {e.oid for e in leaf.extensions}
    assert leaf_oids == {
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.ExtendedKeyUsage.oid,
        x509.SubjectAlternativeName.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
    }
    assert csr_extension_oids <= leaf_oids  # same kinds, our values (checked above)


def test_csr_with_unknown_extension_does_not_leak_it() -> None:
    oid = ObjectIdentifier("1.3.6.1.4.1.55555.3")
    csr_der = make_csr(csr_key("p256"), extensions=[x509.UnrecognizedExtension(oid, b"\x05\x00")])
    leaf = sign(csr_der)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_oid(oid)


def test_ttl_clamped_to_the_ca_not_after() -> None:
    authority = create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(hours=1), NOW)
    csr_der = make_csr(csr_key("p256"))
    long_lived = sign(csr_der, authority=authority, ttl=dt.timedelta(hours=2))
    assert long_lived.not_valid_after_utc == authority.certificate.not_valid_after_utc
    short = sign(csr_der, authority=authority, ttl=dt.timedelta(minutes=10))
    assert short.not_valid_after_utc == NOW + dt.timedelta(minutes=10)
    later = sign(csr_der, authority=authority, ttl=dt.timedelta(hours=1), now=NOW + dt.timedelta(minutes=30))
    assert later.not_valid_after_utc == authority.certificate.not_valid_after_utc
    anchors = {TD: [authority.certificate]}
    for leaf, at in ((long_lived, NOW), (short, NOW), (later, NOW + dt.timedelta(minutes=30))):
        assert verify_chain([leaf], anchors, at) == ID
        assert verify_chain([leaf], anchors, leaf.not_valid_after_utc) == ID


@pytest.mark.parametrize(
    "spiffe_id",
    ["spiffe://other.org/ns/default/sa/web", "spiffe://example.org.evil/x", "spiffe://org/x"],
)
def test_spiffe_id_outside_the_ca_trust_domain_is_refused(spiffe_id: str) -> None:
    with pytest.raises(ValueError, match="outside"):
        sign(make_csr(csr_key("p256")), spiffe_id=SpiffeId.parse(spiffe_id))


def test_root_path_id_is_refused() -> None:
    with pytest.raises(ValueError, match="path"):
        sign(make_csr(csr_key("p256")), spiffe_id=TD.id)


def test_long_first_dns_name_is_not_used_as_common_name() -> None:
    long_name = ("a" * 61) + ".svc"  # 65 characters: too long for a CN (ub-common-name is 64)
    assert len(long_name) == 65
    leaf = sign(make_csr(csr_key("p256")), dns_names=[long_name, "short.svc"])
    assert not leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert ext(leaf, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        long_name,
        "short.svc",
    ]
    exact = "b" * 60 + ".svc"
    assert len(exact) == 64
    leaf = sign(make_csr(csr_key("p256")), dns_names=[exact])
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == exact


# --- CSR refusals ----------------------------------------------------------------------------------------


def test_csr_with_a_flipped_signature_byte_is_refused() -> None:
    for kind in ("p256", "rsa2048"):
        der = bytearray(make_csr(csr_key(kind)))
        der[-1] ^= 0x01
        x509.load_der_x509_csr(bytes(der))  # still well-formed DER
        with pytest.raises(CsrError, match="signature"):
            load_csr(bytes(der))


def test_csr_signed_by_another_key_is_refused() -> None:
    """Swap the public key in a CSR for another key of the same size: the signature no longer matches."""
    signer, other = csr_key("p256"), ec.generate_private_key(ec.SECP256R1())
    der = make_csr(signer)
    assert der.count(spki(signer)) == 1 and len(spki(signer)) == len(spki(other))
    swapped = der.replace(spki(signer), spki(other))
    parsed = x509.load_der_x509_csr(swapped)
    assert public_numbers(parsed.public_key()) == public_numbers(other.public_key())
    assert not parsed.is_signature_valid
    with pytest.raises(CsrError, match="signature"):
        load_csr(swapped)


def test_good_csr_is_loaded() -> None:
    key = csr_key("p256")
    csr = load_csr(make_csr(key))
    assert csr.is_signature_valid
    assert public_numbers(csr.public_key()) == public_numbers(key.public_key())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"garbage", "not a DER", id="garbage"),
        pytest.param(b"\x30\x03\x02\x01\x01", "not a DER", id="wrong-structure"),
        pytest.param(b"\x00" * (MAX_CSR_BYTES + 1), "larger", id="oversized-zeros"),
        pytest.param(b"\x30" * MAX_CSR_BYTES, "not a DER", id="max-size-garbage"),
    ],
)
def test_bad_csr_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(CsrError, match=message):
        load_csr(data)


def test_truncated_csr_is_refused() -> None:
    der = make_csr(csr_key("p256"))
    for cut in (1, len(der) // 2, len(der) - 1):
        with pytest.raises(CsrError):
            load_csr(der[:cut])


def test_csr_with_trailing_bytes_is_refused() -> None:
    with pytest.raises(CsrError):
        load_csr(make_csr(csr_key("p256")) + b"\x00")


def test_pem_csr_is_refused() -> None:
    pem = x509.load_der_x509_csr(make_csr(csr_key("p256"))).public_bytes(Encoding.PEM)
    with pytest.raises(CsrError, match="DER"):
        load_csr(pem)


def _csr_of_size(size: int) -> bytes:
    """A valid RSA-2048 CSR (fixed-length signature) padded by an extension to exactly `size` bytes."""
    key = csr_key("rsa2048")
    oid = ObjectIdentifier("1.3.6.1.4.1.55555.4")
    pad = size - 600
    for _ in range(10):
        der = make_csr(key, extensions=[x509.UnrecognizedExtension(oid, b"\x04" + b"\x00" * pad)])
        if len(der) == size:
            return der
        pad += size - len(der)
    raise AssertionError(f"could not build a CSR of exactly {size} bytes")


def test_csr_size_limit_boundary() -> None:
    at_limit = _csr_of_size(MAX_CSR_BYTES)
    assert load_csr(at_limit).is_signature_valid
    with pytest.raises(CsrError, match="larger"):
        load_csr(_csr_of_size(MAX_CSR_BYTES + 1))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("ed25519", "not supported"),
        ("rsa1024", "2048"),
        ("rsa1536", "2048"),
        ("p521", "not supported"),
        ("k256", "not supported"),
    ],
)
def test_csr_key_types_refused(kind: str, message: str) -> None:
    with pytest.raises(CsrError, match=message):
        load_csr(make_csr(csr_key(kind)))


# --- hypothesis over names and TTLs ----------------------------------------------------------------------

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
dns_name = st.lists(label, min_size=1, max_size=4).map(".".join)
PROPERTY_CA = create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(hours=6), NOW)
PROPERTY_CSR = make_csr(csr_key("p256"))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(dns_name, max_size=5),
    st.integers(min_value=1, max_value=12 * 3600),
    st.integers(min_value=0, max_value=3 * 3600),
)
def test_leaf_names_and_lifetime_property(names: list[str], ttl_seconds: int, elapsed: int) -> None:
    now = NOW + dt.timedelta(seconds=elapsed)
    ttl = dt.timedelta(seconds=ttl_seconds)
    leaf = sign(PROPERTY_CSR, authority=PROPERTY_CA, dns_names=names, ttl=ttl, now=now)
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ID)]
    assert san.get_values_for_type(x509.DNSName) == names
    common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert common_names == ([names[0]] if names and len(names[0]) <= 64 else [])
    assert leaf.not_valid_after_utc == min(now + ttl, PROPERTY_CA.certificate.not_valid_after_utc)
    assert leaf.not_valid_after_utc <= PROPERTY_CA.certificate.not_valid_after_utc
    assert leaf.not_valid_before_utc == now - CLOCK_SKEW
    assert check_leaf(leaf) == ID
    assert verify_chain([leaf], {TD: [PROPERTY_CA.certificate]}, now) == ID


# --- state -----------------------------------------------------------------------------------------------


def state_for(jwt_key_type: KeyType = KeyType.EC_P256) -> AuthorityState:
    return AuthorityState.new(ca_for(KeyType.EC_P256), jwt_key_type, NOW)


def test_new_state() -> None:
    authority = ca_for(KeyType.EC_P256)
    state = AuthorityState.new(authority, KeyType.EC_P384, NOW)
    assert state.sequence == 1
    assert state.active_x509() is authority
    kid, key = state.active_jwt()
    assert kid and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert state.trust_bundle() == [authority.certificate]
    jwt = state.jwt_authorities()
    assert list(jwt) == [kid]
    assert public_numbers(jwt[kid]) == public_numbers(key.public_key())
    assert state.active.state == "active" and state.active.since == NOW
    assert state.prepared is None


def test_new_states_get_fresh_kids() -> None:
    assert state_for().active_jwt()[0] != state_for().active_jwt()[0]


def _assert_same_state(a: AuthorityState, b: AuthorityState) -> None:
    assert b.sequence == a.sequence
    assert len(b.slots) == len(a.slots)
    for x, y in zip(a.slots, b.slots, strict=True):
        assert (y.id, y.state, y.since, y.jwt_kid) == (x.id, x.state, x.since, x.jwt_kid)
        assert y.authority.certificate == x.authority.certificate
        assert y.authority.chain == x.authority.chain
        assert public_numbers(y.authority.key.public_key()) == public_numbers(x.authority.key.public_key())
        assert y.authority.key.private_numbers() == x.authority.key.private_numbers()
        assert public_numbers(y.jwt_key.public_key()) == public_numbers(x.jwt_key.public_key())
    assert b.trust_bundle() == a.trust_bundle()
    assert {k: public_numbers(v) for k, v in b.jwt_authorities().items()} == {
        k: public_numbers(v) for k, v in a.jwt_authorities().items()
    }


@pytest.mark.parametrize("jwt_key_type", list(KeyType))
def test_state_round_trip(jwt_key_type: KeyType) -> None:
    state = state_for(jwt_key_type)
    data = state.to_secret_data()
    assert set(data) == {DOCUMENT_KEY, BUNDLE_KEY}
    assert all(isinstance(v, str) for v in data.values())
    again = AuthorityState.from_secret_data(data)
    _assert_same_state(state, again)
    assert x509.load_pem_x509_certificates(base64.b64decode(data[BUNDLE_KEY])) == state.trust_bundle()


def test_state_round_trip_with_prepared_retired_and_chain() -> None:
    upstream = ca_for(KeyType.RSA_2048)
    chained = X509Authority(
        ca_for(KeyType.EC_P384).key, ca_for(KeyType.EC_P384).certificate, (upstream.certificate,)
    )
    state = AuthorityState.new(ca_for(KeyType.EC_P256), KeyType.EC_P256, NOW)
    state = state.prepare(new_slot(chained, KeyType.RSA_2048, "prepared", NOW))
    assert state.sequence == 2
    _assert_same_state(state, AuthorityState.from_secret_data(state.to_secret_data()))
    rotated = state.activate(NOW + dt.timedelta(hours=1))
    assert [s.state for s in rotated.slots] == ["retired", "active"]
    again = AuthorityState.from_secret_data(rotated.to_secret_data())
    _assert_same_state(rotated, again)
    assert again.active_x509().chain == (upstream.certificate,)
    assert len(again.trust_bundle()) == 2


# --- malformed secret data -------------------------------------------------------------------------------

GOOD = state_for()
OTHER = AuthorityState.new(create_self_signed_ca(TD, KeyType.EC_P256, CA_TTL, NOW), KeyType.EC_P256, NOW)


def _document(state: AuthorityState = GOOD) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(base64.b64decode(state.to_secret_data()[DOCUMENT_KEY]))
    return document


def _encode(document: Any) -> dict[str, str]:
    return {DOCUMENT_KEY: base64.b64encode(json.dumps(document).encode()).decode()}


def _with(change: Callable[[dict[str, Any]], None]) -> dict[str, str]:
    document = _document()
    change(document)
    return _encode(document)


def _set_slot(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document["slots"][0][field] = value

    return change


def _del_slot(field: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        del document["slots"][0][field]

    return change


def test_other_state_has_a_different_ca_key() -> None:
    assert public_numbers(OTHER.active_x509().key.public_key()) != public_numbers(
        GOOD.active_x509().key.public_key()
    )


def test_unchanged_document_is_accepted() -> None:
    _assert_same_state(GOOD, AuthorityState.from_secret_data(_with(lambda d: None)))


MALFORMED: list[Any] = [
    pytest.param(None, id="none"),
    pytest.param({}, id="empty"),
    pytest.param({BUNDLE_KEY: GOOD.to_secret_data()[BUNDLE_KEY]}, id="document-missing"),
    pytest.param({DOCUMENT_KEY: "!!!not base64!!!"}, id="not-base64"),
    pytest.param({DOCUMENT_KEY: base64.b64encode(b"not json").decode()}, id="not-json"),
    pytest.param({DOCUMENT_KEY: base64.b64encode(b"\xff\xfe").decode()}, id="not-utf8"),
    pytest.param({DOCUMENT_KEY: json.dumps(_document())}, id="json-not-base64-encoded"),
    pytest.param(_encode([1, 2]), id="json-array"),
    pytest.param(_encode(None), id="json-null"),
    pytest.param(_with(lambda d: d.update(version=2)), id="version-2"),
    pytest.param(_with(lambda d: d.update(version="1")), id="version-string"),
    pytest.param(_with(lambda d: d.pop("version")), id="version-missing"),
    pytest.param(_with(lambda d: d.pop("slots")), id="slots-missing"),
    pytest.param(_with(lambda d: d.update(slots=5)), id="slots-number"),
    pytest.param(_with(lambda d: d.update(slots=[5])), id="slot-number"),
    pytest.param(_with(lambda d: d.update(slots=[])), id="no-slots"),
    pytest.param(_with(lambda d: d.pop("sequence")), id="sequence-missing"),
    pytest.param(_with(lambda d: d.update(sequence="many")), id="sequence-garbage"),
    pytest.param(_with(_del_slot("key")), id="slot-key-missing"),
    pytest.param(_with(_del_slot("certificate")), id="slot-certificate-missing"),
    pytest.param(_with(_del_slot("jwtKey")), id="slot-jwt-key-missing"),
    pytest.param(_with(_del_slot("jwtKid")), id="slot-jwt-kid-missing"),
    pytest.param(_with(_del_slot("state")), id="slot-state-missing"),
    pytest.param(_with(_del_slot("since")), id="slot-since-missing"),
    pytest.param(_with(_del_slot("id")), id="slot-id-missing"),
    pytest.param(_with(_set_slot("key", "garbage")), id="key-garbage"),
    pytest.param(_with(_set_slot("certificate", "garbage")), id="certificate-garbage"),
    pytest.param(_with(_set_slot("jwtKey", "garbage")), id="jwt-key-garbage"),
    pytest.param(_with(_set_slot("chain", ["garbage"])), id="chain-garbage"),
    pytest.param(_with(_set_slot("since", "yesterday")), id="since-garbage"),
    pytest.param(_with(_set_slot("key", _document(OTHER)["slots"][0]["key"])), id="key-not-matching-cert"),
    pytest.param(_with(_set_slot("state", "bogus")), id="unknown-state"),
    pytest.param(_with(_set_slot("state", "Active")), id="state-wrong-case"),
    pytest.param(_with(_set_slot("state", "retired")), id="no-active-slot"),
    pytest.param(_with(_set_slot("state", "prepared")), id="only-prepared"),
    pytest.param(
        _with(lambda d: d["slots"].append(_document(OTHER)["slots"][0])),
        id="two-active-slots",
    ),
    pytest.param(
        _with(
            _set_slot(
                "key",
                ed25519.Ed25519PrivateKey.generate()
                .private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                .decode(),
            )
        ),
        id="ed25519-key",
    ),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_secret_data_is_refused(data: dict[str, str] | None) -> None:
    with pytest.raises(StateError):
        AuthorityState.from_secret_data(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("certificate", 1), ("key", 1), ("jwtKey", None), ("chain", [1])],
    ids=["certificate-int", "key-int", "jwt-key-null", "chain-entry-int"],
)
def test_non_string_pem_fields_are_refused_with_state_error(field: str, value: Any) -> None:
    with pytest.raises(StateError):
        AuthorityState.from_secret_data(_with(_set_slot(field, value)))
