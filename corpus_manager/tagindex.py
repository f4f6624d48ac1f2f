"""The TagIndex table: one row per (case-folded tag, complete set), kept with the set lifecycle.

``TagIndexWriter`` is the one writer of tag rows: each run has one (lifecycle.RunWriters), as has
``corpus status --repair``.

Rows are written only after a set's row is ``complete``; the set's ``Indexed`` flag is set after
them, so a run killed in between leaves a complete, unindexed set that the next upload (or
``corpus status --repair``) indexes. Nothing ever indexes a pending set.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from .errors import Conflict, CorpusError
from .models import ImageSet, tag_rows
from .results import Failure
from .storage import TAG_BATCH, Storage
from .throttle import ThrottleWork

# a conditional merge of one ImageSets row: (entity, ETag or None) -> its new ETag
SetUpdate = Callable[[dict[str, Any], str | None], Awaitable[str | None]]
REPAIR_HINT = (
    "the set is complete but not found by tag until `corpus status --repair` (or the same upload rerun) indexes it"
)


class TagIndexWriter:
    """Tag rows of many completed sets, batched across sets per partition.

    A tag shared by many sets (``red`` over a thousand directories) costs one entity group
    transaction per 100 sets instead of one request per set. Rows wait in a buffer until a partition
    holds ``TAG_BATCH`` of them, the buffer holds ``max_rows``, ``max_delay`` seconds pass, or
    ``flush()``; a set is flagged ``Indexed`` only once every one of its rows is stored, so a run
    killed with rows still buffered leaves complete, unindexed sets for the next run to index.
    Failures are collected per set (never raised), named with the way to finish the job.
    """

    def __init__(
        self,
        storage: Storage,
        upserts: ThrottleWork,
        *,
        max_rows: int = 2000,
        max_delay: float = 2.0,
        update_set: SetUpdate | None = None,
    ) -> None:
        self.storage = storage
        self.upserts = upserts
        # how the Indexed flags are written: the run's group-committed set rows when given (the flags
        # of the sets a flush completes then share transactions), else one request each
        self.update_set = update_set
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.failures: list[Failure] = []
        self.indexed: list[ImageSet] = []
        self._buffer: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # partition -> RowKey -> row
        self._buffered = 0
        self._oldest: float | None = None
        # All of a set's tag rows share one RowKey (the set's key): it names the set here.
        self._waiting: dict[str, tuple[ImageSet, int]] = {}
        self._failed: set[str] = set()

    async def add(self, image_set: ImageSet) -> None:
        if not image_set.is_complete:
            raise ValueError(f"set {image_set.identity} is not complete; it must not be indexed")
        rows = {row["PartitionKey"]: row for row in tag_rows(image_set)}  # "Red" and "red": one row
        if not rows:
            await self._flag(image_set)  # no tags (the root set): nothing to write but the flag
            return
        rk = next(iter(rows.values()))["RowKey"]
        if rk in self._waiting:
            return
        self._waiting[rk] = (image_set, len(rows))
        full: list[tuple[str, list[dict[str, Any]]]] = []
        for pk, row in rows.items():
            part = self._buffer[pk]
            part[rk] = row
            self._buffered += 1
            if len(part) >= TAG_BATCH:
                full.append((pk, self._take(pk)))
        if self._oldest is None:
            self._oldest = time.monotonic()
        if self._buffered >= self.max_rows or time.monotonic() - self._oldest >= self.max_delay:
            full += self._take_all()
        if full:
            await asyncio.gather(*(self._write(pk, chunk) for pk, chunk in full))

    async def flush(self) -> None:
        """Write every buffered row and flag the sets they complete."""
        batches = self._take_all()
        await asyncio.gather(*(self._write(pk, chunk) for pk, chunk in batches))

    def _take(self, pk: str) -> list[dict[str, Any]]:
        # taken synchronously, so two concurrent adds never write the same rows
        rows = list(self._buffer.pop(pk).values())
        self._buffered -= len(rows)
        if not self._buffered:
            self._oldest = None
        return rows

    def _take_all(self) -> list[tuple[str, list[dict[str, Any]]]]:
        return [(pk, self._take(pk)) for pk in list(self._buffer)]

    async def _write(self, pk: str, rows: list[dict[str, Any]]) -> None:
        try:
            if len(rows) == 1:
                await self.upserts.run(lambda: self.storage.upsert_entity(self.storage.tags, rows[0], merge=False))
            else:
                await self.upserts.run(lambda: self.storage.upsert_batch(self.storage.tags, rows))
        except CorpusError as exc:
            for row in rows:
                self._fail(row["RowKey"], f"tag index write failed ({exc})")
            return
        ready: list[ImageSet] = []
        for row in rows:
            rk = row["RowKey"]
            if rk in self._failed or rk not in self._waiting:
                continue
            image_set, left = self._waiting[rk]
            if left > 1:
                self._waiting[rk] = (image_set, left - 1)
            else:
                del self._waiting[rk]
                ready.append(image_set)
        await asyncio.gather(*(self._flag(s) for s in ready))

    async def _flag(self, image_set: ImageSet) -> None:
        ident = image_set.identity
        flag = {"PartitionKey": ident.partition_key, "RowKey": ident.row_key, "Indexed": True}
        etag = image_set.etag
        try:
            for _attempt in range(3):
                try:
                    if self.update_set is not None:
                        image_set.etag = await self.update_set(flag, etag)
                    else:
                        image_set.etag = await self.upserts.run(
                            partial(self.storage.update_entity, self.storage.sets, flag, etag=etag)
                        )
                    break
                except Conflict:
                    # another run touched the row meanwhile (e.g. completed the same set): our rows still
                    # describe it if it is the same complete content
                    entity = await self.upserts.run(
                        lambda: self.storage.get_entity(self.storage.sets, ident.partition_key, ident.row_key)
                    )
                    current = ImageSet.from_entity(entity) if entity is not None else None
                    if current is None or not current.is_complete or current.content_digest != image_set.content_digest:
                        raise Conflict("the set's row changed meanwhile") from None
                    if current.indexed:
                        break
                    etag = current.etag
            else:
                raise Conflict("the set's row kept changing under concurrent runs")
        except CorpusError as exc:
            self.failures.append(Failure(str(ident), f"tag index flag not set ({exc}); {REPAIR_HINT}"))
            return
        image_set.indexed = True
        self.indexed.append(image_set)

    def _fail(self, rk: str, reason: str) -> None:
        if rk in self._failed:
            return
        self._failed.add(rk)
        entry = self._waiting.pop(rk, None)
        label = str(entry[0].identity) if entry else rk
        self.failures.append(Failure(label, f"{reason}; {REPAIR_HINT}"))
