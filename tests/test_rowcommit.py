"""Group-committed table writes (rowcommit.GroupCommit) on a real Azurite: the output sets of a
transform index through them, so sets finishing together share their transactions."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from corpus_manager.models import COMPLETE, ImageSet, SetIdentity
from corpus_manager.rowcommit import GroupCommit
from corpus_manager.storage import Storage
from corpus_manager.tagindex import index_set
from corpus_manager.throttle import ThrottleWork

from .helpers import rows, with_storage


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

    async def go(storage: Storage) -> dict[tuple[str, str], list[int]]:
        await storage.ensure(container=False)
        upserts = ThrottleWork(5)
        set_rows, tag_writer = GroupCommit(storage, upserts), GroupCommit(storage, upserts, storage.tags)
        await asyncio.gather(*(set_rows.create(s.to_entity()) for s in sets))
        calls = count_transactions(storage)
        # as a transform's output sets finishing together do (transform.SetJob.run_set)
        await asyncio.gather(*(index_set(storage, s, upserts, set_rows=set_rows, tag_writer=tag_writer) for s in sets))
        return calls

    calls = with_storage(conn, corpus_name, go)
    # the five rows of tag "shared": one entity group transaction, not five requests
    assert calls[(f"{corpus_name}TagIndex", "shared")] == [5]
    tags = rows(conn, corpus_name, "tags")
    assert sorted(r["PartitionKey"] for r in tags) == ["d0", "d1", "d2", "d3", "d4"] + ["shared"] * 5
    assert all(s.indexed for s in sets)
    assert [r["Indexed"] for r in rows(conn, corpus_name)] == [True] * 5
