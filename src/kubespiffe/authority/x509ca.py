"""The X.509 CA: a self-signed or upstream-signed signing CA, and X.509-SVIDs for a CSR's public key only.

Profiles follow SPIFFE-CONFORMANCE.md section B. A CSR contributes nothing but its public key: the names,
subject and extensions it asks for are ignored, so a CSR asking for CA rights or extra names gets a plain
leaf with kubespiffe's names only.

Profile decisions:
- Both CA and leaves start CLOCK_SKEW (30 s) before `now`, so a verifier whose clock runs up to 30 s behind
  accepts a certificate the moment it is issued; a leaf never starts before nor ends after its CA.
- Leaves for RSA keys also carry keyEncipherment (B.4 allows it): TLS 1.2 RSA key exchange needs it, and
  SPIRE and cert-manager set it the same way. EC leaves carry digitalSignature only.
- Serial numbers are cryptography's random 159-bit values (more than the 128 bits asked for, within the 20
  octets RFC 5280 allows); the CA repeats its serial in the Subject so every CA has a distinct name.
- Signatures use SHA-384 for P-384 keys and SHA-256 otherwise.
- Under an operator's CA (docs/upstream-authority.md) the signing CA is an intermediate with the same
  profile plus pathLen 0 and an authorityKeyIdentifier; it adds no name constraints of its own (the
  upstream's, if any, apply to every leaf, and `authority.upstream` checks they admit the trust domain).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubespiffe.authority.keys import KeyType, SigningKey, check_public_key, generate_key
from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

CLOCK_SKEW = dt.timedelta(seconds=30)
MAX_CSR_BYTES = 64 * 1024
MAX_NAME_ATTRIBUTE = 64  # RFC 5280 upper bound for commonName (ub-common-name)
MAX_DNS_NAME = 253
_ORG = "kubespiffe"


class CsrError(InvalidInput):
    """A CSR that cannot be signed; the message is one sentence for the caller."""


@dataclass(frozen=True)
class X509Authority:
    """The signing CA: its key, its certificate, and the certificates above it.

    `above` runs from the CA's issuer up to the trust anchor, nearest first; it is empty when the CA is
    self-signed (its own anchor). Under an upstream CA it is the upstream chain: `chain` is then what every
    leaf carries after itself (this CA and any upstream intermediates) and `trust_anchor` the upstream root
    that bundles publish instead of this CA.
    """

    key: SigningKey
    certificate: x509.Certificate
    above: tuple[x509.Certificate, ...] = ()

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The certificates a leaf signed by this CA is sent with, after the leaf: none when self-signed."""
        return (self.certificate, *self.above[:-1]) if self.above else ()

    @property
    def trust_anchor(self) -> x509.Certificate:
        """The certificate verifiers must hold to accept this CA's leaves: the top of the chain."""
        return self.above[-1] if self.above else self.certificate

    @cached_property
    def leaf_issuer(self) -> _LeafIssuer:
        """What every leaf of this CA shares, worked out on the first leaf rather than on each one."""
        ca = self.certificate
        return _LeafIssuer(
            trust_domain=_trust_domain_of(ca),
            name=ca.subject,
            not_before=ca.not_valid_before_utc,
            not_after=ca.not_valid_after_utc,
            hash=_hash_for(self.key),
            extensions={
                key_encipherment: (
                    _encoded(_LEAF_CONSTRAINTS, critical=True),
                    _encoded(_leaf_key_usage(key_encipherment), critical=True),
                    _encoded(_LEAF_EKU, critical=False),
                )
                for key_encipherment in (False, True)
            },
            authority_key_identifier=_encoded(_authority_key_identifier(self), critical=False),
        )

    @cached_property
    def chain_der(self) -> tuple[bytes, ...]:
        """`chain` in DER, as every issuance response carries it."""
        return tuple(c.public_bytes(Encoding.DER) for c in self.chain)


@dataclass(frozen=True)
class _LeafIssuer:
    trust_domain: TrustDomain
    name: x509.Name
    not_before: dt.datetime
    not_after: dt.datetime
    hash: hashes.SHA256 | hashes.SHA384
    extensions: dict[bool, tuple[x509.Extension[x509.ExtensionType], ...]]
    """By keyEncipherment (RSA keys): basicConstraints, keyUsage, extendedKeyUsage, each already encoded."""
    authority_key_identifier: x509.Extension[x509.ExtensionType]
    names: dict[tuple[SpiffeId, tuple[str, ...]], tuple[x509.Name, x509.Extension[x509.ExtensionType]]] = (
        field(default_factory=dict)
    )
    """Per SPIFFE ID and DNS names, checked: the leaf's subject and its subjectAltName (encoded)."""


