"""The X.509 CA and the SVIDs it signs (checklist B.1-B.7), and every way a CSR is refused.

Issued certificates are checked twice: by kubespiffe.spiffe.x509svid (check_leaf, check_signing_ca,
verify_chain) and by asserting the extensions directly, so a lenient verifier cannot hide a bad profile.
CSRs come from tests/unit/certs.py; the CA under test is always made by kubespiffe.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubespiffe.authority.keys import KeyType, SigningKey, check_public_key, generate_key
from kubespiffe.authority.x509ca import (
    CLOCK_SKEW,
    MAX_CSR_BYTES,
    CsrError,
    X509Authority,
    create_self_signed_ca,
    load_csr,
    load_csr_key,
    sign_x509_svid,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import check_leaf, check_signing_ca, id_from_certificate, verify_chain
from tests.unit.certs import csr_der, ec_key, make_ca, make_csr

TD = TrustDomain("example.org")
ID = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CA_TTL = dt.timedelta(days=10)
HOUR = dt.timedelta(hours=1)
CSR_SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr")])

LEAF_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
}


@functools.cache
def _ca_under_test(key_type: KeyType = KeyType.EC_P256) -> X509Authority:
    """The CA kubespiffe makes, one per key type (not a fixture: it is what these tests judge)."""
    return create_self_signed_ca(TD, key_type, CA_TTL, NOW)


@functools.cache
def _key(key_type: KeyType) -> SigningKey:
    return generate_key(key_type)


def _sign(
    csr: bytes,
    *,
    authority: X509Authority | None = None,
    spiffe_id: SpiffeId = ID,
    dns_names: list[str] | None = None,
    ttl: dt.timedelta = HOUR,
    now: dt.datetime = NOW,
) -> x509.Certificate:
    """Load a DER CSR the way the issuer API does, then sign it."""
    return sign_x509_svid(authority or _ca_under_test(), load_csr(csr), spiffe_id, dns_names or [], ttl, now)


def _spki(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def _uris(cert: x509.Certificate) -> list[str]:
    san: x509.SubjectAlternativeName = _ext(cert, x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _dns(cert: x509.Certificate) -> list[str]:
    san: x509.SubjectAlternativeName = _ext(cert, x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def _ski(cert: x509.Certificate) -> bytes:
    ski: x509.SubjectKeyIdentifier = _ext(cert, x509.SubjectKeyIdentifier).value
    return ski.digest


# Minimal DER, to build CSRs that cryptography's builder refuses to make.


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | (n.bit_length() + 7) // 8]) + n.to_bytes(8, "big").lstrip(b"\0")
    )
    return bytes([tag]) + length + content


ECDSA_SHA256 = _tlv(0x30, bytes.fromhex("06082a8648ce3d040302"))
RSA_SHA256 = _tlv(0x30, bytes.fromhex("06092a864886f70d01010b0500"))


def _assemble(tbs: bytes, algorithm: bytes, signature: bytes) -> bytes:
    return _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\0" + signature))


def _tbs_for(spki_der: bytes) -> bytes:
    """CertificationRequestInfo: version 0, empty subject, the key, no attributes."""
    return _tlv(0x30, bytes.fromhex("020100") + _tlv(0x30, b"") + spki_der + bytes.fromhex("a000"))


# The signing CA (B.6, B.7).


@pytest.mark.parametrize("key_type", list(KeyType))
def test_ca_profile(key_type: KeyType) -> None:
    ca = _ca_under_test(key_type)
    cert = ca.certificate
    check_signing_ca(cert)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value == x509.BasicConstraints(ca=True, path_length=None)
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value == x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    assert _uris(cert) == ["spiffe://example.org"] and _dns(cert) == []
    assert id_from_certificate(cert) == TD.id
    assert _ski(cert) == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key()).digest
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "kubespiffe"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubespiffe CA example.org"
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == format(
        cert.serial_number, "x"
    )
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW == NOW - dt.timedelta(seconds=30)
    assert cert.not_valid_after_utc == NOW + CA_TTL
    assert 128 <= cert.serial_number.bit_length() <= 159
    assert cert.public_key() == ca.key.public_key() and ca.chain == ()
    cert.verify_directly_issued_by(cert)
    expected_hash = hashes.SHA384 if key_type is KeyType.EC_P384 else hashes.SHA256
    assert isinstance(cert.signature_hash_algorithm, expected_hash)
    assert {e.oid for e in cert.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    }


def test_every_ca_is_distinct() -> None:
    first, second = (create_self_signed_ca(TD, KeyType.EC_P256, CA_TTL, NOW) for _ in range(2))
    assert first.certificate.serial_number != second.certificate.serial_number
    assert first.certificate.subject != second.certificate.subject
    assert first.key.public_key() != second.key.public_key()


def test_ca_for_a_long_trust_domain_cuts_only_the_common_name() -> None:
    long_td = TrustDomain("a" * 63 + "." + "b" * 63 + ".example.org")
    ca = create_self_signed_ca(long_td, KeyType.EC_P256, CA_TTL, NOW)
    common_name = ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == f"kubespiffe CA {long_td}"[:64] and len(common_name) == 64
    assert _uris(ca.certificate) == [f"spiffe://{long_td}"]


@pytest.mark.parametrize(
    ("ttl", "now", "message"),
    [
        (dt.timedelta(0), NOW, "positive"),
        (-HOUR, NOW, "positive"),
        (HOUR, NOW.replace(tzinfo=None), "timezone-aware"),
    ],
)
def test_ca_refuses_a_bad_ttl_or_a_naive_clock(ttl: dt.timedelta, now: dt.datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_self_signed_ca(TD, KeyType.EC_P256, ttl, now)


# The leaf (B.1-B.5).

LEAF_CASES = [(ca_type, csr_type) for ca_type in KeyType for csr_type in KeyType]  # every CA signs every key


@pytest.mark.parametrize(
    ("ca_type", "csr_type"), LEAF_CASES, ids=[f"{a.value}-signs-{b.value}" for a, b in LEAF_CASES]
)
def test_leaf_profile(ca_type: KeyType, csr_type: KeyType) -> None:
    ca, key = _ca_under_test(ca_type), _key(csr_type)
    csr = load_csr(csr_der(make_csr(key)))
    names = ["web.default.svc", "web.default.svc.cluster.local"]
    leaf = sign_x509_svid(ca, csr, ID, names, HOUR, NOW)

    assert check_leaf(leaf) == ID
    assert verify_chain([leaf], {TD: [ca.certificate]}, NOW) == ID
    leaf.verify_directly_issued_by(ca.certificate)
    assert leaf.public_key() == key.public_key()
    assert _uris(leaf) == [str(ID)] and _dns(leaf) == names
    assert not _ext(leaf, x509.SubjectAlternativeName).critical  # allowed: the Subject is not empty
    constraints = _ext(leaf, x509.BasicConstraints)
    assert constraints.critical and constraints.value == x509.BasicConstraints(ca=False, path_length=None)
    usage = _ext(leaf, x509.KeyUsage)
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    assert usage.critical
    assert usage.value == x509.KeyUsage(True, False, is_rsa, False, False, False, False, False, False)
    eku = _ext(leaf, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert leaf.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubespiffe"),
            x509.NameAttribute(NameOID.COMMON_NAME, "web.default.svc"),
        ]
    )
    assert leaf.issuer == ca.certificate.subject
    aki: x509.AuthorityKeyIdentifier = _ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ski(ca.certificate)
    assert _ski(leaf) == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    assert {e.oid for e in leaf.extensions} == LEAF_EXTENSIONS
    assert leaf.not_valid_before_utc == NOW - CLOCK_SKEW
    assert leaf.not_valid_after_utc == NOW + HOUR
    expected_hash = hashes.SHA384 if ca_type is KeyType.EC_P384 else hashes.SHA256
    assert isinstance(leaf.signature_hash_algorithm, expected_hash)


def test_leaves_get_distinct_serials() -> None:
    csr = make_csr(_key(KeyType.EC_P256))
    serials = {sign_x509_svid(_ca_under_test(), csr, ID, [], HOUR, NOW).serial_number for _ in range(20)}
    assert len(serials) == 20


def test_leaf_without_dns_names_has_organization_only() -> None:
    leaf = sign_x509_svid(_ca_under_test(), make_csr(_key(KeyType.EC_P256)), ID, [], HOUR, NOW)
    assert leaf.subject == x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubespiffe")])
    assert _dns(leaf) == [] and check_leaf(leaf) == ID


def test_leaf_without_dns_names_has_a_subject_and_only_the_uri() -> None:
    leaf = _sign(csr_der(make_csr(_key(KeyType.EC_P256), CSR_SUBJECT)))
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert not leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(ID))]
    assert check_leaf(leaf) == ID


def test_long_first_dns_name_is_not_used_as_common_name() -> None:
    long_name = ("a" * 61) + ".svc"  # 65 characters: too long for a CN (ub-common-name is 64)
    assert len(long_name) == 65
    csr = csr_der(make_csr(_key(KeyType.EC_P256), CSR_SUBJECT))
    leaf = _sign(csr, dns_names=[long_name, "short.svc"])
    assert not leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert _dns(leaf) == [long_name, "short.svc"]
    exact = "b" * 60 + ".svc"
    assert len(exact) == 64
    leaf = _sign(csr, dns_names=[exact])
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == exact


def test_hostile_csr_gets_a_plain_leaf_with_only_our_names() -> None:
    """A CSR asking for CA rights, other names, a spoofed subject and odd extensions gives only its key."""
    key = _key(KeyType.EC_P256)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubespiffe"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubespiffe CA example.org"),
        ]
    )
    requested: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(True, False, False, False, False, True, True, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False),
        (
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("kubernetes.default.svc"),
                    x509.UniformResourceIdentifier("spiffe://example.org/ns/kube-system/sa/admin"),
                    x509.RFC822Name("admin@example.org"),
                ]
            ),
            False,
        ),
        (x509.NameConstraints(permitted_subtrees=[x509.DNSName("evil.org")], excluded_subtrees=None), True),
    ]
    csr = load_csr(csr_der(make_csr(key, subject, requested)))
    leaf = sign_x509_svid(_ca_under_test(), csr, ID, ["web.default.svc"], HOUR, NOW)

    assert check_leaf(leaf) == ID
    san: x509.SubjectAlternativeName = _ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(ID)), x509.DNSName("web.default.svc")]
    assert _ext(leaf, x509.BasicConstraints).value == x509.BasicConstraints(ca=False, path_length=None)
    usage: x509.KeyUsage = _ext(leaf, x509.KeyUsage).value
    assert not usage.key_cert_sign and not usage.crl_sign
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert {e.oid for e in leaf.extensions} == LEAF_EXTENSIONS
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web.default.svc"
    assert leaf.subject != csr.subject


def test_csr_cannot_ask_for_ca_rights_names_or_subject() -> None:
    spoofed = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "kubespiffe CA example.org"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
        ]
    )
    requested: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=None), False),
        (
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
            False,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.OCSP_SIGNING]), False),
        (
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("evil.example.com"),
                    x509.UniformResourceIdentifier("spiffe://example.org/ns/kube-system/sa/admin"),
                    x509.UniformResourceIdentifier("spiffe://other.org/x"),
                    x509.RFC822Name("root@example.org"),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
            False,
        ),
    ]
    csr = csr_der(make_csr(_key(KeyType.EC_P256), spoofed, requested))
    leaf = _sign(csr, dns_names=["web.default.svc"])
    assert check_leaf(leaf) == ID
    assert _ext(leaf, x509.BasicConstraints).value.ca is False
    usage = _ext(leaf, x509.KeyUsage).value
    assert not usage.key_cert_sign and not usage.crl_sign and not usage.content_commitment
    assert set(_ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(ID)), x509.DNSName("web.default.svc")]
    assert leaf.subject != spoofed
    assert "Evil Corp" not in leaf.subject.rfc4514_string()
    assert "CA" not in leaf.subject.rfc4514_string()
    csr_extension_oids = {e.oid for e in x509.load_der_x509_csr(csr).extensions}
    leaf_oids = {e.oid for e in leaf.extensions}
    assert leaf_oids == LEAF_EXTENSIONS
    assert csr_extension_oids <= leaf_oids  # same kinds, our values (checked above)


def test_csr_with_unknown_extension_does_not_leak_it() -> None:
    oid = ObjectIdentifier("1.3.6.1.4.1.55555.3")
    unknown = x509.UnrecognizedExtension(oid, b"\x05\x00")
    leaf = _sign(csr_der(make_csr(_key(KeyType.EC_P256), CSR_SUBJECT, [(unknown, False)])))
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_oid(oid)


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(
        st.from_regex(
            r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True
        )
        | st.from_regex(r"[a-z]{65,80}\.example", fullmatch=True),
        max_size=5,
    )
)
def test_dns_names_are_the_sans_in_order_and_the_first_short_one_is_the_common_name(names: list[str]) -> None:
    leaf = sign_x509_svid(_ca_under_test(), make_csr(_key(KeyType.EC_P256)), ID, names, HOUR, NOW)
    assert _uris(leaf) == [str(ID)] and _dns(leaf) == names
    common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert common_names == (names[:1] if names and len(names[0]) <= 64 else [])
    assert check_leaf(leaf) == ID


@pytest.mark.parametrize("name", ["", "two words.example", "bücher.example", "tab\t.example", "a" * 254])
def test_names_that_are_not_dns_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not a DNS name"):
        sign_x509_svid(_ca_under_test(), make_csr(_key(KeyType.EC_P256)), ID, ["ok.example", name], HOUR, NOW)


# Lifetime.


@settings(max_examples=60, deadline=None)
@given(
    ttl=st.integers(min_value=1, max_value=20 * 86400),
    elapsed=st.integers(min_value=-20, max_value=10 * 86400 - 1),
)
def test_leaf_lifetime_is_clamped_to_the_ca(ttl: int, elapsed: int) -> None:
    """`elapsed` < 0 is a replica whose clock runs behind the one that created the CA."""
    ca, now = _ca_under_test(), NOW + dt.timedelta(seconds=elapsed)
    leaf = sign_x509_svid(ca, make_csr(_key(KeyType.EC_P256)), ID, [], dt.timedelta(seconds=ttl), now)
    assert leaf.not_valid_after_utc == min(
        now + dt.timedelta(seconds=ttl), ca.certificate.not_valid_after_utc
    )
    assert leaf.not_valid_before_utc == max(now - CLOCK_SKEW, ca.certificate.not_valid_before_utc)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    assert verify_chain([leaf], {TD: [ca.certificate]}, now) == ID


def test_ttl_clamped_to_the_ca_not_after() -> None:
    authority = create_self_signed_ca(TD, KeyType.EC_P256, HOUR, NOW)
    csr = csr_der(make_csr(_key(KeyType.EC_P256), CSR_SUBJECT))
    long_lived = _sign(csr, authority=authority, ttl=2 * HOUR)
    assert long_lived.not_valid_after_utc == authority.certificate.not_valid_after_utc
    short = _sign(csr, authority=authority, ttl=dt.timedelta(minutes=10))
    assert short.not_valid_after_utc == NOW + dt.timedelta(minutes=10)
    later = _sign(csr, authority=authority, ttl=HOUR, now=NOW + dt.timedelta(minutes=30))
    assert later.not_valid_after_utc == authority.certificate.not_valid_after_utc
    anchors = {TD: [authority.certificate]}
    for leaf, at in ((long_lived, NOW), (short, NOW), (later, NOW + dt.timedelta(minutes=30))):
        assert verify_chain([leaf], anchors, at) == ID
        assert verify_chain([leaf], anchors, leaf.not_valid_after_utc) == ID


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
dns_name = st.lists(label, min_size=1, max_size=4).map(".".join)
PROPERTY_CA = create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(hours=6), NOW)
PROPERTY_CSR = csr_der(make_csr(_key(KeyType.EC_P256), CSR_SUBJECT))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(dns_name, max_size=5),
    st.integers(min_value=1, max_value=12 * 3600),
    st.integers(min_value=0, max_value=3 * 3600),
)
def test_leaf_names_and_lifetime_property(names: list[str], ttl_seconds: int, elapsed: int) -> None:
    now = NOW + dt.timedelta(seconds=elapsed)
    ttl = dt.timedelta(seconds=ttl_seconds)
    leaf = _sign(PROPERTY_CSR, authority=PROPERTY_CA, dns_names=names, ttl=ttl, now=now)
    assert _uris(leaf) == [str(ID)]
    assert _dns(leaf) == names
    common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert common_names == ([names[0]] if names and len(names[0]) <= 64 else [])
    assert leaf.not_valid_after_utc == min(now + ttl, PROPERTY_CA.certificate.not_valid_after_utc)
    assert leaf.not_valid_after_utc <= PROPERTY_CA.certificate.not_valid_after_utc
    assert leaf.not_valid_before_utc == now - CLOCK_SKEW
    assert check_leaf(leaf) == ID
    assert verify_chain([leaf], {TD: [PROPERTY_CA.certificate]}, now) == ID


def test_a_replica_whose_clock_is_behind_never_starts_a_leaf_before_its_ca() -> None:
    now = NOW - dt.timedelta(seconds=10)  # the CA was made 10 s "later" by another replica
    leaf = sign_x509_svid(_ca_under_test(), make_csr(_key(KeyType.EC_P256)), ID, [], HOUR, now)
    assert leaf.not_valid_before_utc == _ca_under_test().certificate.not_valid_before_utc == NOW - CLOCK_SKEW
    assert leaf.not_valid_after_utc == now + HOUR


def test_a_year_long_ttl_ends_with_the_ca() -> None:
    leaf = sign_x509_svid(
        _ca_under_test(), make_csr(_key(KeyType.EC_P256)), ID, [], dt.timedelta(days=365), NOW
    )
    assert leaf.not_valid_after_utc == _ca_under_test().certificate.not_valid_after_utc == NOW + CA_TTL


@pytest.mark.parametrize(
    ("ttl", "now", "message"),
    [
        (dt.timedelta(0), NOW, "positive"),
        (dt.timedelta(seconds=-1), NOW, "positive"),
        (HOUR, NOW.replace(tzinfo=None), "timezone-aware"),
        (HOUR, NOW + CA_TTL, "CA expired"),
        (HOUR, NOW + CA_TTL + dt.timedelta(days=1), "CA expired"),
    ],
)
def test_leaf_refuses_a_bad_ttl_a_naive_clock_or_an_expired_ca(
    ttl: dt.timedelta, now: dt.datetime, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sign_x509_svid(_ca_under_test(), make_csr(_key(KeyType.EC_P256)), ID, [], ttl, now)


# Which IDs a CA may sign.


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://other.org/ns/default/sa/web",
        "spiffe://example.org.evil/x",
        "spiffe://sub.example.org/x",
        "spiffe://org/x",
    ],
)
def test_ids_outside_the_ca_trust_domain_are_refused(spiffe_id: str) -> None:
    with pytest.raises(ValueError, match=r"outside the CA's trust domain example\.org$"):
        sign_x509_svid(
            _ca_under_test(), make_csr(_key(KeyType.EC_P256)), SpiffeId.parse(spiffe_id), [], HOUR, NOW
        )


def test_the_trust_domain_id_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a workload ID with a path"):
        sign_x509_svid(_ca_under_test(), make_csr(_key(KeyType.EC_P256)), TD.id, [], HOUR, NOW)


def _ca_with(names: list[x509.GeneralName] | None, ski: bytes | None = None) -> X509Authority:
    """A CA made by someone else (an upstream-style CA): optional SANs and an SKI of its own choosing."""
    key = ec_key()
    san = [] if names is None else [(x509.SubjectAlternativeName(names), False)]  # [] is an empty SAN
    key_id = [] if ski is None else [(x509.SubjectKeyIdentifier(ski), False)]
    ca = make_ca(
        "upstream", key=key, names=[], not_before=NOW - HOUR, not_after=NOW + CA_TTL, extra=[*san, *key_id]
    )
    return X509Authority(key, ca.cert)


@pytest.mark.parametrize(
    "names",
    [
        None,
        [],
        [x509.DNSName("ca.example.org")],
        [x509.UniformResourceIdentifier("https://example.org")],
        [x509.UniformResourceIdentifier("spiffe://example.org/ca")],
        [
            x509.UniformResourceIdentifier("spiffe://example.org"),
            x509.UniformResourceIdentifier("spiffe://b.org"),
        ],
    ],
    ids=["no SAN", "empty SAN", "DNS only", "not SPIFFE", "ID with a path", "two trust domains"],
)
def test_a_ca_without_one_trust_domain_id_signs_nothing(names: list[x509.GeneralName] | None) -> None:
    with pytest.raises(ValueError, match="no single spiffe://<trust domain> URI SAN"):
        sign_x509_svid(_ca_with(names), make_csr(_key(KeyType.EC_P256)), ID, [], HOUR, NOW)


def test_aki_copies_the_ca_ski_even_when_it_is_not_the_key_hash() -> None:
    """Verifiers match AKI to SKI byte for byte; an upstream CA may derive its SKI another way."""
    ca = _ca_with([x509.UniformResourceIdentifier("spiffe://example.org")], ski=bytes(range(8)))
    leaf = sign_x509_svid(ca, make_csr(_key(KeyType.EC_P256)), ID, [], HOUR, NOW)
    aki: x509.AuthorityKeyIdentifier = _ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == bytes(range(8))
    assert verify_chain([leaf], {TD: [ca.certificate]}, NOW) == ID


def test_aki_of_a_ca_without_ski_is_the_key_hash() -> None:
    ca = _ca_with([x509.UniformResourceIdentifier("spiffe://example.org")])
    leaf = sign_x509_svid(ca, make_csr(_key(KeyType.EC_P256)), ID, [], HOUR, NOW)
    aki: x509.AuthorityKeyIdentifier = _ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki == x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())


def test_sign_refuses_a_csr_key_that_load_csr_would_refuse() -> None:
    """Callers that build their own CSR object (kubespiffed's serving SVID) get the same key policy."""
    with pytest.raises(ValueError, match="not supported"):
        sign_x509_svid(_ca_under_test(), make_csr(ed25519.Ed25519PrivateKey.generate()), ID, [], HOUR, NOW)


# Loading CSRs.


def test_good_csr_is_loaded() -> None:
    key = _key(KeyType.EC_P256)
    csr = load_csr(csr_der(make_csr(key, CSR_SUBJECT)))
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()


def test_a_good_csr_loads_for_every_supported_key_type() -> None:
    for key_type in KeyType:
        key = _key(key_type)
        assert load_csr(csr_der(make_csr(key))).public_key() == key.public_key()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x00", "not a DER-encoded PKCS#10"),
        (b"not a csr at all", "not a DER-encoded PKCS#10"),
        (b"garbage", "not a DER"),
        (b"\x30\x00", "not a DER-encoded PKCS#10"),
        (b"\x30\x03\x02\x01\x01", "not a DER"),
        (b"\x30" * MAX_CSR_BYTES, "not a DER-encoded PKCS#10"),  # at the limit: parsed, not size-refused
        (b"\x30" * (MAX_CSR_BYTES + 1), f"larger than {MAX_CSR_BYTES} bytes"),
        (b"\x00" * (MAX_CSR_BYTES + 1), "larger"),
        (b"\x00" * (10 * MAX_CSR_BYTES), f"larger than {MAX_CSR_BYTES} bytes"),
    ],
    ids=[
        "empty",
        "one byte",
        "text",
        "garbage",
        "empty sequence",
        "wrong structure",
        "garbage at the limit",
        "one over",
        "zeros one over",
        "ten times",
    ],
)
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(CsrError, match=message):
        load_csr(data)


