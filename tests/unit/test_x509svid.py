"""X.509-SVID verifier rules (checklist B): leaf profile, signing-CA profile, chain validation, names.

Fixtures come from tests/unit/certs.py (cryptography only) and reproduce go-spiffe's x509svid testdata
cases by name: wrong-leaf-ca-true, wrong-leaf-cert-sign, wrong-leaf-crl-sign,
wrong-leaf-no-digital-signature, wrong-leaf-empty-id, wrong-intermediate-no-ca.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
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
from tests.unit.certs import (
    CA_USAGE,
    DAY,
    EMPTY_NAME,
    LEAF_USAGE,
    NOW,
    PLACEHOLDER_OID,
    USAGE_FLAGS,
    Issued,
    build,
    der,
    ec_key,
    make_ca,
    make_leaf,
    name,
    retag_extension,
    rsa_key,
    tamper_signature,
    uris,
)

TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.org")
ID = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
OTHER_ID = SpiffeId.parse("spiffe://other.org/ns/a/sa/b")
ROOT = make_ca("example.org root")
BUNDLES = {TD: [ROOT.cert]}
OTHER_ROOT = make_ca("other.org root", trust_domain="other.org")
FEDERATED = {TD: [ROOT.cert], OTHER_TD: [OTHER_ROOT.cert]}
RSA_ROOT = make_ca("rsa root", key=rsa_key())
INTERMEDIATE = make_ca("intermediate", ROOT)
GOOD_LEAF = make_leaf(ROOT).cert
SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
IP = x509.IPAddress
CRL_DP = x509.CRLDistributionPoints(
    [x509.DistributionPoint(uris("http://crl.example.org/ca.crl"), None, None, None)]
)
UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
UNKNOWN_2 = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")


def verify(*chain: Issued, bundles: dict[TrustDomain, list[x509.Certificate]] | None = None) -> SpiffeId:
    return verify_chain([i.cert for i in chain], BUNDLES if bundles is None else bundles, NOW)


# --- leaf profile (B.1-B.5, B.9) ----------------------------------------------------------------------------

REFUSED_LEAVES: list[tuple[str, dict[str, Any], str]] = [
    ("wrong-leaf-ca-true", {"ca": True}, "cA=true"),
    ("wrong-leaf-ca-true with pathLen 0", {"ca": True, "path_length": 0}, "cA=true"),
    ("wrong-leaf-cert-sign", {"usage": LEAF_USAGE | {"key_cert_sign"}}, "keyCertSign"),
    ("wrong-leaf-crl-sign", {"usage": LEAF_USAGE | {"crl_sign"}}, "cRLSign"),
    ("wrong-leaf-no-digital-signature", {"usage": {"key_encipherment"}}, "lacks digitalSignature"),
    ("wrong-leaf-empty-id", {"names": []}, "has 0 URI SANs"),
    ("zero URI SANs, a DNS SAN", {"names": [x509.DNSName("a.example.org")]}, "has 0 URI SANs"),
    ("zero URI SANs, another DNS SAN", {"names": [x509.DNSName("x.example.org")]}, "0 URI SANs"),
    ("two URI SANs", {"names": uris(str(ID), "spiffe://example.org/admin")}, "has 2 URI SANs"),
    ("two URI SANs, another second ID", {"names": uris(str(ID), "spiffe://example.org/x")}, "2 URI SANs"),
    ("SPIFFE ID and another URI", {"names": uris(str(ID), "https://example.org/")}, "has 2 URI SANs"),
    ("root path ID", {"spiffe_id": "spiffe://example.org"}, "has no path"),
    ("https URI", {"spiffe_id": "https://example.org/ns/a"}, "not a SPIFFE ID"),
    ("invalid SPIFFE ID", {"spiffe_id": "spiffe://example.org/a//b"}, "not a SPIFFE ID"),
    ("space in the path", {"spiffe_id": "spiffe://example.org/a b"}, "not a SPIFFE ID"),
    ("empty subject, SAN not critical", {"subject": EMPTY_NAME}, "SAN extension must be critical"),
    ("empty subject, SAN not critical, named", {"subject": EMPTY_NAME}, "empty Subject"),
    ("no keyUsage", {"usage": None}, "keyUsage must be present and critical"),
    ("keyUsage not critical", {"usage_critical": False}, "keyUsage must be present and critical"),
    ("EKU serverAuth only", {"eku": [SERVER]}, "both serverAuth and clientAuth"),
    ("EKU clientAuth only", {"eku": [CLIENT]}, "both serverAuth and clientAuth"),
    ("EKU anyExtendedKeyUsage", {"eku": [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]}, "both serverAuth"),
    ("EKU codeSigning only", {"eku": [ExtendedKeyUsageOID.CODE_SIGNING]}, "clientAuth"),
    ("unknown critical extension", {"extra": [(UNKNOWN, True)]}, "does not process: 1.3.6.1.4.1.99999.1"),
    (
        "another unknown critical extension",
        {"extra": [(UNKNOWN_2, True)]},
        "does not process: 1.3.6.1.4.1.55555.1",
    ),
    (
        "critical policy constraints",
        {"extra": [(x509.PolicyConstraints(require_explicit_policy=0, inhibit_policy_mapping=None), True)]},
        "does not process: 2.5.29.36",
    ),
]


@pytest.mark.parametrize(
    ("changes", "message"), [c[1:] for c in REFUSED_LEAVES], ids=[c[0] for c in REFUSED_LEAVES]
)
def test_leaf_refused(changes: dict[str, Any], message: str) -> None:
    leaf = make_leaf(ROOT, **changes)
    with pytest.raises(X509SvidError, match=message):
        check_leaf(leaf.cert)
    with pytest.raises(X509SvidError, match=message):
        verify(leaf)


ACCEPTED_LEAVES: list[tuple[str, dict[str, Any]]] = [
    ("SPIFFE profile", {}),
    ("no basicConstraints (cA defaults to false)", {"ca": None}),
    ("no EKU (a SHOULD)", {"eku": None}),
    ("EKU with more purposes", {"eku": [SERVER, CLIENT, ExtendedKeyUsageOID.CODE_SIGNING]}),
    ("empty subject, critical SAN", {"subject": EMPTY_NAME, "san_critical": True}),
    ("subject and critical SAN", {"san_critical": True}),
    ("keyEncipherment and keyAgreement (MAY)", {"usage": LEAF_USAGE | {"key_encipherment", "key_agreement"}}),
    ("keyEncipherment (MAY)", {"usage": LEAF_USAGE | {"key_encipherment"}}),
    ("keyAgreement (MAY)", {"usage": LEAF_USAGE | {"key_agreement"}}),
    (
        "DNS and IP SANs next to the ID",
        {"names": [*uris(str(ID)), x509.DNSName("a.example.org"), IP(ipaddress.ip_address("10.0.0.1"))]},
    ),
    (
        "two DNS SANs next to the ID",
        {"names": [*uris(str(ID)), x509.DNSName("a.example.org"), x509.DNSName("b.example.org")]},
    ),
    ("RSA key", {"key": rsa_key()}),
    ("P-384 key", {"key": ec_key(ec.SECP384R1())}),
    ("unknown non-critical extension", {"extra": [(UNKNOWN, False)]}),
    ("another unknown non-critical extension", {"extra": [(UNKNOWN_2, False)]}),
    (
        "critical certificatePolicies (any policy is accepted)",
        {
            "extra": [
                (
                    x509.CertificatePolicies(
                        [x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None)]
                    ),
                    True,
                )
            ]
        },
    ),
]


@pytest.mark.parametrize("changes", [c[1] for c in ACCEPTED_LEAVES], ids=[c[0] for c in ACCEPTED_LEAVES])
def test_leaf_accepted(changes: dict[str, Any]) -> None:
    leaf = make_leaf(ROOT, **changes)
    assert check_leaf(leaf.cert) == ID
    assert verify(leaf) == ID


def test_path_is_case_sensitive_and_scheme_and_trust_domain_fold() -> None:
    leaf = make_leaf(ROOT, "SPIFFE://Example.ORG/NS/A")
    assert check_leaf(leaf.cert) == SpiffeId(TD, "/NS/A")


ALL_USAGES = [frozenset(c) for n in range(10) for c in itertools.combinations(USAGE_FLAGS, n)]


# encipherOnly/decipherOnly without keyAgreement cannot be encoded, so those combinations are left out.
@pytest.mark.parametrize(
    "flags", [f for f in ALL_USAGES if "key_agreement" in f or not {"encipher_only", "decipher_only"} & f]
)
def test_every_key_usage_combination(flags: frozenset[str]) -> None:
    leaf = make_leaf(ROOT, usage=flags).cert
    if "digital_signature" in flags and not {"key_cert_sign", "crl_sign"} & flags:
        assert check_leaf(leaf) == ID
    else:
        with pytest.raises(X509SvidError, match="keyUsage"):
            check_leaf(leaf)


# --- id_from_certificate ------------------------------------------------------------------------------------


def test_id_from_certificate() -> None:
    assert id_from_certificate(make_leaf(ROOT).cert) == ID
    assert id_from_certificate(ROOT.cert) == TD.id
    for names, count in [([], 0), (uris("spiffe://a/x", "spiffe://a/y"), 2), (uris("spiffe://a/x") * 3, 3)]:
        with pytest.raises(X509SvidError, match=f"has {count} URI SANs"):
            id_from_certificate(make_leaf(ROOT, names=names).cert)


def test_id_from_certificate_folds_scheme_and_trust_domain() -> None:
    assert id_from_certificate(GOOD_LEAF) == ID
    assert id_from_certificate(ROOT.cert) == TD.id
    assert id_from_certificate(make_leaf(ROOT, "SPIFFE://EXAMPLE.ORG/ns/a/sa/b").cert) == ID


@pytest.mark.parametrize(
    "values",
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
def test_uri_sans_other_than_one_spiffe_id_are_refused_everywhere(values: list[str]) -> None:
    cert = make_leaf(ROOT, names=[*uris(*values), x509.DNSName("web.example.org")]).cert
    with pytest.raises(X509SvidError):
        id_from_certificate(cert)
    with pytest.raises(X509SvidError):
        check_leaf(cert)
    with pytest.raises(X509SvidError):
        verify_chain([cert], FEDERATED, NOW)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.sampled_from(["spiffe://example.org/a", "spiffe://example.org/b", "https://x.example"]),
        max_size=3,
    )
)
def test_exactly_one_uri_san_rule(values: list[str]) -> None:
    cert = make_leaf(ROOT, names=[*uris(*values), x509.DNSName("dns.example.org")]).cert
    if len(values) == 1 and values[0].startswith("spiffe://"):
        assert check_leaf(cert) == SpiffeId.parse(values[0])
    else:
        with pytest.raises(X509SvidError):
            check_leaf(cert)


def test_no_san_extension_at_all() -> None:
    leaf = build(name("no san"), ROOT)
    assert not any(e.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME for e in leaf.cert.extensions)
    with pytest.raises(X509SvidError, match="has 0 URI SANs"):
        id_from_certificate(leaf.cert)


def test_duplicate_san_extension_is_an_svid_error() -> None:
    placeholder = x509.UnrecognizedExtension(PLACEHOLDER_OID, der_san("spiffe://example.org/evil"))
    cert = retag_extension(
        make_leaf(ROOT, extra=[(placeholder, False)]).cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME
    )
    for check in (id_from_certificate, check_leaf, check_signing_ca):
        with pytest.raises(X509SvidError, match="malformed extensions"):
            check(cert)


def test_malformed_key_usage_is_an_svid_error() -> None:
    placeholder = x509.UnrecognizedExtension(PLACEHOLDER_OID, b"\x30\x00")  # a SEQUENCE, not a BIT STRING
    cert = retag_extension(
        make_leaf(ROOT, usage=None, extra=[(placeholder, True)]).cert, ExtensionOID.KEY_USAGE
    )
    with pytest.raises(X509SvidError, match="malformed extensions"):
        check_leaf(cert)


def der_san(uri: str) -> bytes:
    return x509.SubjectAlternativeName(uris(uri)).public_bytes()


# --- signing CA profile (B.6, A.6) --------------------------------------------------------------------------

ACCEPTED_CAS: list[tuple[str, dict[str, Any]]] = [
    ("SPIFFE profile", {}),
    ("upstream CA with digitalSignature", {"usage": CA_USAGE | {"digital_signature"}}),
    ("no cRLSign (MAY)", {"usage": {"key_cert_sign"}}),
    ("no URI SAN (SHOULD)", {"trust_domain": None}),
    ("a non-SPIFFE URI SAN", {"names": uris("https://pki.example.org/ca")}),
    ("pathLen", {"path_length": 3}),
    ("pathLen 0", {"path_length": 0}),
    ("critical nameConstraints", {"extra": [(x509.NameConstraints(uris("example.org"), None), True)]}),
    ("critical key identifier", {"extra": [(x509.SubjectKeyIdentifier(b"\x01" * 20), True)]}),
]


@pytest.mark.parametrize("changes", [c[1] for c in ACCEPTED_CAS], ids=[c[0] for c in ACCEPTED_CAS])
def test_signing_ca_accepted(changes: dict[str, Any]) -> None:
    ca = make_ca("ca", **changes)
    check_signing_ca(ca.cert)
    assert verify(make_leaf(ca), bundles={TD: [ca.cert]}) == ID


REFUSED_CAS: list[tuple[str, dict[str, Any], str]] = [
    ("cA=false", {"ca": False}, "is not a CA"),
    ("no basicConstraints", {"ca": None}, "is not a CA"),
    ("no keyUsage", {"usage": None}, "critical keyUsage with keyCertSign"),
    ("keyUsage not critical", {"usage_critical": False}, "critical keyUsage"),
    ("keyUsage without keyCertSign", {"usage": {"crl_sign", "digital_signature"}}, "keyCertSign"),
    ("keyUsage cRLSign only", {"usage": {"crl_sign"}}, "keyCertSign"),
    ("a leaf's keyUsage", {"usage": {"digital_signature"}}, "keyCertSign"),
    (
        "SPIFFE ID with a path",
        {"names": uris("spiffe://example.org/ca")},
        "a signing CA's SPIFFE ID has no path",
    ),
    ("malformed SPIFFE URI", {"names": uris("SPIFFE://example.org:443")}, "URI SAN that is not a SPIFFE ID"),
    ("unknown critical extension", {"extra": [(UNKNOWN, True)]}, "does not process"),
    (
        "critical inhibitAnyPolicy",
        {"extra": [(x509.InhibitAnyPolicy(0), True)]},
        "does not process: 2.5.29.54",
    ),
    ("critical CRL distribution points", {"extra": [(CRL_DP, True)]}, "does not process: 2.5.29.31"),
]


@pytest.mark.parametrize(
    ("changes", "message"), [c[1:] for c in REFUSED_CAS], ids=[c[0] for c in REFUSED_CAS]
)
def test_signing_ca_refused(changes: dict[str, Any], message: str) -> None:
    ca = make_ca("ca", **changes)
    with pytest.raises(X509SvidError, match=message):
        check_signing_ca(ca.cert)
    with pytest.raises(X509SvidError, match=message):  # as an anchor
        verify(make_leaf(ca), bundles={TD: [ca.cert]})
    intermediate = make_ca("intermediate", ROOT, **changes)
    with pytest.raises(X509SvidError, match=message):  # as an intermediate
        verify(make_leaf(intermediate), intermediate)


def test_keyusage_not_critical_on_a_ca() -> None:
    ca = build(name("ca"), None, ca=True, usage=CA_USAGE, usage_critical=False, eku=None)
    with pytest.raises(X509SvidError, match="critical keyUsage"):
        check_signing_ca(ca.cert)


def test_a_leaf_is_not_a_signing_ca() -> None:
    with pytest.raises(X509SvidError, match="is not a CA"):
        check_signing_ca(make_leaf(ROOT).cert)


# --- chains (B.8) -------------------------------------------------------------------------------------------


def test_good_chain_directly_under_the_root() -> None:
    assert verify(make_leaf(ROOT)) == ID


@pytest.mark.parametrize(
    ("root_key", "leaf_key"),
    [(rsa_key(), ec_key()), (ec_key(), rsa_key()), (ec_key(ec.SECP384R1()), ec_key(ec.SECP521R1()))],
    ids=["rsa-root", "rsa-leaf", "p384-root-p521-leaf"],
)
def test_good_chain_ec_and_rsa_signatures(root_key: Any, leaf_key: Any) -> None:
    root = make_ca("root", key=root_key)
    assert verify(make_leaf(root, key=leaf_key), bundles={TD: [root.cert]}) == ID


def test_good_chain_with_an_intermediate() -> None:
    intermediate = make_ca("intermediate", ROOT)
    leaf = make_leaf(intermediate)
    assert verify(leaf, intermediate) == ID
    assert verify(leaf, intermediate, ROOT) == ID, "a chain may carry its root"
    with pytest.raises(X509SvidError, match=r"does not lead to an authority of trust domain example\.org"):
        verify(leaf)


def test_good_chain_via_two_intermediates_in_either_order() -> None:
    second = make_ca("second", INTERMEDIATE)
    leaf = make_leaf(second).cert
    assert verify_chain([leaf, second.cert, INTERMEDIATE.cert], FEDERATED, NOW) == ID
    assert verify_chain([leaf, INTERMEDIATE.cert, second.cert], FEDERATED, NOW) == ID


def test_good_chain_with_several_anchors() -> None:
    leaf = make_leaf(RSA_ROOT).cert
    assert verify_chain([leaf], {TD: [ROOT.cert, RSA_ROOT.cert]}, NOW) == ID


@settings(max_examples=24, deadline=None)
@given(st.permutations(range(3)))
def test_intermediates_in_any_order(order: list[int]) -> None:
    upper = make_ca("upper", ROOT)
    middle = make_ca("middle", upper)
    lower = make_ca("lower", middle)
    intermediates = [upper, middle, lower]
    assert verify(make_leaf(lower), *(intermediates[i] for i in order)) == ID


def test_longest_allowed_chain() -> None:
    issuer, intermediates = ROOT, []
    for depth in range(MAX_CHAIN - 1):
        issuer = make_ca(f"level {depth}", issuer)
        intermediates.append(issuer)
    leaf = make_leaf(issuer)
    assert verify(leaf, *reversed(intermediates)) == ID
    with pytest.raises(X509SvidError, match=f"longer than {MAX_CHAIN}"):
        verify(leaf, *reversed(intermediates), ROOT)


def test_chain_of_max_chain_cas_below_the_root_is_refused() -> None:
    cas = [ROOT]
    for i in range(MAX_CHAIN):
        cas.append(make_ca(f"ca{i}", cas[-1]))
    chain = [make_leaf(cas[-1]).cert, *(c.cert for c in reversed(cas[1:]))]
    assert len(chain) == MAX_CHAIN + 1
    with pytest.raises(X509SvidError, match="longer"):
        verify_chain(chain, FEDERATED, NOW)
    shorter = make_leaf(cas[-2]).cert  # one CA fewer is within the limit
    assert verify_chain([shorter, *(c.cert for c in reversed(cas[1:-1]))], FEDERATED, NOW) == ID


def test_empty_chain_and_naive_clock() -> None:
    with pytest.raises(X509SvidError, match="empty"):
        verify_chain([], BUNDLES, NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain([make_leaf(ROOT).cert], BUNDLES, NOW.replace(tzinfo=None))


def test_wrong_intermediate_no_ca() -> None:
    not_ca = make_ca("not a ca", ROOT, ca=False)
    with pytest.raises(X509SvidError, match="is not a CA"):
        verify(make_leaf(not_ca), not_ca)


def test_anchor_that_is_not_a_ca() -> None:
    leaf_as_anchor = build(name("self-signed leaf"), None, names=uris(str(ID)))
    with pytest.raises(X509SvidError, match="is not a CA"):
        verify(leaf_as_anchor, bundles={TD: [leaf_as_anchor.cert]})


@pytest.mark.parametrize(
    ("root_limit", "intermediate_limit", "depth", "error"),
    [
        (0, None, 0, None),
        (0, None, 1, "allows 0 CAs below it, the chain has 1"),
        (1, None, 1, None),
        (1, None, 2, "allows 1 CAs below it, the chain has 2"),
        (None, 0, 1, None),
        (None, 0, 2, "allows 0 CAs below it, the chain has 1"),
        (5, 1, 3, "allows 1 CAs below it, the chain has 2"),
    ],
)
def test_path_length(
    root_limit: int | None, intermediate_limit: int | None, depth: int, error: str | None
) -> None:
    root = make_ca("root", path_length=root_limit)
    issuer, chain = root, list[Issued]()
    for level in range(depth):
        issuer = make_ca(f"level {level}", issuer, path_length=intermediate_limit if level == 0 else None)
        chain.insert(0, issuer)
    leaf = make_leaf(issuer)
    if error is None:
        assert verify(leaf, *chain, bundles={TD: [root.cert]}) == ID
    else:
        with pytest.raises(X509SvidError, match=error):
            verify(leaf, *chain, bundles={TD: [root.cert]})


@pytest.mark.parametrize(
    ("where", "window", "message"),
    [
        ("leaf", (NOW - 2 * DAY, NOW - dt.timedelta(seconds=1)), "leaf has expired"),
        ("leaf", (NOW + dt.timedelta(seconds=1), NOW + DAY), "leaf is not valid yet"),
        ("intermediate", (NOW - 2 * DAY, NOW - dt.timedelta(seconds=1)), "intermediate has expired"),
        ("intermediate", (NOW + dt.timedelta(seconds=1), NOW + DAY), "intermediate is not valid yet"),
        ("anchor", (NOW - 2 * DAY, NOW - dt.timedelta(seconds=1)), "trust anchor has expired"),
        ("anchor", (NOW + dt.timedelta(seconds=1), NOW + DAY), "trust anchor is not valid yet"),
        ("intermediate", (NOW - 5 * DAY, NOW - DAY), "intermediate has expired"),
        ("intermediate", (NOW + DAY, NOW + 5 * DAY), "intermediate is not valid yet"),
        ("anchor", (NOW - 5 * DAY, NOW - DAY), "trust anchor has expired"),
        ("leaf", (NOW, NOW), None),  # both bounds are inclusive
        ("intermediate", (NOW, NOW), None),
        ("anchor", (NOW, NOW), None),
    ],
)
def test_validity_windows(where: str, window: tuple[dt.datetime, dt.datetime], message: str | None) -> None:
    bounds: dict[str, Any] = {"not_before": window[0], "not_after": window[1]}
    root = make_ca("root", **bounds) if where == "anchor" else ROOT
    intermediate = make_ca("intermediate", root, **bounds) if where == "intermediate" else make_ca("i", root)
    leaf = make_leaf(intermediate, **bounds) if where == "leaf" else make_leaf(intermediate)
    if message is None:
        assert verify(leaf, intermediate, bundles={TD: [root.cert]}) == ID
    else:
        with pytest.raises(X509SvidError, match=message):
            verify(leaf, intermediate, bundles={TD: [root.cert]})


def test_validity_bounds_are_inclusive_at_both_ends() -> None:
    leaf = make_leaf(ROOT, not_before=NOW - DAY, not_after=NOW + DAY).cert
    assert verify_chain([leaf], FEDERATED, NOW - DAY) == ID
    assert verify_chain([leaf], FEDERATED, NOW + DAY) == ID


@settings(max_examples=60, deadline=None)
@given(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3))
def test_valid_exactly_inside_every_window(leaf_shift: int, intermediate_shift: int, now_shift: int) -> None:
    """Windows of two days at different offsets: the chain verifies iff `now` is inside all of them."""

    def window(shift: int) -> dict[str, Any]:
        return {"not_before": NOW + shift * DAY - DAY, "not_after": NOW + shift * DAY + DAY}

    intermediate = make_ca("intermediate", ROOT, **window(intermediate_shift))
    leaf = make_leaf(intermediate, **window(leaf_shift))
    now = NOW + now_shift * DAY
    inside = all(abs(now_shift - s) <= 1 for s in (leaf_shift, intermediate_shift))
    if inside:
        assert verify_chain([leaf.cert, intermediate.cert], BUNDLES, now) == ID
    else:
        with pytest.raises(X509SvidError, match=r"expired|not valid yet"):
            verify_chain([leaf.cert, intermediate.cert], BUNDLES, now)


WINDOW_ROOT = make_ca("window root", not_before=NOW - 10 * DAY, not_after=NOW + 10 * DAY)
WINDOW_MID = make_ca("window mid", WINDOW_ROOT, not_before=NOW - 5 * DAY, not_after=NOW + 8 * DAY)
WINDOW_LEAF = make_leaf(WINDOW_MID, not_before=NOW - 2 * DAY, not_after=NOW + 2 * DAY).cert


@settings(max_examples=200)
@given(st.integers(min_value=-12 * 86400, max_value=12 * 86400))
def test_chain_valid_exactly_inside_every_validity_window(offset: int) -> None:
    """Nested windows, to the second: the chain verifies iff `now` is inside all three."""
    now = NOW + dt.timedelta(seconds=offset)
    certs = [WINDOW_LEAF, WINDOW_MID.cert, WINDOW_ROOT.cert]
    inside = all(c.not_valid_before_utc <= now <= c.not_valid_after_utc for c in certs)
    if inside:
        assert verify_chain([WINDOW_LEAF, WINDOW_MID.cert], {TD: [WINDOW_ROOT.cert]}, now) == ID
    else:
        with pytest.raises(X509SvidError, match=r"expired|not valid yet"):
            verify_chain([WINDOW_LEAF, WINDOW_MID.cert], {TD: [WINDOW_ROOT.cert]}, now)


def test_expired_root_next_to_its_renewed_twin() -> None:
    """Same subject and key, so the leaf's signature verifies with both; the expired one must not win."""
    key = ec_key()
    old = make_ca("root", key=key, not_before=NOW - 20 * DAY, not_after=NOW - DAY)
    new = make_ca("root", key=key)
    leaf = make_leaf(new)
    assert verify(leaf, bundles={TD: [old.cert, new.cert]}) == ID
    with pytest.raises(X509SvidError, match="trust anchor has expired"):
        verify(leaf, bundles={TD: [old.cert]})


