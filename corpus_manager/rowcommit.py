"""Group commit of table writes: many callers' row writes, few requests.

While one request of a partition is in flight, the writes to that partition that arrive queue up and
go together as the next entity group transaction (at most 100 rows of one partition, each row once).
Nothing waits for a timer: a lone write goes at once, and a burst (a hundred small sets completing
together) costs a few requests instead of one each. The rows of original sets share one partition
(``original``), those of one transform version another, and tag rows one per tag.

Each write keeps its meaning for its caller: a create raises Conflict when its row exists, a
conditional update raises Conflict when its row changed since its ETag, and each caller gets the
ETag of its own row. A transaction refused for one of its writes (whatever the reason: an existing
row, a changed ETag, a value the table cannot store) stores none of them and is replayed one request
per write, so one bad write never fails the others queued with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import AuthenticationFailed, StorageUnavailable
from .storage import TAG_BATCH, Storage
from .throttle import ThrottleWork

if TYPE_CHECKING:
    from .storage import Table


@dataclass
class RowWrite:
    """One caller's write, queued for its partition's next request."""

    kind: Literal["create", "update", "upsert"]  # update: a merge; upsert: insert-or-replace
    entity: dict[str, Any]
    etag: str | None  # an update's condition (None: the row must exist)
    done: asyncio.Future[str | None]  # the caller's: the row's new ETag, or the write's error


class GroupCommit:
    """The writes of one run to one table (ImageSets by default), group-committed per partition."""

    def __init__(self, storage: Storage, upserts: ThrottleWork, table: Table | None = None) -> None:
        self.storage = storage
        self.upserts = upserts  # every request goes through the run's table-write limit
        self.table = table if table is not None else storage.sets
        self._queues: dict[str, list[RowWrite]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

    async def create(self, entity: dict[str, Any]) -> str | None:
        return await self._write("create", entity, None)

    async def update(self, entity: dict[str, Any], etag: str | None) -> str | None:
        """A merge, conditional on ``etag`` when given (else the row must exist)."""
        return await self._write("update", entity, etag)

    async def upsert(self, entity: dict[str, Any]) -> str | None:
        """Insert or replace."""
        return await self._write("upsert", entity, None)

    async def _write(
        self, kind: Literal["create", "update", "upsert"], entity: dict[str, Any], etag: str | None
    ) -> str | None:
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        pk = entity["PartitionKey"]
        self._queues.setdefault(pk, []).append(RowWrite(kind, entity, etag, done))
        flusher = self._flushers.get(pk)
        if flusher is None or flusher.done():
            self._flushers[pk] = asyncio.create_task(self._flush(pk))
        return await done

    def close(self) -> None:
        for flusher in self._flushers.values():
            if not flusher.done():
                flusher.cancel()

    def _take(self, pk: str) -> list[RowWrite]:
        # each row once, at most TAG_BATCH: what a transaction accepts
        batch: list[RowWrite] = []
        rest: list[RowWrite] = []
        rows: set[str] = set()
        for item in self._queues.get(pk, []):
            if item.done.done():
                continue  # its caller was cancelled
            if len(batch) < TAG_BATCH and item.entity["RowKey"] not in rows:
                batch.append(item)
                rows.add(item.entity["RowKey"])
            else:
                rest.append(item)
        self._queues[pk] = rest
        return batch

    async def _flush(self, pk: str) -> None:
        batch: list[RowWrite] = []
        try:
            while self._queues.get(pk):
                batch = self._take(pk)
                if len(batch) > 1:
                    await self._transaction(batch)
                elif batch:
                    await self._one(batch[0])
                batch = []
        finally:
            for item in batch + self._queues.pop(pk, []):  # the flusher was cancelled: so are its waiters
                if not item.done.done():
                    item.done.cancel()

    async def _transaction(self, batch: list[RowWrite]) -> None:
        storage, table = self.storage, self.table
        writes = [(item.kind, item.entity, item.etag) for item in batch]
        try:
            etags = await self.upserts.run(lambda: storage.write_rows(table, writes))
        except (StorageUnavailable, AuthenticationFailed) as exc:
            for item in batch:  # every write would fail alike: no replay
                if not item.done.done():
                    item.done.set_exception(exc)
        except Exception:
            # one write was refused and the transaction stored none: each again on its own, so only
            # the bad one fails and its caller gets its own error
            await asyncio.gather(*(self._one(item) for item in batch))
        else:
            for item, etag in zip(batch, etags, strict=True):
                if not item.done.done():
                    item.done.set_result(etag)

    async def _one(self, item: RowWrite) -> None:
        kind, entity, etag, done = item.kind, item.entity, item.etag, item.done
        storage, table = self.storage, self.table
        try:
            if kind == "create":
                result = await self.upserts.run(lambda: storage.create_entity(table, entity))
            elif kind == "upsert":
                result = await self.upserts.run(lambda: storage.upsert_entity(table, entity, merge=False))
            else:
                result = await self.upserts.run(lambda: storage.update_entity(table, entity, etag=etag))
        except Exception as exc:  # handed to the caller, as if it had made the call itself
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(result)
