"""Release create's two ways of listing (issue 14, Performance): one listing per set, or one flat listing per
prefix family grouped by set. The same manifest, byte for byte, either way; nested sets and a pending
sibling never mix into a set; a set whose listing disagrees with its row stops the create either way."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from corpus_manager import storage as storage_module
from corpus_manager.config import parse_connection_string
from corpus_manager.errors import CorpusError
from corpus_manager.models import PENDING, SetIdentity
from corpus_manager.query import QueryFilter, SetRow
from corpus_manager.release import ReleaseDefinition
from corpus_manager.release.create import FLAT_MIN_SETS, LIST_PARALLEL, create_release, flat_families
from corpus_manager.storage import Storage

from .conftest import Azurite, image_bytes
from .helpers import blobs, rows, with_storage
from .known_corpus import KnownCorpus, add_set, build_known_corpus

MODES = ("flat", "set")


@pytest.fixture
def fresh(azurite: Azurite, tmp_path: Path) -> KnownCorpus:
    return build_known_corpus(azurite.connection_string, tmp_path / "fresh")


def both_ways(known: KnownCorpus, definition: ReleaseDefinition, tag: str = "") -> dict[str, tuple[bytes, str, int]]:
    """Create the release once per mode: mode -> (manifest bytes, the row's sha256, listing requests)."""

    async def go(storage: Storage) -> dict[str, tuple[bytes, str, int]]:
        out = {}
        for mode in MODES:
            before = storage.stats.blob_lists
            report = await create_release(storage, f"by-{mode}{tag}", definition, listing=mode)
            lists = storage.stats.blob_lists - before
            data, _ = await storage.get_blob(f"releases/by-{mode}{tag}/manifest.jsonl")
            out[mode] = (data, report.release.manifest_sha256, lists)
        return out

    return with_storage(known.conn, known.name, go)


def test_flat_and_per_set_listings_make_the_same_manifest(fresh: KnownCorpus) -> None:
    async def more(storage: Storage) -> None:
        for i in range(20):  # enough sets that pages and order matter
            await add_set(storage, SetIdentity(f"many/s{i:02d}", "v1"), ["many"], {"x.png": image_bytes(color="red")})

    with_storage(fresh.conn, fresh.name, more)
    for i, definition in enumerate(
        (
            ReleaseDefinition.make((), split="train=60,val=20,test=20", seed=4),
            ReleaseDefinition.make((), split="train=50,val=50", split_by="image", label="leaf"),
        )
    ):
        got = both_ways(fresh, definition, f"-{i}")
        (flat, flat_sha, flat_lists), (per_set, set_sha, set_lists) = got["flat"], got["set"]
        assert flat == per_set and flat_sha == set_sha
        assert len(flat.splitlines()) == 6 + 20 + 2  # the known corpus's 6 originals and 2 charcoal, 20 more
        # each mode did what it says: one listing per family (original/, transform/charcoal/1/) or per set
        assert flat_lists == 2 and set_lists == 5 + 20 + 1


def test_nested_sets_and_a_pending_sibling_do_not_mix(fresh: KnownCorpus) -> None:
    files = {"n.png": image_bytes(color="navy")}
    inner = {"i1.png": image_bytes(color="teal"), "i2.png": image_bytes(color="olive")}

    async def nest(storage: Storage) -> None:
        # original/nest/v1/ holds a set, original/nest/v1/deep/ another (path nest/v1, version deep)
        await add_set(storage, SetIdentity("nest", "v1"), ["nest"], files)
        await add_set(storage, SetIdentity("nest/v1", "deep"), ["nest"], inner)
        # a pending sibling version with blobs already in place, and a stray blob of no set
        await add_set(
            storage, SetIdentity("nest", "v2"), ["nest"], {"p.png": image_bytes(color="lime")}, status=PENDING
        )
        data = image_bytes(color="gold")
        await storage.put_blob("original/stray.png", data, content_type="image/png", md5=hashlib.md5(data).digest())

    with_storage(fresh.conn, fresh.name, nest)
    got = both_ways(fresh, ReleaseDefinition.make((), split="train=100"))
    assert got["flat"][0] == got["set"][0]
    names = [line.split(b'"')[3].decode() for line in got["flat"][0].splitlines()]  # "blob_name" comes first
    nested = sorted(n for n in names if n.startswith("original/nest/"))
    assert nested == ["original/nest/v1/deep/i1.png", "original/nest/v1/deep/i2.png", "original/nest/v1/n.png"]
    assert "original/stray.png" not in names


@pytest.mark.parametrize("mode", MODES)
def test_a_set_short_of_its_row_stops_the_create_either_way(fresh: KnownCorpus, mode: str) -> None:
    async def lose(storage: Storage) -> None:
        await storage.delete_blob("original/red/angry/robin/v1/b.png")

    with_storage(fresh.conn, fresh.name, lose)
    before = (blobs(fresh.conn, fresh.name), _release_rows(fresh))

    async def go(storage: Storage) -> None:
        await create_release(storage, "R", ReleaseDefinition.make(()), listing=mode)

    with pytest.raises(CorpusError) as err:
        with_storage(fresh.conn, fresh.name, go)
    assert str(err.value) == (
        "set red/angry/robin@v1 lists 1 blobs under original/red/angry/robin/v1/ but its row says 2 images "
        "(run `corpus status --verify`); no release written"
    )
    assert (blobs(fresh.conn, fresh.name), _release_rows(fresh)) == before


def _release_rows(known: KnownCorpus) -> list[dict]:
    try:
        return rows(known.conn, known.name, "releases")
    except Exception:  # no Releases table yet: no rows
        return []


def _rows(family: str, count: int, images: int) -> list[SetRow]:
    t = ("", "") if family == "original" else (family, "1")
    return [SetRow(SetIdentity(f"d{i:04d}", "v1", *t), (), images, images * 10) for i in range(count)]


def test_the_rule_lists_a_family_flat_only_when_it_pays() -> None:
    many, few = _rows("original", FLAT_MIN_SETS, 40), _rows("original", FLAT_MIN_SETS - 1, 40)
    assert flat_families(QueryFilter(), many) == {"original/"}
    assert flat_families(QueryFilter(), few) == set()  # per set: as quick, and reads no other set's blobs
    # a tag or version filter may select a small share of the family: never flat (unless forced)
    assert flat_families(QueryFilter(("cats",)), many) == set()
    assert flat_families(QueryFilter(version="v1"), many) == set()
    assert flat_families(QueryFilter(("cats",)), many, "flat") == {"original/"}
    assert flat_families(QueryFilter(), many, "set") == set()
    # big sets: more pages one after another than rounds of per-set listings in parallel
    big = _rows("original", LIST_PARALLEL, 5000)
    assert flat_families(QueryFilter(), big) == set()
    mixed = many + _rows("sketch", 3, 40)
    assert flat_families(QueryFilter(), mixed) == {"original/"}  # each family on its own


@pytest.mark.parametrize("fast_path", [True, False], ids=["thin", "sdk"])
def test_list_flat_pages_through_a_whole_prefix(
    fresh: KnownCorpus, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Storage.list_flat``: every blob under the prefix, nested ones too, in name order, pages of at most
    LIST_PAGE (lowered here so the known corpus takes several), the same through the thin path or the SDK."""
    monkeypatch.setattr(storage_module, "LIST_PAGE", 2)

    async def go() -> list[list[tuple[str, int, str | None, str | None]]]:
        async with Storage(parse_connection_string(fresh.conn), fresh.name, fast_path=fast_path) as storage:
            return [
                [(b.name, b.size, b.md5_hex, b.content_type) for b in page]
                async for page in storage.list_flat("original/red/")
            ]

    pages = asyncio.run(go())
    want = {n: b for n, b in blobs(fresh.conn, fresh.name).items() if n.startswith("original/red/")}
    flat = [entry for page in pages for entry in page]
    assert [e[0] for e in flat] == sorted(want)  # the pending set red/wip's blob and the nested ones too
    assert [(e[1], e[2], e[3]) for e in flat] == [
        (want[n]["size"], want[n]["md5"], want[n]["content_type"]) for n in sorted(want)
    ]
    assert len(pages) > 2 and all(1 <= len(p) <= 2 for p in pages)
