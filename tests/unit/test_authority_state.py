"""The persisted authority state: key PEM helpers, the state document and its journal of slots, the Secret
data round trip, and refusing bad data.

CA certificates come from tests/unit/certs.py, so these tests do not depend on how kubespiffe makes CAs.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from kubespiffe.authority.keys import KeyType, SigningKey, generate_key, key_from_pem, key_to_pem
from kubespiffe.authority.state import (
    BUNDLE_KEY,
    DOCUMENT_KEY,
    AuthorityState,
    Slot,
    StateError,
    new_slot,
)
from kubespiffe.authority.x509ca import X509Authority
from kubespiffe.spiffe.spiffeid import TrustDomain
from tests.unit.certs import Issued, build, ec_key, make_ca, name

TD = TrustDomain("example.org")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
Document = dict[str, Any]


def _authority(now: dt.datetime = T0, key_type: KeyType = KeyType.EC_P256) -> X509Authority:
    """A self-signed SPIFFE signing CA valid for 30 days from `now`."""
    key = generate_key(key_type)
    return X509Authority(
        key, make_ca("example.org CA", key=key, not_before=now, not_after=now + 30 * DAY).cert
    )


def _intermediate_under(root: X509Authority) -> X509Authority:
    """An authority with a chain, as an upstream CA would hand in."""
    key = ec_key()
    issuer = Issued(root.certificate, root.key)
    cert = make_ca(
        "intermediate", issuer, key=key, path_length=0, not_before=T0, not_after=T0 + 20 * DAY
    ).cert
    return X509Authority(key, cert, (root.certificate,))


@functools.cache
def _journal() -> AuthorityState:
    """retired (with a chain) -> active -> prepared, built through the real transitions: sequence 3."""
    first = AuthorityState.new(_intermediate_under(_authority()), KeyType.EC_P256, now=T0)
    second = new_slot(_authority(T0 + DAY), KeyType.RSA_2048, "prepared", T0 + DAY)
    third = new_slot(_authority(T0 + 3 * DAY), KeyType.EC_P384, "prepared", T0 + 3 * DAY)
    state = first.prepare(second).activate(T0 + 2 * DAY).prepare(third)
    assert [s.state for s in state.slots] == ["retired", "active", "prepared"] and state.sequence == 3
    return state


def _public_numbers(key: Any) -> Any:
    return key.public_numbers()


def _private_bytes(key: SigningKey) -> bytes:
    return key.private_bytes(Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _same_slot(a: Slot, b: Slot) -> bool:
    return (
        (a.id, a.state, a.since, a.jwt_kid) == (b.id, b.state, b.since, b.jwt_kid)
        and a.authority.certificate == b.authority.certificate
        and a.authority.chain == b.authority.chain
        and _private_bytes(a.authority.key) == _private_bytes(b.authority.key)
        and _private_bytes(a.jwt_key) == _private_bytes(b.jwt_key)
    )


def _document(data: dict[str, str]) -> Document:
    document: Document = json.loads(base64.b64decode(data[DOCUMENT_KEY]))
    return document


def _data(document: Any) -> dict[str, str]:
    return {DOCUMENT_KEY: base64.b64encode(json.dumps(document).encode()).decode()}


# Key helpers.


@pytest.mark.parametrize(
    ("key_type", "kind", "size"),
    [
        (KeyType.EC_P256, ec.EllipticCurvePrivateKey, 256),
        (KeyType.EC_P384, ec.EllipticCurvePrivateKey, 384),
        (KeyType.RSA_2048, rsa.RSAPrivateKey, 2048),
        (KeyType.RSA_3072, rsa.RSAPrivateKey, 3072),
    ],
)
def test_key_pem_round_trip(key_type: KeyType, kind: type, size: int) -> None:
    key = generate_key(key_type)
    assert isinstance(key, kind) and key.key_size == size
    pem = key_to_pem(key)
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert _private_bytes(key_from_pem(pem)) == _private_bytes(key)


def test_key_values_are_distinct() -> None:
    assert {k.value for k in KeyType} == {"ec-p256", "ec-p384", "rsa-2048", "rsa-3072"}
    first = generate_key(KeyType.EC_P256)
    second = generate_key(KeyType.EC_P256)
    assert _public_numbers(first.public_key()) != _public_numbers(second.public_key())


def test_default_key_type_is_p256() -> None:
    key = generate_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def _pem(key: Any, encryption: serialization.KeySerializationEncryption | None = None) -> str:
    return str(
        key.private_bytes(
            Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption or serialization.NoEncryption()
        ).decode()
    )


@pytest.mark.parametrize(
    ("make_pem", "message"),
    [
        (lambda: "", "not an unencrypted PKCS#8 PEM"),
        (lambda: "garbage", "not an unencrypted PKCS#8 PEM"),
        (lambda: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not an unencrypted"),
        (
            lambda: _pem(
                ec.generate_private_key(ec.SECP256R1()), serialization.BestAvailableEncryption(b"pw")
            ),
            "not an unencrypted",
        ),
        (lambda: _pem(ed25519.Ed25519PrivateKey.generate()), "Ed25519PrivateKey is not supported"),
        (lambda: _pem(ec.generate_private_key(ec.SECP521R1())), "curve secp521r1 is not supported"),
        (lambda: _pem(rsa.generate_private_key(65537, 1024)), "at least 2048 bits"),  # noqa: S505
    ],
    ids=["empty", "garbage", "bad body", "encrypted", "ed25519", "p521", "rsa1024"],
)
def test_key_from_pem_refuses_what_we_never_write(make_pem: Callable[[], str], message: str) -> None:
    pem = make_pem()
    with pytest.raises(ValueError, match=message) as caught:
        key_from_pem(pem)
    assert "BEGIN" not in str(caught.value) and "AAAA" not in str(caught.value)


# The document.


def test_new_state() -> None:
    authority = _authority()
    state = AuthorityState.new(authority, KeyType.EC_P384, T0)
    assert state.sequence == 1
    assert state.active_x509() is authority
    kid, key = state.active_jwt()
    assert kid and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert state.trust_bundle() == [authority.certificate]
    jwt = state.jwt_authorities()
    assert list(jwt) == [kid]
    assert _public_numbers(jwt[kid]) == _public_numbers(key.public_key())
    assert state.active.state == "active" and state.active.since == T0
    assert state.prepared is None


def _state_for(jwt_key_type: KeyType = KeyType.EC_P256) -> AuthorityState:
    return AuthorityState.new(_authority(), jwt_key_type, T0)


def test_new_states_get_fresh_kids() -> None:
    assert _state_for().active_jwt()[0] != _state_for().active_jwt()[0]


def _assert_same_state(a: AuthorityState, b: AuthorityState) -> None:
    assert b.sequence == a.sequence
    assert len(b.slots) == len(a.slots)
    for x, y in zip(a.slots, b.slots, strict=True):
        assert (y.id, y.state, y.since, y.jwt_kid) == (x.id, x.state, x.since, x.jwt_kid)
        assert y.authority.certificate == x.authority.certificate
        assert y.authority.chain == x.authority.chain
        assert _public_numbers(y.authority.key.public_key()) == _public_numbers(x.authority.key.public_key())
        assert y.authority.key.private_numbers() == x.authority.key.private_numbers()
        assert _public_numbers(y.jwt_key.public_key()) == _public_numbers(x.jwt_key.public_key())
    assert b.trust_bundle() == a.trust_bundle()
    assert {k: _public_numbers(v) for k, v in b.jwt_authorities().items()} == {
        k: _public_numbers(v) for k, v in a.jwt_authorities().items()
    }


@pytest.mark.parametrize("jwt_key_type", list(KeyType))
def test_state_round_trip_for_every_jwt_key_type(jwt_key_type: KeyType) -> None:
    state = _state_for(jwt_key_type)
    data = state.to_secret_data()
    assert set(data) == {DOCUMENT_KEY, BUNDLE_KEY}
    assert all(isinstance(v, str) for v in data.values())
    again = AuthorityState.from_secret_data(data)
    _assert_same_state(state, again)
    assert x509.load_pem_x509_certificates(base64.b64decode(data[BUNDLE_KEY])) == state.trust_bundle()


def test_state_round_trip_with_prepared_retired_and_chain() -> None:
    upstream = _authority(key_type=KeyType.RSA_2048)
    chained = _intermediate_under(upstream)
    state = AuthorityState.new(_authority(), KeyType.EC_P256, T0)
    state = state.prepare(new_slot(chained, KeyType.RSA_2048, "prepared", T0))
    assert state.sequence == 2
    _assert_same_state(state, AuthorityState.from_secret_data(state.to_secret_data()))
    rotated = state.activate(T0 + dt.timedelta(hours=1))
    assert [s.state for s in rotated.slots] == ["retired", "active"]
    again = AuthorityState.from_secret_data(rotated.to_secret_data())
    _assert_same_state(rotated, again)
    assert again.active_x509().above == (upstream.certificate,)
    assert again.active_x509().chain == (chained.certificate,)
    # The bundle publishes anchors: the first slot's self-signed CA and the upstream root, not the
    # intermediate.
    assert again.trust_bundle() == [state.slots[0].authority.certificate, upstream.certificate]


def test_a_chain_that_does_not_link_is_refused() -> None:
    """A slot whose chain is not its issuer would hand out SVIDs no verifier accepts."""
    unrelated = _authority(key_type=KeyType.EC_P384)
    chained = _intermediate_under(_authority())
    broken = X509Authority(chained.key, chained.certificate, (unrelated.certificate,))
    with pytest.raises(StateError, match="the chain is broken above CN=intermediate"):
        AuthorityState.from_secret_data(AuthorityState.new(broken, now=T0).to_secret_data())


@pytest.mark.parametrize("state", [AuthorityState.new(_authority(), now=T0), None], ids=["new", "journal"])
def test_round_trip_keeps_every_slot(state: AuthorityState | None) -> None:
    state = state or _journal()
    data = state.to_secret_data()
    loaded = AuthorityState.from_secret_data(data)
    assert loaded.sequence == state.sequence
    assert len(loaded.slots) == len(state.slots)
    assert all(_same_slot(a, b) for a, b in zip(loaded.slots, state.slots, strict=True))
    assert loaded.to_secret_data() == data  # re-writing an unchanged state changes nothing


def test_secret_data_layout() -> None:
    state = _journal()
    data = state.to_secret_data()
    assert set(data) == {DOCUMENT_KEY, BUNDLE_KEY}
    bundle = base64.b64decode(data[BUNDLE_KEY], validate=True)
    assert x509.load_pem_x509_certificates(bundle) == state.trust_bundle()
    document = _document(data)
    assert set(document) == {"version", "sequence", "slots"}
    assert document["version"] == 1 and document["sequence"] == 3
    retired = document["slots"][0]
    assert set(retired) == {"id", "state", "since", "certificate", "chain", "key", "jwtKid", "jwtKey"}
    assert retired["state"] == "retired" and retired["since"] == (T0 + 2 * DAY).isoformat()
    assert len(retired["chain"]) == 1 and retired["key"].startswith("-----BEGIN PRIVATE KEY-----")


def test_active_x509_and_trust_bundle() -> None:
    state = _journal()
    retired, active, prepared = state.slots
    assert state.active_x509() is active.authority
    # Anchors are published, not signing CAs: the retired slot is an intermediate, its root is published.
    assert retired.authority.trust_anchor == retired.authority.above[-1] != retired.authority.certificate
    assert state.trust_bundle() == [s.authority.trust_anchor for s in (retired, active, prepared)]
    single = AuthorityState.new(_authority(), now=T0)
    assert single.trust_bundle() == [single.active_x509().certificate]


def test_unknown_fields_are_ignored_within_version_1() -> None:
    document = _document(_journal().to_secret_data())
    document["addedLater"] = {"anything": [1, 2]}
    document["slots"][1]["addedLater"] = "x"
    loaded = AuthorityState.from_secret_data(_data(document))
    assert [s.id for s in loaded.slots] == [s.id for s in _journal().slots]


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[Document], Any]:
    def change(document: Document) -> Any:
        target: Any = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return document

    return change


def _drop(*path: str | int) -> Callable[[Document], Any]:
    def change(document: Document) -> Any:
        target: Any = document
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        return document

    return change


def _other_pem(field: str) -> Callable[[Document], Any]:
    """Put the value of `field` from slot 1 into slot 0 (a key or certificate that does not belong)."""

    def change(document: Document) -> Any:
        document["slots"][0][field] = document["slots"][1][field]
        return document

    return change


def _leaf_pem() -> str:
    """A self-signed certificate with basicConstraints cA=false and nothing else."""
    leaf = build(name("leaf"), None, usage=None, eku=None, not_before=T0, not_after=T0 + DAY)
    return leaf.cert_pem.decode()


MALFORMED: list[tuple[str, Callable[[Document], Any], str]] = [
    ("document is a list", lambda d: [d], "unsupported version"),
    ("document is null", lambda d: None, "unsupported version"),
    ("no version", _drop("version"), "unsupported version"),
    ("version 2", _set(("version",), 2), "unsupported version"),
    ("version as text", _set(("version",), "1"), "unsupported version"),
    ("version true", _set(("version",), True), "unsupported version"),
    ("version 1.0", _set(("version",), 1.0), "unsupported version"),
    ("no slots", _drop("slots"), "malformed"),
    ("slots empty", _set(("slots",), []), "malformed: slots must be a non-empty list"),
    ("slots an object", _set(("slots",), {"id": "x"}), "malformed: slots must be a non-empty list"),
    ("no sequence", _drop("sequence"), "malformed"),
    ("sequence 0", _set(("sequence",), 0), "sequence must be a positive integer"),
    ("sequence as text", _set(("sequence",), "3"), "sequence must be a positive integer"),
    ("sequence true", _set(("sequence",), True), "sequence must be a positive integer"),
    ("sequence 2.5", _set(("sequence",), 2.5), "sequence must be a positive integer"),
    ("slot is text", _set(("slots", 0), "slot"), "malformed"),
    ("slot is null", _set(("slots", 0), None), "malformed"),
    ("slot without id", _drop("slots", 0, "id"), "malformed"),
    ("empty id", _set(("slots", 0, "id"), ""), "id must be a non-empty string"),
    ("numeric id", _set(("slots", 0, "id"), 7), "id must be a non-empty string"),
    ("unknown state", _set(("slots", 0, "state"), "revoked"), "unknown key state 'revoked'"),
    ("naive since", _set(("slots", 0, "since"), "2026-01-01T00:00:00"), "since has no time zone"),
    ("since not a date", _set(("slots", 0, "since"), "yesterday"), "malformed"),
    ("since a number", _set(("slots", 0, "since"), 1767225600), "since must be a non-empty string"),
    ("certificate junk", _set(("slots", 0, "certificate"), "junk"), "malformed"),
    ("certificate number", _set(("slots", 0, "certificate"), 1), "certificate must be a non-empty string"),
    ("certificate is a leaf", _set(("slots", 0, "certificate"), _leaf_pem()), "not a CA"),
    ("certificate of another slot", _other_pem("certificate"), "CA key does not match its certificate"),
    ("key of another slot", _other_pem("key"), "CA key does not match its certificate"),
    ("key junk", _set(("slots", 0, "key"), "junk"), "not an unencrypted PKCS#8 PEM"),
    ("key null", _set(("slots", 0, "key"), None), "key must be a non-empty string"),
    ("jwt key junk", _set(("slots", 0, "jwtKey"), "junk"), "not an unencrypted PKCS#8 PEM"),
    ("jwt key ed25519", _set(("slots", 0, "jwtKey"), _pem(ed25519.Ed25519PrivateKey.generate())), "Ed25519"),
    ("empty kid", _set(("slots", 0, "jwtKid"), ""), "jwtKid must be a non-empty string"),
    ("chain junk", _set(("slots", 0, "chain"), ["junk"]), "malformed"),
    ("chain of numbers", _set(("slots", 0, "chain"), [1]), "malformed"),
    ("chain is text", _set(("slots", 0, "chain"), "junk"), "malformed"),
    (
        "two slots, one id",
        lambda d: _set(("slots", 2, "id"), d["slots"][1]["id"])(d),
        "two slots with the same id",
    ),
    ("two prepared", _set(("slots", 0, "state"), "prepared"), "more than one prepared slot"),
    ("no active", _set(("slots", 1, "state"), "retired"), "0 active slots"),
    ("two active", _set(("slots", 2, "state"), "active"), "2 active slots"),
]


@pytest.mark.parametrize(("change", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_documents_are_refused(change: Callable[[Document], Any], message: str) -> None:
    original = _document(_journal().to_secret_data())
    changed = change(_document(_journal().to_secret_data()))
    with pytest.raises(StateError, match=message) as caught:
        AuthorityState.from_secret_data(_data(changed))
    _assert_no_key_material(str(caught.value), [original, changed])


def _private_key_bodies(value: Any) -> list[str]:
    if isinstance(value, str):
        return ["".join(value.splitlines()[1:-1])] if "PRIVATE KEY-----" in value else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [body for item in value for body in _private_key_bodies(item)]
    return []


def _assert_no_key_material(message: str, document: Any) -> None:
    bodies = _private_key_bodies(document)
    assert bodies  # the original document always carries keys, so the check below checks something
    for body in bodies:
        assert body[:40] not in message and body[-40:] not in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "has no authority.json"),
        ({}, "has no authority.json"),
        ({BUNDLE_KEY: "AAAA"}, "has no authority.json"),
        ({DOCUMENT_KEY: "%%% not base64"}, "not base64-encoded JSON"),
        ({DOCUMENT_KEY: "eyJ2ZXJz aW9uIjogMX0="}, "not base64-encoded JSON"),  # a space inside
        ({DOCUMENT_KEY: base64.b64encode(b"{not json").decode()}, "not base64-encoded JSON"),
        ({DOCUMENT_KEY: base64.b64encode(b"\xff\xfe\x00garbage").decode()}, "not base64-encoded JSON"),
        ({DOCUMENT_KEY: 42}, "not base64-encoded JSON"),
        ({DOCUMENT_KEY: None}, "not base64-encoded JSON"),
    ],
    ids=["none", "empty", "bundle only", "not base64", "space", "not json", "not utf-8", "number", "null"],
)
def test_malformed_secret_data_is_refused(data: Any, message: str) -> None:
    with pytest.raises(StateError, match=message):
        AuthorityState.from_secret_data(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["id", "state", "since", "certificate", "chain", "key", "jwtKid", "jwtKey"]


@settings(max_examples=200, deadline=None)
@given(
    where=st.sampled_from(["version", "sequence", "slots"])
    | st.tuples(st.integers(0, 2), st.sampled_from(FIELDS)),
    value=JSON,
    delete=st.booleans(),
)
def test_any_damaged_field_is_a_state_error_or_a_loadable_state(
    where: str | tuple[int, str], value: Any, delete: bool
) -> None:
    document = _document(_journal().to_secret_data())
    target, key = (document, where) if isinstance(where, str) else (document["slots"][where[0]], where[1])
    if delete:
        del target[key]
    else:
        target[key] = value
    try:
        loaded = AuthorityState.from_secret_data(_data(document))
    except StateError:
        return
    assert len([s for s in loaded.slots if s.state == "active"]) == 1
    assert AuthorityState.from_secret_data(loaded.to_secret_data()).sequence == loaded.sequence


def test_a_state_with_a_chain_keeps_it_in_order() -> None:
    root = _authority()
    middle = _intermediate_under(root)
    state = AuthorityState((replace(_journal().slots[1], authority=middle),), 1)
    loaded = AuthorityState.from_secret_data(state.to_secret_data())
    assert loaded.active_x509().above == (root.certificate,)
    assert loaded.active_x509().certificate == middle.certificate
    assert loaded.active_x509().chain == (middle.certificate,)
    assert loaded.trust_bundle() == [root.certificate]


# Damage to a single-slot document (GOOD), as opposed to the three-slot journal above.

GOOD = _state_for()
OTHER = AuthorityState.new(_authority(), KeyType.EC_P256, T0)


def _good_document(state: AuthorityState = GOOD) -> Document:
    return _document(state.to_secret_data())


def _with(change: Callable[[Document], Any]) -> dict[str, str]:
    document = _good_document()
    change(document)
    return _data(document)


def test_other_state_has_a_different_ca_key() -> None:
    assert _public_numbers(OTHER.active_x509().key.public_key()) != _public_numbers(
        GOOD.active_x509().key.public_key()
    )


def test_unchanged_document_is_accepted() -> None:
    _assert_same_state(GOOD, AuthorityState.from_secret_data(_with(lambda d: None)))


DAMAGED: list[Any] = [
    pytest.param({BUNDLE_KEY: GOOD.to_secret_data()[BUNDLE_KEY]}, id="document-missing"),
    pytest.param({DOCUMENT_KEY: "!!!not base64!!!"}, id="not-base64"),
    pytest.param({DOCUMENT_KEY: base64.b64encode(b"not json").decode()}, id="not-json"),
    pytest.param({DOCUMENT_KEY: base64.b64encode(b"\xff\xfe").decode()}, id="not-utf8"),
    pytest.param({DOCUMENT_KEY: json.dumps(_good_document())}, id="json-not-base64-encoded"),
    pytest.param(_data([1, 2]), id="json-array"),
    pytest.param(_data(None), id="json-null"),
    pytest.param(_with(_set(("version",), 2)), id="version-2"),
    pytest.param(_with(_set(("version",), "1")), id="version-string"),
    pytest.param(_with(_drop("version")), id="version-missing"),
    pytest.param(_with(_drop("slots")), id="slots-missing"),
    pytest.param(_with(_set(("slots",), 5)), id="slots-number"),
    pytest.param(_with(_set(("slots",), [5])), id="slot-number"),
    pytest.param(_with(_set(("slots",), [])), id="no-slots"),
    pytest.param(_with(_drop("sequence")), id="sequence-missing"),
    pytest.param(_with(_set(("sequence",), "many")), id="sequence-garbage"),
    pytest.param(_with(_drop("slots", 0, "key")), id="slot-key-missing"),
    pytest.param(_with(_drop("slots", 0, "certificate")), id="slot-certificate-missing"),
    pytest.param(_with(_drop("slots", 0, "jwtKey")), id="slot-jwt-key-missing"),
    pytest.param(_with(_drop("slots", 0, "jwtKid")), id="slot-jwt-kid-missing"),
    pytest.param(_with(_drop("slots", 0, "state")), id="slot-state-missing"),
    pytest.param(_with(_drop("slots", 0, "since")), id="slot-since-missing"),
    pytest.param(_with(_drop("slots", 0, "id")), id="slot-id-missing"),
    pytest.param(_with(_set(("slots", 0, "key"), "garbage")), id="key-garbage"),
    pytest.param(_with(_set(("slots", 0, "certificate"), "garbage")), id="certificate-garbage"),
    pytest.param(_with(_set(("slots", 0, "jwtKey"), "garbage")), id="jwt-key-garbage"),
    pytest.param(_with(_set(("slots", 0, "chain"), ["garbage"])), id="chain-garbage"),
    pytest.param(_with(_set(("slots", 0, "since"), "yesterday")), id="since-garbage"),
    pytest.param(
        _with(_set(("slots", 0, "key"), _good_document(OTHER)["slots"][0]["key"])), id="key-not-matching-cert"
    ),
    pytest.param(_with(_set(("slots", 0, "state"), "bogus")), id="unknown-state"),
    pytest.param(_with(_set(("slots", 0, "state"), "Active")), id="state-wrong-case"),
    pytest.param(_with(_set(("slots", 0, "state"), "retired")), id="no-active-slot"),
    pytest.param(_with(_set(("slots", 0, "state"), "prepared")), id="only-prepared"),
    pytest.param(
        _with(lambda d: d["slots"].append(_good_document(OTHER)["slots"][0])),
        id="two-active-slots",
    ),
    pytest.param(
        _with(_set(("slots", 0, "key"), _pem(ed25519.Ed25519PrivateKey.generate()))),
        id="ed25519-key",
    ),
]


@pytest.mark.parametrize("data", DAMAGED)
def test_damaged_single_slot_secret_data_is_refused(data: dict[str, str]) -> None:
    with pytest.raises(StateError):
        AuthorityState.from_secret_data(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("certificate", 1), ("key", 1), ("jwtKey", None), ("chain", [1])],
    ids=["certificate-int", "key-int", "jwt-key-null", "chain-entry-int"],
)
def test_non_string_pem_fields_are_refused_with_state_error(field: str, value: Any) -> None:
    with pytest.raises(StateError):
        AuthorityState.from_secret_data(_with(_set(("slots", 0, field), value)))
