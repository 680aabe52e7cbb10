"""X.509-SVID rules, verifier side (checklist section B).

`verify_chain` does RFC 5280 path validation itself with cryptography's primitives: the web-PKI policy of
`cryptography.x509.verification` demands things SPIFFE does not (hostnames, specific extension sets), and
SPIFFE anchors come only from the bundle of the leaf's own trust domain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

MAX_CHAIN = 8


class X509SvidError(ValueError):
    """The certificate or chain breaks an X.509-SVID rule; the message names it."""


def _extension(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def id_from_certificate(cert: x509.Certificate) -> SpiffeId:
    """The certificate's SPIFFE ID: exactly one URI SAN, and it must parse as a SPIFFE ID."""
    san = _extension(cert, x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier) if san else []  # type: ignore[attr-defined]
    if len(uris) != 1:
        raise X509SvidError(f"certificate has {len(uris)} URI SANs; an SVID has exactly one")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise X509SvidError(f"URI SAN is not a SPIFFE ID: {exc}") from None


def _check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    """RFC 5280 6.1.3: a certificate with a critical extension the verifier does not understand is refused."""
    for extension in cert.extensions:
        if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
            raise X509SvidError(
                f"{what} has an unrecognised critical extension {extension.oid.dotted_string}"
            )


def check_leaf(cert: x509.Certificate) -> SpiffeId:
    """B.1-B.5, B.9. EKU is optional (SHOULD); when present it must allow both TLS client and server."""
    _check_critical_extensions(cert, "leaf")
    spiffe_id = id_from_certificate(cert)
    if not spiffe_id.path:
        raise X509SvidError("leaf SPIFFE ID has no path (a trust domain ID is not a workload ID)")
    san = _extension(cert, x509.SubjectAlternativeName)
    assert san is not None
    if len(cert.subject) == 0 and not san.critical:
        raise X509SvidError("leaf has an empty Subject, so its SAN extension must be critical")
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:  # type: ignore[attr-defined]
        raise X509SvidError("leaf has cA=true")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical:
        raise X509SvidError("leaf keyUsage must be present and critical")
    ku: x509.KeyUsage = usage.value  # type: ignore[assignment]
    if not ku.digital_signature:
        raise X509SvidError("leaf keyUsage lacks digitalSignature")
    if ku.key_cert_sign:
        raise X509SvidError("leaf keyUsage has keyCertSign")
    if ku.crl_sign:
        raise X509SvidError("leaf keyUsage has cRLSign")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        purposes = set(eku.value)  # type: ignore[call-overload]
        if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= purposes:
            raise X509SvidError("leaf extendedKeyUsage must include both serverAuth and clientAuth")
    return spiffe_id


def check_signing_ca(cert: x509.Certificate) -> None:
    """B.6: cA=true and keyCertSign in a critical keyUsage (digitalSignature accepted on upstream CAs)."""
    _check_critical_extensions(cert, f"issuer {cert.subject.rfc4514_string()}")
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.value.ca:  # type: ignore[attr-defined]
        raise X509SvidError(f"issuer {cert.subject.rfc4514_string()} is not a CA (cA=true missing)")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.critical or not usage.value.key_cert_sign:  # type: ignore[attr-defined]
        raise X509SvidError(
            f"issuer {cert.subject.rfc4514_string()} lacks a critical keyUsage with keyCertSign"
        )


def _check_time(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise X509SvidError(f"{what} is not valid yet")
    if now > cert.not_valid_after_utc:
        raise X509SvidError(f"{what} has expired")


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, Exception):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate],
    bundles: Mapping[TrustDomain, Sequence[x509.Certificate]],
    now: dt.datetime,
) -> SpiffeId:
    """Validate leaf-first `chain` against the X.509 authorities of the leaf's own trust domain only."""
    if not chain:
        raise X509SvidError("empty certificate chain")
    if len(chain) > MAX_CHAIN:
        raise X509SvidError(f"chain is longer than {MAX_CHAIN} certificates")
    leaf = chain[0]
    spiffe_id = check_leaf(leaf)
    anchors = bundles.get(spiffe_id.trust_domain)
    if not anchors:
        raise X509SvidError(f"no bundle for trust domain {spiffe_id.trust_domain}: untrusted")
    _check_time(leaf, now, "leaf")
    current = leaf
    intermediates = list(chain[1:])
    below = 0  # CA certificates between the leaf and the current issuer, for pathLen
    while True:
        for anchor in anchors:
            if _signed_by(current, anchor):
                check_signing_ca(anchor)
                _check_time(anchor, now, "trust anchor")
                _check_path_len(anchor, below)
                return spiffe_id
        issuer = next((c for c in intermediates if _signed_by(current, c)), None)
        if issuer is None:
            raise X509SvidError(
                f"chain does not lead to an authority of trust domain {spiffe_id.trust_domain}"
            )
        check_signing_ca(issuer)
        _check_time(issuer, now, "intermediate")
        _check_path_len(issuer, below)
        intermediates.remove(issuer)
        current = issuer
        below += 1


def _check_path_len(ca: x509.Certificate, below: int) -> None:
    constraints = _extension(ca, x509.BasicConstraints)
    limit = constraints.value.path_length if constraints else None  # type: ignore[attr-defined]
    if limit is not None and below > limit:
        raise X509SvidError(
            f"{ca.subject.rfc4514_string()} allows {limit} CAs below it, the chain has {below}"
        )
