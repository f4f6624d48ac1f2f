"""Transform jobs on a real Azurite with real ImageMagick: layout, lineage, incrementality, failures."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
from concurrent.futures import Executor
from pathlib import Path

import pytest
from click.testing import CliRunner

import transforms
from corpus_manager import Corpus
from corpus_manager.cli import cli
from corpus_manager.imagetypes import CONTENT_TYPES
from corpus_manager.models import ImageSet, SetIdentity, content_digest
from corpus_manager.results import NullProgress
from corpus_manager.storage import Storage

from .conftest import image_bytes, write_image
from .helpers import blobs, png_bomb, rows, run, with_storage


def upload(conn: str, corpus: str, root: Path, version: str = "v1"):  # type: ignore[no-untyped-def]
    report = run(conn, corpus, lambda c: c.upload(str(root), version))
    assert report.ok, report.failures
    return report


def transform(
    conn: str,
    corpus: str,
    pool: Executor,
    name: str = "thumbs",
    version: str = "1",
    ops: tuple[str, ...] = ("resize=8x8!",),
    **kw,
):  # type: ignore[no-untyped-def]
    return run(conn, corpus, lambda c: c.transform(name, version, ops=list(ops), pool=pool, **kw))


def size_of(data: bytes) -> tuple[int, int]:
    out = subprocess.run(["identify", "-format", "%w %h", "-"], input=data, capture_output=True, check=True)
    w, h = out.stdout.split()
    return int(w), int(h)


def get_blob(conn: str, corpus: str, name: str) -> bytes:
    return run(conn, corpus, lambda c: c.storage.get_blob(name))[0]


def test_layout_lineage_rows_and_tags(conn: str, corpus_name: str, sample_tree: Path, pool: Executor) -> None:
    upload(conn, corpus_name, sample_tree)
    report = transform(conn, corpus_name, pool, ops=("resize=8x8!", "grayscale"))
    assert report.ok and report.sets_transformed == 4 and report.images_transformed == 5
    outputs = sorted(n for n in blobs(conn, corpus_name) if n.startswith("transform/"))
    assert outputs == [
        "transform/thumbs/1/blue/sky/v1/D.JPG",
        "transform/thumbs/1/red/angry/robin/v1/a.png",
        "transform/thumbs/1/red/angry/robin/v1/b.jpg",
        "transform/thumbs/1/red/angry/v1/c.png",
        "transform/thumbs/1/v1/top.gif",
    ]
    assert size_of(get_blob(conn, corpus_name, "transform/thumbs/1/red/angry/robin/v1/b.jpg")) == (8, 8)
    out_rows = {r["Path"]: r for r in rows(conn, corpus_name) if r["TransformName"]}
    robin = out_rows["red/angry/robin"]
    assert robin["Status"] == "complete" and robin["TransformVersion"] == "1" and robin["ImageCount"] == 2
    assert robin["SourceSet"] == SetIdentity("red/angry/robin", "v1").key
    assert json.loads(robin["Tags"]) == ["red", "angry", "robin"]
    assert robin["BlobPrefix"] == "transform/thumbs/1/red/angry/robin/v1/"
    stored = blobs(conn, corpus_name)
    assert robin["ContentDigest"] == content_digest(
        [(n.rsplit("/", 1)[1], stored[n]["md5"]) for n in outputs if "/robin/" in n]
    )
    # the originals' rows are untouched (the C# tool overwrote them with transformed ones)
    originals = [r for r in rows(conn, corpus_name) if not r["TransformName"]]
    assert len(originals) == 4 and all(r["BlobPrefix"].startswith("original/") for r in originals)
    tag_rows = [r for r in rows(conn, corpus_name, "tags") if r["TransformName"] == "thumbs"]
    assert {(r["Tag"], r["Path"]) for r in tag_rows} >= {("robin", "red/angry/robin"), ("sky", "blue/sky")}
    (registered,) = rows(conn, corpus_name, "transforms")
    assert registered["CommandLine"] == "resize=8x8! grayscale"
    assert registered["SpecDigest"] == hashlib.sha256(registered["Spec"].encode()).hexdigest()
    assert registered["ImageMagickVersion"].startswith("ImageMagick 6.")


def test_same_name_version_with_another_spec_is_refused(
    conn: str, corpus_name: str, sample_tree: Path, pool: Executor
) -> None:
    upload(conn, corpus_name, sample_tree)
    transform(conn, corpus_name, pool, ops=("resize=8x8",))
    before = blobs(conn, corpus_name)
    result = CliRunner().invoke(cli, ["transform", "thumbs", "--version", "1", "--op", "resize=9x9"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: transform thumbs@1 is already registered as `resize=8x8`; `resize=9x9` "
        "is a different spec: transforms are immutable, use a new --version"
    )
    assert blobs(conn, corpus_name) == before
    # the same spec again is fine, and has nothing to do
    again = CliRunner().invoke(cli, ["transform", "thumbs", "--version", "1", "--op", "resize=8x8"])
    assert again.exit_code == 0
    assert again.stdout.startswith("Nothing to transform: every matching set already has a complete thumbs@1 output.")


def test_bad_spec_is_a_usage_error_before_any_work(conn: str, corpus_name: str, sample_tree: Path) -> None:
    upload(conn, corpus_name, sample_tree)
    for args, message in ((["--op", "sharpen=-1"], "sharpen"), (["--op", "explode"], "explode"), ([], "--op")):
        result = CliRunner().invoke(cli, ["transform", "x", "--version", "1", *args])
        assert result.exit_code == 2, result.output
        assert message in result.stderr and result.stderr.startswith("Error: ")
    assert rows(conn, corpus_name, "transforms") == []


def test_incremental_rerun_and_new_version(conn: str, corpus_name: str, tmp_path: Path, pool: Executor) -> None:
    write_image(tmp_path / "a" / "1.png", color="red")
    upload(conn, corpus_name, tmp_path)
    first = transform(conn, corpus_name, pool)
    assert first.sets_transformed == 1
    write_image(tmp_path / "b" / "2.png", color="blue")
    upload(conn, corpus_name, tmp_path)
    second = transform(conn, corpus_name, pool)
    assert [(s.path, s.status) for s in second.sets] == [("a", "skipped"), ("b", "transformed")]
    assert second.images_transformed == 1
    assert [s.already_done for s in second.sets] == [1, 0]  # the skipped set's images count as done
    before = {n: p for n, p in blobs(conn, corpus_name).items() if n.startswith("transform/thumbs/1/")}
    third = transform(conn, corpus_name, pool, version="2", ops=("resize=4x4!",))
    assert third.sets_transformed == 2
    after = blobs(conn, corpus_name)
    assert {n: p for n, p in after.items() if n.startswith("transform/thumbs/1/")} == before  # untouched
    assert sorted(n for n in after if n.startswith("transform/thumbs/2/")) == [
        "transform/thumbs/2/a/v1/1.png",
        "transform/thumbs/2/b/v1/2.png",
    ]


def test_tag_and_source_version_select_sources(conn: str, corpus_name: str, sample_tree: Path, pool: Executor) -> None:
    upload(conn, corpus_name, sample_tree)
    upload(conn, corpus_name, sample_tree, version="v2")
    report = transform(conn, corpus_name, pool, tags=("ROBIN",), source_version="v2")
    assert [(s.path, s.version) for s in report.sets] == [("red/angry/robin", "v2")]


def test_format_png_renames_outputs_and_sets_content_types(
    conn: str, corpus_name: str, tmp_path: Path, pool: Executor
) -> None:
    write_image(tmp_path / "pics" / "a.jpg", "jpeg", color="red")
    write_image(tmp_path / "pics" / "b.gif", "gif", color="blue")
    upload(conn, corpus_name, tmp_path)
    report = transform(conn, corpus_name, pool, name="pngs", ops=("format=png",))
    assert report.ok
    out = {n: p for n, p in blobs(conn, corpus_name).items() if n.startswith("transform/")}
    assert sorted(out) == ["transform/pngs/1/pics/v1/a.png", "transform/pngs/1/pics/v1/b.png"]
    assert {p["content_type"] for p in out.values()} == {CONTENT_TYPES["png"]}
    assert get_blob(conn, corpus_name, "transform/pngs/1/pics/v1/a.png").startswith(b"\x89PNG")


def test_two_inputs_for_one_output_fail_the_set(conn: str, corpus_name: str, tmp_path: Path, pool: Executor) -> None:
    write_image(tmp_path / "clash" / "a.jpg", "jpeg")
    write_image(tmp_path / "clash" / "a.gif", "gif")
    write_image(tmp_path / "fine" / "b.jpg", "jpeg")
    upload(conn, corpus_name, tmp_path)
    report = transform(conn, corpus_name, pool, name="pngs", ops=("format=png",))
    assert report.exit_code == 1
    assert {s.path: s.status for s in report.sets} == {"clash": "failed", "fine": "transformed"}
    (failure,) = report.failures
    assert "a.gif and a.jpg -> a.png" in failure.reason
    assert not [n for n in blobs(conn, corpus_name) if n.startswith("transform/pngs/1/clash/")]


def _put_source_set(conn: str, corpus: str, path: str, files: dict[str, bytes]) -> None:
    """A complete original set written directly: content a cheap upload sniff lets through."""

    async def go(c: Corpus) -> None:
        await c.storage.ensure()
        ident = SetIdentity(path, "v1")
        pairs = []
        for name, data in files.items():
            md5 = hashlib.md5(data).digest()
            await c.storage.put_blob(ident.blob_name(name), data, content_type="image/png", md5=md5)
            pairs.append((name, md5.hex()))
        image_set = ImageSet(
            ident,
            tags=[path],
            status="complete",
            image_count=len(files),
            total_bytes=sum(map(len, files.values())),
            content_digest=content_digest(pairs),
        )
        await c.storage.upsert_entity(c.storage.sets, image_set.to_entity())

    run(conn, corpus, go)


def test_corrupt_and_bomb_images_fail_only_their_sets(
    conn: str, corpus_name: str, tmp_path: Path, pool: Executor
) -> None:
    good = image_bytes("png", "16x16", "red")
    # passes the upload sniff (PNG signature, IEND at the end) but its pixels are garbage
    corrupt = good[:16] + b"\x00" * 40 + good[-12:]
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 2_000_000  # small on disk, 400 megapixels decoded
    _put_source_set(conn, corpus_name, "ok", {"a.png": good})
    _put_source_set(conn, corpus_name, "broken", {"a.png": good, "bad.png": corrupt})
    _put_source_set(conn, corpus_name, "bomb", {"big.png": bomb})
    report = transform(conn, corpus_name, pool)
    assert report.exit_code == 1
    assert {s.path: s.status for s in report.sets} == {"ok": "transformed", "broken": "failed", "bomb": "failed"}
    reasons = {f.item: f.reason for f in report.failures}
    assert set(reasons) == {"original/broken/v1/bad.png", "original/bomb/v1/big.png"}
    assert "exceeds" in reasons["original/bomb/v1/big.png"] or "limit" in reasons["original/bomb/v1/big.png"]
    statuses = {r["Path"]: r["Status"] for r in rows(conn, corpus_name) if r["TransformName"]}
    assert statuses == {"ok": "complete", "broken": "pending", "bomb": "pending"}
    tagged = {r["Path"] for r in rows(conn, corpus_name, "tags") if r["TransformName"]}
    assert tagged == {"ok"}  # pending outputs are never indexed
    # the rerun retries the failed sets (and only them)
    again = transform(conn, corpus_name, pool)
    assert {s.path: s.status for s in again.sets} == {"ok": "skipped", "broken": "failed", "bomb": "failed"}
    assert [s.already_done for s in again.sets if s.path == "broken"] == [1]


def test_interrupted_job_finishes_on_rerun(conn: str, corpus_name: str, tmp_path: Path, pool: Executor) -> None:
    for i in range(12):
        write_image(tmp_path / "many" / f"{i:02}.png", color=f"rgb({i * 20},0,0)")
    upload(conn, corpus_name, tmp_path)

    class StopAfter(NullProgress):
        def __init__(self) -> None:
            self.task: asyncio.Task[object] | None = None
            self.done = 0

        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            self.done += files
            if self.done == 4 and self.task is not None:
                self.task.cancel()

    stop = StopAfter()

    async def go(c: Corpus) -> None:
        stop.task = asyncio.current_task()
        await c.transform("thumbs", "1", ops=["resize=8x8!"], pool=pool, progress=stop)

    with pytest.raises(asyncio.CancelledError):
        run(conn, corpus_name, go)
    (out_row,) = [r for r in rows(conn, corpus_name) if r["TransformName"]]
    assert out_row["Status"] == "pending"
    done = [n for n in blobs(conn, corpus_name) if n.startswith("transform/")]
    assert 4 <= len(done) < 12
    report = transform(conn, corpus_name, pool)
    assert report.ok and report.images_transformed == 12 - len(done)
    assert report.sets[0].already_done == len(done)
    (out_row,) = [r for r in rows(conn, corpus_name) if r["TransformName"]]
    assert out_row["Status"] == "complete" and out_row["ImageCount"] == 12


def test_a_rerun_indexes_complete_outputs_a_killed_run_left_unindexed(
    conn: str, corpus_name: str, tmp_path: Path, pool: Executor
) -> None:
    """A run killed between an output's complete row and its tag rows (they are batched across sets, so
    the last sets of an interrupted run are often so) leaves it complete and unindexed: the rerun, which
    has nothing to transform, indexes it, as an upload rerun does for its sets."""
    write_image(tmp_path / "red" / "1.png")
    upload(conn, corpus_name, tmp_path)
    assert transform(conn, corpus_name, pool).ok
    (out,) = [r for r in rows(conn, corpus_name) if r["TransformName"]]
    out_tags = [r for r in rows(conn, corpus_name, "tags") if r["TransformName"]]
    assert len(out_tags) == 1

    async def unindex(storage: Storage) -> None:
        await storage.update_entity(
            storage.sets, {"PartitionKey": out["PartitionKey"], "RowKey": out["RowKey"], "Indexed": False}, etag=None
        )
        for tag in out_tags:
            await storage.delete_entity(storage.tags, tag["PartitionKey"], tag["RowKey"])

    with_storage(conn, corpus_name, unindex)
    assert not [r for r in rows(conn, corpus_name, "tags") if r["TransformName"]]
    again = transform(conn, corpus_name, pool)
    assert again.ok and [s.status for s in again.sets] == ["skipped"] and again.images_transformed == 0
    assert [r["Path"] for r in rows(conn, corpus_name, "tags") if r["TransformName"]] == ["red"]
    assert [r["Indexed"] for r in rows(conn, corpus_name) if r["TransformName"]] == [True]


def test_from_chains_transforms_and_dry_run_writes_nothing(
    conn: str, corpus_name: str, tmp_path: Path, pool: Executor
) -> None:
    write_image(tmp_path / "x" / "1.png", size="40x40")
    upload(conn, corpus_name, tmp_path)
    transform(conn, corpus_name, pool, name="small", ops=("resize=20x20",))
    dry = CliRunner().invoke(
        cli, ["transform", "tiny", "--version", "1", "--op", "resize=10x10", "--from", "small@1", "--dry-run"]
    )
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        "Dry run: transform tiny@1 (`resize=10x10`) would process 1 sets (1 images) from small@1; 0 already done.",
        "  x@v1: 1 images",
    ]
    assert not [n for n in blobs(conn, corpus_name) if n.startswith("transform/tiny/")]
    chained = transform(conn, corpus_name, pool, name="tiny", ops=("resize=10x10",), source="small@1")
    assert chained.ok and chained.source == "small@1"
    data = get_blob(conn, corpus_name, "transform/tiny/1/x/v1/1.png")
    assert size_of(data) == (10, 10)
    (row,) = [r for r in rows(conn, corpus_name) if r["TransformName"] == "tiny"]
    assert row["SourceSet"] == SetIdentity("x", "v1", "small", "1").key
    listing = CliRunner().invoke(cli, ["transforms", "--json"])
    assert [(t["name"], t["source"]) for t in json.loads(listing.stdout)] == [
        ("small", "original"),
        ("tiny", "small@1"),
    ]


def test_output_is_deterministic(conn: str, corpus_name: str, tmp_path: Path, pool: Executor) -> None:
    write_image(tmp_path / "r" / "1.png", size="64x64", color="plasma:")
    upload(conn, corpus_name, tmp_path)
    transform(conn, corpus_name, pool, name="crop", version="1", ops=("random-crop=16x16",))
    transform(conn, corpus_name, pool, name="crop", version="2", ops=("random-crop=16x16",))
    stored = blobs(conn, corpus_name)
    assert stored["transform/crop/1/r/v1/1.png"]["md5"] == stored["transform/crop/2/r/v1/1.png"]["md5"]
    assert io.BytesIO(get_blob(conn, corpus_name, "transform/crop/1/r/v1/1.png")).read(4) == b"\x89PNG"


def test_help_lists_every_registered_operation_with_its_usage() -> None:
    result = CliRunner().invoke(cli, ["transform", "--help"])
    assert result.exit_code == 0
    listed = {
        line.split()[0]
        for line in result.output.split("Operations (--op OP[=ARG], applied in order):")[1].splitlines()
        if line.strip()
    }
    assert listed == {op.usage for op in transforms.operations()}
