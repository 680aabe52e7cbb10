"""kubespiffed's signing CA as an intermediate under an operator's CA (docs/upstream-authority.md).

    upstream = SecretUpstream(client, namespace, "corp-ca")        # or certmanager.CertManagerUpstream
    ca = await new_intermediate(upstream, trust_domain, key_type, ttl, now, probe_id, probe_dns_names)
    ca.chain          # (intermediate, upstream intermediates...): what every SVID carries after its leaf
    ca.trust_anchor   # the upstream root: what the bundle publishes

An upstream signs a fresh intermediate for every new signing slot (at start when there is no state yet,
then at each rotation), and `new_intermediate` refuses any result kubespiffed could not use: it signs a
probe SVID (kubespiffed's own ID and DNS names) with the new intermediate and runs the verifier's path
validation (`spiffe.x509svid.verify_chain`) against the anchor alone. So an upstream that is not a CA,
has expired, forbids a CA below it (pathLen 0) or whose name constraints exclude the trust domain is
refused before anything is signed, with the rule it breaks in the message.

The Secret (kubernetes.io/tls, the layout cert-manager's CA issuer reads):
- `tls.crt`: the upstream CA certificate first, then the certificates above it (optional);
- `tls.key`: its private key, unencrypted PEM (PKCS#8, PKCS#1 or SEC1), EC P-256/P-384 or RSA;
- `ca.crt` (optional): the root(s); the one that issued the last certificate of `tls.crt` is published.
Without `ca.crt` the last certificate of `tls.crt` is the trust anchor (a root CA alone is the usual case).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret

from kubespiffe.authority.keys import KeyType, SigningKey, check_public_key, generate_key
from kubespiffe.authority.x509ca import CLOCK_SKEW, X509Authority, create_intermediate_ca, sign_x509_svid
from kubespiffe.errors import KubespiffeError
from kubespiffe.spiffe.bundle import BundleError, parse_pem_certificates
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509SvidError, check_signing_ca, verify_chain

TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
CA_CRT = "ca.crt"
# The shortest intermediate worth having: the --ca-ttl floor, and room for pod certificates' 1 h leaves.
MIN_INTERMEDIATE_LIFETIME = dt.timedelta(hours=1)
_PROBE_TTL = dt.timedelta(minutes=5)

log = logging.getLogger("kubespiffed.authority")


class UpstreamError(KubespiffeError):
    """The upstream CA cannot give kubespiffed a usable intermediate; the message says which rule failed."""


class Upstream(Protocol):
    """Where intermediates come from: an operator's CA in a Secret, or a cert-manager issuer."""

    async def sign(
        self, trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
    ) -> X509Authority:
        """A new intermediate for the trust domain, with the chain up to the upstream's anchor."""
        ...

    def adopts(self, authority: X509Authority) -> bool:
        """Whether `authority` was signed by this upstream as last seen (if not, rotate to one that is)."""
        ...


def _certificates(data: Mapping[str, str], key: str, where: str) -> list[x509.Certificate]:
    try:
        return parse_pem_certificates(base64.b64decode(data[key], validate=True))
    except (binascii.Error, ValueError) as exc:
        detail = exc if isinstance(exc, BundleError) else "not base64"
        raise UpstreamError(f"{where}: {key} is not PEM certificates ({detail})") from None