def test_pem_and_truncated_and_padded_csrs_are_refused() -> None:
    csr = make_csr(_key(KeyType.EC_P256))
    der = csr_der(csr)
    for data in (csr.public_bytes(Encoding.PEM), der[:-1], der[: len(der) // 2], der + b"\x00"):
        with pytest.raises(CsrError, match="not a DER-encoded PKCS#10"):
            load_csr(data)


def test_truncated_csr_is_refused() -> None:
    der = csr_der(make_csr(_key(KeyType.EC_P256), CSR_SUBJECT))
    for cut in (1, len(der) // 2, len(der) - 1):
        with pytest.raises(CsrError):
            load_csr(der[:cut])


def _csr_of_size(size: int) -> bytes:
    """A valid RSA-2048 CSR (fixed-length signature) padded by an extension to exactly `size` bytes."""
    key = _key(KeyType.RSA_2048)
    oid = ObjectIdentifier("1.3.6.1.4.1.55555.4")
    pad = size - 600
    for _ in range(10):
        padding = x509.UnrecognizedExtension(oid, b"\x04" + b"\x00" * pad)
        der = csr_der(make_csr(key, CSR_SUBJECT, [(padding, False)]))
        if len(der) == size:
            return der
        pad += size - len(der)
    raise AssertionError(f"could not build a CSR of exactly {size} bytes")


def test_csr_size_limit_boundary() -> None:
    at_limit = _csr_of_size(MAX_CSR_BYTES)
    assert load_csr(at_limit).is_signature_valid
    with pytest.raises(CsrError, match="larger"):
        load_csr(_csr_of_size(MAX_CSR_BYTES + 1))


def test_csr_with_a_flipped_last_byte_is_refused() -> None:
    for key_type in (KeyType.EC_P256, KeyType.RSA_2048):
        der = bytearray(csr_der(make_csr(_key(key_type), CSR_SUBJECT)))
        der[-1] ^= 0x01
        x509.load_der_x509_csr(bytes(der))  # still well-formed DER
        with pytest.raises(CsrError, match="signature"):
            load_csr(bytes(der))


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
def test_flipped_signature_byte_is_refused(key_type: KeyType) -> None:
    der = bytearray(csr_der(make_csr(_key(key_type))))
    der[-5] ^= 0x01  # inside the signature BIT STRING, which ends the CSR
    with pytest.raises(CsrError, match="signature does not verify"):
        load_csr(bytes(der))


def test_csr_signed_by_another_key_than_its_own_is_refused() -> None:
    """Proof of possession: the request carries key B but is signed with key A."""
    mine, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    tbs = make_csr(mine).tbs_certrequest_bytes
    honest = _assemble(tbs, ECDSA_SHA256, mine.sign(tbs, ec.ECDSA(hashes.SHA256())))
    assert load_csr(honest).public_key() == mine.public_key()  # the DER assembly itself is sound
    forged = _assemble(tbs, ECDSA_SHA256, other.sign(tbs, ec.ECDSA(hashes.SHA256())))
    with pytest.raises(CsrError, match="signature does not verify with its own public key"):
        load_csr(forged)


def test_csr_whose_public_key_was_swapped_is_refused() -> None:
    """Swap the public key in a CSR for another key of the same size: the signature no longer matches."""
    signer, other = _key(KeyType.EC_P256), ec_key()
    der = csr_der(make_csr(signer, CSR_SUBJECT))
    assert der.count(_spki(signer)) == 1 and len(_spki(signer)) == len(_spki(other))
    swapped = der.replace(_spki(signer), _spki(other))
    parsed = x509.load_der_x509_csr(swapped)
    assert parsed.public_key() == other.public_key()
    assert not parsed.is_signature_valid
    with pytest.raises(CsrError, match="signature"):
        load_csr(swapped)


def test_csr_with_a_signature_algorithm_for_another_key_type_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tbs = make_csr(key).tbs_certrequest_bytes
    with pytest.raises(CsrError, match="signature does not verify"):
        load_csr(_assemble(tbs, RSA_SHA256, key.sign(tbs, ec.ECDSA(hashes.SHA256()))))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: dsa.generate_private_key(2048), "DSAPublicKey is not supported"),
        (ed25519.Ed25519PrivateKey.generate, "Ed25519PublicKey is not supported"),
        (ed448.Ed448PrivateKey.generate, "Ed448PublicKey is not supported"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "curve secp521r1 is not supported"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "curve secp256k1 is not supported"),
        (lambda: ec.generate_private_key(ec.SECP224R1()), "curve secp224r1 is not supported"),
        (lambda: rsa.generate_private_key(65537, 1024), "at least 2048 bits"),  # noqa: S505 (weak on purpose)
        (lambda: rsa.generate_private_key(65537, 2047), "at least 2048 bits"),  # noqa: S505 (weak on purpose)
        (lambda: rsa.generate_private_key(65537, 1536), "2048"),  # noqa: S505 (weak on purpose)
    ],
    ids=["dsa", "ed25519", "ed448", "p521", "secp256k1", "p224", "rsa1024", "rsa2047", "rsa1536"],
)
def test_unsupported_csr_keys_are_refused(make: object, message: str) -> None:
    key = make()  # type: ignore[operator]
    with pytest.raises(CsrError, match=message):
        load_csr(csr_der(make_csr(key)))


