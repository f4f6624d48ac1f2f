"""Reversible Table keys: round-trips, no collisions, and Azurite accepts every key we make."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus_manager.config import parse_connection_string
from corpus_manager.keys import escape, unescape
from corpus_manager.models import SetIdentity, tag_partition
from corpus_manager.storage import Storage

FORBIDDEN = set("/\\#?")

# Text that includes the characters Table Storage forbids and our escape character.
nasty_text = st.text(
    alphabet=st.one_of(st.sampled_from(list("/\\#?%|~_ \t\n\x00\x7f\x85.aA")), st.characters()),
    max_size=40,
)
path_segment = st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)),
                       min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
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


@given(nasty_text, nasty_text)
def test_distinct_texts_never_share_an_escape(a: str, b: str) -> None:
    if a != b:
        assert escape(a) != escape(b)


def test_the_original_tools_collisions_stay_apart() -> None:
    keys = {SetIdentity(p, "v1").row_key for p in ("a_b", "a/b", "a%2Fb", "a%252Fb", "a~b", "a|b")}
    assert len(keys) == 6


@given(paths, names, st.one_of(st.just(("", "")), st.tuples(names, names)))
def test_set_identity_round_trips_through_its_keys(path: str, version: str, transform: tuple[str, str]) -> None:
    ident = SetIdentity(path, version, *transform)
    assert SetIdentity.from_keys(ident.partition_key, ident.row_key) == ident
    assert SetIdentity.from_key(ident.key) == ident
    assert _allowed_in_key(ident.partition_key) and _allowed_in_key(ident.row_key)


@given(st.tuples(paths, names), st.tuples(paths, names))
def test_distinct_identities_never_share_a_key(a: tuple[str, str], b: tuple[str, str]) -> None:
    ia, ib = SetIdentity(*a), SetIdentity(*b)
    if ia != ib:
        assert ia.key != ib.key


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
def test_azurite_accepts_every_key_and_returns_it_intact(conn: str, corpus_name: str,
                                                         identities: list[tuple[str, str]]) -> None:
    async def run() -> None:
        async with Storage(parse_connection_string(conn), corpus_name) as storage:
            await storage.ensure()
            for path, version in identities:
                ident = SetIdentity(path, version)
                await storage.upsert_entity(storage.sets, {"PartitionKey": ident.partition_key,
                                                           "RowKey": ident.row_key, "Path": path})
                back = await storage.get_entity(storage.sets, ident.partition_key, ident.row_key)
                assert back is not None and back["Path"] == path
                assert SetIdentity.from_keys(back["PartitionKey"], back["RowKey"]) == ident
                tag = path.split("/")[-1] or "root"
                row = {"PartitionKey": tag_partition(tag), "RowKey": escape(ident.key)}
                await storage.upsert_entity(storage.tags, row)

    asyncio.run(run())