def test_dead_end_intermediate_before_the_good_one() -> None:
    """A cross-signed CA: same name and key under an untrusted root and under ours; either may come first."""
    key = ec_key()
    rogue_root = make_ca("rogue root")
    via_rogue = make_ca("intermediate", rogue_root, key=key)
    via_ours = make_ca("intermediate", ROOT, key=key)
    leaf = make_leaf(via_ours)
    assert verify(leaf, via_rogue, via_ours) == ID
    assert verify(leaf, via_ours, via_rogue) == ID
    with pytest.raises(X509SvidError, match="does not lead"):
        verify(leaf, via_rogue)


def test_many_look_alike_intermediates_are_refused() -> None:
    """Certificates that all sign each other (same name and key) and never reach an anchor."""
    key = ec_key()
    look_alikes: list[Issued] = []
    for _ in range(MAX_CHAIN - 1):
        look_alikes.append(build(name("loop"), None, key=key, ca=True, usage=CA_USAGE, eku=None))
    leaf = make_leaf(look_alikes[0])
    with pytest.raises(X509SvidError, match="does not lead"):
        verify(leaf, *look_alikes)


def test_leaf_signed_by_another_trust_domains_ca() -> None:
    other_root = make_ca("other.org root", trust_domain="other.org")
    impostor = make_leaf(other_root)  # claims example.org
    bundles = {TD: [ROOT.cert], OTHER_TD: [other_root.cert]}
    with pytest.raises(X509SvidError, match=r"does not lead to an authority of trust domain example\.org"):
        verify(impostor, bundles=bundles)
    other_leaf = make_leaf(other_root, "spiffe://other.org/ns/a/sa/b")
    assert verify(other_leaf, bundles=bundles) == SpiffeId.parse("spiffe://other.org/ns/a/sa/b")
    with pytest.raises(X509SvidError, match="does not lead"):
        verify(make_leaf(ROOT, "spiffe://other.org/ns/a/sa/b"), bundles=bundles)


