"""Trust bundles: X.509 authorities as PEM/DER, and the SPIFFE bundle format (checklist sections B.10, D).

A bundle never names its trust domain, so it is always handled as a (trust domain, bundle) pair (D.7).
Unknown members, key types and uses are ignored as D.3/D.4 require, so a publisher can add new kinds of
keys without cutting its federations; anything malformed in a key this module does use is refused.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from kubespiffe.errors import InvalidInput
from kubespiffe.spiffe.jwk import from_jwk, to_jwk
from kubespiffe.spiffe.spiffeid import TrustDomain

MAX_BUNDLE_BYTES = 1 << 20
X509_SVID_USE = "x509-svid"
JWT_SVID_USE = "jwt-svid"
_PUBLIC_MEMBERS = ("kty", "crv", "x", "y", "n", "e")
# Base64 bodies hold no '-', so the match is linear; a body that does (RFC 1421 headers) is "unterminated".
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----([^-]*)-----END \1-----")


class BundleError(InvalidInput):
    """A malformed bundle document or certificate list; the message says what is wrong."""


@dataclass(frozen=True)
class Bundle:
    """The trust material of one trust domain: CA certificates, JWT keys by kid, and the publisher's
    sequence number and refresh hint in seconds (None when absent)."""

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: Mapping[str, PublicKeyTypes] = field(default_factory=dict)
    sequence: int | None = None
    refresh_hint: int | None = None


@dataclass(frozen=True)
class BundleSet:
    """The bundles one party trusts: its own trust domain's, and the federated ones by trust domain.

    Like go-spiffe's `spiffebundle.Set`, one value answers every "which authorities for this trust
    domain" question; kubespiffed and the agent both hold one, replaced whole on every change, so a
    reader never sees half an update.
    """

    own: Bundle
    federated: Mapping[TrustDomain, Bundle] = field(default_factory=dict)

    @property
    def trust_domain(self) -> TrustDomain:
        return self.own.trust_domain

    def get(self, trust_domain: TrustDomain) -> Bundle | None:
        if trust_domain == self.own.trust_domain:
            return self.own
        return self.federated.get(trust_domain)

    def bundles(self) -> tuple[Bundle, ...]:
        """Own bundle first, then the federated ones in trust-domain order."""
        return (self.own, *(self.federated[td] for td in sorted(self.federated)))

    def for_federation(self, federates_with: set[TrustDomain]) -> BundleSet:
        """Own bundle plus those of `federates_with` that exist: what one workload may be handed."""
        return BundleSet(
            self.own,
            {td: b for td, b in self.federated.items() if td in federates_with and td != self.trust_domain},
        )

    def with_own(self, own: Bundle) -> BundleSet:
        return BundleSet(own, self.federated)

    def with_federated(self, federated: Mapping[TrustDomain, Bundle]) -> BundleSet:
        return BundleSet(self.own, {td: b for td, b in federated.items() if td != self.own.trust_domain})

    @classmethod
    def from_bundles(cls, bundles: Sequence[Bundle]) -> BundleSet:
        """The first bundle is one's own (the order the issuer API's WatchBundles uses)."""
        if not bundles:
            raise BundleError("a bundle set needs at least its own trust domain's bundle")
        return cls(bundles[0]).with_federated({b.trust_domain: b for b in bundles[1:]})


def parse_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """One or more PEM CERTIFICATE blocks; text around them is allowed, other block types are not.

    A private key or CRL in a trust bundle file is a mistake worth stopping at, and a truncated last block
    must not silently shorten the bundle.
    """
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise BundleError("no PEM certificates found (expected -----BEGIN CERTIFICATE----- blocks)")
    if data.count(b"-----BEGIN ") != len(blocks):
        raise BundleError("PEM data has an unterminated or malformed block")
    certificates = []
    for index, block in enumerate(blocks):
        label = block.group(1).decode()
        if label != "CERTIFICATE":
            raise BundleError(f"PEM block {index} is a {label}, not a CERTIFICATE")
        try:
            certificates.append(x509.load_pem_x509_certificate(block.group(0)))
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            raise BundleError(f"PEM block {index} is not a valid certificate") from None
    return certificates


def certificates_to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)


def certificates_to_der(certificates: Sequence[x509.Certificate]) -> bytes:
    """Concatenated DER, as the Workload API carries certificates (B.10: never PEM on the wire)."""
    return b"".join(c.public_bytes(Encoding.DER) for c in certificates)


def parse_der_certificates(data: bytes) -> list[x509.Certificate]:
    """Split concatenated DER certificates by walking each outer SEQUENCE's length.

    Empty input is an empty list: on the Workload API an empty field means "no certificates".
    """
    certificates: list[x509.Certificate] = []
    offset = 0
    while offset < len(data):
        if data[offset] != 0x30 or offset + 2 > len(data):
            raise BundleError(f"byte {offset}: not the start of a DER certificate")
        length, header = data[offset + 1], 2
        if length & 0x80:  # long form; 0x80 alone is BER's indefinite length, not DER
            count = length & 0x7F
            if count == 0 or count > 4 or offset + 2 + count > len(data):
                raise BundleError(f"byte {offset}: bad DER length")
            length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
            header += count
        end = offset + header + length
        if end > len(data):
            raise BundleError(f"byte {offset}: DER certificate is truncated")
        try:
            certificates.append(x509.load_der_x509_certificate(data[offset:end]))
        except (ValueError, x509.InvalidVersion):
            raise BundleError(f"byte {offset}: not a valid DER certificate") from None
        offset = end
    return certificates


def _public_jwk(key: PublicKeyTypes) -> dict[str, Any]:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BundleError(f"key type {type(key).__name__} cannot be published in a bundle (EC or RSA only)")
    try:
        jwk: dict[str, Any] = to_jwk(key)
    except ValueError as exc:
        raise BundleError(f"key cannot be published in a bundle: {exc}") from None
    return {k: v for k, v in jwk.items() if k in _PUBLIC_MEMBERS}


def _jwt_keys(jwt_authorities: Mapping[str, PublicKeyTypes]) -> list[dict[str, Any]]:
    if any(not kid for kid in jwt_authorities):
        raise BundleError("a JWT authority needs a non-empty kid")
    return [{**_public_jwk(key), "kid": kid} for kid, key in jwt_authorities.items()]


def bundle_to_json(bundle: Bundle) -> bytes:
    """The SPIFFE bundle: x509-svid keys without kid and with one standard-base64 DER certificate in x5c
    (X509-SVID.md 6.1), jwt-svid keys with their kid, and the sequence and refresh hint when set."""
    keys = [
        {
            **_public_jwk(c.public_key()),
            "use": X509_SVID_USE,
            "x5c": [base64.b64encode(c.public_bytes(Encoding.DER)).decode()],
        }
        for c in bundle.x509_authorities
    ]
    keys += [{**jwk, "use": JWT_SVID_USE} for jwk in _jwt_keys(bundle.jwt_authorities)]
    document: dict[str, Any] = {"keys": keys}
    if bundle.sequence is not None:
        document["spiffe_sequence"] = bundle.sequence
    if bundle.refresh_hint is not None:
        document["spiffe_refresh_hint"] = bundle.refresh_hint
    return json.dumps(document, separators=(",", ":")).encode()


def jwks_json(jwt_authorities: Mapping[str, PublicKeyTypes]) -> bytes:
    """A plain JWKS of JWT signing keys, as the Workload API's JWT bundles carry them.

    `use` is omitted (edge case 8): JWKS clients such as PyJWT's keep only keys whose `use` is absent or
    `sig`, so `jwt-svid` would make them drop every key. go-spiffe ignores `use` here either way.
    """
    return json.dumps({"keys": _jwt_keys(jwt_authorities)}, separators=(",", ":")).encode()


def _load_jwk(jwk: Mapping[str, Any], where: str) -> PublicKeyTypes:
    if "d" in jwk:
        raise BundleError(f"{where}: a bundle must not contain private keys")
    try:
        return from_jwk(jwk)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{where}: key parameters are invalid: {exc}") from None


def _x509_authority(jwk: Mapping[str, Any], where: str) -> x509.Certificate:
    """The CA certificate of an x509-svid key: x5c holds exactly one standard-base64 DER certificate (D.5)."""
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or len(x5c) != 1:
        raise BundleError(f"{where}: an x509-svid key needs x5c with exactly one certificate")
    if not isinstance(x5c[0], str):
        raise BundleError(f"{where}: x5c[0] is not a base64 string")
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True))
    except (ValueError, x509.InvalidVersion):  # binascii.Error included
        raise BundleError(f"{where}: x5c[0] is not a standard-base64 DER certificate") from None
    try:  # cryptography decodes the key only now
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise BundleError(f"{where}: the x5c certificate's public key cannot be loaded") from None
    if public_key != _load_jwk(jwk, where):
        raise BundleError(f"{where}: key parameters do not match the x5c certificate")
    return certificate


def _non_negative_int(document: Mapping[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise BundleError(f"{name} must be a non-negative integer")
    return value


def parse_bundle_json(trust_domain: TrustDomain, data: bytes, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """Parse a SPIFFE bundle for `trust_domain` (the document itself does not say which one it is).

    Ignored, as D.3/D.4 require: unknown top-level members, keys with an unknown or missing kty or use.
    Refused, as go-spiffe does: no `keys` array, an x5c that is not exactly one certificate (D.5), a
    jwt-svid key without a kid (D.6); also private key material, invalid key parameters, an x5c certificate
    whose key differs from the JWK's (RFC 7517 4.7) and duplicate kids, which would make JWT verification
    ambiguous.
    """
    if len(data) > max_bytes:
        raise BundleError(f"bundle is larger than {max_bytes} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # deep nesting fits well within the size limit
        raise BundleError("bundle is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BundleError("bundle has no 'keys' array (it must be a JWK Set)")
    x509_authorities: list[x509.Certificate] = []
    jwt_authorities: dict[str, PublicKeyTypes] = {}
    for index, jwk in enumerate(document["keys"]):
        where = f"keys[{index}]"
        if not isinstance(jwk, dict):
            raise BundleError(f"{where} is not a JSON object")
        use, kty = jwk.get("use"), jwk.get("kty")
        if use not in (X509_SVID_USE, JWT_SVID_USE) or kty not in ("EC", "RSA"):
            continue
        if use == X509_SVID_USE:
            x509_authorities.append(_x509_authority(jwk, where))
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise BundleError(f"{where}: a jwt-svid key needs a kid")
        if kid in jwt_authorities:
            raise BundleError(f"{where}: duplicate kid {kid!r}")
        jwt_authorities[kid] = _load_jwk(jwk, where)
    return Bundle(
        trust_domain,
        tuple(x509_authorities),
        jwt_authorities,
        _non_negative_int(document, "spiffe_sequence"),
        _non_negative_int(document, "spiffe_refresh_hint"),
    )
