"""Big files (issue 11.2): above the block threshold a file goes up as blocks (Put Block with each
block's Content-MD5, then Put Block List with the whole file's), read from disk a block at a time, and
comes down in chunks: memory stays bounded whatever the file's size."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from corpus_manager import Corpus
from corpus_manager import hashing as hashing_module
from corpus_manager import storage as storage_module
from corpus_manager.results import NullProgress
from corpus_manager.storage import Storage, block_id

from .conftest import ROOT, image_bytes, write_image
from .helpers import blobs, rows, with_storage

MiB = 1 << 20


def big_png(path: Path, size: int, *, sparse: bool = False, seed: int = 0) -> Path:
    """A valid PNG of exactly ``size`` bytes: a real image with a private ancillary chunk (which decoders
    skip) grown to fill it, of seeded random bytes, or of zeros left as a hole when ``sparse`` (a file of
    hundreds of MB that costs no disk and no time to write)."""
    base = image_bytes("png", "16x16", "red")
    head, iend = base[:-12], base[-12:]
    pad = size - len(head) - len(iend) - 12
    path.parent.mkdir(parents=True, exist_ok=True)
    crc = zlib.crc32(b"beNc")
    with open(path, "wb") as fh:
        fh.write(head + struct.pack(">I", pad) + b"beNc")
        if sparse:
            zero = bytes(MiB)
            for _ in range(pad // MiB):
                crc = zlib.crc32(zero, crc)
            crc = zlib.crc32(bytes(pad % MiB), crc)
            fh.seek(pad, os.SEEK_CUR)
        else:
            payload = random.Random(seed).randbytes(pad)
            crc = zlib.crc32(payload, crc)
            fh.write(payload)
        fh.write(struct.pack(">I", crc) + iend)
    assert path.stat().st_size == size
    return path


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def block_list(conn: str, corpus: str, name: str) -> tuple[list[Any], list[Any]]:
    """(committed, uncommitted) blocks of a blob, from the service."""

    async def fn(storage: Storage) -> tuple[list[Any], list[Any]]:
        committed, uncommitted = await storage.container.get_blob_client(name).get_block_list("all")
        return list(committed), list(uncommitted)

    return with_storage(conn, corpus, fn)


def upload(conn: str, corpus: str, root: Path, **kw: Any):  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with Corpus(corpus, connection_string=conn) as c:
            report = await c.upload(str(root), "v1", **kw)
            return report, c.storage.stats

    return asyncio.run(run())


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Block threshold 2 MiB, blocks of 512 KiB: the block path on files of a few MB."""
    monkeypatch.setattr(storage_module, "BLOCK_THRESHOLD", 2 * MiB)
    monkeypatch.setattr(storage_module, "BLOCK_SIZE", 512 * 1024)
    return 512 * 1024