def test_leaf_signed_by_another_trust_domains_ca_with_only_our_bundle() -> None:
    """The leaf claims example.org but was signed by other.org's CA; only example.org's bundle is given."""
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([make_leaf(OTHER_ROOT).cert], BUNDLES, NOW)


def test_anchors_of_a_different_trust_domain_are_not_used() -> None:
    """B.8: other.org's CA did sign the example.org leaf, and other.org's bundle is present: still refused."""
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([make_leaf(OTHER_ROOT).cert], FEDERATED, NOW)
    foreign_mid = make_ca("foreign mid", OTHER_ROOT, trust_domain="example.org")  # nor via an intermediate
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([make_leaf(foreign_mid).cert, foreign_mid.cert], FEDERATED, NOW)


@pytest.mark.parametrize(
    "bundles",
    [{}, {OTHER_TD: [ROOT.cert]}, {TD: []}, {OTHER_TD: [OTHER_ROOT.cert, ROOT.cert]}],
    ids=["none", "other-only", "empty", "other-with-ours"],
)
def test_no_bundle_for_the_leafs_trust_domain(bundles: dict[TrustDomain, list[x509.Certificate]]) -> None:
    with pytest.raises(X509SvidError, match=r"no bundle for trust domain example\.org"):
        verify(make_leaf(ROOT), bundles=bundles)


