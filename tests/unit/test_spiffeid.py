"""SPIFFE ID grammar (checklist A): every byte as a trust-domain and a path character, limits, folding."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubespiffe.spiffe.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

TD_CHARS = set(string.ascii_lowercase + string.digits + ".-_")
PATH_CHARS = set(string.ascii_letters + string.digits + ".-_")


@pytest.mark.parametrize("byte", range(256))
def test_every_byte_as_a_trust_domain_character(byte: int) -> None:
    char = chr(byte)
    text = f"spiffe://a{char}b/path"
    if char in TD_CHARS:
        assert str(SpiffeId.parse(text).trust_domain) == f"a{char}b"
    elif char in string.ascii_uppercase:
        assert str(SpiffeId.parse(text).trust_domain) == f"a{char.lower()}b", (
            "trust domains fold to lower case"
        )
        with pytest.raises(SpiffeIdError):
            TrustDomain(f"a{char}b")
    elif char == "/":
        assert SpiffeId.parse(text).trust_domain == TrustDomain("a")
    else:
        with pytest.raises(SpiffeIdError):
            SpiffeId.parse(text)
        with pytest.raises(SpiffeIdError):
            TrustDomain(f"a{char}b")


@pytest.mark.parametrize("byte", range(256))
def test_every_byte_as_a_path_character(byte: int) -> None:
    char = chr(byte)
    text = f"spiffe://td/a{char}b"
    if char in PATH_CHARS:
        assert SpiffeId.parse(text).path == f"/a{char}b", "paths are case-sensitive and kept as is"
    elif char == "/":
        assert SpiffeId.parse(text).path == "/a/b"
    else:
        with pytest.raises(SpiffeIdError):
            SpiffeId.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spiffe://example.org", "spiffe://example.org"),
        ("SPIFFE://Example.ORG/Path", "spiffe://example.org/Path"),
        ("spiffe://td/.foo", "spiffe://td/.foo"),
        ("spiffe://td/...", "spiffe://td/..."),
        ("spiffe://td/a/b/c", "spiffe://td/a/b/c"),
    ],
)
def test_valid_ids(text: str, expected: str) -> None:
    assert str(SpiffeId.parse(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "spiffe://",
        "spiffe:///path",
        "spiffe://td/",
        "spiffe://td//a",
        "spiffe://td/a/",
        "spiffe://td/./a",
        "spiffe://td/../a",
        "spiffe://td/a/..",
        "spiffe://td:8080/a",
        "spiffe://user@td/a",
        "spiffe://td/a?x=1",
        "spiffe://td/a#frag",
        "spiffe://td/a%20b",
        "spiffe://t%64/a",
        "https://td/a",
        "spiffe:/td/a",
        "td/a",
        "spiffe//td/a",
        "://td/a",
    ],
)
def test_invalid_ids(text: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(text)


def test_length_limits() -> None:
    prefix = "spiffe://td/"
    assert SpiffeId.parse(prefix + "a" * (2048 - len(prefix)))
    with pytest.raises(SpiffeIdError, match="2048"):
        SpiffeId.parse(prefix + "a" * (2049 - len(prefix)))
    assert TrustDomain("a" * 255)
    with pytest.raises(SpiffeIdError, match="255"):
        TrustDomain("a" * 256)


def test_trust_domain_parse_and_id() -> None:
    assert TrustDomain.parse("Example.org") == TrustDomain("example.org")
    assert TrustDomain.parse("spiffe://example.org") == TrustDomain("example.org")
    assert str(TrustDomain("example.org").id) == "spiffe://example.org"
    with pytest.raises(SpiffeIdError, match="path"):
        TrustDomain.parse("spiffe://example.org/x")


def test_is_under_is_segment_wise() -> None:
    prefix = SpiffeId.parse("spiffe://td/ns/a")
    assert SpiffeId.parse("spiffe://td/ns/a/sa/x").is_under(prefix)
    assert SpiffeId.parse("spiffe://td/ns/a").is_under(prefix)
    assert not SpiffeId.parse("spiffe://td/ns/ab/sa/x").is_under(prefix)
    assert not SpiffeId.parse("spiffe://other/ns/a/sa/x").is_under(prefix)
    assert SpiffeId.from_segments(TrustDomain("td"), "ns", "a") == prefix


segment = st.text(alphabet=sorted(PATH_CHARS), min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
trust_domain = st.text(alphabet=sorted(TD_CHARS), min_size=1, max_size=40)


@given(trust_domain, st.lists(segment, max_size=6))
def test_round_trip(td: str, segments: list[str]) -> None:
    spiffe_id = SpiffeId.from_segments(TrustDomain(td), *segments)
    assert SpiffeId.parse(str(spiffe_id)) == spiffe_id
    assert spiffe_id.member_of(TrustDomain(td))
