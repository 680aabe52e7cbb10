"""X.509-SVID verifier rules (checklist B): leaf profile, signing-CA profile and chain validation.

Certificates are built here with cryptography, reproducing go-spiffe's x509svid testdata cases
(wrong-leaf-ca-true, wrong-leaf-cert-sign, wrong-leaf-crl-sign, wrong-leaf-no-digital-signature,
wrong-leaf-empty-id, wrong-intermediate-no-ca) and more.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st

from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import (
    MAX_CHAIN,
    X509SvidError,
    check_leaf,
    check_signing_ca,
    id_from_certificate,
    verify_chain,
)

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.org")
ID = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
OTHER_ID = SpiffeId.parse("spiffe://other.org/ns/a/sa/b")

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
BOTH_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class Issued:
    key: Key
    cert: x509.Certificate


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_usage(flags: frozenset[str]) -> x509.KeyUsage:
    return x509.KeyUsage(**{flag: flag in flags for flag in USAGE_FLAGS})


def name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def build(
    *,
    subject: x509.Name,
    issuer: Issued | None,
    key: Key | None = None,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    san: bool = True,
    san_critical: bool = False,
    ca: bool | None = False,
    path_length: int | None = None,
    usage: frozenset[str] | None = LEAF_USAGE,
    usage_critical: bool = True,
    eku: Sequence[ObjectIdentifier] | None = BOTH_EKU,
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + DAY,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """One certificate; `issuer=None` makes it self-signed. Every extension can be dropped or altered."""
    key = key or ec_key()
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
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
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if san and names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(key, builder.sign(signer_key, hashes.SHA256()))


def make_ca(
    td: TrustDomain,
    common_name: str,
    *,
    issuer: Issued | None = None,
    key: Key | None = None,
    path_length: int | None = None,
    ca: bool | None = True,
    usage: frozenset[str] | None = CA_USAGE,
    usage_critical: bool = True,
    not_before: dt.datetime = NOW - 10 * DAY,
    not_after: dt.datetime = NOW + 10 * DAY,
) -> Issued:
    return build(
        subject=name(common_name),
        issuer=issuer,
        key=key,
        uris=[str(td.id)],
        ca=ca,
        path_length=path_length,
        usage=usage,
        usage_critical=usage_critical,
        eku=None,
        not_before=not_before,
        not_after=not_after,
    )


def make_leaf(
    issuer: Issued,
    *,
    uris: Sequence[str] = (str(ID),),
    subject: x509.Name | None = None,
    **kwargs: Any,
) -> x509.Certificate:
    return build(
        subject=name("leaf") if subject is None else subject, issuer=issuer, uris=uris, **kwargs
    ).cert


def tamper_signature(cert: x509.Certificate) -> x509.Certificate:
    """Flip a bit in the last byte of the DER, which is inside the signature value."""
    der = bytearray(cert.public_bytes(Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_certificate(bytes(der))


ROOT = make_ca(TD, "root")
RSA_ROOT = make_ca(TD, "rsa root", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
OTHER_ROOT = make_ca(OTHER_TD, "other root")
INTERMEDIATE = make_ca(TD, "intermediate", issuer=ROOT)
BUNDLES: dict[TrustDomain, list[x509.Certificate]] = {TD: [ROOT.cert], OTHER_TD: [OTHER_ROOT.cert]}
GOOD_LEAF = make_leaf(ROOT)


# --- id_from_certificate ---------------------------------------------------------------------------------


def test_id_from_certificate() -> None:
    assert id_from_certificate(GOOD_LEAF) == ID
    assert id_from_certificate(ROOT.cert) == TD.id
    assert id_from_certificate(make_leaf(ROOT, uris=["SPIFFE://EXAMPLE.ORG/ns/a/sa/b"])) == ID


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param([], id="no-uri-san"),
        pytest.param([str(ID), "spiffe://example.org/other"], id="two-spiffe-uris"),
        pytest.param([str(ID), "https://example.org/x"], id="spiffe-and-https"),
        pytest.param([str(ID), str(ID)], id="same-uri-twice"),
        pytest.param(["https://example.org/x"], id="not-spiffe"),
        pytest.param(["spiffe://example.org/a%20b"], id="percent-encoded"),
        pytest.param(["spiffe://example.org/"], id="trailing-slash"),
        pytest.param(["spiffe://example.org:443/a"], id="port"),
    ],
)
def test_id_from_certificate_refuses(uris: list[str]) -> None:
    cert = make_leaf(ROOT, uris=uris, dns=["web.example.org"])
    with pytest.raises(X509SvidError):
        id_from_certificate(cert)
    with pytest.raises(X509SvidError):
        check_leaf(cert)
    with pytest.raises(X509SvidError):
        verify_chain([cert], BUNDLES, NOW)


def test_no_san_extension_at_all_is_refused() -> None:
    cert = make_leaf(ROOT, san=False)
    with pytest.raises(X509SvidError, match="0 URI SANs"):
        id_from_certificate(cert)


# --- check_leaf ------------------------------------------------------------------------------------------


def test_good_leaf() -> None:
    assert check_leaf(GOOD_LEAF) == ID
    assert verify_chain([GOOD_LEAF], BUNDLES, NOW) == ID


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"ca": None}, id="no-basic-constraints"),  # absent means cA=false
        pytest.param({"eku": None}, id="no-eku"),  # SHOULD, not MUST
        pytest.param({"usage": LEAF_USAGE | {"key_encipherment"}}, id="key-encipherment"),
        pytest.param({"usage": LEAF_USAGE | {"key_agreement"}}, id="key-agreement"),
        pytest.param({"subject": x509.Name([]), "san_critical": True}, id="empty-subject-critical-san"),
        pytest.param({"san_critical": True}, id="critical-san"),
        pytest.param({"dns": ["a.example.org", "b.example.org"]}, id="dns-sans"),
        pytest.param({"eku": (*BOTH_EKU, ExtendedKeyUsageOID.CODE_SIGNING)}, id="eku-with-an-extra-purpose"),
    ],
)
def test_leaf_variants_accepted(kwargs: dict[str, Any]) -> None:
    cert = make_leaf(ROOT, **kwargs)
    assert check_leaf(cert) == ID
    assert verify_chain([cert], BUNDLES, NOW) == ID


LEAF_REFUSALS = [
    pytest.param({"ca": True}, "cA=true", id="wrong-leaf-ca-true"),
    pytest.param({"ca": True, "path_length": 0}, "cA=true", id="wrong-leaf-ca-true-pathlen-0"),
    pytest.param({"usage": LEAF_USAGE | {"key_cert_sign"}}, "keyCertSign", id="wrong-leaf-cert-sign"),
    pytest.param({"usage": LEAF_USAGE | {"crl_sign"}}, "cRLSign", id="wrong-leaf-crl-sign"),
    pytest.param(
        {"usage": frozenset({"key_encipherment"})}, "digitalSignature", id="wrong-leaf-no-digital-signature"
    ),
    pytest.param({"uris": [], "dns": ["x.example.org"]}, "0 URI SANs", id="wrong-leaf-empty-id"),
    pytest.param({"uris": [str(ID), "spiffe://example.org/x"]}, "2 URI SANs", id="two-uri-sans"),
    pytest.param({"uris": ["spiffe://example.org"]}, "no path", id="root-path-id"),
    pytest.param({"subject": x509.Name([])}, "empty Subject", id="empty-subject-non-critical-san"),
    pytest.param({"usage_critical": False}, "critical", id="key-usage-not-critical"),
    pytest.param({"usage": None}, "keyUsage", id="no-key-usage"),
    pytest.param({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, "clientAuth", id="eku-without-client-auth"),
    pytest.param({"eku": [ExtendedKeyUsageOID.CLIENT_AUTH]}, "serverAuth", id="eku-without-server-auth"),
    pytest.param({"eku": [ExtendedKeyUsageOID.CODE_SIGNING]}, "clientAuth", id="eku-code-signing-only"),
]


@pytest.mark.parametrize(("kwargs", "message"), LEAF_REFUSALS)
def test_leaf_refused(kwargs: dict[str, Any], message: str) -> None:
    cert = make_leaf(ROOT, **kwargs)
    with pytest.raises(X509SvidError, match=message):
        check_leaf(cert)
    with pytest.raises(X509SvidError, match=message):
        verify_chain([cert], BUNDLES, NOW)


def test_key_usage_exhaustive() -> None:
    """All 128 combinations of the seven plain keyUsage bits: accepted iff digitalSignature and neither
    keyCertSign nor cRLSign."""
    plain = [f for f in USAGE_FLAGS if f not in ("encipher_only", "decipher_only")]
    key = ec_key()
    outcomes = set()
    for bits in itertools.product((False, True), repeat=len(plain)):
        flags = frozenset(f for f, on in zip(plain, bits, strict=True) if on)
        cert = build(subject=name("leaf"), issuer=ROOT, key=key, uris=[str(ID)], usage=flags).cert
        expected = "digital_signature" in flags and not flags & {"key_cert_sign", "crl_sign"}
        try:
            check_leaf(cert)
            accepted = True
        except X509SvidError:
            accepted = False
        assert accepted is expected, flags
        outcomes.add(accepted)
    assert outcomes == {True, False}


# --- check_signing_ca ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="profile"),
        pytest.param({"usage": frozenset({"key_cert_sign"})}, id="no-crl-sign"),
        pytest.param({"usage": CA_USAGE | {"digital_signature"}}, id="upstream-digital-signature"),
        pytest.param({"path_length": 0}, id="pathlen-0"),
    ],
)
def test_signing_ca_accepted(kwargs: dict[str, Any]) -> None:
    check_signing_ca(make_ca(TD, "ca", **kwargs).cert)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"ca": False}, id="ca-false"),
        pytest.param({"ca": None}, id="no-basic-constraints"),
        pytest.param({"usage": None}, id="no-key-usage"),
        pytest.param({"usage_critical": False}, id="key-usage-not-critical"),
        pytest.param({"usage": frozenset({"crl_sign"})}, id="no-key-cert-sign"),
        pytest.param({"usage": frozenset({"digital_signature"})}, id="leaf-usage"),
    ],
)
def test_signing_ca_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(X509SvidError):
        check_signing_ca(make_ca(TD, "ca", **kwargs).cert)


def test_a_leaf_is_not_a_signing_ca() -> None:
    with pytest.raises(X509SvidError, match="not a CA"):
        check_signing_ca(GOOD_LEAF)


# --- verify_chain: good paths ----------------------------------------------------------------------------


def test_chain_good_direct() -> None:
    assert verify_chain([GOOD_LEAF], {TD: [ROOT.cert]}, NOW) == ID


def test_chain_good_direct_rsa_root() -> None:
    assert verify_chain([make_leaf(RSA_ROOT)], {TD: [RSA_ROOT.cert]}, NOW) == ID


def test_chain_good_via_intermediate() -> None:
    leaf = make_leaf(INTERMEDIATE)
    assert verify_chain([leaf, INTERMEDIATE.cert], BUNDLES, NOW) == ID


def test_chain_good_with_root_included() -> None:
    leaf = make_leaf(INTERMEDIATE)
    assert verify_chain([leaf, INTERMEDIATE.cert, ROOT.cert], BUNDLES, NOW) == ID


def test_chain_good_via_two_intermediates_in_any_order() -> None:
    second = make_ca(TD, "second", issuer=INTERMEDIATE)
    leaf = make_leaf(second)
    assert verify_chain([leaf, second.cert, INTERMEDIATE.cert], BUNDLES, NOW) == ID
    assert verify_chain([leaf, INTERMEDIATE.cert, second.cert], BUNDLES, NOW) == ID


def test_chain_good_with_several_anchors() -> None:
    leaf = make_leaf(RSA_ROOT)
    assert verify_chain([leaf], {TD: [ROOT.cert, RSA_ROOT.cert]}, NOW) == ID


def test_chain_with_upstream_ca_having_digital_signature() -> None:
    upstream = make_ca(TD, "upstream", usage=CA_USAGE | {"digital_signature"})
    assert verify_chain([make_leaf(upstream)], {TD: [upstream.cert]}, NOW) == ID


def test_chain_good_in_a_federated_trust_domain() -> None:
    leaf = make_leaf(OTHER_ROOT, uris=[str(OTHER_ID)])
    assert verify_chain([leaf], BUNDLES, NOW) == OTHER_ID


# --- verify_chain: refusals ------------------------------------------------------------------------------


def test_empty_chain() -> None:
    with pytest.raises(X509SvidError, match="empty"):
        verify_chain([], BUNDLES, NOW)


def test_chain_too_long() -> None:
    cas = [ROOT]
    for i in range(MAX_CHAIN):
        cas.append(make_ca(TD, f"ca{i}", issuer=cas[-1]))
    leaf = make_leaf(cas[-1])
    chain = [leaf, *(c.cert for c in reversed(cas[1:]))]
    assert len(chain) == MAX_CHAIN + 1
    with pytest.raises(X509SvidError, match="longer"):
        verify_chain(chain, BUNDLES, NOW)
    # one CA fewer is within the limit
    shorter = make_leaf(cas[-2])
    assert verify_chain([shorter, *(c.cert for c in reversed(cas[1:-1]))], BUNDLES, NOW) == ID


def test_wrong_intermediate_no_ca() -> None:
    not_ca = make_ca(TD, "not a ca", issuer=ROOT, ca=False)
    leaf = make_leaf(not_ca)
    with pytest.raises(X509SvidError, match="not a CA"):
        verify_chain([leaf, not_ca.cert], BUNDLES, NOW)


def test_intermediate_without_basic_constraints() -> None:
    no_bc = make_ca(TD, "no bc", issuer=ROOT, ca=None)
    with pytest.raises(X509SvidError, match="not a CA"):
        verify_chain([make_leaf(no_bc), no_bc.cert], BUNDLES, NOW)


def test_intermediate_without_key_cert_sign() -> None:
    no_kcs = make_ca(TD, "no kcs", issuer=ROOT, usage=frozenset({"crl_sign"}))
    with pytest.raises(X509SvidError, match="keyCertSign"):
        verify_chain([make_leaf(no_kcs), no_kcs.cert], BUNDLES, NOW)


def test_anchor_that_is_not_a_ca() -> None:
    not_ca = make_ca(TD, "anchor not ca", ca=False)
    with pytest.raises(X509SvidError, match="not a CA"):
        verify_chain([make_leaf(not_ca)], {TD: [not_ca.cert]}, NOW)


def test_self_signed_leaf_as_its_own_anchor() -> None:
    key = ec_key()
    leaf = build(subject=name("self"), issuer=None, key=key, uris=[str(ID)]).cert
    with pytest.raises(X509SvidError, match="not a CA"):
        verify_chain([leaf], {TD: [leaf]}, NOW)


def test_intermediate_path_len_zero_with_a_ca_below() -> None:
    limited = make_ca(TD, "limited", issuer=ROOT, path_length=0)
    below = make_ca(TD, "below", issuer=limited)
    leaf = make_leaf(below)
    with pytest.raises(X509SvidError, match="allows 0"):
        verify_chain([leaf, below.cert, limited.cert], BUNDLES, NOW)
    # pathLen=0 directly above the leaf is fine
    assert verify_chain([make_leaf(limited), limited.cert], BUNDLES, NOW) == ID


def test_root_path_len_limits() -> None:
    root0 = make_ca(TD, "root0", path_length=0)
    root1 = make_ca(TD, "root1", path_length=1)
    for root, ok in ((root0, False), (root1, True)):
        mid = make_ca(TD, "mid", issuer=root)
        chain = [make_leaf(mid), mid.cert]
        if ok:
            assert verify_chain(chain, {TD: [root.cert]}, NOW) == ID
        else:
            with pytest.raises(X509SvidError, match="allows 0"):
                verify_chain(chain, {TD: [root.cert]}, NOW)
    mid = make_ca(TD, "mid", issuer=root1)
    low = make_ca(TD, "low", issuer=mid)
    with pytest.raises(X509SvidError, match="allows 1"):
        verify_chain([make_leaf(low), low.cert, mid.cert], {TD: [root1.cert]}, NOW)


def test_expired_leaf() -> None:
    leaf = make_leaf(ROOT, not_before=NOW - 2 * DAY, not_after=NOW - dt.timedelta(seconds=1))
    with pytest.raises(X509SvidError, match="leaf has expired"):
        verify_chain([leaf], BUNDLES, NOW)


def test_not_yet_valid_leaf() -> None:
    leaf = make_leaf(ROOT, not_before=NOW + dt.timedelta(seconds=1), not_after=NOW + DAY)
    with pytest.raises(X509SvidError, match="leaf is not valid yet"):
        verify_chain([leaf], BUNDLES, NOW)


def test_validity_bounds_are_inclusive() -> None:
    leaf = make_leaf(ROOT, not_before=NOW - DAY, not_after=NOW + DAY)
    assert verify_chain([leaf], BUNDLES, NOW - DAY) == ID
    assert verify_chain([leaf], BUNDLES, NOW + DAY) == ID


def test_expired_intermediate() -> None:
    old = make_ca(TD, "old", issuer=ROOT, not_before=NOW - 5 * DAY, not_after=NOW - DAY)
    leaf = make_leaf(old)
    with pytest.raises(X509SvidError, match="intermediate has expired"):
        verify_chain([leaf, old.cert], BUNDLES, NOW)


def test_not_yet_valid_intermediate() -> None:
    young = make_ca(TD, "young", issuer=ROOT, not_before=NOW + DAY, not_after=NOW + 5 * DAY)
    with pytest.raises(X509SvidError, match="intermediate is not valid yet"):
        verify_chain([make_leaf(young), young.cert], BUNDLES, NOW)


def test_expired_anchor() -> None:
    old_root = make_ca(TD, "old root", not_before=NOW - 5 * DAY, not_after=NOW - DAY)
    with pytest.raises(X509SvidError, match="trust anchor has expired"):
        verify_chain([make_leaf(old_root)], {TD: [old_root.cert]}, NOW)


def test_leaf_signed_by_another_trust_domains_ca() -> None:
    """The leaf claims example.org but was signed by other.org's CA; only example.org's bundle is given."""
    leaf = make_leaf(OTHER_ROOT)
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf], {TD: [ROOT.cert]}, NOW)


def test_anchors_of_a_different_trust_domain_are_not_used() -> None:
    """B.8: other.org's CA did sign the example.org leaf, and other.org's bundle is present: still refused."""
    leaf = make_leaf(OTHER_ROOT)
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf], BUNDLES, NOW)
    # and not via an intermediate either
    foreign_mid = make_ca(TD, "foreign mid", issuer=OTHER_ROOT)
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([make_leaf(foreign_mid), foreign_mid.cert], BUNDLES, NOW)


def test_other_trust_domain_leaf_not_verified_with_our_anchors() -> None:
    leaf = make_leaf(ROOT, uris=[str(OTHER_ID)])
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf], BUNDLES, NOW)


def test_no_bundle_for_the_leafs_trust_domain() -> None:
    with pytest.raises(X509SvidError, match="no bundle"):
        verify_chain([GOOD_LEAF], {OTHER_TD: [OTHER_ROOT.cert, ROOT.cert]}, NOW)
    with pytest.raises(X509SvidError, match="no bundle"):
        verify_chain([GOOD_LEAF], {}, NOW)
    with pytest.raises(X509SvidError, match="no bundle"):
        verify_chain([GOOD_LEAF], {TD: []}, NOW)


def test_tampered_leaf_signature() -> None:
    tampered = tamper_signature(GOOD_LEAF)
    assert tampered.tbs_certificate_bytes == GOOD_LEAF.tbs_certificate_bytes
    assert tampered.signature != GOOD_LEAF.signature
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([tampered], BUNDLES, NOW)


def test_tampered_intermediate_signature() -> None:
    leaf = make_leaf(INTERMEDIATE)
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf, tamper_signature(INTERMEDIATE.cert)], BUNDLES, NOW)


def test_same_issuer_name_but_different_key() -> None:
    impostor = make_ca(TD, "root")  # same subject as ROOT, different key
    assert impostor.cert.subject == ROOT.cert.subject
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([make_leaf(impostor)], BUNDLES, NOW)


def test_right_key_but_wrong_issuer_name() -> None:
    renamed = Issued(ROOT.key, make_ca(TD, "renamed", key=ROOT.key).cert)
    leaf = make_leaf(renamed)  # signed with ROOT's key, issuer name "renamed"
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf], BUNDLES, NOW)


def test_missing_intermediate() -> None:
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([make_leaf(INTERMEDIATE)], BUNDLES, NOW)


def test_bad_leaf_is_refused_before_the_bundle_is_consulted() -> None:
    cert = make_leaf(ROOT, ca=True)
    with pytest.raises(X509SvidError, match="cA=true"):
        verify_chain([cert], {}, NOW)


def test_unknown_critical_extension_in_leaf_is_refused() -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    leaf = make_leaf(ROOT, extra=[(unknown, True)])
    with pytest.raises(X509SvidError):
        verify_chain([leaf], BUNDLES, NOW)


def test_unknown_non_critical_extension_is_ignored() -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    leaf = make_leaf(ROOT, extra=[(unknown, False)])
    assert verify_chain([leaf], BUNDLES, NOW) == ID


# --- properties ------------------------------------------------------------------------------------------

WINDOW_ROOT = make_ca(TD, "window root", not_before=NOW - 10 * DAY, not_after=NOW + 10 * DAY)
WINDOW_MID = make_ca(TD, "window mid", issuer=WINDOW_ROOT, not_before=NOW - 5 * DAY, not_after=NOW + 8 * DAY)
WINDOW_LEAF = make_leaf(WINDOW_MID, not_before=NOW - 2 * DAY, not_after=NOW + 2 * DAY)


@settings(max_examples=200)
@given(st.integers(min_value=-12 * 86400, max_value=12 * 86400))
def test_chain_valid_exactly_inside_every_validity_window(offset: int) -> None:
    now = NOW + dt.timedelta(seconds=offset)
    certs = [WINDOW_LEAF, WINDOW_MID.cert, WINDOW_ROOT.cert]
    inside = all(c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in certs)
    if inside:
        assert verify_chain([WINDOW_LEAF, WINDOW_MID.cert], {TD: [WINDOW_ROOT.cert]}, now) == ID
    else:
        with pytest.raises(X509SvidError, match=r"expired|not valid yet"):
            verify_chain([WINDOW_LEAF, WINDOW_MID.cert], {TD: [WINDOW_ROOT.cert]}, now)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.sampled_from(["spiffe://example.org/a", "spiffe://example.org/b", "https://x.example"]),
        max_size=3,
    )
)
def test_exactly_one_uri_san_rule(uris: list[str]) -> None:
    cert = make_leaf(ROOT, uris=uris, dns=["dns.example.org"])
    if len(uris) == 1 and uris[0].startswith("spiffe://"):
        assert check_leaf(cert) == SpiffeId.parse(uris[0])
    else:
        with pytest.raises(X509SvidError):
            check_leaf(cert)
