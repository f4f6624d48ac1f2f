"""One writer per set version (issue 12.1): a run claims a set version (its ContentDigest, on the pending
row) before writing any blob of it; a run with other content is refused without touching the owner's
blobs; a claim not renewed for the lease (a dead run's) is taken over; a run that lost its claim can
neither write nor complete the set. Two runs of the same content may both go on: they store the same
bytes (tests/faults/test_concurrent.py)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import subprocess
import sys
import threading
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest

from corpus_manager import Corpus, lifecycle
from corpus_manager.imagetypes import CONTENT_TYPES
from corpus_manager.models import ImageSet, SetIdentity, content_digest
from corpus_manager.results import NullProgress
from corpus_manager.storage import Storage

from ..conftest import unique_png
from ..helpers import blobs, md5_of, rows, with_storage

ROUNDS = 10


def _roots(tmp_path: Path, files: int = 6) -> tuple[Path, Path]:
    """Two roots with a set ``s`` of the same file names and different bytes."""
    ra, rb = tmp_path / "ra", tmp_path / "rb"
    for i in range(files):
        unique_png(ra / "s" / f"{i:02}.png", i)
        unique_png(rb / "s" / f"{i:02}.png", 1000 + i)
    return ra, rb


def _digest(root: Path) -> str:
    return content_digest([(p.name, md5_of(p)) for p in (root / "s").iterdir()])


def test_two_runs_of_different_content_at_once_leave_exactly_one_owner(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """The repro of the issue, as two real processes, ROUNDS times (each round a new version): exactly one
    exits 0, the other exits 1 naming the set and the reason, and the set's row, blobs and download are
    all the winner's."""
    ra, rb = _roots(tmp_path)
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "CORPUS_NAME": corpus_name}
    winners: dict[str, Path] = {}
    for rnd in range(ROUNDS):
        version = f"v{rnd}"
        cmds = [
            [
                sys.executable,
                "-m",
                "corpus_manager.cli",
                "upload",
                str(root),
                "--version",
                version,
                "--max-parallel-uploads",
                "1",
            ]
            for root in (ra, rb)
        ]
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = [r[0] for r in results]
        assert sorted(codes) == [0, 1], f"round {rnd}: exit codes {codes}: {results}"
        winner, loser = (ra, results[1]) if codes[0] == 0 else (rb, results[0])
        said = loser[1] + loser[2]
        # refused while the winner uploads, or after it completed the set
        assert f"s@{version}" in said and (
            "another run with different content" in said or "is complete and its local content differs" in said
        ), said
        winners[version] = winner
        stored = {n: b for n, b in blobs(conn, corpus_name).items() if n.startswith(f"original/s/{version}/")}
        want = {f"original/s/{version}/{p.name}": md5_of(p) for p in (winner / "s").iterdir()}
        assert {n: b["md5"] for n, b in stored.items()} == want, f"round {rnd}: blobs are not the winner's"
        (row,) = [r for r in rows(conn, corpus_name) if r["Version"] == version]
        assert row["Status"] == "complete" and row["ContentDigest"] == _digest(winner)
    out = tmp_path / "out"

    async def download() -> Any:
        async with Corpus(corpus_name, connection_string=conn) as c:
            return await c.download(str(out))

    assert asyncio.run(download()).exit_code == 0
    for version, winner in winners.items():
        for p in (winner / "s").iterdir():
            assert (out / "original" / "s" / version / p.name).read_bytes() == p.read_bytes(), (version, p.name)
    print("winners:", {v: w.name for v, w in winners.items()})


def _leave_claim(conn: str, corpus: str, root: Path, *, age: datetime.timedelta) -> None:
    """The state another run leaves: a pending row claiming ``root``'s content, renewed ``age`` ago, and
    two of its blobs: one under a name this run also has (other bytes), one this run does not have."""

    async def fn(storage: Storage) -> None:
        await storage.ensure()
        ident = SetIdentity("s", "v1")
        entity = ImageSet(ident, tags=["s"]).to_entity()
        renewed = datetime.datetime.now(datetime.UTC) - age
        entity.update(Writer="0123456789abcdef" * 2, Claim=_digest(root), Renewed=renewed.isoformat())
        await storage.create_entity(storage.sets, entity)
        for name in ("00.png", "gone.png"):
            data = (root / "s" / "00.png").read_bytes()
            await storage.put_blob(
                ident.blob_name(name), data, content_type=CONTENT_TYPES["png"], md5=hashlib.md5(data).digest()
            )

    with_storage(conn, corpus, fn)


def _upload(conn: str, corpus: str, root: Path, **kw: Any) -> Any:
    async def run() -> Any:
        async with Corpus(corpus, connection_string=conn) as c:
            return await c.upload(str(root), "v1", **kw)

    return asyncio.run(run())


