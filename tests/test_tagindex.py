"""The TagIndex on a real Azurite: rows batched across sets per partition, sets flagged only once their
rows are stored, never a pending set, and the upload path wired to the batching writer."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from corpus_manager import lifecycle
from corpus_manager.errors import StorageError
from corpus_manager.models import COMPLETE, PENDING, ImageSet, SetIdentity
from corpus_manager.storage import Storage
from corpus_manager.tagindex import TagIndexWriter
from corpus_manager.throttle import ThrottleWork

from .conftest import write_image
from .helpers import rows, run, with_storage


def count_tag_writes(storage: Storage, fail_partition: str | None = None) -> dict[str, list[int]]:
    """Instrument (not replace) the storage calls that write tag rows: partition -> rows per request.
    ``fail_partition``'s writes raise, as a storage failure would."""
    calls: dict[str, list[int]] = defaultdict(list)
    batch, single = storage.upsert_batch, storage.upsert_entity

    async def upsert_batch(table: Any, entities: list[dict[str, Any]]) -> None:
        if table is storage.tags:
            calls[entities[0]["PartitionKey"]].append(len(entities))
            if entities[0]["PartitionKey"] == fail_partition:
                raise StorageError("injected failure")
        await batch(table, entities)

    async def upsert_entity(table: Any, entity: dict[str, Any], **kw: Any) -> str | None:
        if table is storage.tags:
            calls[entity["PartitionKey"]].append(1)
            if entity["PartitionKey"] == fail_partition:
                raise StorageError("injected failure")
        return await single(table, entity, **kw)

    storage.upsert_batch = upsert_batch  # type: ignore[method-assign]
    storage.upsert_entity = upsert_entity  # type: ignore[method-assign]
    return calls


async def _complete_set(storage: Storage, path: str, tags: list[str]) -> ImageSet:
    image_set = ImageSet(
        SetIdentity(path, "v1"), tags=tags, status=COMPLETE, image_count=1, total_bytes=5, content_digest="d"
    )
    image_set.etag = await storage.create_entity(storage.sets, image_set.to_entity())
    return image_set


def test_rows_are_batched_across_sets_per_partition(conn: str, corpus_name: str) -> None:
    async def go(storage: Storage) -> tuple[dict[str, list[int]], list[Any]]:
        await storage.ensure()
        calls = count_tag_writes(storage)
        writer = TagIndexWriter(storage, ThrottleWork(16), max_rows=10_000, max_delay=float("inf"))
        sets = await asyncio.gather(
            *(_complete_set(storage, f"common/d{i:03d}", ["common", f"d{i:03d}"]) for i in range(120))
        )
        for image_set in sets:
            await writer.add(image_set)
        await writer.flush()
        return calls, writer.failures

    calls, failures = with_storage(conn, corpus_name, go)
    assert failures == []
    assert calls["common"] == [100, 20]  # two entity group transactions for 120 sets, not 120 requests
    assert all(calls[f"d{i:03d}"] == [1] for i in range(120))
    tag_rows = rows(conn, corpus_name, "tags")
    assert sum(1 for r in tag_rows if r["PartitionKey"] == "common") == 120
    assert all(r["Indexed"] is True for r in rows(conn, corpus_name))


def test_a_set_is_flagged_only_once_all_its_rows_are_stored(conn: str, corpus_name: str) -> None:
    async def go(storage: Storage) -> list[Any]:
        await storage.ensure()
        count_tag_writes(storage, fail_partition="broken")
        writer = TagIndexWriter(storage, ThrottleWork(5))
        await writer.add(await _complete_set(storage, "good", ["good"]))
        await writer.add(await _complete_set(storage, "bad", ["good", "broken"]))
        await writer.flush()
        return writer.failures

    failures = with_storage(conn, corpus_name, go)
    assert [(f.item, f.reason.split(";")[0]) for f in failures] == [
        ("bad@v1", "tag index write failed (injected failure)")
    ]
    assert "corpus status --repair" in failures[0].reason
    indexed = {r["Path"]: r["Indexed"] for r in rows(conn, corpus_name)}
    assert indexed == {"good": True, "bad": False}


def test_a_pending_set_is_never_indexed(conn: str, corpus_name: str) -> None:
    async def go(storage: Storage) -> None:
        await storage.ensure()
        pending = ImageSet(SetIdentity("wip", "v1"), tags=["wip"], status=PENDING)
        with pytest.raises(ValueError, match="not complete"):
            await TagIndexWriter(storage, ThrottleWork(1)).add(pending)

    with_storage(conn, corpus_name, go)
    assert rows(conn, corpus_name, "tags") == []


def test_tags_differing_only_in_case_make_one_row(conn: str, corpus_name: str) -> None:
    async def go(storage: Storage) -> None:
        await storage.ensure()
        writer = TagIndexWriter(storage, ThrottleWork(1))
        await writer.add(await _complete_set(storage, "x", ["Red", "red", "RED"]))
        await writer.flush()
        assert writer.failures == []

    with_storage(conn, corpus_name, go)
    ((pk, tags),) = [(r["PartitionKey"], json.loads(r["Tags"])) for r in rows(conn, corpus_name, "tags")]
    assert pk == "red" and tags == ["Red", "red", "RED"]


def test_upload_writes_shared_tags_in_batches(
    conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(105):
        write_image(tmp_path / "common" / f"d{i:03d}" / "x.png")
    # The upload's writer, with its time trigger off: a slow (loaded) run would otherwise flush the
    # buffer every max_delay seconds, and the number of requests would measure the machine's speed.
    monkeypatch.setattr(lifecycle, "TagIndexWriter", functools.partial(TagIndexWriter, max_delay=float("inf")))

    async def go(c: Any) -> tuple[Any, dict[str, list[int]]]:
        calls = count_tag_writes(c.storage)
        return await c.upload(str(tmp_path), "v1", max_parallel_upserts=20), calls

    report, calls = run(conn, corpus_name, go)
    assert report.ok and report.sets_uploaded == 105
    # batched, not one request per set: a full transaction of 100 rows, and the last 5 at the final flush
    assert sorted(calls["common"]) == [5, 100]
    assert sum(1 for r in rows(conn, corpus_name, "tags") if r["PartitionKey"] == "common") == 105
    assert all(r["Indexed"] is True and r["Status"] == "complete" for r in rows(conn, corpus_name))


def test_an_upload_rerun_indexes_a_complete_set_left_unindexed(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "red" / "robin" / "a.png")
    assert run(conn, corpus_name, lambda c: c.upload(str(tmp_path), "v1")).ok

    async def unindex(storage: Storage) -> None:
        # as if the run was killed after the set became complete and before its rows were written
        async for r in storage.query(storage.tags):
            await storage.delete_entity(storage.tags, r["PartitionKey"], r["RowKey"])
        await storage.update_entity(
            storage.sets, {"PartitionKey": "original", "RowKey": "red%2Frobin|v1", "Indexed": False}, etag=None
        )

    with_storage(conn, corpus_name, unindex)
    assert run(conn, corpus_name, lambda c: c.query(["robin"])).sets == []
    report = run(conn, corpus_name, lambda c: c.upload(str(tmp_path), "v1"))
    assert report.ok and report.files_uploaded == 0
    assert [s.path for s in run(conn, corpus_name, lambda c: c.query(["ROBIN"])).sets] == ["red/robin"]
    assert [r["Indexed"] for r in rows(conn, corpus_name)] == [True]