def test_a_bad_leaf_is_refused_before_the_bundle_is_consulted() -> None:
    with pytest.raises(X509SvidError, match="cA=true"):
        verify(make_leaf(ROOT, ca=True), bundles={})


def test_signatures_and_names_must_chain() -> None:
    tampered = bytearray(der(make_leaf(ROOT).cert))
    tampered[-3] ^= 0x01
    impostor_root = make_ca("example.org root")  # same name as ROOT, another key
    cases = [
        x509.load_der_x509_certificate(bytes(tampered)),
        make_leaf(impostor_root).cert,
        make_leaf(ROOT, issuer_name=name("someone else")).cert,  # right key, wrong issuer name
    ]
    for leaf in cases:
        with pytest.raises(X509SvidError, match="does not lead"):
            verify_chain([leaf], BUNDLES, NOW)


def test_tampered_leaf_signature() -> None:
    tampered = tamper_signature(GOOD_LEAF)
    assert tampered.tbs_certificate_bytes == GOOD_LEAF.tbs_certificate_bytes
    assert tampered.signature != GOOD_LEAF.signature
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([tampered], FEDERATED, NOW)


def test_tampered_intermediate_signature() -> None:
    leaf = make_leaf(INTERMEDIATE).cert
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([leaf, tamper_signature(INTERMEDIATE.cert)], FEDERATED, NOW)


