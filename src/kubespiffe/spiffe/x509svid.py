"""X.509-SVID rules, verifier side (checklist section B; X509-SVID.md sections 3-5).

`verify_chain` does RFC 5280 path validation itself with cryptography's primitives rather than with
`cryptography.x509.verification`: that module applies the CA/Browser Forum web-PKI profile, which refuses
valid SPIFFE chains (every certificate below the root must carry an authorityKeyIdentifier, which SPIFFE
does not require), and its server verifier can only match DNS names and IP addresses, never a SPIFFE ID.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.bundle import parse_der_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

MAX_CHAIN = 8

# Critical extensions this module can honour. Key identifiers only help to find issuers, and certificate
# policies do not change the outcome because any policy is accepted (RFC 5280 6.1 with any-policy and no
# explicit policy required). Everything else, such as policy constraints or CRL distribution points (no
# revocation checking here), is refused when critical.
_PROCESSED = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)

_TLS_PURPOSES = frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})
_E = TypeVar("_E", bound=x509.ExtensionType)


class X509SvidError(InvalidInput):
    """The certificate or chain breaks an X.509-SVID rule; the message names it."""


def half_life(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """When to renew anything with this validity: half-way through it.

    One rule for every credential kubespiffe renews (workload X.509- and JWT-SVIDs, kubespiffed's own
    SVID, the CA's rotation): half the lifetime leaves the other half to ride out an outage.
    """
    return not_before + (not_after - not_before) / 2


@dataclass(frozen=True)
class X509Svid:
    """An X.509-SVID as its holder keeps it: the SPIFFE ID, the chain (leaf first, then intermediates
    up to but excluding the root), the private key, and the Workload API hint.

    The one in-memory form for files mode, the Workload API and kubespiffed's own TLS; each output asks
    for the encoding it needs (PEM for files and TLS libraries, DER on the Workload API wire).
    """

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKeyTypes
    hint: str = ""

    @classmethod
    def from_der(cls, spiffe_id: SpiffeId, chain_der: bytes, key_der: bytes, hint: str = "") -> X509Svid:
        """From the Workload API's wire form: concatenated DER certificates and a PKCS#8 DER key."""
        chain = tuple(parse_der_certificates(chain_der))
        if not chain:
            raise X509SvidError("the X.509-SVID has no certificates")
        try:
            key = load_der_private_key(key_der, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise X509SvidError("the X.509-SVID's key is not an unencrypted PKCS#8 DER key") from None
        return cls(spiffe_id, chain, key, hint)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def expires_at(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def renew_at(self) -> dt.datetime:
        return half_life(self.leaf.not_valid_before_utc, self.leaf.not_valid_after_utc)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.chain)

    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.DER) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    def key_der(self) -> bytes:
        return self.private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())


def _describe(cert: x509.Certificate) -> str:
    try:
        subject = cert.subject.rfc4514_string()
    except (ValueError, TypeError):  # names are decoded only when asked for (TypeError: a BIT STRING)
        subject = ""
    return subject or f"certificate serial {cert.serial_number:x}"


def _subject(cert: x509.Certificate) -> x509.Name:
    try:
        return cert.subject
    except (ValueError, TypeError) as exc:  # names are decoded only when asked for
        raise X509SvidError(f"{_describe(cert)} has a malformed Subject: {exc}") from None


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    # Neither DuplicateExtension nor UnsupportedGeneralNameType (x400Address, ediPartyName) is a ValueError.
    try:
        return cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise X509SvidError(f"{_describe(cert)} has malformed extensions: {exc}") from None


