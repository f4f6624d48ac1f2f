"""Group-committed table writes (rowcommit.GroupCommit) on a real Azurite: a run's sets (an upload's,
a transform's outputs) write their rows through one GroupCommit and their tag rows through one
TagIndexWriter (lifecycle.RunWriters), so sets finishing together share their transactions."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from corpus_manager.lifecycle import RunWriters
from corpus_manager.models import COMPLETE, ImageSet, SetIdentity
from corpus_manager.storage import Storage
from corpus_manager.throttle import ThrottleWork

from .helpers import rows, with_storage
from .test_tagindex import count_tag_writes


def count_transactions(storage: Storage) -> dict[tuple[str, str], list[int]]:
    """Instrument (not replace) the storage's transactions: (table, partition) -> rows per request."""
    calls: dict[tuple[str, str], list[int]] = defaultdict(list)
    real = storage.write_rows

    async def write_rows(table: Any, writes: Any) -> list[str | None]:
        calls[(table.table_name, writes[0][1]["PartitionKey"])].append(len(writes))
        return await real(table, writes)

    storage.write_rows = write_rows  # type: ignore[method-assign]
    return calls


def test_sets_indexed_together_share_their_tag_transactions(conn: str, corpus_name: str) -> None:
    sets = [
        ImageSet(
            SetIdentity(f"shared/d{i}", "v1", "thumbs", "1"),
            tags=["shared", f"d{i}"],
            status=COMPLETE,
            image_count=1,
            total_bytes=10,
            content_digest="d",
        )
        for i in range(5)
    ]

    async def go(storage: Storage) -> tuple[dict[tuple[str, str], list[int]], dict[str, list[int]]]:
        await storage.ensure(container=False)
        calls, tag_calls = count_transactions(storage), count_tag_writes(storage)
        # as a transform's output sets finishing together do (transformjob.TransformJob.run_set)
        writers = RunWriters(storage, ThrottleWork(5))
        try:
            await asyncio.gather(*(writers.rows.create(s.to_entity()) for s in sets))
            await asyncio.gather(*(writers.tags.add(s) for s in sets))
            assert await writers.flush() == []
        finally:
            writers.close()
        return calls, tag_calls

    calls, tag_calls = with_storage(conn, corpus_name, go)
    # the five rows: one entity group transaction, not five requests; the five rows of tag "shared" too
    assert calls[(f"{corpus_name}ImageSets", "transform|thumbs|1")][0] == 5
    assert tag_calls["shared"] == [5]
    tags = rows(conn, corpus_name, "tags")
    assert sorted(r["PartitionKey"] for r in tags) == ["d0", "d1", "d2", "d3", "d4"] + ["shared"] * 5
    assert all(s.indexed for s in sets)
    assert [r["Indexed"] for r in rows(conn, corpus_name)] == [True] * 5
