"""``corpus status --verify``: check every complete set against what storage actually lists.

A set is marked ``complete`` only after its blobs are stored, so a complete row normally cannot lie.
It can when storage forgets writes it had acknowledged: Azurite keeps its blob and table metadata in
two LokiJS databases, each saved every 5 s on its own timer, so a SIGKILL can keep a set's complete
row and lose some of its blobs (tests/faults/test_kill.py shows it). Normal reruns never list a
complete set (that is what keeps them cheap), so this is the explicit check: one listing per
complete set, compared with its ImageCount and ContentDigest (the digest of the listed MD5s).

A set that does not match is demoted, in an order that keeps the invariants at every step: its
``Indexed`` flag is cleared, its tag rows deleted, then its row set back to ``pending`` (conditional
on the ETag read, so a concurrent run's write wins). The same upload or transform, rerun, lists it and
uploads (or recomputes) what is missing, as for any interrupted set.

The check trusts the listed Content-MD5; it does not read the bytes (that is a download's job, which
checks every blob against its Content-MD5 anyway).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from .errors import Conflict, NotFound
from .models import PENDING, ImageSet, content_digest, tag_rows
from .results import Failure, NullProgress, ProgressSink, failure_reason
from .storage import Storage
from .throttle import ThrottleWork


@dataclass
class VerifyResult:
    checked: int = 0
    demoted: list[str] = field(default_factory=list)  # "label: why"
    problems: list[Failure] = field(default_factory=list)


async def _mismatch(storage: Storage, s: ImageSet) -> str | None:
    listing = await storage.list_prefix(s.blob_prefix)
    pairs = [(name[len(s.blob_prefix) :], info.md5_hex or "") for name, info in listing.items()]
    if len(pairs) != s.image_count:
        return f"{len(pairs)} blobs stored under {s.blob_prefix}, its row counts {s.image_count}"
    if content_digest(pairs) != s.content_digest:
        return f"the blobs under {s.blob_prefix} do not match its ContentDigest"
    return None


async def _demote(storage: Storage, s: ImageSet) -> None:
    ident = s.identity
    keys = {"PartitionKey": ident.partition_key, "RowKey": ident.row_key}
    etag = await storage.update_entity(storage.sets, {**keys, "Indexed": False}, etag=s.etag)
    for row in tag_rows(s):
        with contextlib.suppress(NotFound):  # never written, or lost with the blobs
            await storage.delete_entity(storage.tags, row["PartitionKey"], row["RowKey"])
    await storage.update_entity(storage.sets, {**keys, "Status": PENDING}, etag=etag)


async def verify_complete_sets(
    storage: Storage, sets: list[ImageSet], *, parallel: int = 20, progress: ProgressSink | None = None
) -> VerifyResult:
    """List every complete set in ``sets``; demote those whose blobs do not match their row."""
    progress = progress or NullProgress()
    result = VerifyResult()
    complete = [s for s in sets if s.is_complete]
    progress.grow(files=len(complete))

    async def one(s: ImageSet) -> str | None:
        why = await _mismatch(storage, s)
        if why is not None:
            await _demote(storage, s)
        return why

    async for o in ThrottleWork(parallel).map(one, complete):
        progress.advance(files=1)
        label = str(o.item.identity)
        if o.error is not None:
            reason = failure_reason(o.error)
            if isinstance(o.error, Conflict):
                reason = f"changed by another run while being verified; verify again ({reason})"
            result.problems.append(Failure(f"set {label}", reason))
            continue
        result.checked += 1
        if o.result is not None:
            result.demoted.append(f"{label}: {o.result}")
            progress.note(
                f"set {label} was complete but {o.result}: set back to pending; rerun its upload or "
                "transform to finish it"
            )
    return result