def _hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _check_inputs(ttl: dt.timedelta, now: dt.datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (naive datetimes are ambiguous)")
    if ttl <= dt.timedelta(0):
        raise ValueError(f"the TTL must be positive (got {ttl})")


def _ca_subject(trust_domain: TrustDomain, serial: int) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            # Long trust domains are cut here only; the URI SAN always names the trust domain in full.
            x509.NameAttribute(NameOID.COMMON_NAME, f"kubespiffe CA {trust_domain}"[:MAX_NAME_ATTRIBUTE]),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, format(serial, "x")),
        ]
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ca_builder(
    trust_domain: TrustDomain, key: SigningKey, serial: int, path_length: int | None
) -> x509.CertificateBuilder:
    """cA=true (critical), keyUsage keyCertSign+cRLSign (critical, no digitalSignature), URI SAN spiffe://td."""
    return (
        x509.CertificateBuilder()
        .subject_name(_ca_subject(trust_domain, serial))
        .public_key(key.public_key())
        .serial_number(serial)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def create_self_signed_ca(
    trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
) -> X509Authority:
    """The CA profile of `_ca_builder`, self-signed: its own trust anchor."""
    _check_inputs(ttl, now)
    key = generate_key(key_type)
    serial = x509.random_serial_number()
    certificate = (
        _ca_builder(trust_domain, key, serial, path_length=None)
        .issuer_name(_ca_subject(trust_domain, serial))
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .sign(key, _hash_for(key))
    )
    return X509Authority(key=key, certificate=certificate)


def create_intermediate_ca(
    upstream: X509Authority,
    trust_domain: TrustDomain,
    key_type: KeyType,
    ttl: dt.timedelta,
    now: dt.datetime,
) -> X509Authority:
    """The CA profile of `_ca_builder` signed by an operator's CA, with pathLen 0: it signs leaves only.

    It lives within the upstream CA's validity (cut to its end), and its `above` is the upstream's chain
    up to the upstream's anchor, so leaves carry it and bundles publish the upstream's root.
    """
    _check_inputs(ttl, now)
    issuer = upstream.certificate
    if now >= issuer.not_valid_after_utc:
        raise ValueError(f"the upstream CA expired at {issuer.not_valid_after_utc.isoformat()}")
    key = generate_key(key_type)
    certificate = (
        _ca_builder(trust_domain, key, x509.random_serial_number(), path_length=0)
        .issuer_name(issuer.subject)
        .not_valid_before(max(now - CLOCK_SKEW, issuer.not_valid_before_utc))
        .not_valid_after(min(now + ttl, issuer.not_valid_after_utc))
        .add_extension(_authority_key_identifier(upstream), critical=False)
        .sign(upstream.key, _hash_for(upstream.key))
    )
    return X509Authority(key=key, certificate=certificate, above=(issuer, *upstream.above))


def intermediate_csr(key: SigningKey, trust_domain: TrustDomain) -> x509.CertificateSigningRequest:
    """What kubespiffed asks an external issuer (cert-manager) to sign: the CA's names and its key.

    The issuer decides the extensions (the CertificateRequest asks for isCA and keyCertSign); the subject
    carries a random serial so that every intermediate has a distinct name, as self-signed CAs do.
    """
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_ca_subject(trust_domain, x509.random_serial_number()))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]), False
        )
        .sign(key, _hash_for(key))
    )


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    """Parse a caller's PKCS#10 CSR; every way it can be unusable is a CsrError, never another exception."""
    return _load_checked_csr(der)[0]


def load_csr_key(der: bytes) -> CertificatePublicKeyTypes:
    """`load_csr`'s checks, and the public key the CSR proves possession of (all a leaf takes from it)."""
    return _load_checked_csr(der)[1]


def _load_checked_csr(der: bytes) -> tuple[x509.CertificateSigningRequest, CertificatePublicKeyTypes]:
    if not der:
        raise CsrError("the CSR is empty")
    if len(der) > MAX_CSR_BYTES:
        raise CsrError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion):
        raise CsrError("the CSR is not a DER-encoded PKCS#10 request") from None
    try:
        key = csr.public_key()
    except UnsupportedAlgorithm:
        raise CsrError("the CSR's key type is not supported (use EC P-256/P-384 or RSA)") from None
    except ValueError:
        raise CsrError("the CSR's public key cannot be decoded") from None
    try:
        check_public_key(key)
    except ValueError as exc:
        raise CsrError(str(exc)) from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CsrError("the CSR signature does not verify with its own public key")
    return csr, key