def test_tampered_intermediate() -> None:
    intermediate = make_ca("intermediate", ROOT)
    tampered = bytearray(der(intermediate.cert))
    tampered[-3] ^= 0x01
    bad = x509.load_der_x509_certificate(bytes(tampered))
    with pytest.raises(X509SvidError, match="does not lead"):
        verify_chain([make_leaf(intermediate).cert, bad], BUNDLES, NOW)


# --- name constraints ---------------------------------------------------------------------------------------


def constrained(
    permitted: list[x509.GeneralName] | None,
    excluded: list[x509.GeneralName] | None = None,
    issuer: Issued = ROOT,
) -> Issued:
    return make_ca("constrained", issuer, extra=[(x509.NameConstraints(permitted, excluded), True)])


def test_shared_root_with_per_trust_domain_intermediates() -> None:
    """One root in both bundles; each intermediate is constrained to its trust domain (X509-SVID.md 4.2)."""
    for_example = constrained(uris("example.org"))
    for_other = constrained(uris("other.org"))
    bundles = {TD: [ROOT.cert], OTHER_TD: [ROOT.cert]}
    assert verify(make_leaf(for_example), for_example, bundles=bundles) == ID
    with pytest.raises(
        X509SvidError, match=r"spiffe://example\.org/ns/a/sa/b is outside the name constraints"
    ):
        verify(make_leaf(for_other), for_other, bundles=bundles)


