"""Fuzz target for the CSR parser, and for signing what it accepts."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from kubespiffe.authority.keys import KeyType, check_public_key
from kubespiffe.authority.x509ca import CsrError, create_self_signed_ca, load_csr, sign_x509_svid
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from tests.fuzz.common import Target

_NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
_CA = create_self_signed_ca(TrustDomain("example.org"), KeyType.EC_P256, dt.timedelta(days=1), _NOW)
_ID = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")


def csr(data: bytes) -> None:
    """Every unusable CSR is a CsrError; an accepted one has a supported key and a valid signature, and
    the leaf signed for it carries kubespiffe's names only, whatever the CSR asked for."""
    try:
        request = load_csr(data)
    except CsrError:
        return
    key = request.public_key()
    check_public_key(key)
    assert request.is_signature_valid
    leaf = sign_x509_svid(_CA, request, _ID, ["web.a.svc"], dt.timedelta(hours=1), _NOW)
    assert leaf.public_key() == key
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(_ID)]
    assert san.get_values_for_type(x509.DNSName) == ["web.a.svc"]
    assert len(leaf.extensions) == 6  # basicConstraints, keyUsage, EKU, SAN, SKI, AKI: nothing from the CSR


TARGETS = (Target("csr", csr, max_len=4096),)