def test_rsa_keys_above_8192_bits_are_refused_before_any_signature_check() -> None:
    """Checked before the signature, so a huge modulus with a junk signature is a key-size refusal."""
    modulus = (1 << 8199) | 1
    big = rsa.RSAPublicNumbers(65537, modulus).public_key()
    spki = big.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(CsrError, match="at most 8192 bits"):
        load_csr(_assemble(_tbs_for(spki), RSA_SHA256, b"\x01" * 1025))
    check_public_key(rsa.RSAPublicNumbers(65537, (1 << 8191) | 1).public_key())  # 8192 itself is fine


def _ec_csr_der() -> bytes:
    return csr_der(make_csr(_key(KeyType.EC_P256)))


def test_csr_with_an_unknown_key_algorithm_is_refused() -> None:
    id_ec_public_key = bytes.fromhex("2a8648ce3d0201")
    der = _ec_csr_der()
    assert der.count(id_ec_public_key) == 1
    with pytest.raises(CsrError, match="key type is not supported"):
        load_csr(der.replace(id_ec_public_key, bytes.fromhex("2a8648ce3d0209")))


def test_csr_with_an_unknown_curve_is_refused() -> None:
    prime256v1 = bytes.fromhex("2a8648ce3d030107")
    der = _ec_csr_der()
    assert der.count(prime256v1) == 1
    with pytest.raises(CsrError, match="key type is not supported"):
        load_csr(der.replace(prime256v1, bytes.fromhex("2a8648ce3d03017f")))


