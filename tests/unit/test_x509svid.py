"""X.509-SVID rules (checklist B): what kubespiffe issues, and what a verifier must refuse.

Fixtures follow go-spiffe's x509svid testdata cases (wrong-leaf-ca-true, wrong-leaf-cert-sign, ...),
built here with cryptography; the issuing side is kubespiffe's own authority code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from kubespiffe.agent.issuer_client import new_csr
from kubespiffe.authority.keys import KeyType
from kubespiffe.authority.x509ca import (
    CsrError,
    X509Authority,
    create_self_signed_ca,
    load_csr,
    sign_x509_svid,
)
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509SvidError, check_leaf, check_signing_ca, verify_chain

TD = TrustDomain("example.org")
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
ID = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
CA = create_self_signed_ca(TD, KeyType.EC_P256, dt.timedelta(days=30), NOW - dt.timedelta(days=1))
CSR = load_csr(new_csr()[1])


def _leaf(**changes: Any) -> x509.Certificate:
    """A leaf signed by CA, with one attribute changed from the SPIFFE profile."""
    key = ec.generate_private_key(ec.SECP256R1())
    uris = changes.get("uris", [str(ID)])
    usage = {
        "digital_signature": True,
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": False,
        "crl_sign": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    usage.update(changes.get("usage", {}))
    builder = (
        x509.CertificateBuilder()
        .subject_name(changes.get("subject", x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "t")])))
        .issuer_name(changes.get("issuer", CA).certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(changes.get("not_before", NOW - dt.timedelta(hours=1)))
        .not_valid_after(changes.get("not_after", NOW + dt.timedelta(hours=1)))
        .add_extension(x509.BasicConstraints(ca=changes.get("ca", False), path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=changes.get("usage_critical", True))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=changes.get("san_critical", False),
        )
    if "eku" in changes:
        builder = builder.add_extension(x509.ExtendedKeyUsage(changes["eku"]), critical=False)
    signer: X509Authority = changes.get("issuer", CA)
    return builder.sign(signer.key, hashes.SHA256())


def test_issued_leaf_obeys_the_profile_and_verifies() -> None:
    leaf = sign_x509_svid(CA, CSR, ID, ["web.example.org"], dt.timedelta(hours=1), NOW)
    assert check_leaf(leaf) == ID
    assert verify_chain([leaf], {TD: [CA.certificate]}, NOW) == ID
    check_signing_ca(CA.certificate)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)


REFUSED: list[tuple[str, Callable[[], x509.Certificate], str]] = [
    ("wrong-leaf-ca-true", lambda: _leaf(ca=True), "cA=true"),
    ("wrong-leaf-cert-sign", lambda: _leaf(usage={"key_cert_sign": True}), "keyCertSign"),
    ("wrong-leaf-crl-sign", lambda: _leaf(usage={"crl_sign": True}), "cRLSign"),
    (
        "wrong-leaf-no-digital-signature",
        lambda: _leaf(usage={"digital_signature": False}),
        "digitalSignature",
    ),
    ("wrong-leaf-empty-id", lambda: _leaf(uris=[]), "0 URI SANs"),
    ("two URI SANs", lambda: _leaf(uris=[str(ID), "spiffe://example.org/other"]), "2 URI SANs"),
    ("root path", lambda: _leaf(uris=["spiffe://example.org"]), "no path"),
    ("not a SPIFFE ID", lambda: _leaf(uris=["https://example.org/x"]), "not a SPIFFE ID"),
    ("empty subject, SAN not critical", lambda: _leaf(subject=x509.Name([])), "critical"),
    ("keyUsage not critical", lambda: _leaf(usage_critical=False), "critical"),
    ("EKU without clientAuth", lambda: _leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH]), "clientAuth"),
]


@pytest.mark.parametrize(("case", "make", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_leaf_rules(case: str, make: Callable[[], x509.Certificate], message: str) -> None:
    with pytest.raises(X509SvidError, match=message):
        check_leaf(make())
    with pytest.raises(X509SvidError):
        verify_chain([make()], {TD: [CA.certificate]}, NOW)


def test_empty_subject_with_critical_san_is_accepted() -> None:
    assert check_leaf(_leaf(subject=x509.Name([]), san_critical=True)) == ID


def _intermediate(path_length: int | None = None, ca: bool = True) -> X509Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"intermediate {x509.random_serial_number()}")])
    usage = x509.KeyUsage(False, False, False, False, False, ca, ca, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(CA.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(usage, critical=True)
        .sign(CA.key, hashes.SHA256())
    )
    return X509Authority(key, cert)


def test_chain_through_an_intermediate() -> None:
    middle = _intermediate()
    leaf = _leaf(issuer=middle)
    assert verify_chain([leaf, middle.certificate], {TD: [CA.certificate]}, NOW) == ID
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf], {TD: [CA.certificate]}, NOW)


def test_wrong_intermediate_no_ca() -> None:
    middle = _intermediate(ca=False)
    with pytest.raises(X509SvidError, match="not a CA"):
        verify_chain([_leaf(issuer=middle), middle.certificate], {TD: [CA.certificate]}, NOW)


def test_path_length_is_enforced() -> None:
    upper = _intermediate(path_length=0)
    key = ec.generate_private_key(ec.SECP256R1())
    lower_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lower")]))
        .issuer_name(upper.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(upper.key, hashes.SHA256())
    )
    lower = X509Authority(key, lower_cert)
    with pytest.raises(X509SvidError, match="allows 0"):
        verify_chain([_leaf(issuer=lower), lower_cert, upper.certificate], {TD: [CA.certificate]}, NOW)


def test_validity_windows() -> None:
    with pytest.raises(X509SvidError, match="expired"):
        verify_chain([_leaf(not_after=NOW - dt.timedelta(seconds=1))], {TD: [CA.certificate]}, NOW)
    with pytest.raises(X509SvidError, match="not valid yet"):
        verify_chain([_leaf(not_before=NOW + dt.timedelta(minutes=1))], {TD: [CA.certificate]}, NOW)


def test_only_the_leafs_own_trust_domain_bundle_counts() -> None:
    other = TrustDomain("other.org")
    foreign_ca = create_self_signed_ca(
        other, KeyType.EC_P256, dt.timedelta(days=30), NOW - dt.timedelta(days=1)
    )
    leaf = _leaf(issuer=foreign_ca)  # claims example.org but is signed by other.org's CA
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf], {TD: [CA.certificate], other: [foreign_ca.certificate]}, NOW)
    with pytest.raises(X509SvidError, match="no bundle"):
        verify_chain([_leaf()], {other: [CA.certificate]}, NOW)


def test_tampered_signature_is_refused() -> None:
    der = bytearray(_leaf().public_bytes(Encoding.DER))
    der[-3] ^= 0xFF
    tampered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(X509SvidError):
        verify_chain([tampered], {TD: [CA.certificate]}, NOW)


# Issuing side: what a CSR can and cannot obtain.


def test_csr_names_and_ca_rights_are_ignored() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("evil.example"),
                    x509.UniformResourceIdentifier("spiffe://example.org/admin"),
                    x509.RFC822Name("a@b.c"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    leaf = sign_x509_svid(CA, csr, ID, [], dt.timedelta(hours=1), NOW)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ID)]
    assert san.get_values_for_type(x509.DNSName) == [] and san.get_values_for_type(x509.RFC822Name) == []
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


@pytest.mark.parametrize(
    ("der", "message"),
    [(b"", "empty"), (b"\x30\x03abc", "not a DER"), (b"x" * (64 * 1024 + 1), "larger than")],
)
def test_garbage_csrs_are_refused(der: bytes, message: str) -> None:
    with pytest.raises(CsrError, match=message):
        load_csr(der)


def test_csr_with_a_bad_signature_or_weak_key_is_refused() -> None:
    der = bytearray(new_csr()[1])
    der[-3] ^= 0xFF
    with pytest.raises(CsrError, match="signature"):
        load_csr(bytes(der))
    for key in (
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505 (weak on purpose)
    ):
        algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algorithm)
        with pytest.raises(CsrError, match=r"not supported|at least 2048"):
            load_csr(csr.public_bytes(Encoding.DER))


def test_ttl_never_outlives_the_ca_and_ids_stay_in_the_trust_domain() -> None:
    leaf = sign_x509_svid(CA, CSR, ID, [], dt.timedelta(days=365), NOW)
    assert leaf.not_valid_after_utc == CA.certificate.not_valid_after_utc
    with pytest.raises(ValueError, match="outside"):
        sign_x509_svid(CA, CSR, SpiffeId.parse("spiffe://other.org/x"), [], dt.timedelta(hours=1), NOW)
    with pytest.raises(ValueError, match="path"):
        sign_x509_svid(CA, CSR, TD.id, [], dt.timedelta(hours=1), NOW)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_every_ca_key_type_has_the_ca_profile(key_type: KeyType) -> None:
    ca = create_self_signed_ca(TD, key_type, dt.timedelta(days=1), NOW)
    check_signing_ca(ca.certificate)
    usage = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    san = ca.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert len(ca.certificate.subject) > 0
    leaf = sign_x509_svid(ca, CSR, ID, [], dt.timedelta(hours=1), NOW)
    assert verify_chain([leaf], {TD: [ca.certificate]}, NOW + dt.timedelta(minutes=1)) == ID


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True), max_size=4),
    st.integers(min_value=60, max_value=30 * 86400),
)
def test_any_dns_names_and_ttl(dns_names: list[str], ttl_seconds: int) -> None:
    leaf = sign_x509_svid(CA, CSR, ID, dns_names, dt.timedelta(seconds=ttl_seconds), NOW)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == dns_names
    assert check_leaf(leaf) == ID
    expected = min(NOW + dt.timedelta(seconds=ttl_seconds), CA.certificate.not_valid_after_utc)
    assert leaf.not_valid_after_utc == expected.replace(microsecond=0)
