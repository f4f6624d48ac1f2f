"""The switch to the SDK for every request (``CORPUS_STORAGE_SDK=1``, ``Storage(..., fast_path=False)``):
a whole round trip works through it, with no thin request sent, and stores what the fast path stores."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from pathlib import Path

import pytest

from corpus_manager import Corpus
from corpus_manager import storage as storage_module

from .conftest import unique_png
from .helpers import blobs, md5_of, rows

KIB = 1024


def test_upload_query_download_transform_with_every_request_through_the_sdk(
    conn: str,
    corpus_name: str,
    sample_tree: Path,
    tmp_path: Path,
    pool: Executor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(storage_module.SDK_ENV, "1")
    # one file above the block threshold: Put Block and Put Block List go through the SDK too
    monkeypatch.setattr(storage_module, "BLOCK_THRESHOLD", 64 * KIB)
    monkeypatch.setattr(storage_module, "BLOCK_SIZE", 32 * KIB)
    big = unique_png(sample_tree / "big" / "x.png", 1, size="256x256")
    assert big.stat().st_size > 64 * KIB
    out = tmp_path / "out"

    async def go() -> storage_module.StorageStats:
        async with Corpus(corpus_name, connection_string=conn) as c:
            assert c.storage.fast_path is False
            up = await c.upload(str(sample_tree), version="v1")
            assert up.ok and (up.files_uploaded, up.sets_uploaded) == (6, 5), up.failures
            found = await c.query(["robin"], version="v1")
            assert [(s.path, s.images) for s in found.sets] == [("red/angry/robin", 2)]
            dl = await c.download(str(out), ["robin"], originals=True)
            assert dl.files_downloaded == 2, dl.failures
            tr = await c.transform("thumbs", "1", ops=["resize=8x8!"], pool=pool)
            assert tr.ok and (tr.sets_transformed, tr.images_transformed) == (5, 6), tr.failures
            again = await c.query(["robin"], transform="thumbs@1")
            assert [s.path for s in again.sets] == ["red/angry/robin"]
            return c.storage.stats

    stats = asyncio.run(go())
    assert stats.thin_requests == 0, stats
    assert stats.block_lists == 1 and stats.block_puts == -(-big.stat().st_size // (32 * KIB)), stats
    assert stats.blob_puts == 5 + 6 and stats.entity_writes > 0 and stats.blob_gets >= 2, stats
    # what the SDK stored is what the fast path stores: Content-MD5 of every blob, complete rows
    stored = blobs(conn, corpus_name)
    for local in [*sample_tree.rglob("*.png"), *sample_tree.rglob("*.jpg"), *sample_tree.rglob("*.JPG")]:
        name = f"original/{local.parent.relative_to(sample_tree).as_posix()}/v1/{local.name}"
        assert stored[name]["md5"] == md5_of(local), name
    for downloaded in ("a.png", "b.jpg"):
        got = out / "original/red/angry/robin/v1" / downloaded
        assert md5_of(got) == md5_of(sample_tree / "red/angry/robin" / downloaded)
    assert all(r["Status"] == "complete" and r["Indexed"] for r in rows(conn, corpus_name))
