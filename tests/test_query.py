"""`corpus query` on a real Azurite: AND / OR, case, version and transform filters, pending sets,
which partitions a query reads, corrupt rows, output formats."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from corpus_manager import query as query_module
from corpus_manager.cli import cli
from corpus_manager.models import COMPLETE, ImageSet, SetIdentity
from corpus_manager.progress import human_bytes
from corpus_manager.query import QueryFilter, query_sets
from corpus_manager.storage import Storage
from corpus_manager.tagindex import TagIndexWriter
from corpus_manager.throttle import ThrottleWork

from .conftest import Azurite, write_image
from .helpers import run, with_storage
from .known_corpus import KnownCorpus, build_known_corpus, set_bytes


@pytest.fixture(scope="module")
def known(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> KnownCorpus:
    return build_known_corpus(azurite.connection_string, tmp_path_factory.mktemp("known"))


def invoke(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def listed(known: KnownCorpus, *args: str) -> list[tuple[str, str, str | None]]:
    res = invoke(known.env, "query", "--json", *args)
    assert res.exit_code == 0, res.output
    return [
        (r["path"], r["version"], r["transform"] and f"{r['transform']['name']}@{r['transform']['version']}")
        for r in json.loads(res.stdout)
    ]


ROBIN1 = ("red/angry/robin", "v1", None)
ROBIN1_CHARCOAL = ("red/angry/robin", "v1", "charcoal@1")
ROBIN2 = ("red/angry/robin", "v2", None)
ANGRY = ("red/angry", "v1", None)
CALM = ("red/calm/robin", "v1", None)
SKY = ("Blue/sky", "v1", None)
ROOT = ("", "v1", None)


def test_tags_combine_with_and(known: KnownCorpus) -> None:
    assert listed(known, "--tag", "red", "--tag", "angry") == [ANGRY, ROBIN1, ROBIN1_CHARCOAL, ROBIN2]
    assert listed(known, "--tag", "angry", "--tag", "calm") == []
    assert listed(known, "--tag", "red", "--tag", "nosuchtag") == []


def test_any_combines_tags_with_or(known: KnownCorpus) -> None:
    assert listed(known, "--any", "--tag", "sky", "--tag", "calm") == [SKY, CALM]
    assert listed(known, "--any", "--tag", "sky", "--tag", "nosuchtag") == [SKY]


def test_tags_match_case_insensitively(known: KnownCorpus) -> None:
    assert listed(known, "--tag", "BLUE") == [SKY]
    assert listed(known, "--tag", "blue") == [SKY]
    assert listed(known, "--tag", "RED", "--tag", "Robin") == listed(known, "--tag", "red", "--tag", "robin")
    assert listed(known, "--tag", "Robin", "--tag", "ROBIN") == [ROBIN1, ROBIN1_CHARCOAL, ROBIN2, CALM]


def test_json_objects_carry_the_spec_fields(known: KnownCorpus) -> None:
    res = invoke(known.env, "query", "--json", "--tag", "sky")
    assert res.exit_code == 0
    assert json.loads(res.stdout) == [
        {
            "path": "Blue/sky",
            "version": "v1",
            "tags": ["Blue", "sky"],
            "transform": None,
            "images": 1,
            "bytes": set_bytes(known, "original/Blue/sky/v1/"),
            "blob_prefix": "original/Blue/sky/v1/",
        }
    ]
    res = invoke(known.env, "query", "--json", "--transform", "charcoal")
    assert json.loads(res.stdout) == [
        {
            "path": "red/angry/robin",
            "version": "v1",
            "tags": ["red", "angry", "robin"],
            "transform": {"name": "charcoal", "version": "1"},
            "images": 2,
            "bytes": set_bytes(known, "transform/charcoal/1/red/angry/robin/v1/"),
            "blob_prefix": "transform/charcoal/1/red/angry/robin/v1/",
        }
    ]


def test_version_filter(known: KnownCorpus) -> None:
    assert listed(known, "--tag", "robin", "--version", "v2") == [ROBIN2]
    assert listed(known, "--version", "v2") == [ROBIN2]
    assert listed(known, "--tag", "sky", "--version", "v2") == []


def test_transform_and_originals_filters(known: KnownCorpus) -> None:
    assert listed(known, "--transform", "charcoal") == [ROBIN1_CHARCOAL]
    assert listed(known, "--transform", "charcoal@1") == [ROBIN1_CHARCOAL]
    assert listed(known, "--transform", "charcoal@2") == []
    assert listed(known, "--transform", "charcoa") == []  # a name, not a prefix
    assert listed(known, "--tag", "robin", "--transform", "charcoal@1") == [ROBIN1_CHARCOAL]
    assert listed(known, "--tag", "robin", "--originals") == [ROBIN1, ROBIN2, CALM]
    assert listed(known, "--originals", "--version", "v1") == [ROOT, SKY, ANGRY, ROBIN1, CALM]


def test_no_filter_lists_every_complete_set_in_order_and_pending_sets_are_invisible(known: KnownCorpus) -> None:
    # red/wip is pending (its blob is stored, its row says pending): never listed, by scan or by tag
    assert listed(known) == [ROOT, SKY, ANGRY, ROBIN1, ROBIN1_CHARCOAL, ROBIN2, CALM]
    assert listed(known, "--tag", "wip") == []
    assert ("red/wip", "v1", None) not in listed(known, "--tag", "red")


def test_default_format_off_a_terminal_is_json_and_table_is_exact(known: KnownCorpus) -> None:
    res = invoke(known.env, "query", "--tag", "sky")
    assert json.loads(res.stdout)[0]["path"] == "Blue/sky"
    res = invoke(known.env, "query", "--tag", "robin", "--format", "table")
    assert res.exit_code == 0
    b = {
        k: human_bytes(set_bytes(known, k))
        for k in (
            "original/red/angry/robin/v1/",
            "transform/charcoal/1/red/angry/robin/v1/",
            "original/red/angry/robin/v2/",
            "original/red/calm/robin/v1/",
        )
    }
    rows = [
        ("PATH", "VERSION", "TRANSFORM", "IMAGES", "BYTES", "TAGS"),
        ("red/angry/robin", "v1", "-", "2", b["original/red/angry/robin/v1/"], "red, angry, robin"),
        (
            "red/angry/robin",
            "v1",
            "charcoal@1",
            "2",
            b["transform/charcoal/1/red/angry/robin/v1/"],
            "red, angry, robin",
        ),
        ("red/angry/robin", "v2", "-", "1", b["original/red/angry/robin/v2/"], "red, angry, robin"),
        ("red/calm/robin", "v1", "-", "1", b["original/red/calm/robin/v1/"], "red, calm, robin"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    expected = "".join(
        f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]:>{w[4]}}  {r[5]}\n" for r in rows
    )
    assert res.stdout == expected
    images = 6
    total = sum(set_bytes(known, k) for k in b)
    assert res.stderr == f"4 sets, {images} images, {human_bytes(total)}\n"


def test_a_single_tag_reads_only_its_partition(known: KnownCorpus) -> None:
    async def go(storage: Storage) -> tuple[int, int, list[str]]:
        before_reads, before_queries = storage.stats.entity_reads, storage.stats.table_queries
        result = await query_sets(storage, QueryFilter(("Robin",)))
        return (
            storage.stats.entity_reads - before_reads,
            storage.stats.table_queries - before_queries,
            result.partitions_read,
        )

    reads, queries, partitions = with_storage(known.conn, known.name, go)
    assert partitions == ["robin"]
    assert queries == 1  # one TagIndex partition; no ImageSets scan, no per-set lookups
    assert reads == 4  # exactly the rows of the robin partition


def _index_many(conn: str, name: str, n_big: int, rare: set[int]) -> None:
    """n_big complete sets tagged 'big' (some also 'rare'), indexed without blobs: only rows matter here."""

    async def fill(storage: Storage) -> None:
        await storage.ensure()
        writer = TagIndexWriter(storage, ThrottleWork(8))
        for i in range(n_big):
            tags = ["big", f"s{i:03d}"] + (["rare"] if i in rare else [])
            image_set = ImageSet(
                SetIdentity(f"big/s{i:03d}", "v1"), tags=tags, status=COMPLETE, image_count=1, total_bytes=10
            )
            image_set.etag = await storage.create_entity(storage.sets, image_set.to_entity())
            await writer.add(image_set)
        await writer.flush()
        assert not writer.failures

    with_storage(conn, name, fill)


@pytest.fixture(scope="module")
def big(azurite: Azurite) -> tuple[str, str]:
    name = "b" + uuid.uuid4().hex[:12]
    _index_many(azurite.connection_string, name, 40, rare={3, 17, 38})
    return azurite.connection_string, name


@pytest.mark.parametrize(("page", "point_limit"), [(1000, 200), (5, 200), (5, 0), (1, 0)])
def test_and_reads_the_smallest_partition_first(
    big: tuple[str, str], monkeypatch: pytest.MonkeyPatch, page: int, point_limit: int
) -> None:
    conn, corpus_name = big
    monkeypatch.setattr(query_module, "PAGE_SIZE", page)
    monkeypatch.setattr(query_module, "POINT_READ_LIMIT", point_limit)

    async def go(storage: Storage, tags: tuple[str, ...]) -> tuple[list[str], int]:
        before = storage.stats.entity_reads
        result = await query_sets(storage, QueryFilter(tags))
        return [s.path for s in result.sets], storage.stats.entity_reads - before

    for tags in (("big", "rare"), ("RARE", "Big")):
        paths, reads = with_storage(conn, corpus_name, lambda s, t=tags: go(s, t))
        assert paths == ["big/s003", "big/s017", "big/s038"]
        if point_limit:
            # the 3 rare rows, the big pages read in lockstep until rare ran out, then point reads
            assert reads <= 3 + 2 * page + 3 if page < 40 else reads <= 3 + 40
            if page == 5:
                assert reads < 40  # never the whole big partition
    paths, reads = with_storage(conn, corpus_name, lambda s: go(s, ("big", "s017")))
    assert paths == ["big/s017"]
    paths, reads = with_storage(conn, corpus_name, lambda s: go(s, ("big", "nosuchtag")))
    assert paths == [] and reads <= page


def test_corrupt_rows_are_named_and_skipped(conn: str, corpus_name: str, sample_tree: Path) -> None:
    run(conn, corpus_name, lambda c: c.upload(str(sample_tree), "v1"))

    async def spoil(storage: Storage) -> None:
        await storage.upsert_entity(
            storage.tags, {"PartitionKey": "robin", "RowKey": "bogus", "Path": "x", "Version": "v1", "Tags": "not json"}
        )
        await storage.upsert_entity(
            storage.sets,
            {
                "PartitionKey": "original",
                "RowKey": "zz|v1",
                "Path": "zz",
                "Version": "v1",
                "Tags": "{",
                "Status": "complete",
            },
        )

    with_storage(conn, corpus_name, spoil)
    res = CliRunner().invoke(cli, ["query", "--json", "--tag", "robin"])
    assert res.exit_code == 1
    assert [r["path"] for r in json.loads(res.stdout)] == ["red/angry/robin"]
    assert (
        f"corrupt: {corpus_name}TagIndex ('robin', 'bogus'): TagIndex row ('robin', 'bogus') is corrupt: "
        "Tags 'not json' is not JSON\n"
    ) == res.stderr
    res = CliRunner().invoke(cli, ["query", "--json"])
    assert res.exit_code == 1
    assert [r["path"] for r in json.loads(res.stdout)] == ["", "blue/sky", "red/angry", "red/angry/robin"]
    assert res.stderr.startswith(
        f"corrupt: {corpus_name}ImageSets ('original', 'zz|v1'): ImageSets row ('original', 'zz|v1') is corrupt"
    )


def test_csv_output_neutralises_formula_cells(conn: str, corpus_name: str, tmp_path: Path) -> None:
    for d in ("=SUM(A1)", "+1", "@x", "-2", "plain"):
        write_image(tmp_path / d / "i.png")
    run(conn, corpus_name, lambda c: c.upload(str(tmp_path), "v1"))
    res = CliRunner().invoke(cli, ["query", "--format", "csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0] == ["path", "version", "tags", "transform", "images", "bytes", "blob_prefix"]
    got = {r[0]: r for r in rows[1:]}
    assert sorted(got) == ["'+1", "'-2", "'=SUM(A1)", "'@x", "plain"]
    assert got["'=SUM(A1)"][2] == '["=SUM(A1)"]'  # the tags cell starts with '[': not a formula
    assert got["'=SUM(A1)"][6] == "original/=SUM(A1)/v1/"
    assert got["plain"][1:4] == ["v1", '["plain"]', ""]
    assert all(not cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--transform", "charcoal", "--originals"], "exclude each other"),
        (["--version", "no/slash"], "version 'no/slash' is not valid"),
        (["--transform", "bad name"], "transform name 'bad name' is not valid"),
        (["--transform", "ok@"], "transform version '' is not valid"),
        (["--json", "--format", "csv"], "exclude each other"),
        (["--tag", " "], "non-empty"),
    ],
)
def test_usage_errors_exit_2(conn: str, corpus_name: str, args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["query", *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stdout == ""


def test_a_corpus_that_does_not_exist_is_a_usage_error(conn: str, corpus_name: str) -> None:
    res = CliRunner().invoke(cli, ["query", "--tag", "x"])
    assert res.exit_code == 2
    assert f"corpus {corpus_name!r} does not exist" in res.stderr
