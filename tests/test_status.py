"""`corpus status` on a real Azurite: the numbers of a known corpus, transform progress, --repair,
corrupt rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager.cli import cli
from corpus_manager.models import COMPLETE, PENDING, ImageSet, ImageTransform, SetIdentity
from corpus_manager.progress import human_bytes
from corpus_manager.storage import Storage

from .conftest import Azurite, image_bytes, write_image
from .helpers import rows, run, with_storage
from .known_corpus import KnownCorpus, add_set, build_known_corpus


@pytest.fixture(scope="module")
def known(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> KnownCorpus:
    return build_known_corpus(azurite.connection_string, tmp_path_factory.mktemp("known"))


def test_numbers_of_a_known_corpus(known: KnownCorpus) -> None:
    res = CliRunner().invoke(cli, ["status", "--json"], env=known.env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "corpus": known.name,
        "sets": {"complete": 7, "pending": 1, "unindexed": 0, "originals": 6, "transform_outputs": 1},
        "pending": ["red/wip@v1"],
        "unindexed": [],
        "images": 9,
        "bytes": sum(known.sizes.values()),
        "transforms": [
            {
                "name": "charcoal",
                "version": "1",
                "source": "originals",
                "registered": True,
                "command_line": "charcoal=2",
                "done": 1,
                "missing": 5,
                "pending": 0,
            }
        ],
        "tags": [
            {"tag": "red", "sets": 5},
            {"tag": "angry", "sets": 4},
            {"tag": "robin", "sets": 4},
            {"tag": "Blue", "sets": 1},
            {"tag": "calm", "sets": 1},
            {"tag": "sky", "sets": 1},
        ],
        "repaired": [],
        "releases": [],  # none made yet (test_release_use lists some)
        "problems": [],
    }


def test_human_output_of_a_known_corpus(known: KnownCorpus) -> None:
    res = CliRunner().invoke(cli, ["status", "--top", "3"], env=known.env)
    assert res.exit_code == 0, res.output
    assert res.stdout == (
        f"Corpus {known.name}\n"
        "  sets        7 complete (6 originals, 1 transform outputs), 1 pending, 0 unindexed\n"
        f"  images      9 ({human_bytes(sum(known.sizes.values()))}) in complete sets\n"
        "  pending     1 (rerun the same upload or transform to finish them):\n"
        "    red/wip@v1\n"
        "  transforms  source sets done / missing:\n"
        "    charcoal@1  from originals: 1 done, 5 missing\n"
        "  tags        sets per tag (top 3 of 6; --json lists all):\n"
        "    red    5\n"
        "    angry  4\n"
        "    robin  4\n"
    )
    assert res.stderr == ""


def _small(conn: str, corpus: str, tmp_path: Path) -> None:
    write_image(tmp_path / "p" / "red" / "angry" / "c.png", color="maroon")
    write_image(tmp_path / "p" / "blue" / "d.png", color="blue")
    report = run(conn, corpus, lambda c: c.upload(str(tmp_path / "p"), "v1"))
    assert report.ok


def test_transform_progress_follows_lineage(conn: str, corpus_name: str, tmp_path: Path) -> None:
    _small(conn, corpus_name, tmp_path)
    angry = SetIdentity("red/angry", "v1")

    async def fill(storage: Storage) -> None:
        data = {"c.png": image_bytes(color="gray")}
        charcoal = await add_set(storage, angry.derived("charcoal", "1"), ["red", "angry"], data, source_set=angry.key)
        # a chain: sharpen@1 made from charcoal@1's output
        await add_set(storage, angry.derived("sharpen", "1"), ["red", "angry"], data, source_set=charcoal.identity.key)
        # an output family nobody registered, still in progress
        await add_set(storage, angry.derived("blur", "1"), ["red", "angry"], data, status=PENDING, source_set=angry.key)
        for name, version, source in (
            ("charcoal", "1", "original"),
            ("sharpen", "1", "charcoal@1"),
            ("resize", "2", "original"),
        ):
            t = ImageTransform(name, version, "[]", "0" * 64, f"{name}=x", source=source)
            await storage.create_entity(storage.transforms, t.to_entity())
        # a registered row from before transforms recorded their source: inferred from its outputs
        legacy = ImageTransform("legacy", "1", "[]", "0" * 64, "legacy=x").to_entity()
        del legacy["Source"]
        await storage.create_entity(storage.transforms, legacy)
        await add_set(storage, angry.derived("legacy", "1"), ["red", "angry"], data, source_set=charcoal.identity.key)

    with_storage(conn, corpus_name, fill)
    res = CliRunner().invoke(cli, ["status", "--json"])
    assert res.exit_code == 0, res.output
    got = {
        f"{t['name']}@{t['version']}": (t["source"], t["done"], t["missing"], t["pending"], t["registered"])
        for t in json.loads(res.stdout)["transforms"]
    }
    assert got == {
        "blur@1": ("originals", 0, 2, 1, False),
        "charcoal@1": ("originals", 1, 1, 0, True),
        "legacy@1": ("charcoal@1", 1, 0, 0, True),
        "resize@2": ("originals", 0, 2, 0, True),  # registered, never run: every source set is missing
        "sharpen@1": ("charcoal@1", 1, 0, 0, True),
    }


def test_repair_indexes_complete_sets_without_tag_rows(conn: str, corpus_name: str, tmp_path: Path) -> None:
    _small(conn, corpus_name, tmp_path)

    async def fill(storage: Storage) -> None:
        # a run killed between completing a set and indexing it
        await add_set(
            storage, SetIdentity("old/one", "v0"), ["old", "one"], {"x.png": image_bytes(color="navy")}, index=False
        )
        # a row from before the tag index existed: no Indexed property at all
        legacy = ImageSet(SetIdentity("old/two", "v0"), tags=["old", "two"], status=COMPLETE, image_count=0)
        entity = legacy.to_entity()
        del entity["Indexed"]
        await storage.create_entity(storage.sets, entity)

    with_storage(conn, corpus_name, fill)
    query_old = ["query", "--json", "--tag", "OLD"]
    assert json.loads(CliRunner().invoke(cli, query_old).stdout) == []
    res = CliRunner().invoke(cli, ["status"])
    assert res.exit_code == 0
    assert (
        "  unindexed   2 complete sets not found by tag (`corpus status --repair` indexes them):\n"
        "    old/one@v0\n    old/two@v0\n"
    ) in res.stdout

    res = CliRunner().invoke(cli, ["status", "--repair", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["repaired"] == ["old/one@v0", "old/two@v0"] and report["unindexed"] == []
    assert [r["path"] for r in json.loads(CliRunner().invoke(cli, query_old).stdout)] == ["old/one", "old/two"]
    assert all(r["Indexed"] is True for r in rows(conn, corpus_name))
    again = json.loads(CliRunner().invoke(cli, ["status", "--repair", "--json"]).stdout)
    assert again["repaired"] == [] and again["sets"]["unindexed"] == 0


def test_status_without_repair_writes_nothing(conn: str, corpus_name: str, tmp_path: Path) -> None:
    _small(conn, corpus_name, tmp_path)
    with_storage(
        conn,
        corpus_name,
        lambda s: add_set(s, SetIdentity("old", "v0"), ["old"], {"x.png": image_bytes(color="navy")}, index=False),
    )
    before = (rows(conn, corpus_name), rows(conn, corpus_name, "tags"))
    assert CliRunner().invoke(cli, ["status"]).exit_code == 0
    assert (rows(conn, corpus_name), rows(conn, corpus_name, "tags")) == before


def test_corrupt_rows_are_survived_and_named(conn: str, corpus_name: str, tmp_path: Path) -> None:
    _small(conn, corpus_name, tmp_path)

    async def spoil(storage: Storage) -> None:
        await storage.upsert_entity(
            storage.sets,
            {
                "PartitionKey": "original",
                "RowKey": "zz|v1",
                "Path": "zz",
                "Version": "v1",
                "Tags": "not json",
                "Status": "complete",
            },
        )
        await storage.upsert_entity(storage.transforms, {"PartitionKey": "broken", "RowKey": "1"})

    with_storage(conn, corpus_name, spoil)
    res = CliRunner().invoke(cli, ["status", "--json"])
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["sets"]["complete"] == 2 and report["images"] == 2
    assert sorted(p["item"] for p in report["problems"]) == [
        f"{corpus_name}ImageSets ('original', 'zz|v1')",
        f"{corpus_name}ImageTransforms ('broken', '1')",
    ]
    res = CliRunner().invoke(cli, ["status"])
    assert res.exit_code == 1
    assert f"corrupt: {corpus_name}ImageSets ('original', 'zz|v1'): " in res.stderr
    assert f"corrupt: {corpus_name}ImageTransforms ('broken', '1'): " in res.stderr