def test_csr_with_a_point_off_the_curve_is_refused() -> None:
    point = _key(KeyType.EC_P256).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    der = _ec_csr_der()
    assert der.count(point) == 1
    with pytest.raises(CsrError, match="public key cannot be decoded"):
        load_csr(der.replace(point, b"\x04" + b"\x01" * 64))


def test_csr_with_an_unknown_version_is_refused() -> None:
    der = bytearray(_ec_csr_der())
    version = der.index(bytes.fromhex("020100"))  # the first INTEGER: CertificationRequestInfo.version
    der[version + 2] = 5
    with pytest.raises(CsrError, match="not a DER-encoded PKCS#10"):
        load_csr(bytes(der))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([KeyType.EC_P256, KeyType.RSA_2048]),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 255), st.sampled_from("sdi")),
        min_size=1,
        max_size=4,
    ),
)
def test_a_damaged_csr_is_a_csr_error_or_a_valid_csr(
    base: KeyType, edits: list[tuple[int, int, str]]
) -> None:
    """No damage makes load_csr raise anything but CsrError, nor accept a CSR whose signature is bad."""
    der = bytearray(csr_der(make_csr(_key(base))))
    for position, value, kind in edits:
        at = position % len(der)
        if kind == "s":
            der[at] = value
        elif kind == "d":
            del der[at]
        else:
            der.insert(at, value)
    try:
        csr = load_csr(bytes(der))
    except CsrError:
        return
    assert csr.is_signature_valid
    check_public_key(csr.public_key())