def _extension(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return _extensions(cert).get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    """RFC 5280 6.1.3: a critical extension the verifier does not process makes the certificate unusable."""
    for extension in _extensions(cert):
        if extension.critical and extension.oid not in _PROCESSED:
            oid = extension.oid.dotted_string
            raise X509SvidError(f"{what} has a critical extension this verifier does not process: {oid}")


def _uri_sans(cert: x509.Certificate) -> list[str]:
    san = _extension(cert, x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.UniformResourceIdentifier) if san else []


def id_from_certificate(cert: x509.Certificate) -> SpiffeId:
    """The certificate's SPIFFE ID: exactly one URI SAN, a valid SPIFFE ID (never "the first of several")."""
    uris = _uri_sans(cert)
    if len(uris) != 1:
        raise X509SvidError(f"certificate has {len(uris)} URI SANs; an SVID has exactly one")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise X509SvidError(f"URI SAN is not a SPIFFE ID: {exc}") from None


def check_leaf(cert: x509.Certificate) -> SpiffeId:
    """Enforce B.1-B.5 and B.9 on a leaf and return its SPIFFE ID.

    A missing basicConstraints extension means cA=false and is accepted. extendedKeyUsage is optional (a
    SHOULD), but X509-SVID.md 4.4 says that when present it MUST contain both serverAuth and clientAuth, so
    a leaf whose EKU lacks either is refused.
    """
    _check_critical_extensions(cert, "leaf")
    spiffe_id = id_from_certificate(cert)
    if not spiffe_id.path:
        raise X509SvidError("leaf SPIFFE ID has no path (a trust domain ID is not a workload ID)")
    san = _extension(cert, x509.SubjectAlternativeName)
    if len(_subject(cert)) == 0 and not (san and san.critical):
        raise X509SvidError("leaf has an empty Subject, so its SAN extension must be critical")
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:
        raise X509SvidError("leaf has cA=true")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical:
        raise X509SvidError("leaf keyUsage must be present and critical")
    if not usage.value.digital_signature:
        raise X509SvidError("leaf keyUsage lacks digitalSignature")
    if usage.value.key_cert_sign:
        raise X509SvidError("leaf keyUsage has keyCertSign")
    if usage.value.crl_sign:
        raise X509SvidError("leaf keyUsage has cRLSign")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None and not set(eku.value) >= _TLS_PURPOSES:
        raise X509SvidError("leaf extendedKeyUsage must include both serverAuth and clientAuth")
    return spiffe_id


def check_signing_ca(cert: x509.Certificate) -> None:
    """B.6: cA=true and keyCertSign in a critical keyUsage; its SPIFFE ID, if any, has no path (A.6).

    digitalSignature is accepted: kubespiffe never sets it on the CAs it mints, but upstream CAs often do.
    """
    what = f"issuer {_describe(cert)}"
    _check_critical_extensions(cert, what)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.value.ca:
        raise X509SvidError(f"{what} is not a CA (cA=true missing)")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical or not usage.value.key_cert_sign:
        raise X509SvidError(f"{what} lacks a critical keyUsage with keyCertSign")
    for uri in _uri_sans(cert):
        if uri.lower().startswith("spiffe:"):
            try:
                has_path = bool(SpiffeId.parse(uri).path)
            except SpiffeIdError as exc:
                raise X509SvidError(f"{what} has a URI SAN that is not a SPIFFE ID: {exc}") from None
            if has_path:
                raise X509SvidError(f"{what} has SPIFFE ID {uri}; a signing CA's SPIFFE ID has no path")


def _check_time(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise X509SvidError(f"{what} is not valid yet")
    if now > cert.not_valid_after_utc:
        raise X509SvidError(f"{what} has expired")


def _check_path_len(ca: x509.Certificate, below: int) -> None:
    constraints = _extension(ca, x509.BasicConstraints)
    limit = constraints.value.path_length if constraints else None
    if limit is not None and below > limit:
        raise X509SvidError(f"{_describe(ca)} allows {limit} CAs below it, the chain has {below}")


def _dns_within(name: str, constraint: str) -> bool:
    name, constraint = name.lower().rstrip("."), constraint.lower().rstrip(".")
    if constraint.startswith("."):
        return name.endswith(constraint)
    return not constraint or name == constraint or name.endswith("." + constraint)


def _within(name: x509.GeneralName, subtree: x509.GeneralName) -> bool:
    """RFC 5280 4.2.1.10 matching for the name types that can appear in an SVID chain."""
    if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
        return _dns_within(name.value, subtree.value)
    if isinstance(name, x509.UniformResourceIdentifier) and isinstance(subtree, type(name)):
        # The host is constrained: ".example.org" admits hosts below example.org, "example.org" only itself.
        host, constraint = urlsplit(name.value).hostname or "", subtree.value.lower()
        return host.endswith(constraint) if constraint[:1] == "." else host == constraint
    if isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
        network = subtree.value
        return isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network) and name.value in network
    return False


def _check_name_constraints(ca: x509.Certificate, below: Sequence[x509.Certificate]) -> None:
    """Apply `ca`'s nameConstraints to the URI, DNS and IP SANs of every certificate below it.

    This keeps a CA constrained to one trust domain from issuing for another even when both trust domains'
    bundles hold the same root. Other name types are not processed, so constraints on them are refused.
    """
    constraints = _extension(ca, x509.NameConstraints)
    if constraints is None:
        return
    kinds = (x509.DNSName, x509.UniformResourceIdentifier, x509.IPAddress)
    permitted = list(constraints.value.permitted_subtrees or ())
    excluded = list(constraints.value.excluded_subtrees or ())
    unsupported = sorted({type(t).__name__ for t in permitted + excluded if not isinstance(t, kinds)})
    if unsupported:
        raise X509SvidError(f"{_describe(ca)} has name constraints on unsupported name types: {unsupported}")
    for cert in below:
        san = _extension(cert, x509.SubjectAlternativeName)
        for name in (n for n in (san.value if san else ()) if isinstance(n, kinds)):
            if any(_within(name, t) for t in excluded):
                raise X509SvidError(f"{name.value} is excluded by the name constraints of {_describe(ca)}")
            allowed = [t for t in permitted if type(t) is type(name)]
            if allowed and not any(_within(name, t) for t in allowed):
                raise X509SvidError(f"{name.value} is outside the name constraints of {_describe(ca)}")


def _check_issuer(
    issuer: x509.Certificate, path: Sequence[x509.Certificate], now: dt.datetime, what: str
) -> None:
    check_signing_ca(issuer)
    _check_time(issuer, now, what)
    _check_path_len(issuer, len(path) - 1)
    _check_name_constraints(issuer, path)


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """verify_directly_issued_by checks both the issuer/subject name chaining and the signature."""
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate],
    bundles: Mapping[TrustDomain, Sequence[x509.Certificate]],
    now: dt.datetime,
) -> SpiffeId:
    """Validate a leaf-first chain (B.8) and return the leaf's SPIFFE ID.

    Anchors are the X.509 authorities of the leaf's own trust domain only; the other certificates of `chain`
    are candidate intermediates in any order. Every candidate issuer is tried, so an expired root kept next
    to its renewed twin (same name and key) or a cross-signed CA does not hide a valid path.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not chain:
        raise X509SvidError("empty certificate chain")
    if len(chain) > MAX_CHAIN:
        raise X509SvidError(f"chain is longer than {MAX_CHAIN} certificates")
    leaf = chain[0]
    spiffe_id = check_leaf(leaf)
    anchors = tuple(bundles.get(spiffe_id.trust_domain, ()))
    if not anchors:
        raise X509SvidError(f"no bundle for trust domain {spiffe_id.trust_domain}: untrusted")
    _check_time(leaf, now, "leaf")
    signed_by = functools.cache(_signed_by)  # per call: each pair is verified once, however many paths

    def extend(path: list[x509.Certificate], spare: list[x509.Certificate]) -> None:
        failures: list[X509SvidError] = []
        candidates = [(a, True) for a in anchors] + [(c, False) for c in spare]
        for issuer, is_anchor in candidates:
            if not signed_by(path[-1], issuer):
                continue
            try:
                _check_issuer(issuer, path, now, "trust anchor" if is_anchor else "intermediate")
                if not is_anchor:
                    extend([*path, issuer], [c for c in spare if c is not issuer])
            except X509SvidError as exc:
                failures.append(exc)
            else:
                return
        if failures:
            raise failures[0]
        raise X509SvidError(f"chain does not lead to an authority of trust domain {spiffe_id.trust_domain}")

    extend([leaf], list(chain[1:]))
    return spiffe_id
