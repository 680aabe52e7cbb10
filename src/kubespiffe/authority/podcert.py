"""Signing a PodCertificateRequest: the key the kubelet made, and a leaf whose times kube-apiserver accepts.

    key = requested_key(spec_stub_csr_der, spec_pkix_public_key_der)    # PodKeyRefused: deny the request
    issued = sign_pod_certificate(authority, key, spiffe_id, dns_names, ttl, max_expiration, now)
    issued.chain_pem, issued.not_before, issued.begin_refresh_at, issued.not_after   # the status to write

The kubelet of 1.36 sends its key in an empty PKCS#10 request (`spec.stubPKCS10Request`); 1.35 sent the bare
key (`spec.pkixPublicKey`) with a proof of possession. kube-apiserver verified the CSR's signature or the
proof when the request was created, so only the key is read here, and it must be a key the CA certifies
(`authority.keys.check_public_key`: EC P-256/P-384, RSA 2048-8192 bits); the kubelet also offers P-521 and
Ed25519, which are refused with the reason the Kubernetes API defines for that, `UnsupportedKeyType`.

kube-apiserver refuses a status whose leaf lives less than 1 h or longer than the request's
`maxExpirationSeconds`, and a `beginRefreshAt` outside [notBefore + 10 min, notAfter - 10 min]. So the
lifetime is the registration's X.509 TTL raised to 1 h and capped by the maximum; since every leaf starts
`CLOCK_SKEW` before `now`, the cap counts that too. The kubelet refreshes at half-life, the rule every
kubespiffe credential follows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_der_public_key

from kubespiffe.authority.keys import check_public_key
from kubespiffe.authority.x509ca import CLOCK_SKEW, MAX_CSR_BYTES, X509Authority, sign_x509_svid
from kubespiffe.errors import InvalidInput, KubespiffeError
from kubespiffe.spiffe.bundle import certificates_to_pem
from kubespiffe.spiffe.spiffeid import SpiffeId
from kubespiffe.spiffe.x509svid import half_life

MIN_LIFETIME = dt.timedelta(hours=1)
REFRESH_MARGIN = dt.timedelta(minutes=10)
# Condition reasons of a Denied request: the first is the one the Kubernetes API defines.
UNSUPPORTED_KEY_TYPE = "UnsupportedKeyType"
INVALID_KEY = "InvalidKey"
_SUPPORTED = "set the podCertificate projection's keyType to ECDSAP256, ECDSAP384, RSA3072 or RSA4096"


class PodKeyRefused(InvalidInput):
    """The request's key cannot be certified; `reason` is the Denied condition's reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PodCertificateFailed(KubespiffeError):
    """The request is fine but this CA cannot issue a certificate kube-apiserver would accept."""


@dataclass(frozen=True)
class IssuedPodCertificate:
    """A signed leaf and the status fields that go with it (times exactly the leaf's)."""

    leaf: x509.Certificate
    chain_pem: str
    not_before: dt.datetime
    begin_refresh_at: dt.datetime
    not_after: dt.datetime


def _certifiable(key: CertificatePublicKeyTypes, field: str) -> CertificatePublicKeyTypes:
    try:
        check_public_key(key)
    except ValueError as exc:
        raise PodKeyRefused(f"{field}: {exc}; {_SUPPORTED}", UNSUPPORTED_KEY_TYPE) from None
    return key


def requested_key(stub_csr: bytes | None, pkix_public_key: bytes | None) -> CertificatePublicKeyTypes:
    """The public key to certify: from the stub CSR when there is one, else the bare PKIX key."""
    if stub_csr:
        if len(stub_csr) > MAX_CSR_BYTES:
            raise PodKeyRefused(f"spec.stubPKCS10Request is larger than {MAX_CSR_BYTES} bytes", INVALID_KEY)
        try:
            csr = x509.load_der_x509_csr(stub_csr)
        except (ValueError, x509.InvalidVersion):
            raise PodKeyRefused("spec.stubPKCS10Request is not a DER PKCS#10 request", INVALID_KEY) from None
        try:
            key = csr.public_key()
        except (UnsupportedAlgorithm, ValueError):
            raise PodKeyRefused(
                f"spec.stubPKCS10Request: key type not supported; {_SUPPORTED}", UNSUPPORTED_KEY_TYPE
            ) from None
        return _certifiable(key, "spec.stubPKCS10Request")
    if pkix_public_key:
        try:
            bare = load_der_public_key(pkix_public_key)
        except (UnsupportedAlgorithm, ValueError):
            raise PodKeyRefused(
                f"spec.pkixPublicKey: key type not supported; {_SUPPORTED}", UNSUPPORTED_KEY_TYPE
            ) from None
        return _certifiable(cast(CertificatePublicKeyTypes, bare), "spec.pkixPublicKey")
    raise PodKeyRefused(
        "the request carries neither spec.stubPKCS10Request nor spec.pkixPublicKey", INVALID_KEY
    )


class _KeyOnly:
    """`sign_x509_svid` reads nothing from a CSR but its public key (x509ca's rule: a CSR contributes its
    key only); a 1.35 kubelet's request has the bare key, which this stands in for."""

    def __init__(self, key: CertificatePublicKeyTypes) -> None:
        self._key = key

    def public_key(self) -> CertificatePublicKeyTypes:
        return self._key


def pod_certificate_ttl(ttl: dt.timedelta, max_expiration: dt.timedelta) -> dt.timedelta:
    """The TTL counted from `now`: at least 1 h, and with the leaf's backdating at most the maximum."""
    return min(max(ttl, MIN_LIFETIME), max_expiration - CLOCK_SKEW)


def sign_pod_certificate(
    authority: X509Authority,
    key: CertificatePublicKeyTypes,
    spiffe_id: SpiffeId,
    dns_names: Sequence[str],
    ttl: dt.timedelta,
    max_expiration: dt.timedelta,
    now: dt.datetime,
) -> IssuedPodCertificate:
    """An X.509-SVID for `key` and the status times; PodCertificateFailed if the API would refuse it."""
    try:
        leaf = sign_x509_svid(
            authority,
            cast(x509.CertificateSigningRequest, _KeyOnly(key)),
            spiffe_id,
            dns_names,
            pod_certificate_ttl(ttl, max_expiration),
            now,
        )
    except ValueError as exc:
        raise PodCertificateFailed(f"cannot sign: {exc}") from None
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if not_after - not_before < MIN_LIFETIME:
        raise PodCertificateFailed(
            f"the signing CA is valid from {authority.certificate.not_valid_before_utc.isoformat()} to "
            f"{authority.certificate.not_valid_after_utc.isoformat()}, too short for a leaf of at least 1 h"
        )
    refresh = min(
        max(half_life(not_before, not_after), not_before + REFRESH_MARGIN), not_after - REFRESH_MARGIN
    )
    return IssuedPodCertificate(
        leaf=leaf,
        chain_pem=certificates_to_pem([leaf, *authority.chain]).decode(),
        not_before=not_before,
        begin_refresh_at=refresh,
        not_after=not_after,
    )