NAME_CONSTRAINTS: list[tuple[str, list[Any] | None, list[Any] | None, list[x509.GeneralName], str | None]] = [
    ("URI host exact", uris("example.org"), None, [], None),
    ("URI leading dot excludes the domain itself", uris(".example.org"), None, [], "outside"),
    ("URI leading dot admits subdomains", uris(".org"), None, [], None),
    ("URI other host", uris("example.com"), None, [], "outside"),
    ("URI suffix is not a subdomain", uris("ample.org"), None, [], "outside"),
    ("URI excluded", None, uris("example.org"), [], "excluded"),
    ("URI excluded elsewhere", None, uris("other.org"), [], None),
    ("DNS permitted", [x509.DNSName("example.org")], None, [x509.DNSName("svc.example.org")], None),
    ("DNS permitted exact", [x509.DNSName("example.org")], None, [x509.DNSName("example.org")], None),
    ("DNS outside", [x509.DNSName("example.org")], None, [x509.DNSName("badexample.org")], "outside"),
    ("DNS leading dot", [x509.DNSName(".example.org")], None, [x509.DNSName("example.org")], "outside"),
    ("DNS case-insensitive", [x509.DNSName("EXAMPLE.org")], None, [x509.DNSName("a.example.ORG")], None),
    (
        "DNS excluded",
        None,
        [x509.DNSName("internal.example.org")],
        [x509.DNSName("x.internal.example.org")],
        "excluded",
    ),
    ("DNS constraint, no DNS SAN", [x509.DNSName("example.org")], None, [], None),
    ("URI constraint, DNS SAN free", uris("example.org"), None, [x509.DNSName("anything.test")], None),
    (
        "IP permitted",
        [IP(ipaddress.ip_network("10.0.0.0/8"))],
        None,
        [IP(ipaddress.ip_address("10.1.2.3"))],
        None,
    ),
    (
        "IP outside",
        [IP(ipaddress.ip_network("10.0.0.0/8"))],
        None,
        [IP(ipaddress.ip_address("192.0.2.1"))],
        "outside",
    ),
    (
        "IP v4 vs v6",
        [IP(ipaddress.ip_network("::/0"))],
        None,
        [IP(ipaddress.ip_address("10.1.2.3"))],
        "outside",
    ),
    (
        "IP excluded",
        None,
        [IP(ipaddress.ip_network("10.0.0.0/8"))],
        [IP(ipaddress.ip_address("10.0.0.1"))],
        "excluded",
    ),
    (
        "email constraint",
        [x509.RFC822Name("example.org")],
        None,
        [],
        "unsupported name types: \\['RFC822Name'\\]",
    ),
    ("directoryName constraint", None, [x509.DirectoryName(name("x"))], [], "unsupported name types"),
]


