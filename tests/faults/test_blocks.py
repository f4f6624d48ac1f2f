"""Big files through a flaky network: each Put Block and the Put Block List is retried on its own."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from corpus_manager import Corpus
from corpus_manager import storage as storage_module

from ..conftest import ACCOUNT, KEY, Azurite
from ..helpers import blobs, rows
from ..test_bigfiles import MiB, big_png, md5_file
from .proxy import FaultPlan, faulty_storage

# With one request at a time the seeded faults fall on the same requests in every run; this seed hits
# a dozen Put Blocks and the Put Block List (another FAULT_SEED may miss the commit)
SEED = int(os.environ.get("FAULT_SEED", "4"))


def test_each_block_is_retried_and_the_big_file_is_stored_whole(
    azurite: Azurite, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "BLOCK_THRESHOLD", 1 * MiB)
    monkeypatch.setattr(storage_module, "BLOCK_SIZE", 256 * 1024)
    # one request at a time (see SEED)
    monkeypatch.setattr(storage_module, "BLOCKS_IN_FLIGHT", 1)
    big = big_png(tmp_path / "scans" / "s" / "big.png", 10 * MiB, seed=7)
    plan = FaultPlan(SEED, rate=0.25, kinds=("500", "503", "reset", "lost"))
    with faulty_storage(azurite.blob_port, azurite.table_port, plan, ACCOUNT, KEY) as proxy:
        proxy.table.plan = FaultPlan(SEED, rate=0.0)  # faults on blob requests only: the blocks' path

        async def run():  # type: ignore[no-untyped-def]
            async with Corpus(corpus_name, connection_string=proxy.connection_string) as c:
                return await c.upload(str(tmp_path / "scans"), "v1", max_parallel_uploads=1), c.storage.stats

        report, stats = asyncio.run(run())
        log = list(proxy.blob.log)
    assert report.ok, report.failures
    block_faults = [line for _kind, line in log if "comp=block&" in line]
    commit_faults = [line for _kind, line in log if "comp=blocklist" in line]
    assert len(block_faults) >= 3 and len(commit_faults) >= 1, log  # several blocks and the commit needed retries...
    # ...and every fault was retried (a table connection left idle through the upload may also be
    # dropped by the proxy, whose upstream Azurite closes idle connections after 5 s, and retried)
    assert stats.retries >= len(log)
    print(f"{len(block_faults)} Put Block and {len(commit_faults)} Put Block List faults, all retried")
    assert (stats.block_puts, stats.block_lists) == (40, 1)  # each block once: a retry is not a new block
    stored = blobs(azurite.connection_string, corpus_name)["original/s/v1/big.png"]
    assert stored["md5"] == md5_file(big) and stored["size"] == big.stat().st_size
    (row,) = rows(azurite.connection_string, corpus_name)
    assert row["Status"] == "complete"