def _trust_domain_of(ca: x509.Certificate) -> TrustDomain:
    """The CA's own SPIFFE ID (URI SAN spiffe://td, B.7) bounds what it may sign."""
    try:
        san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ids = [SpiffeId.parse(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    except (x509.ExtensionNotFound, SpiffeIdError):
        ids = []
    if len(ids) != 1 or ids[0].path:
        raise ValueError("the CA certificate has no single spiffe://<trust domain> URI SAN to sign under")
    return ids[0].trust_domain


def _check_dns_name(name: str) -> None:
    if not name or len(name) > MAX_DNS_NAME or not name.isascii() or not name.isprintable() or " " in name:
        raise ValueError(f"{name!r} is not a DNS name (1 to {MAX_DNS_NAME} printable ASCII characters)")


def _authority_key_identifier(authority: X509Authority) -> x509.AuthorityKeyIdentifier:
    """Copy the CA's own SKI, whatever method made it: verifiers match AKI against SKI byte for byte."""
    try:
        ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


# The same in every leaf: built once.
_LEAF_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_LEAF_ORG = x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)


def _leaf_key_usage(key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def sign_x509_svid(
    authority: X509Authority,
    csr: x509.CertificateSigningRequest,
    spiffe_id: SpiffeId,
    dns_names: Sequence[str],
    ttl: dt.timedelta,
    now: dt.datetime,
) -> x509.Certificate:
    """A leaf per checklist B.1-B.5 for the CSR's public key, never outliving the CA."""
    return sign_x509_svid_for_key(authority, csr.public_key(), spiffe_id, dns_names, ttl, now)


def sign_x509_svid_for_key(
    authority: X509Authority,
    public_key: CertificatePublicKeyTypes,
    spiffe_id: SpiffeId,
    dns_names: Sequence[str],
    ttl: dt.timedelta,
    now: dt.datetime,
) -> x509.Certificate:
    """`sign_x509_svid` for a public key already taken from a CSR (`load_csr_key`).

    Built for the issuer's hot path (bench/issuance.py): the builder gets every part at once rather than
    a copy per part, and the extensions go in already encoded (each encoded once, by cryptography, from
    the same extension objects), so signing does not re-read every extension's attributes per leaf.
    The certificate is byte for byte what the step-by-step builder makes.
    """
    _check_inputs(ttl, now)
    issuer = authority.leaf_issuer
    subject, san = _leaf_names(issuer, spiffe_id, dns_names)
    if now >= issuer.not_after:
        raise ValueError(f"the CA expired at {issuer.not_after.isoformat()}")
    check_public_key(public_key)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = x509.CertificateBuilder(
        issuer_name=issuer.name,
        subject_name=subject,
        public_key=public_key,
        serial_number=x509.random_serial_number(),
        # The builder's own setters convert to naive UTC the same way; the constructor takes them as given.
        not_valid_before=_naive_utc(max(now - CLOCK_SKEW, issuer.not_before)),
        not_valid_after=_naive_utc(min(now + ttl, issuer.not_after)),
        extensions=[
            *issuer.extensions[isinstance(public_key, rsa.RSAPublicKey)],
            san,
            _encoded(ski, critical=False),
            issuer.authority_key_identifier,
        ],
    )
    return builder.sign(authority.key, issuer.hash)


# Distinct (SPIFFE ID, DNS names) remembered per CA; far more than the workloads one process serves.
_LEAF_NAMES_SIZE = 4096


def _leaf_names(
    issuer: _LeafIssuer, spiffe_id: SpiffeId, dns_names: Sequence[str]
) -> tuple[x509.Name, x509.Extension[x509.ExtensionType]]:
    """The leaf's subject and subjectAltName, checked and built once per SPIFFE ID and DNS names."""
    key = (spiffe_id, tuple(dns_names))
    known = issuer.names.get(key)
    if known is not None:
        return known
    if spiffe_id.trust_domain != issuer.trust_domain:
        raise ValueError(f"{spiffe_id} is outside the CA's trust domain {issuer.trust_domain}")
    if not spiffe_id.path:
        raise ValueError("an X.509-SVID needs a workload ID with a path, not the trust domain ID")
    for name in dns_names:
        _check_dns_name(name)
    subject = [_LEAF_ORG]
    if dns_names and len(dns_names[0]) <= MAX_NAME_ATTRIBUTE:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    sans += [x509.DNSName(name) for name in dns_names]
    known = (x509.Name(subject), _encoded(x509.SubjectAlternativeName(sans), critical=False))
    if len(issuer.names) >= _LEAF_NAMES_SIZE:
        issuer.names.clear()
    issuer.names[key] = known
    return known


def _encoded(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    """`value` as an extension whose DER cryptography made once (public_bytes), to be copied into leaves."""
    return x509.Extension(value.oid, critical, x509.UnrecognizedExtension(value.oid, value.public_bytes()))


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(tzinfo=None)
