"""SPIFFE ID grammar (checklist A): byte sweeps, tables, limits, and an independent regular-expression oracle.

Each of the 256 byte values (as the one-character string chr(b)) is tried as a trust domain character and as
a path character through every entry point.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubespiffe.spiffe.spiffeid import (
    MAX_ID_BYTES,
    MAX_TRUST_DOMAIN_BYTES,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
    validate_path,
    validate_trust_domain_name,
)

TD_CHARS = frozenset(string.ascii_lowercase + string.digits + "._-")
PATH_CHARS = frozenset(string.ascii_letters + string.digits + "._-")
TD = TrustDomain("example.org")
BYTES = [pytest.param(chr(b), id=f"0x{b:02x}") for b in range(256)]


def oracle(text: str) -> str | None:
    """SPIFFE-ID.md as a regular expression: the canonical form of `text`, or None when it is not an ID."""
    if not text.isascii():  # before matching: re's case folding maps some non-ASCII letters to ASCII ones
        return None
    match = re.fullmatch(r"(?i:spiffe)://([a-zA-Z0-9._-]+)((?:/[a-zA-Z0-9._-]+)*)", text)
    if not match or len(text) > MAX_ID_BYTES or len(match[1]) > MAX_TRUST_DOMAIN_BYTES:
        return None
    if any(segment in (".", "..") for segment in match[2].split("/")):
        return None
    return f"spiffe://{match[1].lower()}{match[2]}"


# --- every byte, every entry point --------------------------------------------------------------------------


@pytest.mark.parametrize("c", BYTES)
def test_every_byte_as_a_trust_domain_character(c: str) -> None:
    for name in (c, f"a{c}b", f"{c}x", f"x{c}"):
        if c in TD_CHARS:
            assert TrustDomain(name).name == name
            assert TrustDomain.parse(name) == TrustDomain(name)
            assert SpiffeId.parse(f"spiffe://{name}/p").trust_domain.name == name
        elif c in string.ascii_uppercase:  # folds when parsing; the constructor takes canonical names only
            with pytest.raises(SpiffeIdError, match=r"outside \[a-z0-9._-\]"):
                TrustDomain(name)
            assert TrustDomain.parse(name).name == name.lower()
            assert SpiffeId.parse(f"spiffe://{name}/p").trust_domain.name == name.lower()
        else:
            with pytest.raises(SpiffeIdError):
                TrustDomain(name)
            with pytest.raises(SpiffeIdError):
                TrustDomain.parse(name)
            if c != "/":  # "spiffe://a/b/p" is the trust domain "a" with a path
                with pytest.raises(SpiffeIdError):
                    SpiffeId.parse(f"spiffe://{name}/p")


@pytest.mark.parametrize("c", BYTES)
def test_every_byte_as_a_path_character(c: str) -> None:
    for segment in (c, f"a{c}b", f"{c}x", f"x{c}"):
        valid = c in PATH_CHARS and segment not in (".", "..")
        if valid:
            expected = SpiffeId(TD, f"/{segment}")
            assert SpiffeId.parse(f"spiffe://example.org/{segment}") == expected
            assert SpiffeId.from_segments(TD, segment) == expected
            assert str(expected) == f"spiffe://example.org/{segment}", "paths keep their case"
        else:
            with pytest.raises(SpiffeIdError):
                SpiffeId.from_segments(TD, segment)
            if c != "/":  # a '/' is a separator inside a path, tested in the tables below
                with pytest.raises(SpiffeIdError):
                    SpiffeId(TD, f"/{segment}")
                with pytest.raises(SpiffeIdError):
                    SpiffeId.parse(f"spiffe://example.org/{segment}")


# --- tables -------------------------------------------------------------------------------------------------

VALID = [
    ("spiffe://example.org", "spiffe://example.org"),
    ("spiffe://example.org/ns/a/sa/b", "spiffe://example.org/ns/a/sa/b"),
    ("SPIFFE://EXAMPLE.ORG/Path", "spiffe://example.org/Path"),
    ("Spiffe://Example.Org", "spiffe://example.org"),
    ("sPiFfE://td/A/b/C", "spiffe://td/A/b/C"),
    ("spiffe://td/.foo", "spiffe://td/.foo"),
    ("spiffe://td/...", "spiffe://td/..."),
    ("spiffe://td/..a/a../.-_", "spiffe://td/..a/a../.-_"),
    ("spiffe://a.b-c_d.0/x", "spiffe://a.b-c_d.0/x"),
    ("spiffe://./x", "spiffe://./x"),
    ("spiffe://..", "spiffe://.."),
    ("spiffe://1.2.3.4/x", "spiffe://1.2.3.4/x"),
]


@pytest.mark.parametrize(("text", "canonical"), VALID)
def test_valid_ids(text: str, canonical: str) -> None:
    spiffe_id = SpiffeId.parse(text)
    assert str(spiffe_id) == canonical == oracle(text)
    assert SpiffeId.parse(canonical) == spiffe_id and hash(SpiffeId.parse(canonical)) == hash(spiffe_id)


INVALID = [
    ("", "is empty"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///path", "trust domain is missing"),
    ("spiffe://td/", r"empty segment or a trailing '/'"),
    ("spiffe://td//a", "empty segment"),
    ("spiffe://td/a//b", "empty segment"),
    ("spiffe://td/a/", "trailing '/'"),
    ("spiffe://td/.", "has a '.' segment"),
    ("spiffe://td/./a", "has a '.' segment"),
    ("spiffe://td/..", "has a '..' segment"),
    ("spiffe://td/a/../b", "has a '..' segment"),
    ("spiffe://td:8080/a", "has a port"),
    ("spiffe://td:/a", "has a port"),
    ("spiffe://user@td/a", "has userinfo"),
    ("spiffe://user:pw@td/a", "has userinfo"),
    ("spiffe://td/a?x=1", "query or fragment"),
    ("spiffe://td?", "query or fragment"),
    ("spiffe://td/a#frag", "query or fragment"),
    ("spiffe://td#", "query or fragment"),
    ("spiffe://td/a%20b", "percent-encoded"),
    ("spiffe://td/a%2Fb", "percent-encoded"),
    ("spiffe://t%64/a", "percent-encoded"),
    ("https://td/a", "does not start with 'spiffe://'"),
    ("spiffe:/td/a", "does not start with 'spiffe://'"),
    ("spiffe//td/a", "does not start with 'spiffe://'"),
    ("://td/a", "does not start with 'spiffe://'"),
    (" spiffe://td/a", "does not start with 'spiffe://'"),
    ("spiffe ://td/a", "does not start with 'spiffe://'"),
    ("td/a", "does not start with 'spiffe://'"),
    ("spiffe://td/a b", r"characters outside \[a-zA-Z0-9._-\]: ' '"),
    ("spiffe://td/a\\b", "characters outside"),
    ("spiffe://td/a\n", "characters outside"),
    ("spiffe://t d/a", r"characters outside \[a-z0-9._-\]"),
    ("spiffe://[::1]/a", "has a port"),
    ("spiffe://td/caf\u00e9", "non-ASCII"),
    ("spiffe://\u212a.org/a", "non-ASCII"),  # KELVIN SIGN lower-cases to ASCII 'k'
    ("\u017fpiffe://td/a", "non-ASCII"),  # LONG S upper-cases to ASCII 'S'
    ("spiffe://td/\ud800", "non-ASCII"),  # lone surrogate
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_ids(text: str, message: str) -> None:
    assert oracle(text) is None
    with pytest.raises(SpiffeIdError, match=message):
        SpiffeId.parse(text)
    with pytest.raises(SpiffeIdError):
        TrustDomain.parse(text)


def test_a_bare_name_is_a_trust_domain_not_an_id() -> None:
    assert TrustDomain.parse("spiffe") == TrustDomain("spiffe")
    with pytest.raises(SpiffeIdError, match="does not start with 'spiffe://'"):
        SpiffeId.parse("spiffe")


def test_spiffe_id_error_is_a_value_error() -> None:
    assert issubclass(SpiffeIdError, ValueError)


# --- limits (A.2, A.4) --------------------------------------------------------------------------------------


def test_id_length_limit_is_2048_bytes() -> None:
    prefix = "spiffe://example.org/"
    longest = prefix + "a" * (MAX_ID_BYTES - len(prefix))
    assert len(longest) == MAX_ID_BYTES == 2048
    assert str(SpiffeId.parse(longest)) == longest
    assert str(SpiffeId.parse(longest.replace("spiffe://example.org", "SPIFFE://EXAMPLE.ORG"))) == longest
    segments = ["b"] * ((MAX_ID_BYTES - len("spiffe://example.org")) // 2)  # "/b" each: exactly 2048
    assert len(str(SpiffeId.from_segments(TD, *segments))) == MAX_ID_BYTES
    with pytest.raises(SpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId.parse(longest + "a")
    with pytest.raises(SpiffeIdError, match="SPIFFE ID is longer than 2048 bytes"):  # before any other rule
        SpiffeId.parse("spiffe://" + "a" * (MAX_ID_BYTES + 1 - len("spiffe://")))
    with pytest.raises(SpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId(TD, longest[len("spiffe://example.org") :] + "a")
    with pytest.raises(SpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId.from_segments(TD, *segments, "c")


def test_trust_domain_length_limit_is_255_bytes() -> None:
    longest = "a" * MAX_TRUST_DOMAIN_BYTES
    assert MAX_TRUST_DOMAIN_BYTES == 255
    assert TrustDomain(longest).name == longest and TrustDomain.parse(longest.upper()).name == longest
    assert SpiffeId.parse(f"spiffe://{longest}/x").trust_domain.name == longest
    for refused in (lambda: TrustDomain(longest + "a"), lambda: SpiffeId.parse(f"spiffe://{longest}a/x")):
        with pytest.raises(SpiffeIdError, match="longer than 255 bytes"):
            refused()


# --- TrustDomain --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("example.org", "example.org"),
        ("Example.ORG", "example.org"),
        ("spiffe://example.org", "example.org"),
        ("SPIFFE://Example.org", "example.org"),
    ],
)
def test_trust_domain_parse(text: str, name: str) -> None:
    assert TrustDomain.parse(text) == TrustDomain(name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing"),
        ("spiffe://example.org/x", "has a path; a trust domain has none"),
        ("spiffe://example.org/", "empty segment"),
        ("example.org/x", "characters outside"),
        ("https://example.org", "does not start with 'spiffe://'"),
        ("example.org:443", "characters outside"),
        ("\u212a", "not ASCII"),
    ],
)
def test_trust_domain_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(SpiffeIdError, match=message):
        TrustDomain.parse(text)


def test_trust_domain_id_str_and_validation_helpers() -> None:
    assert TD.id == SpiffeId(TD, "") == SpiffeId.parse("spiffe://example.org")
    assert str(TD) == "example.org" and str(TD.id) == "spiffe://example.org"
    validate_trust_domain_name("example.org")
    validate_path("")
    validate_path("/a/b")
    for bad_name in ("", "Example.org", "a/b"):
        with pytest.raises(SpiffeIdError):
            validate_trust_domain_name(bad_name)
    for bad_path in ("a", "/", "/a/", "//", "/."):
        with pytest.raises(SpiffeIdError):
            validate_path(bad_path)
    with pytest.raises(SpiffeIdError, match="must start with '/'"):
        validate_path("ab")


# --- from_segments, member_of, is_under ---------------------------------------------------------------------


def test_from_segments() -> None:
    assert SpiffeId.from_segments(TD) == TD.id
    assert str(SpiffeId.from_segments(TD, "ns", "a", ".foo", "...")) == "spiffe://example.org/ns/a/.foo/..."
    for segments, message in [
        (("",), "empty segment"),
        (("a", ""), "empty segment"),
        ((".",), "'.' segment"),
        (("..",), "'..' segment"),
        (("a/b",), "contains '/'"),
        (("/a",), "contains '/'"),
        (("a%2Fb",), "characters outside"),
    ]:
        with pytest.raises(SpiffeIdError, match=message):
            SpiffeId.from_segments(TD, *segments)


def test_member_of() -> None:
    assert SpiffeId.parse("spiffe://example.org/a").member_of(TD)
    assert TD.id.member_of(TD)
    assert not SpiffeId.parse("spiffe://example.org.evil/a").member_of(TD)
    assert not SpiffeId.parse("spiffe://other.org/a").member_of(TD)


@pytest.mark.parametrize(
    ("child", "prefix", "expected"),
    [
        ("spiffe://td/ns/a", "spiffe://td/ns/a", True),
        ("spiffe://td/ns/a/sa/x", "spiffe://td/ns/a", True),
        ("spiffe://td/ns/ab/sa/x", "spiffe://td/ns/a", False),
        ("spiffe://td/ns", "spiffe://td/ns/a", False),
        ("spiffe://td/NS/a", "spiffe://td/ns/a", False),
        ("spiffe://td/anything", "spiffe://td", True),
        ("spiffe://td", "spiffe://td", True),
        ("spiffe://other/ns/a", "spiffe://td/ns/a", False),
        ("spiffe://tdx/ns/a", "spiffe://td", False),
    ],
)
def test_is_under_is_segment_wise(child: str, prefix: str, expected: bool) -> None:
    assert SpiffeId.parse(child).is_under(SpiffeId.parse(prefix)) is expected


def test_ids_are_ordered_values() -> None:
    ids = [SpiffeId.parse(t) for t in ("spiffe://b/x", "spiffe://a/y", "spiffe://a/x", "SPIFFE://A/x")]
    assert sorted(set(ids)) == [SpiffeId.parse(t) for t in ("spiffe://a/x", "spiffe://a/y", "spiffe://b/x")]


# --- properties ---------------------------------------------------------------------------------------------

trust_domains = st.text(alphabet=sorted(TD_CHARS), min_size=1, max_size=40).map(TrustDomain)
segments = st.text(alphabet=sorted(PATH_CHARS), min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)
spiffe_ids = st.builds(
    lambda td, segs: SpiffeId.from_segments(td, *segs), trust_domains, st.lists(segments, max_size=6)
)


@given(spiffe_ids)
def test_round_trip(spiffe_id: SpiffeId) -> None:
    text = str(spiffe_id)
    assert SpiffeId.parse(text) == spiffe_id and oracle(text) == text
    shouted = "SPIFFE://" + spiffe_id.trust_domain.name.upper() + spiffe_id.path
    assert SpiffeId.parse(shouted) == spiffe_id
    assert TrustDomain.parse(str(spiffe_id.trust_domain)) == spiffe_id.trust_domain
    assert TrustDomain.parse(str(spiffe_id.trust_domain.id)) == spiffe_id.trust_domain
    assert spiffe_id.member_of(spiffe_id.trust_domain) and spiffe_id.is_under(spiffe_id.trust_domain.id)


NEAR_MISSES = st.builds(
    str.__add__,
    st.sampled_from(["spiffe://", "SPIFFE://", "spiffe:/", "spiffe:", "https://", "", "spiffe://td/"]),
    st.text(alphabet="aZ09._-/%:@?#[] \t\u00e9\u212a\u017f", max_size=30),
)


@settings(max_examples=2000)
@given(NEAR_MISSES)
def test_parse_agrees_with_the_oracle(text: str) -> None:
    expected = oracle(text)
    if expected is None:
        with pytest.raises(SpiffeIdError):
            SpiffeId.parse(text)
    else:
        assert str(SpiffeId.parse(text)) == expected


@given(st.text(st.characters(exclude_categories=()), max_size=40))
def test_arbitrary_text_is_refused_or_canonical(text: str) -> None:
    """Any Unicode, lone surrogates included: SpiffeIdError or the oracle's canonical form, nothing else."""
    try:
        parsed = SpiffeId.parse(text)
    except SpiffeIdError:
        assert oracle(text) is None
    else:
        assert str(parsed) == oracle(text)
