"""The TagIndex table: one row per (case-folded tag, complete set), kept with the set lifecycle.

Rows are written only after a set's row is ``complete``; the set's ``Indexed`` flag is set after
them, so a run killed in between leaves a complete, unindexed set that the next upload (or
``corpus status --repair``) indexes. Nothing ever indexes a pending set.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .models import ImageSet, tag_rows
from .storage import Storage
from .throttle import ThrottleWork


async def write_tag_rows(storage: Storage, rows: list[dict[str, Any]], upserts: ThrottleWork) -> None:
    """Batch rows per partition (entity group transactions of at most 100)."""
    by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_partition[row["PartitionKey"]].append(row)
    for chunk in by_partition.values():
        if len(chunk) == 1:
            await upserts.run(lambda c=chunk: storage.upsert_entity(storage.tags, c[0], merge=False))
        else:
            await upserts.run(lambda c=chunk: storage.upsert_batch(storage.tags, c))


async def index_set(storage: Storage, image_set: ImageSet, upserts: ThrottleWork) -> None:
    """Write the set's tag rows, then flag it indexed (conditional on its ETag when known)."""
    if not image_set.is_complete:
        raise ValueError(f"set {image_set.identity} is not complete; it must not be indexed")
    await write_tag_rows(storage, tag_rows(image_set), upserts)
    ident = image_set.identity
    flag = {"PartitionKey": ident.partition_key, "RowKey": ident.row_key, "Indexed": True}
    image_set.etag = await upserts.run(
        lambda: storage.update_entity(storage.sets, flag, etag=image_set.etag))
    image_set.indexed = True
