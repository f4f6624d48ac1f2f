"""`corpus upload` end to end on a real Azurite: layout, rows, reruns, interruptions, refusals."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager import Corpus
from corpus_manager.cli import cli
from corpus_manager.models import content_digest
from corpus_manager.results import NullProgress

from .conftest import image_bytes, unique_png, write_image
from .helpers import blobs, container_exists, md5_of, rows


def upload(conn: str, corpus: str, root: Path, version: str = "v1", **kw):  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with Corpus(corpus, connection_string=conn) as c:
            report = await c.upload(str(root), version, **kw)
            return report, c.storage.stats

    return asyncio.run(run())


def test_layout_rows_and_blob_properties(conn: str, corpus_name: str, sample_tree: Path) -> None:
    report, _ = upload(conn, corpus_name, sample_tree)
    assert report.ok and report.files_uploaded == 5 and report.sets_uploaded == 4
    stored = blobs(conn, corpus_name)
    assert sorted(stored) == [
        "original/blue/sky/v1/D.JPG",
        "original/red/angry/robin/v1/a.png",
        "original/red/angry/robin/v1/b.jpg",
        "original/red/angry/v1/c.png",
        "original/v1/top.gif",  # root images: no empty segment
    ]
    assert stored["original/blue/sky/v1/D.JPG"]["content_type"] == "image/jpeg"
    assert stored["original/v1/top.gif"]["content_type"] == "image/gif"
    for name, props in stored.items():
        local = sample_tree / name.removeprefix("original/").replace("v1/", "")
        assert props["md5"] == md5_of(local), name
    sets = {r["Path"]: r for r in rows(conn, corpus_name)}
    robin = sets["red/angry/robin"]
    assert robin["Status"] == "complete" and robin["ImageCount"] == 2
    assert json.loads(robin["Tags"]) == ["red", "angry", "robin"]
    assert robin["BlobPrefix"] == "original/red/angry/robin/v1/"
    assert robin["TotalBytes"] == sum(p.stat().st_size for p in (sample_tree / "red/angry/robin").iterdir())
    assert robin["ContentDigest"] == content_digest(
        [(p.name, md5_of(p)) for p in (sample_tree / "red/angry/robin").iterdir()])
    # nested sets never mix: red/angry holds only c.png
    assert sets["red/angry"]["ImageCount"] == 1
    assert sets[""]["Tags"] == "[]" and sets[""]["BlobPrefix"] == "original/v1/"
    assert robin["TransformName"] == "" and robin["SourceSet"] == ""
    tag_rows = rows(conn, corpus_name, "tags")
    assert {(r["Tag"], r["Path"]) for r in tag_rows} == {
        ("red", "red/angry/robin"), ("angry", "red/angry/robin"), ("robin", "red/angry/robin"),
        ("red", "red/angry"), ("angry", "red/angry"), ("blue", "blue/sky"), ("sky", "blue/sky")}


@pytest.mark.parametrize("dirname", ["été 2024", "a#b", "what?", "100%", "a_b", "~home", "日本/東京", " x "])
def test_awkward_directory_names(conn: str, corpus_name: str, tmp_path: Path, dirname: str) -> None:
    write_image(tmp_path / dirname / "img.png")
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.ok, report.failures
    rel = "/".join(dirname.split("/"))
    assert list(blobs(conn, corpus_name)) == [f"original/{rel}/v1/img.png"]
    (row,) = rows(conn, corpus_name)
    assert row["Path"] == rel and row["Status"] == "complete"


def test_a_b_and_a_slash_b_stay_two_sets(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "a_b" / "x.png", color="red")
    write_image(tmp_path / "a" / "b" / "x.png", color="blue")
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.sets_uploaded == 2
    assert sorted(r["Path"] for r in rows(conn, corpus_name)) == ["a/b", "a_b"]


def test_rerun_uploads_nothing_and_reads_no_blob_listing(conn: str, corpus_name: str, sample_tree: Path) -> None:
    upload(conn, corpus_name, sample_tree)
    report, stats = upload(conn, corpus_name, sample_tree)
    assert report.ok and report.files_uploaded == 0 and report.sets_skipped == 4
    assert stats.blob_puts == 0 and stats.blob_lists == 0  # verified from local MD5s and the rows


def test_corrupt_files_are_reported_and_not_uploaded(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "cats" / "good.png")
    (tmp_path / "cats" / "text.png").write_text("just text, not a png")
    (tmp_path / "cats" / "empty.jpg").write_bytes(b"")
    whole = image_bytes("jpeg", "64x64", "plasma:")
    (tmp_path / "cats" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    report, _ = upload(conn, corpus_name, tmp_path)
    assert not report.ok and report.exit_code == 1
    reasons = {Path(f.item).name: f.reason for f in report.failures if f.kind == "corrupt"}
    assert set(reasons) == {"text.png", "empty.jpg", "truncated.jpg"}
    assert "empty" in reasons["empty.jpg"] and "truncated JPEG" in reasons["truncated.jpg"]
    assert list(blobs(conn, corpus_name)) == ["original/cats/v1/good.png"]
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "complete" and row["ImageCount"] == 1


def test_set_of_only_corrupt_files_gets_no_row(conn: str, corpus_name: str, tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("nope")
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.files_corrupt == 1 and rows(conn, corpus_name) == []


def test_interrupted_run_leaves_pending_set_that_rerun_finishes(conn: str, corpus_name: str, tmp_path: Path) -> None:
    for i in range(40):
        unique_png(tmp_path / "big" / f"{i:03}.png", i)

    class StopAfter(NullProgress):
        def __init__(self, task: asyncio.Task[object]) -> None:
            self.task, self.files = task, 0

        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            self.files += files
            if self.files == 15:
                self.task.cancel()  # an interruption half way (as Ctrl-C would do)

    async def interrupted() -> None:
        async with Corpus(corpus_name, connection_string=conn) as c:
            task = asyncio.current_task()
            assert task is not None
            await c.upload(str(tmp_path), "v1", max_parallel_uploads=4, progress=StopAfter(task))

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(interrupted())
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "pending"  # the row came first, and is not complete
    assert rows(conn, corpus_name, "tags") == []  # never indexed while pending
    partial = blobs(conn, corpus_name)
    assert 10 <= len(partial) < 40

    report, stats = upload(conn, corpus_name, tmp_path)
    assert report.ok and report.sets_uploaded == 1
    assert stats.blob_lists == 1  # one listing for the pending set, not one request per file
    assert stats.blob_puts == 40 - len(partial) == report.files_uploaded
    assert report.files_already_stored == len(partial)
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "complete" and row["ImageCount"] == 40
    assert len(rows(conn, corpus_name, "tags")) == 1


def test_changed_content_of_a_complete_set_is_refused(conn: str, corpus_name: str, sample_tree: Path) -> None:
    upload(conn, corpus_name, sample_tree)
    before = blobs(conn, corpus_name)
    write_image(sample_tree / "red" / "angry" / "robin" / "a.png", color="purple")
    write_image(sample_tree / "red" / "angry" / "robin" / "new.png", color="pink")
    report, stats = upload(conn, corpus_name, sample_tree)
    assert report.sets_refused == 1 and report.exit_code == 1
    (failure,) = report.failures
    assert failure.kind == "refused" and failure.item.endswith("red/angry/robin")
    assert "1 added (e.g. new.png), 1 changed (e.g. a.png)" in failure.reason
    assert "new --version" in failure.reason
    assert blobs(conn, corpus_name) == before and stats.blob_puts == 0
    # the same content as a new version is fine
    report, _ = upload(conn, corpus_name, sample_tree, version="v2")
    assert report.ok and report.sets_uploaded == 4


def test_pending_set_drops_blobs_of_files_gone_locally(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "s" / "keep.png")
    write_image(tmp_path / "s" / "gone.png", color="blue")

    async def leave_pending() -> None:
        # the state an interrupted run leaves: a pending row and some blobs
        from corpus_manager.imagetypes import CONTENT_TYPES
        from corpus_manager.models import ImageSet, SetIdentity

        async with Corpus(corpus_name, connection_string=conn) as c:
            await c.storage.ensure()
            ident = SetIdentity("s", "v1")
            await c.storage.create_entity(c.storage.sets, ImageSet(ident, tags=["s"]).to_entity())
            data = (tmp_path / "s" / "gone.png").read_bytes()
            import hashlib

            await c.storage.put_blob(ident.blob_name("gone.png"), data, content_type=CONTENT_TYPES["png"],
                                     md5=hashlib.md5(data).digest())

    asyncio.run(leave_pending())
    (tmp_path / "s" / "gone.png").unlink()
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.ok
    assert list(blobs(conn, corpus_name)) == ["original/s/v1/keep.png"]
    (row,) = rows(conn, corpus_name)
    assert row["ImageCount"] == 1 and row["Status"] == "complete"


def test_duplicates_inside_a_set_are_counted_and_named(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "d" / "one.png")
    shutil.copy(tmp_path / "d" / "one.png", tmp_path / "d" / "two.png")
    write_image(tmp_path / "d" / "other.png", color="blue")
    result = CliRunner().invoke(cli, ["upload", str(tmp_path), "--version", "v1"])
    assert result.exit_code == 0, result.output
    assert "duplicates  1 groups of byte-identical files: d/one.png = d/two.png" in result.stdout


def test_dry_run_writes_nothing(conn: str, corpus_name: str, sample_tree: Path) -> None:
    result = CliRunner().invoke(cli, ["upload", str(sample_tree), "--version", "v1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("Dry run: would upload 5 files (")
    assert "in 4 sets as version v1; 0 sets already complete." in result.stdout
    assert not container_exists(conn, corpus_name)


def test_cli_summary_first_run_and_rerun(conn: str, corpus_name: str, sample_tree: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["upload", str(sample_tree), "--version", "v1"])
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert lines[0] == f"Uploaded version v1 from {sample_tree}"
    assert lines[1] == "  sets        4 total: 4 uploaded, 0 already complete, 0 refused, 0 failed"
    assert lines[2] == "  files       5 uploaded, 0 already stored, 0 corrupt, 0 failed, 1 ignored (not images)"
    second = runner.invoke(cli, ["upload", str(sample_tree), "--version", "v1"])
    assert second.exit_code == 0
    assert second.stdout.splitlines()[0] == "Nothing to upload: all 4 sets of version v1 are already stored."
    data = json.loads(runner.invoke(cli, ["upload", str(sample_tree), "--version", "v1", "--json"]).stdout)
    assert data["files"]["uploaded"] == 0 and data["sets"] == {
        "total": 4, "uploaded": 0, "skipped": 4, "refused": 0, "failed": 0}


def test_bad_version_is_a_usage_error_and_writes_nothing(conn: str, corpus_name: str, sample_tree: Path) -> None:
    result = CliRunner().invoke(cli, ["upload", str(sample_tree), "--version", "v/1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: version 'v/1' is not valid: use 1-64 letters, digits, '.', '_' or '-', "
                                     "starting with a letter or digit")
    assert not container_exists(conn, corpus_name)


def test_missing_root_is_a_usage_error(conn: str, corpus_name: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["upload", str(tmp_path / "nope"), "--version", "v1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {tmp_path / 'nope'}: no such directory"


def test_container_is_never_public(conn: str, corpus_name: str, sample_tree: Path) -> None:
    upload(conn, corpus_name, sample_tree)

    async def access() -> str | None:
        async with Corpus(corpus_name, connection_string=conn) as c:
            return await c.storage.container_public_access()

    assert asyncio.run(access()) is None


def test_two_concurrent_uploads_of_one_root_make_one_consistent_set(conn: str, corpus_name: str,
                                                                     tmp_path: Path) -> None:
    for d in range(4):
        for i in range(15):
            unique_png(tmp_path / f"d{d}" / f"{i:02}.png", d * 100 + i)

    async def both():  # type: ignore[no-untyped-def]
        async def one():  # type: ignore[no-untyped-def]
            async with Corpus(corpus_name, connection_string=conn) as c:
                return await c.upload(str(tmp_path), "v1", max_parallel_uploads=4)

        return await asyncio.gather(one(), one())

    first, second = asyncio.run(both())
    assert first.ok and second.ok, (first.failures, second.failures)
    sets = rows(conn, corpus_name)
    assert len(sets) == 4 and all(r["Status"] == "complete" and r["ImageCount"] == 15 for r in sets)
    assert len(blobs(conn, corpus_name)) == 60
    assert len(rows(conn, corpus_name, "tags")) == 4
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.sets_skipped == 4 and report.files_uploaded == 0