def _step_by_step_leaf(
    authority: X509Authority,
    public_key: Any,
    spiffe_id: SpiffeId,
    dns_names: list[str],
    ttl: dt.timedelta,
    serial: int,
) -> bytes:
    """The profile written out with cryptography's builder, one setter per part: what sign_x509_svid's
    prebuilt, pre-encoded path must reproduce byte for byte (TBS; the ECDSA signature itself is random)."""
    ca = authority.certificate
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubespiffe")]
    if dns_names:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]))
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .issuer_name(ca.subject)
        .subject_name(x509.Name(subject))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(max(NOW - CLOCK_SKEW, ca.not_valid_before_utc))
        .not_valid_after(min(NOW + ttl, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, rsa_key, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(spiffe_id)), *(x509.DNSName(n) for n in dns_names)]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(authority.key, hashes.SHA256()).tbs_certificate_bytes


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
@pytest.mark.parametrize("dns_names", [[], ["web.default.svc", "web"]])
def test_leaf_is_byte_for_byte_the_step_by_step_profile(
    monkeypatch: pytest.MonkeyPatch, key_type: KeyType, dns_names: list[str]
) -> None:
    """The fast path (builder given every part at once, extensions encoded once per CA or per name)
    makes the same TBSCertificate as the plain builder, on the first leaf and on a later one (cached)."""
    monkeypatch.setattr(x509, "random_serial_number", lambda: 0x1234)
    public_key = _key(key_type).public_key()
    for _ in range(2):
        leaf = sign_x509_svid(_ca_under_test(), make_csr(_key(key_type)), ID, dns_names, HOUR, NOW)
        expected = _step_by_step_leaf(_ca_under_test(), public_key, ID, dns_names, HOUR, 0x1234)
        assert leaf.tbs_certificate_bytes == expected


