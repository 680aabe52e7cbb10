"""Certificate, key and CSR fixtures for the unit tests, built with cryptography alone.

This is the one place tests build CAs, leaves and CSRs. No kubespiffe code takes part, so the verifier is
never checked against the issuer it is meant to judge. Every profile field can be dropped or changed, to
reproduce go-spiffe's x509svid testdata cases and more.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
# What a CSR may be signed with, including key types kubespiffe refuses.
CsrKey = Key | ed448.Ed448PrivateKey | dsa.DSAPrivateKey

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
LEAF_USAGE = frozenset({"digital_signature"})
CA_USAGE = frozenset({"key_cert_sign", "crl_sign"})
TLS_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
PLACEHOLDER_OID = ObjectIdentifier("2.5.29.99")  # unassigned; DER 06 03 55 1d 63
EMPTY_NAME = x509.Name([])


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: Key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


@cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per size for the whole run: generating them is slow and nothing depends on uniqueness."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubespiffe tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def key_usage(flags: Collection[str]) -> x509.KeyUsage:
    return x509.KeyUsage(**{flag: flag in flags for flag in USAGE_FLAGS})


def _hash_for(key: CsrKey) -> hashes.SHA256 | None:
    """EdDSA signs without a separate hash; everything else here uses SHA-256."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


def build(
    subject: x509.Name,
    issuer: Issued | None,
    *,
    key: Key | None = None,
    names: Sequence[x509.GeneralName] = (),
    san_critical: bool = False,
    ca: bool | None = False,
    path_length: int | None = None,
    usage: Collection[str] | None = LEAF_USAGE,
    usage_critical: bool = True,
    eku: Sequence[ObjectIdentifier] | None = TLS_EKU,
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + DAY,
    issuer_name: x509.Name | None = None,
    key_identifiers: bool = False,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """One certificate; `issuer=None` self-signs it. `None` for ca/usage/eku leaves that extension out.

    `key_identifiers` adds SKI and AKI, which TLS stacks may want and the SPIFFE verifier does not need.
    """
    key = key or ec_key()
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or (issuer.cert.subject if issuer else subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if usage is not None:
        builder = builder.add_extension(key_usage(usage), critical=usage_critical)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=san_critical)
    if key_identifiers:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(signer, _hash_for(signer)), key)


def uris(*values: str) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(v) for v in values]


def make_ca(
    label: str,
    issuer: Issued | None = None,
    *,
    trust_domain: str | None = "example.org",
    key: Key | None = None,
    ca: bool | None = True,
    usage: Collection[str] | None = CA_USAGE,
    usage_critical: bool = True,
    not_before: dt.datetime = NOW - 10 * DAY,
    not_after: dt.datetime = NOW + 10 * DAY,
    path_length: int | None = None,
    names: Sequence[x509.GeneralName] | None = None,
    subject: x509.Name | None = None,
    key_identifiers: bool = False,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """A signing CA in the SPIFFE profile (URI SAN spiffe://<trust domain>, no EKU) unless told otherwise."""
    default_names = uris(f"spiffe://{trust_domain}") if trust_domain else []
    return build(
        subject or name(label),
        issuer,
        key=key,
        names=default_names if names is None else names,
        ca=ca,
        path_length=path_length,
        usage=usage,
        usage_critical=usage_critical,
        eku=None,
        not_before=not_before,
        not_after=not_after,
        key_identifiers=key_identifiers,
        extra=extra,
    )


def make_leaf(
    issuer: Issued,
    spiffe_id: str = "spiffe://example.org/ns/a/sa/b",
    *,
    subject: x509.Name | None = None,
    names: Sequence[x509.GeneralName] | None = None,
    key: Key | None = None,
    san_critical: bool = False,
    ca: bool | None = False,
    path_length: int | None = None,
    usage: Collection[str] | None = LEAF_USAGE,
    usage_critical: bool = True,
    eku: Sequence[ObjectIdentifier] | None = TLS_EKU,
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + DAY,
    issuer_name: x509.Name | None = None,
    key_identifiers: bool = False,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """A leaf X.509-SVID for `spiffe_id` signed by `issuer`, in the SPIFFE profile unless told otherwise."""
    return build(
        name("workload") if subject is None else subject,
        issuer,
        key=key,
        names=uris(spiffe_id) if names is None else names,
        san_critical=san_critical,
        ca=ca,
        path_length=path_length,
        usage=usage,
        usage_critical=usage_critical,
        eku=eku,
        not_before=not_before,
        not_after=not_after,
        issuer_name=issuer_name,
        key_identifiers=key_identifiers,
        extra=extra,
    )


def retag_extension(cert: x509.Certificate, oid: ObjectIdentifier) -> x509.Certificate:
    """Rename the extension built with PLACEHOLDER_OID to `oid` (2.5.29.x only), breaking the signature.

    This produces what no builder will: duplicate extensions and known extensions with malformed values.
    """
    placeholder, target = PLACEHOLDER_OID.dotted_string, oid.dotted_string
    assert target.startswith("2.5.29.") and int(target.rsplit(".", 1)[1]) < 128
    der = cert.public_bytes(Encoding.DER)
    old = bytes([0x06, 0x03, 0x55, 0x1D, int(placeholder.rsplit(".", 1)[1])])
    new = bytes([0x06, 0x03, 0x55, 0x1D, int(target.rsplit(".", 1)[1])])
    assert der.count(old) == 1
    return x509.load_der_x509_certificate(der.replace(old, new))


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def tamper_signature(cert: x509.Certificate) -> x509.Certificate:
    """Flip a bit in the last byte of the DER, which is inside the signature value."""
    data = bytearray(der(cert))
    data[-1] ^= 0x01
    return x509.load_der_x509_certificate(bytes(data))


def make_csr(
    key: CsrKey,
    subject: x509.Name = EMPTY_NAME,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request signed by `key`, asking for whatever `subject` and `extensions` say."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, _hash_for(key))


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(Encoding.DER)