def _private_key(data: Mapping[str, str], where: str) -> SigningKey:
    try:
        key = load_pem_private_key(base64.b64decode(data[TLS_KEY], validate=True), password=None)
    except (binascii.Error, ValueError, TypeError, UnsupportedAlgorithm):
        raise UpstreamError(f"{where}: {TLS_KEY} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise UpstreamError(f"{where}: {TLS_KEY} is a {type(key).__name__}; use EC P-256/P-384 or RSA")
    try:
        check_public_key(key.public_key())
    except ValueError as exc:
        raise UpstreamError(f"{where}: {TLS_KEY}: {exc}") from None
    return key


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def check_chain(chain: Sequence[x509.Certificate], now: dt.datetime, where: str) -> None:
    """Each certificate issued by the next, and all of them valid now."""
    for child, issuer in itertools.pairwise(chain):
        if not _issued_by(child, issuer):
            raise UpstreamError(f"{where}: {_describe(child)} is not issued by {_describe(issuer)}")
    for cert in chain:
        if now > cert.not_valid_after_utc:
            expired = cert.not_valid_after_utc.isoformat()
            raise UpstreamError(f"{where}: {_describe(cert)} expired at {expired}")
        if now < cert.not_valid_before_utc:
            starts = cert.not_valid_before_utc.isoformat()
            raise UpstreamError(f"{where}: {_describe(cert)} is not valid before {starts}")


def with_anchor(
    chain: list[x509.Certificate], roots: Sequence[x509.Certificate], where: str
) -> list[x509.Certificate]:
    """`chain` extended by the root in `roots` that issued its top (unchanged if the top is one of them)."""
    if not roots or chain[-1] in roots:
        return chain
    issuer = next((r for r in roots if _issued_by(chain[-1], r)), None)
    if issuer is None:
        raise UpstreamError(f"{where}: no certificate in {CA_CRT} issued {_describe(chain[-1])}")
    return [*chain, issuer]


def parse_upstream_secret(data: Mapping[str, str] | None, now: dt.datetime, where: str) -> X509Authority:
    """The upstream CA from a Secret's data (base64 values); every way it is unusable is an UpstreamError."""
    data = data or {}
    missing = [k for k in (TLS_CRT, TLS_KEY) if not data.get(k)]
    if missing:
        raise UpstreamError(
            f"{where} has no {' and no '.join(missing)} "
            f"(it needs {TLS_CRT} and {TLS_KEY}, and may have {CA_CRT})"
        )
    chain = _certificates(data, TLS_CRT, where)
    key = _private_key(data, where)
    if key.public_key() != chain[0].public_key():
        raise UpstreamError(f"{where}: {TLS_KEY} does not match the first certificate of {TLS_CRT}")
    try:
        check_signing_ca(chain[0])
    except X509SvidError as exc:
        raise UpstreamError(f"{where}: {TLS_CRT} is not a CA that can sign intermediates: {exc}") from None
    if data.get(CA_CRT):
        chain = with_anchor(chain, _certificates(data, CA_CRT, where), where)
    check_chain(chain, now, where)
    return X509Authority(key, chain[0], tuple(chain[1:]))


def check_intermediate(
    authority: X509Authority, probe: SpiffeId, dns_names: Sequence[str], now: dt.datetime, where: str
) -> None:
    """Sign a probe SVID with the new intermediate and validate it as a verifier would, anchor only."""
    check_chain((authority.certificate, *authority.above), now, where)
    lifetime = authority.certificate.not_valid_after_utc - now
    if lifetime < MIN_INTERMEDIATE_LIFETIME:
        raise UpstreamError(
            f"{where}: the intermediate would expire in {lifetime} (at "
            f"{authority.certificate.not_valid_after_utc.isoformat()}); renew the upstream CA"
        )
    key = generate_key(KeyType.EC_P256)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    try:
        leaf = sign_x509_svid(authority, csr, probe, dns_names, _PROBE_TTL, now)
        verify_chain([leaf, *authority.chain], {probe.trust_domain: [authority.trust_anchor]}, now)
    except ValueError as exc:  # X509SvidError included
        raise UpstreamError(
            f"{where}: an SVID for {probe} under this upstream would not verify: {exc}"
        ) from None


async def new_intermediate(
    upstream: Upstream,
    trust_domain: TrustDomain,
    key_type: KeyType,
    ttl: dt.timedelta,
    now: dt.datetime,
    probe: SpiffeId,
    dns_names: Sequence[str] = (),
) -> X509Authority:
    """An intermediate from `upstream`, refused (UpstreamError) unless SVIDs it signs will verify.

    An upstream signs when it gets to it, by its own clock: cert-manager's CA issuer starts a certificate
    at the second it signs, which may come after `now` (a CertificateRequest takes its time). One that
    starts at most CLOCK_SKEW after `now` is waited for and checked as of its start; a later start is
    refused as not valid yet."""
    authority = await upstream.sign(trust_domain, key_type, ttl, now)
    starts = authority.certificate.not_valid_before_utc
    if now < starts <= now + CLOCK_SKEW:
        await asyncio.sleep(max(0.0, (starts - dt.datetime.now(dt.UTC)).total_seconds()))
        now = starts
    check_intermediate(authority, probe, dns_names, now, str(upstream))
    if authority.certificate.not_valid_after_utc < now + ttl:
        log.warning(
            "%s: the intermediate ends at %s, before --ca-ttl, with the upstream CA; renew the upstream CA",
            upstream,
            authority.certificate.not_valid_after_utc.isoformat(),
        )
    return authority


class SecretUpstream:
    """The operator's CA in a Secret of kubespiffed's namespace, re-read for every new intermediate."""

    def __init__(self, client: AsyncClient, namespace: str, name: str) -> None:
        self._client = client
        self._namespace = namespace
        self._name = name
        self._last: X509Authority | None = None

    def __str__(self) -> str:
        return f"upstream Secret {self._namespace}/{self._name}"

    async def load(self, now: dt.datetime) -> X509Authority:
        try:
            secret = await self._client.get(Secret, self._name, namespace=self._namespace)
        except ApiError as exc:
            raise UpstreamError(f"{self}: cannot be read: {exc.status.code} {exc.status.message}") from None
        return parse_upstream_secret(secret.data, now, str(self))

    async def sign(
        self, trust_domain: TrustDomain, key_type: KeyType, ttl: dt.timedelta, now: dt.datetime
    ) -> X509Authority:
        upstream = await self.load(now)
        self._last = upstream
        try:
            return create_intermediate_ca(upstream, trust_domain, key_type, ttl, now)
        except ValueError as exc:
            raise UpstreamError(f"{self}: {exc}") from None

    def adopts(self, authority: X509Authority) -> bool:
        return self._last is not None and authority.above[:1] == (self._last.certificate,)