def test_a_file_above_the_threshold_is_stored_in_blocks_with_its_md5_and_round_trips(
    conn: str, corpus_name: str, tmp_path: Path, small_blocks: int
) -> None:
    root = tmp_path / "scans"
    big = big_png(root / "s" / "big.png", 5 * MiB + 12345, seed=1)
    mid = big_png(root / "s" / "mid.png", 3 * MiB // 2, seed=4)  # hashed in pieces, not kept, sent whole
    small = write_image(root / "s" / "small.png")
    report, stats = upload(conn, corpus_name, root)
    assert report.ok and report.files_uploaded == 3, report.failures
    blocks = math.ceil(big.stat().st_size / small_blocks)
    # the big file took the block path, the others a single Put Blob each
    assert (stats.block_puts, stats.block_lists, stats.blob_puts) == (blocks, 1, 2)
    stored = blobs(conn, corpus_name)
    assert stored["original/s/v1/big.png"] == {
        "size": big.stat().st_size,
        "md5": md5_file(big),
        "content_type": "image/png",
    }
    assert stored["original/s/v1/mid.png"]["md5"] == md5_file(mid)
    assert stored["original/s/v1/small.png"]["md5"] == md5_file(small)
    committed, uncommitted = block_list(conn, corpus_name, "original/s/v1/big.png")
    assert uncommitted == []
    assert [b.size for b in committed] == [small_blocks] * (blocks - 1) + [big.stat().st_size % small_blocks]
    ids = {b.id for b in committed}
    assert len(ids) == blocks and len({len(i) for i in ids}) == 1  # distinct, one length
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "complete" and row["TotalBytes"] == sum(p.stat().st_size for p in (big, mid, small))

    async def down() -> Any:
        async with Corpus(corpus_name, connection_string=conn) as c:
            return await c.download(str(tmp_path / "out"))

    assert asyncio.run(down()).exit_code == 0
    for local in (big, mid, small):
        assert (tmp_path / "out" / "original/s/v1" / local.name).read_bytes() == local.read_bytes()
    # a rerun stores nothing again
    report, stats = upload(conn, corpus_name, root)
    assert report.sets_skipped == 1 and (stats.block_puts, stats.blob_puts) == (0, 0)


def test_an_interrupted_sets_big_file_already_stored_is_not_sent_again(
    conn: str, corpus_name: str, tmp_path: Path, small_blocks: int
) -> None:
    """A rerun of an interrupted set compares the big blob's Content-MD5 (set by Put Block List) and skips it."""
    root = tmp_path / "scans"
    big_png(root / "s" / "a.png", 3 * MiB, seed=2)
    write_image(root / "s" / "b.png")

    class StopAfterFirst(NullProgress):
        def __init__(self, task: asyncio.Task[object]) -> None:
            self.task = task

        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            self.task.cancel()  # an interruption (as Ctrl-C would do) once a.png, the first, is stored

    async def interrupted() -> None:
        async with Corpus(corpus_name, connection_string=conn) as c:
            task = asyncio.current_task()
            assert task is not None
            await c.upload(str(root), "v1", max_parallel_uploads=1, progress=StopAfterFirst(task))

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(interrupted())
    assert list(blobs(conn, corpus_name)) == ["original/s/v1/a.png"]
    report, stats = upload(conn, corpus_name, root)
    assert report.ok and report.files_already_stored == 1 and report.files_uploaded == 1
    assert (stats.block_puts, stats.blob_puts) == (0, 1)


def test_a_block_whose_bytes_changed_since_hashing_fails_the_file_and_commits_nothing(
    conn: str, corpus_name: str, tmp_path: Path, small_blocks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each block carries the MD5 from the hashing pass and the service checks it: a file changed between
    hashing and upload (simulated here by a wrong MD5 for its third block: the file cannot be made to change
    at that exact moment) fails by name and no blob is committed under its name."""
    root = tmp_path / "scans"
    big_png(root / "s" / "big.png", 3 * MiB, seed=3)
    write_image(root / "s" / "ok.png")
    real = hashing_module._hash_blocks

    def changed(f: Any, block_size: int, **kw: Any) -> Any:
        res = real(f, block_size, **kw)
        if res.blocks is not None:
            res.blocks[2] = hashlib.md5(b"other bytes").digest()
        return res

    monkeypatch.setattr(hashing_module, "_hash_blocks", changed)
    report, stats = upload(conn, corpus_name, root)
    assert report.files_failed == 1 and report.files_uploaded == 1
    (failure,) = report.failures
    assert failure.item.endswith("big.png")
    assert "original/s/v1/big.png (block 3 of 6)" in failure.reason and "Md5Mismatch" in failure.reason
    assert stats.block_lists == 0 and list(blobs(conn, corpus_name)) == ["original/s/v1/ok.png"]
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "pending"


def test_block_ids_are_one_length_and_distinct_per_run() -> None:
    ids = [block_id("a" * 32, i) for i in (0, 1, 49_999)] + [block_id("b" * 32, 0), block_id("", 7)]
    assert len(set(ids)) == len(ids) and {len(i) for i in ids} == {24}


# ----- at the real threshold: memory ---------------------------------------------------------------
BIG = 600 * MiB
RSS_BOUND_MB = 300  # far below the file: a whole-file read alone would be 600 MB


def _measured(cmd: list[str], env: dict[str, str], where: Path) -> tuple[int, float, str, str]:
    """Run ``cmd`` under bench/launch.py (a launcher whose own memory is a few MB: see there why a child's
    peak RSS must not be measured from this process); returns (exit code, peak RSS in MB, stdout, stderr)."""
    result = where / "rusage.json"
    proc = subprocess.run(
        [sys.executable, "-S", "-I", str(ROOT / "bench" / "launch.py"), str(result), "--", *cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    usage = json.loads(result.read_text())
    return usage["returncode"], usage["maxrss_kb"] / 1024, proc.stdout, proc.stderr


def test_a_600_mb_image_goes_up_and_down_with_bounded_memory(conn: str, corpus_name: str, tmp_path: Path) -> None:
    root = tmp_path / "scans"
    big = big_png(root / "slide" / "scan.png", BIG, sparse=True)
    local_md5 = md5_file(big)
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "CORPUS_NAME": corpus_name}
    cli = [sys.executable, "-m", "corpus_manager.cli"]
    code, rss, out, err = _measured([*cli, "upload", str(root), "--version", "v1", "--json"], env, tmp_path)
    assert code == 0, err[-2000:]
    assert json.loads(out)["files"]["uploaded"] == 1
    print(f"upload of {BIG // MiB} MB: peak RSS {rss:.0f} MB")
    assert rss < RSS_BOUND_MB, f"upload of a {BIG // MiB} MB file peaked at {rss:.0f} MB"
    name = "original/slide/v1/scan.png"
    assert blobs(conn, corpus_name)[name] == {"size": BIG, "md5": local_md5, "content_type": "image/png"}
    committed, _ = block_list(conn, corpus_name, name)
    assert len(committed) == math.ceil(BIG / storage_module.BLOCK_SIZE)  # the block path, at the real sizes

    code, rss, out, err = _measured([*cli, "download", "--out", str(tmp_path / "out"), "--json"], env, tmp_path)
    assert code == 0, err[-2000:]
    print(f"download of {BIG // MiB} MB: peak RSS {rss:.0f} MB")
    assert rss < RSS_BOUND_MB, f"download of a {BIG // MiB} MB blob peaked at {rss:.0f} MB"
    assert md5_file(tmp_path / "out" / name) == local_md5