@pytest.mark.parametrize(
    ("permitted", "excluded", "extra_names", "error"),
    [c[1:] for c in NAME_CONSTRAINTS],
    ids=[c[0] for c in NAME_CONSTRAINTS],
)
def test_name_constraints(
    permitted: list[x509.GeneralName] | None,
    excluded: list[x509.GeneralName] | None,
    extra_names: list[x509.GeneralName],
    error: str | None,
) -> None:
    intermediate = constrained(permitted, excluded)
    leaf = make_leaf(intermediate, names=[*uris(str(ID)), *extra_names])
    if error is None:
        assert verify(leaf, intermediate) == ID
    else:
        with pytest.raises(X509SvidError, match=error):
            verify(leaf, intermediate)


def test_anchor_name_constraints_cover_intermediates_too() -> None:
    root = make_ca("root", extra=[(x509.NameConstraints(uris("example.org"), None), True)])
    stray = make_ca("stray", root, trust_domain="other.org")
    with pytest.raises(X509SvidError, match=r"spiffe://other\.org is outside the name constraints"):
        verify(make_leaf(stray), stray, bundles={TD: [root.cert]})
    fine = make_ca("fine", root)
    assert verify(make_leaf(fine), fine, bundles={TD: [root.cert]}) == ID


def test_hostless_uri_fails_a_permitted_uri_constraint() -> None:
    intermediate = constrained(uris("example.org"))
    leaf = make_leaf(intermediate)
    stray = make_ca("urn", intermediate, names=uris("urn:example:ca"))
    with pytest.raises(X509SvidError, match="urn:example:ca is outside"):
        verify(make_leaf(stray), stray, intermediate)
    assert verify(leaf, intermediate) == ID


