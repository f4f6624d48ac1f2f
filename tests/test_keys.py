"""Reversible Table keys: round-trips, no collisions, and Azurite accepts every key we make."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from corpus_manager.config import parse_connection_string
from corpus_manager.errors import InvalidName
from corpus_manager.keys import escape, unescape
from corpus_manager.models import SetIdentity, tag_partition
from corpus_manager.storage import Storage

FORBIDDEN = set("/\\#?")

# Text that includes the characters Table Storage forbids and our escape character.
nasty_text = st.text(
    alphabet=st.one_of(st.sampled_from(list("/\\#?%|~_ \t\n\x00\x7f\x85.aA")), st.characters()),
    max_size=40,
)
path_segment = st.text(
    alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
paths = st.lists(path_segment, max_size=4).map("/".join)
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")


def _allowed_in_key(key: str) -> bool:
    return not any(ch in FORBIDDEN or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in key)


@given(nasty_text)
def test_escape_round_trips(text: str) -> None:
    assert unescape(escape(text)) == text


@given(nasty_text)
def test_escaped_keys_hold_no_forbidden_character(text: str) -> None:
    assert _allowed_in_key(escape(text))


# The characters keys are made of and that collide in naive schemes: the forbidden ones, the escape
# character, our separators, `_` (what the original tool turned `/` into) and what escapes are spelt with.
AWKWARD = "/\\#?%|~_u2F5CaA"
# Spellings one text can take in another: `a/b`, `a_b`, `a%2Fb`, `a%252Fb`, `a\b`, `a%5Cb`, ...
SPELLINGS = {
    "/": ["_", "%2F", "%252F", "\\", "%5C"],
    "\\": ["/", "%5C", "%255C"],
    "%": ["%25", "%2525"],
    "|": ["%7C", "~"],
    "~": ["%7E", "|"],
    "_": ["/", "%5F"],
}
awkward_text = st.text(alphabet=st.sampled_from(AWKWARD), max_size=16)


@st.composite
def respelt(draw: st.DrawFn) -> tuple[str, str]:
    """A text and the same text with some characters written as another spelling of them."""
    text = draw(awkward_text)
    other = "".join(draw(st.sampled_from([ch, *SPELLINGS.get(ch, [])])) for ch in text)
    return text, other


def test_no_two_short_awkward_texts_share_an_escape() -> None:
    # exhaustive, not sampled: every text of up to 4 characters over AWKWARD (54,241 of them)
    texts = ["".join(p) for n in range(5) for p in itertools.product(AWKWARD, repeat=n)]
    escaped = {escape(t): t for t in texts}
    assert len(escaped) == len(texts)
    assert all(unescape(e) == t for e, t in escaped.items())


@given(st.one_of(respelt(), st.tuples(awkward_text, awkward_text)))
def test_distinct_texts_never_share_an_escape(pair: tuple[str, str]) -> None:
    a, b = pair
    assert unescape(escape(a)) == a and unescape(escape(b)) == b
    assert (escape(a) == escape(b)) == (a == b)


def test_the_original_tools_collisions_stay_apart() -> None:
    keys = {SetIdentity(p, "v1").row_key for p in ("a_b", "a/b", "a%2Fb", "a%252Fb", "a~b", "a|b")}
    assert len(keys) == 6


@given(paths, names, st.one_of(st.just(("", "")), st.tuples(names, names)))
def test_set_identity_round_trips_through_its_keys(path: str, version: str, transform: tuple[str, str]) -> None:
    ident = SetIdentity(path, version, *transform)
    assert SetIdentity.from_keys(ident.partition_key, ident.row_key) == ident
    assert SetIdentity.from_key(ident.key) == ident
    assert _allowed_in_key(ident.partition_key) and _allowed_in_key(ident.row_key)


def _identity(path: str, version: str, transform: tuple[str, str]) -> SetIdentity | None:
    try:
        return SetIdentity(path, version, *transform)
    except InvalidName:  # e.g. an empty segment: not a set any run can make
        return None


# Versions and transforms that meet in keys: `v1` beside `1`, and the same names as original and transform.
key_versions = st.sampled_from(["v1", "1", "v1.1", "v1_1"])
key_transforms = st.sampled_from([("", ""), ("t", "1"), ("t", "v1"), ("v1", "1")])


@given(
    st.one_of(respelt(), st.tuples(awkward_text, awkward_text)),
    key_versions,
    key_versions,
    key_transforms,
    key_transforms,
)
def test_distinct_identities_never_share_a_key(
    paths: tuple[str, str], va: str, vb: str, ta: tuple[str, str], tb: tuple[str, str]
) -> None:
    ia, ib = _identity(paths[0], va, ta), _identity(paths[1], vb, tb)
    assume(ia is not None and ib is not None)
    assert ia is not None and ib is not None
    assert (ia.key == ib.key) == (ia == ib)
    assert ((ia.partition_key, ia.row_key) == (ib.partition_key, ib.row_key)) == (ia == ib)
    assert SetIdentity.from_key(ia.key) == ia and SetIdentity.from_key(ib.key) == ib


def test_original_and_transformed_rows_never_share_keys() -> None:
    # the C# tool overwrote transformed rows with originals of the same keys
    original = SetIdentity("red/robin", "v1")
    derived = original.derived("charcoal", "1")
    assert (original.partition_key, original.row_key) != (derived.partition_key, derived.row_key)


@pytest.mark.parametrize("bad", ["", "-v1", "v 1", "v/1", "a" * 65, "v1?"])
def test_invalid_versions_are_refused(bad: str) -> None:
    from corpus_manager.errors import InvalidName

    with pytest.raises(InvalidName, match="version"):
        SetIdentity("a", bad)


# ----- Azurite accepts every key we produce (it rejects / \ # ? and control characters) ---------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(paths, names), min_size=1, max_size=8))
def test_azurite_accepts_every_key_and_returns_it_intact(
    conn: str, corpus_name: str, identities: list[tuple[str, str]]
) -> None:
    async def run() -> None:
        async with Storage(parse_connection_string(conn), corpus_name) as storage:
            await storage.ensure()
            for path, version in identities:
                ident = SetIdentity(path, version)
                await storage.upsert_entity(
                    storage.sets, {"PartitionKey": ident.partition_key, "RowKey": ident.row_key, "Path": path}
                )
                back = await storage.get_entity(storage.sets, ident.partition_key, ident.row_key)
                assert back is not None and back["Path"] == path
                assert SetIdentity.from_keys(back["PartitionKey"], back["RowKey"]) == ident
                tag = path.split("/")[-1] or "root"
                row = {"PartitionKey": tag_partition(tag), "RowKey": escape(ident.key)}
                await storage.upsert_entity(storage.tags, row)

    asyncio.run(run())
