"""The X.509 CA: a self-signed signing CA and X.509-SVIDs signed for a CSR's public key only.

Profiles follow SPIFFE-CONFORMANCE.md section B. A CSR contributes nothing but its public key: the names,
subject and extensions it asks for are ignored, so a CSR asking for CA rights or extra names gets a plain
leaf with kubespiffe's names only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubespiffe.authority.keys import KeyType, SigningKey, generate_key
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain

# Backdating absorbs clock skew between kubespiffed and verifiers.
CLOCK_SKEW = dt.timedelta(seconds=30)
MAX_CSR_BYTES = 64 * 1024
_ORG = "kubespiffe"


class CsrError(ValueError):
    """A CSR that cannot be signed; the message is one sentence for the caller."""


@dataclass(frozen=True)
class X509Authority:
    key: SigningKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


def _hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def create_self_signed_ca(
    trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
) -> X509Authority:
    """cA=true (critical), keyUsage keyCertSign+cRLSign (critical, no digitalSignature), URI SAN spiffe://td."""
    key = generate_key(key_type)
    serial = x509.random_serial_number()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, f"kubespiffe CA {trust_domain}"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, format(serial, "x")),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )
    return X509Authority(key=key, certificate=certificate)


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    if not der:
        raise CsrError("the CSR is empty")
    if len(der) > MAX_CSR_BYTES:
        raise CsrError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError:
        raise CsrError("the CSR is not a DER-encoded PKCS#10 request") from None
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CsrError(f"EC curve {key.curve.name} is not supported (use P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CsrError(f"RSA keys must have at least 2048 bits (got {key.key_size})")
    else:
        raise CsrError(f"key type {type(key).__name__} is not supported (use EC P-256/P-384 or RSA)")
    if not csr.is_signature_valid:
        raise CsrError("the CSR signature does not verify with its own public key")
    return csr


def sign_x509_svid(
    authority: X509Authority,
    csr: x509.CertificateSigningRequest,
    spiffe_id: SpiffeId,
    dns_names: Sequence[str],
    ttl: dt.timedelta,
    now: dt.datetime,
) -> x509.Certificate:
    """A leaf per checklist B.1-B.5 for the CSR's public key, never outliving the CA."""
    ca_id = authority.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ca_uris = ca_id.get_values_for_type(x509.UniformResourceIdentifier)
    if ca_uris and SpiffeId.parse(ca_uris[0]).trust_domain != spiffe_id.trust_domain:
        raise ValueError(f"{spiffe_id} is outside the CA's trust domain {ca_uris[0]}")
    if not spiffe_id.path:
        raise ValueError("an X.509-SVID needs a workload ID with a path, not the trust domain ID")
    public_key = csr.public_key()
    not_after = min(now + ttl, authority.certificate.not_valid_after_utc)
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)]
    if dns_names and len(dns_names[0]) <= 64:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    sans += [x509.DNSName(name) for name in dns_names]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
    )
    return builder.sign(authority.key, _hash_for(authority.key))
