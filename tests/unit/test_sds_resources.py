"""SDS resource names -> resources (SPIRE's names), and one stream's ACK/NACK/nonce bookkeeping."""

from __future__ import annotations

import pytest

from kubespiffe.agent.sdsresources import (
    SdsRequestError,
    TlsCertificate,
    ValidationContext,
    select,
    spiffe_validation_disabled,
)
from kubespiffe.agent.sdsstream import Answer, StreamBook
from kubespiffe.agent.state import Snapshot
from kubespiffe.spiffe.bundle import Bundle, BundleSet
from kubespiffe.spiffe.spiffeid import SpiffeId, TrustDomain
from kubespiffe.spiffe.x509svid import X509Svid
from tests.unit.certs import make_ca, make_leaf

OWN, FED = TrustDomain("example.org"), TrustDomain("fed.test")
OWN_CA = make_ca("own")
FED_CA = make_ca("fed", trust_domain="fed.test")
FIRST, SECOND = "spiffe://example.org/ns/a/sa/web", "spiffe://example.org/ns/a/sa/admin"


def _svid(spiffe_id: str) -> X509Svid:
    leaf = make_leaf(OWN_CA, spiffe_id)
    return X509Svid(SpiffeId.parse(spiffe_id), (leaf.cert,), leaf.key)


SNAPSHOT = Snapshot(
    BundleSet(Bundle(OWN, (OWN_CA.cert,)), {FED: Bundle(FED, (FED_CA.cert,))}),
    (_svid(FIRST), _svid(SECOND)),
)


def _names(resources: tuple[object, ...]) -> list[str]:
    return [r.name for r in resources]  # type: ignore[attr-defined]


def test_default_is_the_first_identity_and_ids_name_their_own() -> None:
    default, second = select(SNAPSHOT, ["default", SECOND])
    assert default == TlsCertificate("default", SNAPSHOT.svids[0])
    assert second == TlsCertificate(SECOND, SNAPSHOT.svids[1])


def test_rootca_is_the_own_trust_domain_all_is_every_one_and_ids_name_one() -> None:
    rootca, everything, fed, own = select(
        SNAPSHOT, ["ROOTCA", "ALL", "spiffe://fed.test", "spiffe://example.org"]
    )
    assert rootca == ValidationContext("ROOTCA", ((OWN, (OWN_CA.cert,)),), spiffe_validator=True)
    assert everything == ValidationContext(
        "ALL", ((OWN, (OWN_CA.cert,)), (FED, (FED_CA.cert,))), spiffe_validator=True
    )
    assert fed == ValidationContext("spiffe://fed.test", ((FED, (FED_CA.cert,)),), spiffe_validator=True)
    assert own.trust_domains == rootca.trust_domains  # type: ignore[union-attr]


def test_no_names_is_every_identity_and_every_trust_domain() -> None:
    assert _names(select(SNAPSHOT, [])) == [FIRST, SECOND, "spiffe://example.org", "spiffe://fed.test"]
    assert _names(select(SNAPSHOT, ["", ""])) == _names(select(SNAPSHOT, []))


def test_order_is_kept_and_duplicates_dropped() -> None:
    assert _names(select(SNAPSHOT, ["ROOTCA", "default", "ROOTCA", "default"])) == ["ROOTCA", "default"]


@pytest.mark.parametrize(
    ("names", "missing"),
    [
        (["spiffe://example.org/ns/a/sa/other"], "spiffe://example.org/ns/a/sa/other"),
        (["spiffe://elsewhere.test"], "spiffe://elsewhere.test"),
        (["default", "Default", "rootca"], "Default, rootca"),
        (["spiffe://Example.org"], "spiffe://Example.org"),  # names match exactly, as SPIRE's do
    ],
)
def test_a_resource_the_pod_does_not_hold_is_refused_by_name(names: list[str], missing: str) -> None:
    with pytest.raises(SdsRequestError) as caught:
        select(SNAPSHOT, names)
    assert str(caught.value).endswith(f"resources: {missing}")


def test_trusted_ca_mode_serves_one_trust_domain_and_refuses_all() -> None:
    (rootca,) = select(SNAPSHOT, ["ROOTCA"], spiffe_validator=False)
    assert rootca == ValidationContext("ROOTCA", ((OWN, (OWN_CA.cert,)),), spiffe_validator=False)
    with pytest.raises(SdsRequestError, match="ALL needs the SPIFFE certificate validator"):
        select(SNAPSHOT, ["ALL"], spiffe_validator=False)


@pytest.mark.parametrize(
    ("value", "disabled"),
    [
        (True, True),
        ("true", True),
        ("True", True),
        ("1", True),
        ("t", True),
        (False, False),
        ("false", False),
        ("yes", False),  # not a Go boolean: the safer default stays
        (1.0, False),  # Struct numbers are floats; SPIRE ignores them too
        (None, False),
    ],
)
def test_node_metadata_flag_is_read_as_spire_reads_it(value: object, disabled: bool) -> None:
    assert spiffe_validation_disabled(value) is disabled


# --- one stream's bookkeeping --------------------------------------------------------------------------

A = select(SNAPSHOT, ["default"])
B = select(SNAPSHOT, ["default", "ROOTCA"])


def _asked(book: StreamBook) -> list[str]:
    return list(book.names or ())


def test_first_request_subscribes_and_an_ack_settles_the_stream() -> None:
    book = StreamBook()
    assert not book.due(A)  # nothing asked yet
    assert book.receive("", "", ("default",), error=False) is Answer.SUBSCRIBE
    assert book.due(A)
    sent = book.sent(A, "n1")
    assert (sent.version, sent.nonce) == ("1", "n1")
    assert book.receive("1", "n1", ("default",), error=False) is Answer.ACK
    assert book.acked == "1"
    assert not book.due(A)  # same content: nothing to push


def test_nack_keeps_the_acked_version_and_does_not_resend() -> None:
    book = StreamBook()
    book.receive("", "", ("default",), error=False)
    book.sent(A, "n1")
    book.receive("1", "n1", ("default",), error=False)
    book.sent(B, "n2")  # a change pushed
    assert book.receive("1", "n2", ("default",), error=True) is Answer.NACK
    assert book.acked == "1"
    assert not book.due(B)  # the rejected content is not sent again
    assert book.due(A)  # but the next change is


def test_a_version_other_than_the_last_sent_is_a_nack_even_without_detail() -> None:
    book = StreamBook()
    book.receive("", "", ("default",), error=False)
    book.sent(A, "n1")
    assert book.receive("", "n1", ("default",), error=False) is Answer.NACK
    assert book.acked == ""


def test_a_stale_nonce_is_ignored_whole_names_included() -> None:
    book = StreamBook()
    book.receive("", "", ("default",), error=False)
    book.sent(A, "n1")
    book.sent(A, "n2")
    assert book.receive("1", "n1", ("default", "ROOTCA"), error=False) is Answer.STALE
    assert _asked(book) == ["default"]
    assert book.receive("2", "n2", ("default", "ROOTCA"), error=False) is Answer.ACK
    assert _asked(book) == ["default", "ROOTCA"]
    assert book.due(B)  # the new names resolve to something not yet sent


def test_new_names_before_any_response_are_taken() -> None:
    book = StreamBook()
    book.receive("", "", ("default",), error=False)
    assert book.receive("", "", ("ROOTCA",), error=False) is Answer.SUBSCRIBE
    assert book.names == ("ROOTCA",)
