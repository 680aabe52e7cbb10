"""Fuzz targets for the pure SPIFFE parsers: IDs and trust domains, bundles (JSON, PEM, DER), X.509-SVID
chains, OIDC issuers."""

from __future__ import annotations

import base64
import json

from kubespiffe.federation.oidc import OidcIssuer, OidcIssuerError
from kubespiffe.spiffe.bundle import (
    Bundle,
    BundleError,
    bundle_to_json,
    certificates_to_der,
    certificates_to_pem,
    parse_bundle_json,
    parse_der_certificates,
    parse_pem_certificates,
)
from kubespiffe.spiffe.spiffeid import MAX_ID_BYTES, SpiffeId, SpiffeIdError, TrustDomain
from kubespiffe.spiffe.x509svid import X509SvidError, id_from_certificate, verify_chain
from tests.fuzz.common import Target, fixed_ec_key, text
from tests.unit.certs import NOW, make_ca

TRUST_DOMAIN = TrustDomain("example.org")


def spiffe_id(data: bytes) -> None:
    """Parsed IDs are canonical: printed, they re-parse to themselves, in lower case up to the path."""
    value = text(data)
    try:
        parsed = SpiffeId.parse(value)
    except SpiffeIdError:
        parsed = None
    if parsed is not None:
        printed = str(parsed)
        assert SpiffeId.parse(printed) == parsed
        assert str(SpiffeId.parse(printed)) == printed
        assert len(printed) <= MAX_ID_BYTES and printed.isascii()
        assert printed == "spiffe://" + value.partition("://")[2].partition("/")[0].lower() + parsed.path
        assert TrustDomain.parse(str(parsed.trust_domain.id)) == parsed.trust_domain
        assert parsed.is_under(parsed.trust_domain.id)
    try:
        domain = TrustDomain.parse(value)
    except SpiffeIdError:
        return
    assert TrustDomain.parse(str(domain)) == domain
    assert SpiffeId.parse(str(domain.id)).trust_domain == domain


def _same_bundle(a: Bundle, b: Bundle) -> bool:
    return (
        a.trust_domain == b.trust_domain
        and a.x509_authorities == b.x509_authorities
        and dict(a.jwt_authorities) == dict(b.jwt_authorities)
        and (a.sequence, a.refresh_hint) == (b.sequence, b.refresh_hint)
    )


def bundle_json(data: bytes) -> None:
    """A parsed bundle survives its own serialization unchanged (what federation republishes)."""
    try:
        bundle = parse_bundle_json(TRUST_DOMAIN, data)
    except BundleError:
        return
    assert _same_bundle(parse_bundle_json(TRUST_DOMAIN, bundle_to_json(bundle)), bundle)


def bundle_pem(data: bytes) -> None:
    try:
        certificates = parse_pem_certificates(data)
    except BundleError:
        return
    assert certificates
    assert parse_pem_certificates(certificates_to_pem(certificates)) == certificates


_X5C_KEY = json.loads(
    bundle_to_json(Bundle(TRUST_DOMAIN, jwt_authorities={"k": fixed_ec_key(7).public_key()}))
)["keys"][0]


def bundle_der(data: bytes) -> None:
    """Concatenated DER splits into certificates that re-encode to exactly the input; the same bytes as
    an x5c certificate in a bundle document (next to a fixed EC key) are refused or accepted cleanly."""
    try:
        certificates = parse_der_certificates(data)
    except BundleError:
        pass
    else:
        assert certificates_to_der(certificates) == data
    document = {"keys": [{**_X5C_KEY, "use": "x509-svid", "x5c": [base64.b64encode(data).decode()]}]}
    try:
        parse_bundle_json(TRUST_DOMAIN, json.dumps(document).encode())
    except BundleError:
        return


SVID_CA = make_ca("fuzz root", key=fixed_ec_key(11))
"""Same name and key in every process, so committed chains verify; valid around tests.unit.certs.NOW."""


def x509_svid(data: bytes) -> None:
    """Concatenated DER, leaf first, verified against one fixed root: an accepted chain's SPIFFE ID is
    the leaf's own and lies in the root's trust domain."""
    try:
        chain = parse_der_certificates(data)
    except BundleError:
        return
    try:
        spiffe_id = verify_chain(chain, {TRUST_DOMAIN: (SVID_CA.cert,)}, NOW)
    except X509SvidError:
        return
    assert spiffe_id.trust_domain == TRUST_DOMAIN and spiffe_id.path
    assert id_from_certificate(chain[0]) == spiffe_id


def oidc_issuer(data: bytes) -> None:
    """An accepted issuer is an https URL with a host whose derived paths stay under it."""
    url = text(data)
    try:
        issuer = OidcIssuer.parse(url)
    except OidcIssuerError:
        return
    assert issuer.url == url and url.lower().startswith("https://")  # schemes are case-insensitive
    assert issuer.jwks_uri.startswith(url.rstrip("/"))
    assert issuer.discovery_path.endswith("/.well-known/openid-configuration")
    assert issuer.jwks_path.endswith("/keys")


_JSON_WORDS = (b'"keys"', b'"use"', b'"kty"', b'"kid"', b'"x5c"', b'"crv"', b'"x"', b'"y"', b'"n"', b'"e"')

TARGETS = (
    Target("spiffeid", spiffe_id, max_len=2200, dictionary=(b"spiffe://", b"/", b"%", b"@", b":", b"..")),
    Target(
        "bundle_json",
        bundle_json,
        max_len=8192,
        dictionary=(
            *_JSON_WORDS,
            b'"x509-svid"',
            b'"jwt-svid"',
            b'"EC"',
            b'"RSA"',
            b'"P-256"',
            b'"d"',
            b'"spiffe_sequence"',
            b'"spiffe_refresh_hint"',
        ),
    ),
    Target(
        "bundle_pem",
        bundle_pem,
        max_len=8192,
        dictionary=(b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----", b"-----BEGIN "),
    ),
    Target("bundle_der", bundle_der, max_len=4096),
    Target("x509svid", x509_svid, max_len=8192),
    Target("oidc", oidc_issuer, max_len=300, dictionary=(b"https://", b"@", b"?", b"#", b":443", b"[::1]")),
)