def test_a_live_claim_of_other_content_is_refused_and_its_blobs_are_left_alone(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    ra, rb = _roots(tmp_path)
    _leave_claim(conn, corpus_name, rb, age=datetime.timedelta(seconds=5))
    before_blobs, before_rows = blobs(conn, corpus_name), rows(conn, corpus_name)
    report = _upload(conn, corpus_name, ra)
    assert report.exit_code == 1 and report.sets_refused == 1 and report.files_uploaded == 0
    (failure,) = report.failures
    assert failure.kind == "refused" and failure.item.endswith("s")
    assert "set s@v1 is being uploaded by another run with different content (run 01234567" in failure.reason
    assert blobs(conn, corpus_name) == before_blobs and rows(conn, corpus_name) == before_rows


def test_a_dead_runs_claim_of_other_content_is_taken_over_after_its_lease(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    ra, rb = _roots(tmp_path)
    _leave_claim(conn, corpus_name, rb, age=datetime.timedelta(seconds=lifecycle.LEASE_SECONDS + 5))
    report = _upload(conn, corpus_name, ra)
    assert report.ok and report.sets_uploaded == 1, report.failures
    assert report.files_uploaded == 6  # 00.png too: the blob of that name held the other run's bytes
    want = {f"original/s/v1/{p.name}": md5_of(p) for p in (ra / "s").iterdir()}
    assert {n: b["md5"] for n, b in blobs(conn, corpus_name).items()} == want  # gone.png removed
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "complete" and row["ContentDigest"] == _digest(ra)


def test_an_interrupted_runs_claim_of_the_same_content_is_finished_at_once(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """A rerun after a crash: the claim is fresh, but it is this content's, so the rerun goes on."""
    ra, _ = _roots(tmp_path)
    _leave_claim(conn, corpus_name, ra, age=datetime.timedelta(seconds=1))
    report = _upload(conn, corpus_name, ra)
    assert report.ok and report.files_already_stored == 1 and report.files_uploaded == 5
    assert "original/s/v1/gone.png" not in blobs(conn, corpus_name)
    assert rows(conn, corpus_name)[0]["Status"] == "complete"


def test_a_run_that_lost_its_claim_writes_no_more_and_cannot_complete(
    conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run takes the set over after this run's first blob (as it may once this run's claim has
    gone unrenewed for the lease: this run frozen, or cut off from storage). Lease 0 here, so this run
    renews its claim before every write, and so learns at its next write that the claim is gone."""
    monkeypatch.setattr(lifecycle, "LEASE_SECONDS", 0.0)
    ra, rb = _roots(tmp_path)

    async def take_over(storage: Storage) -> None:
        ident = SetIdentity("s", "v1")
        row = await storage.get_entity(storage.sets, ident.partition_key, ident.row_key)
        assert row is not None and row["Claim"] == _digest(ra)
        await storage.update_entity(
            storage.sets,
            {
                "PartitionKey": ident.partition_key,
                "RowKey": ident.row_key,
                "Writer": "f" * 32,
                "Claim": _digest(rb),
                "Renewed": datetime.datetime.now(datetime.UTC).isoformat(),
            },
            etag=None,
        )

    class TakenOverAfterFirst(NullProgress):
        done = False

        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            if not self.done:  # the other run's takeover, made from a thread while this run waits
                self.done = True
                t = threading.Thread(target=with_storage, args=(conn, corpus_name, take_over))
                t.start()
                t.join()

    report = _upload(conn, corpus_name, ra, max_parallel_uploads=1, progress=TakenOverAfterFirst())
    assert report.exit_code == 1 and report.sets_failed == 1
    (failure,) = report.failures
    assert "set s@v1 was taken over by another run while this one uploaded it" in failure.reason
    assert list(blobs(conn, corpus_name)) == ["original/s/v1/00.png"]  # nothing written after the takeover
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "pending" and row["Claim"] == _digest(rb)  # the taker's, untouched


def test_a_second_transform_run_of_the_same_version_is_refused_a_set_the_first_is_writing(
    conn: str, corpus_name: str, tmp_path: Path, pool: Executor
) -> None:
    """Two `corpus transform` runs of the same NAME@TV at once: the output set belongs to the run that
    claimed it (its run id is the claim). The second run, a real process started while the first is in
    the middle of the set, fails cleanly for that set (exit 1, named, refused) and writes nothing; the
    first then finishes the set with its own blobs."""
    for i in range(6):
        unique_png(tmp_path / "s" / f"{i:02}.png", i)
    assert _upload(conn, corpus_name, tmp_path).ok
    prefix = "transform/thumbs/1/s/v1/"
    second: dict[str, Any] = {}

    class SecondRunAfterFirstImage(NullProgress):
        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            if nbytes and not second:  # the first run has just stored its first output blob
                # from a thread (this one runs the first run's event loop, which waits meanwhile)
                t = threading.Thread(target=run_second)
                t.start()
                t.join()

    def run_second() -> None:
        before = blobs(conn, corpus_name)
        cmd = [sys.executable, "-m", "corpus_manager.cli", "transform", "thumbs", "--version", "1"]
        second["run"] = subprocess.run(
            [*cmd, "--op", "resize=8x8!", "--workers", "1"], capture_output=True, text=True, timeout=300
        )
        second["unchanged"] = blobs(conn, corpus_name) == before
        second["outputs"] = sorted(n for n in before if n.startswith(prefix))

    async def first() -> Any:
        async with Corpus(corpus_name, connection_string=conn) as c:
            return await c.transform("thumbs", "1", ops=["resize=8x8!"], pool=pool, progress=SecondRunAfterFirstImage())

    report = asyncio.run(first())
    done = second["run"]
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "s@v1 [thumbs@1]" in said and "another run of transform thumbs@1 is writing this output set" in said, said
    assert second["unchanged"], "the second run wrote to storage"
    assert len(second["outputs"]) >= 1
    assert report.ok and report.sets_transformed == 1 and report.images_transformed == 6, report.failures
    stored = {n: b for n, b in blobs(conn, corpus_name).items() if n.startswith(prefix)}
    assert len(stored) == 6
    (row,) = [r for r in rows(conn, corpus_name) if r["TransformName"]]
    assert row["Status"] == "complete" and row["ImageCount"] == 6
    assert row["ContentDigest"] == content_digest([(n[len(prefix) :], b["md5"]) for n, b in stored.items()])