def test_leaf_names_are_checked_on_every_call_until_cached_valid() -> None:
    """A refused name is never remembered: the same bad request is refused again."""
    csr = make_csr(_key(KeyType.EC_P256))
    for _ in range(2):
        with pytest.raises(ValueError, match="not a DNS name"):
            sign_x509_svid(_ca_under_test(), csr, ID, ["bad name"], HOUR, NOW)
        with pytest.raises(ValueError, match="outside the CA's trust domain"):
            sign_x509_svid(_ca_under_test(), csr, SpiffeId.parse("spiffe://other.org/x"), [], HOUR, NOW)


def test_load_csr_key_returns_the_proven_key_and_refuses_what_load_csr_refuses() -> None:
    """The issuer's path (load_csr_key) runs every check load_csr runs: proof of possession included."""
    for key_type in KeyType:
        key = _key(key_type)
        assert load_csr_key(csr_der(make_csr(key))) == key.public_key()
    signer, other = _key(KeyType.EC_P256), ec_key()
    swapped = csr_der(make_csr(signer, CSR_SUBJECT)).replace(_spki(signer), _spki(other))
    for bad, message in ((b"", "empty"), (b"garbage", "not a DER"), (swapped, "signature does not verify")):
        with pytest.raises(CsrError, match=message):
            load_csr_key(bad)
