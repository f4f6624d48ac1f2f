"""Two `corpus upload` processes on the same root and version at once: one consistent result, no lost update.

The in-process version (two Corpus objects in one event loop) is
tests/test_upload.py::test_two_concurrent_uploads_of_one_root_make_one_consistent_set; here they are two
real processes, and the row writes they race on are shown to be conditional (ETag) writes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpus_manager.config import parse_connection_string
from corpus_manager.errors import Conflict
from corpus_manager.models import ImageSet, SetIdentity, content_digest
from corpus_manager.storage import Storage

from ..conftest import unique_png
from ..helpers import blobs, md5_of, rows


def test_two_upload_processes_at_once_make_one_consistent_corpus(conn: str, corpus_name: str, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for d in range(12):
        for i in range(8):
            unique_png(root / f"d{d:02}" / f"{i}.png", d * 100 + i)
    cmd = [
        sys.executable,
        "-m",
        "corpus_manager.cli",
        "upload",
        str(root),
        "--version",
        "v1",
        "--json",
        "--max-parallel-uploads",
        "4",
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    reports = []
    for code, out, err in results:
        assert code == 0, out[-3000:] + err[-2000:]
        reports.append(json.loads(out))
    # between them every file was stored; neither run saw a failure
    assert all(r["failures"] == [] for r in reports)
    stored = blobs(conn, corpus_name)
    assert len(stored) == 96
    for name, props in stored.items():
        assert props["md5"] == md5_of(root / name.split("/")[1] / name.split("/")[-1]), name
    sets = rows(conn, corpus_name)
    assert len(sets) == 12
    for row in sets:  # every row complete, with the digest of exactly its directory: nothing lost or mixed
        local = sorted((root / row["Path"]).iterdir())
        assert row["Status"] == "complete" and row["ImageCount"] == 8
        assert row["ContentDigest"] == content_digest([(p.name, md5_of(p)) for p in local])
    assert sorted(r["Path"] for r in rows(conn, corpus_name, "tags")) == sorted(r["Path"] for r in sets)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["sets"]["skipped"] == 12


def test_a_row_write_with_a_stale_etag_is_refused_not_lost(conn: str, corpus_name: str) -> None:
    """The mechanism: a run completes a set only if its row is still the one it read."""

    async def go() -> None:
        async with Storage(parse_connection_string(conn), corpus_name) as storage:
            await storage.ensure()
            ident = SetIdentity("s", "v1")
            first = await storage.create_entity(storage.sets, ImageSet(ident, tags=["s"]).to_entity())
            # run A completes the set from the row it read
            done = ImageSet(ident, tags=["s"], status="complete", image_count=8, content_digest="a" * 64)
            await storage.update_entity(storage.sets, done.to_entity(), etag=first)
            # run B, which read the row before A wrote, tries to write its own (stale) view
            stale = ImageSet(ident, tags=["s"], status="pending")
            with pytest.raises(Conflict):
                await storage.update_entity(storage.sets, stale.to_entity(), etag=first)
            row = await storage.get_entity(storage.sets, ident.partition_key, ident.row_key)
            assert row is not None and row["Status"] == "complete" and row["ImageCount"] == 8

    asyncio.run(go())