@pytest.mark.parametrize(
    "value",
    [b"\x0c\x10kubespiffe te\x87\x8bs", b"\x03\x10\x00ubespiffe tests"],
    ids=["invalid UTF-8", "BIT STRING under organizationName"],
)
def test_a_leaf_whose_subject_cannot_be_decoded_is_an_svid_error(value: bytes) -> None:
    """Found by fuzzing (tests/fuzz, x509svid): cryptography decodes names only when asked, so a Subject
    it cannot decode escaped verify_chain as a bare ValueError or TypeError."""
    data = der(GOOD_LEAF)
    at = data.rindex(b"\x0c\x10kubespiffe tests")  # the Subject's O (the Issuer's comes first)
    broken = x509.load_der_x509_certificate(data[:at] + value + data[at + len(value) :])
    with pytest.raises(X509SvidError, match="Subject"):
        verify_chain([broken], BUNDLES, NOW)


@pytest.mark.parametrize("tag", ["a3", "a5"], ids=["x400Address", "ediPartyName"])
def test_a_general_name_cryptography_cannot_represent_is_an_svid_error(tag: str) -> None:
    """Found by fuzzing (tests/fuzz, x509svid): a SAN with an x400Address or ediPartyName, in a leaf or
    in an intermediate the caller made itself, escaped as UnsupportedGeneralNameType (not a ValueError)."""
    leaf = make_leaf(ROOT, names=[*uris(str(ID)), x509.DNSName("aaaa")])
    data = der(leaf.cert)
    at = data.index(bytes.fromhex("820461616161"))  # the DNS name's [2] "aaaa"
    broken = x509.load_der_x509_certificate(data[:at] + bytes.fromhex(tag + "0430026161") + data[at + 6 :])
    with pytest.raises(X509SvidError, match="malformed extensions"):
        verify_chain([broken], BUNDLES, NOW)
