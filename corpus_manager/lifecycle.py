"""One set lifecycle for every producer of sets (upload, a local transform, a Dask transform).

    pending row with this run's claim -> blobs (each write fenced by the claim) -> complete row -> tag rows

``RunWriters`` is what a run shares across its sets: its id, one row writer (``GroupCommit`` on
ImageSets: the rows of sets that finish together share transactions) and one tag writer
(``TagIndexWriter``, whose ``Indexed`` flags go through the row writer). ``SetWriter`` is one set in one
run: it claims the set version, keeps the claim renewed, fences every blob write and completes the
row. ``SetRun`` is the run loop over sets, with one rule for what an interrupted run reports.

A set version has one writer. Its pending row carries the writer's claim: ``Claim`` (a token: an
upload's is the ContentDigest it will store, so two runs of the same content share the set and store
the same bytes; a transform's is its run id, so a second run of the same NAME@TV is refused), ``Writer``
(the run: its id, process and machine) and ``Renewed`` (when it last renewed the claim, UTC). The owner
renews it every RENEW_SECONDS while it writes the set; a claim not renewed for LEASE_SECONDS belongs to
a run that died (or froze) and may be taken over. A claim whose run is known to have ended (a finished
run of this process, or a process of this machine that is gone) is taken over at once: a rerun after a
crash does not wait out the lease. Clocks of the runs' machines are assumed to agree within a few
seconds (NTP), far less than the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

from .errors import Conflict, CorpusError, ImmutableSetError
from .models import PENDING, ImageSet, SetIdentity
from .results import Failure, HasStatus
from .rowcommit import GroupCommit
from .storage import Storage
from .tagindex import TagIndexWriter
from .throttle import ThrottleWork

LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0
ATTEMPTS = 5  # conditional writes of one row tried again after a concurrent change, before giving up

# The run ids of the RunWriters open in this process: a claim written by this process under any other
# run id belongs to a run that has ended.
_OPEN_RUNS: set[str] = set()


@lru_cache(maxsize=1)
def _machine() -> str:
    """This machine and PID namespace (Linux: the boot id and the namespace's inode), or "" when unknown:
    two processes with the same value see each other's PIDs, so a claim's process can be checked."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists (owned by another user), or cannot tell: alive
    return False


@dataclass
class Lease:
    """The claim on a pending row (empty for a row written before claims existed)."""

    writer: str = ""  # "RUN_ID PID MACHINE" (older runs wrote the run id alone)
    claim: str = ""
    renewed: datetime.datetime | None = None

    @classmethod
    def of(cls, entity: Mapping[str, Any]) -> Lease:
        renewed: datetime.datetime | None = None
        with contextlib.suppress(TypeError, ValueError):
            renewed = datetime.datetime.fromisoformat(str(entity.get("Renewed")))
        if renewed is not None and renewed.tzinfo is None:
            renewed = None
        # no claim (a row written before claims existed): nobody holds it, any run may take it over
        return cls(str(entity.get("Writer") or ""), str(entity.get("Claim") or ""), renewed)

    def age(self) -> float:
        """Seconds since the claim was last renewed (infinite when unknown)."""
        if self.renewed is None:
            return math.inf
        return (datetime.datetime.now(datetime.UTC) - self.renewed).total_seconds()

    def ended(self) -> bool:
        """True when the run that wrote the claim is known to have ended: a run of this process that is
        no longer open, or a process of this machine that is gone. Unknown (another machine): False."""
        run_id, _, rest = self.writer.partition(" ")
        pid, _, machine = rest.partition(" ")
        if not pid.isdigit() or not machine or machine != _machine():
            return False
        if int(pid) == os.getpid():
            return run_id not in _OPEN_RUNS
        return _process_gone(int(pid))

    @property
    def holder(self) -> str:
        """The claim's run, for messages: "run 01234567" (its id's first 8 characters)."""
        return f"run {self.writer[:8]}" if self.writer else "another run"

    def expired(self) -> bool:
        return self.ended() or self.age() >= LEASE_SECONDS


class ClaimLost(Conflict):
    """Another run took over the set this run was writing: this run writes nothing more to it."""


class RunWriters:
    """What one run shares across its sets: its id, its row writer and its tag writer."""

    def __init__(self, storage: Storage, upserts: ThrottleWork) -> None:
        self.storage = storage
        self.upserts = upserts
        self.run_id = uuid.uuid4().hex  # this run, in the claims it writes (and an upload's block IDs)
        self.writer = f"{self.run_id} {os.getpid()} {_machine()}".strip()
        # the run's ImageSets writes (pending rows, complete rows, Indexed flags), group-committed: the
        # rows of one family of sets share a partition, so 100 sets cost a few requests instead of 300
        self.rows = GroupCommit(storage, upserts)
        # tag rows batched across sets; a set is flagged Indexed once its rows are stored, the flags
        # group-committed with the other set rows
        self.tags = TagIndexWriter(storage, upserts, update_set=self.rows.update)
        _OPEN_RUNS.add(self.run_id)

    async def flush(self) -> list[Failure]:
        """Write the buffered tag rows; returns the tag index failures of the whole run."""
        await self.tags.flush()
        return self.tags.failures

    def close(self) -> None:
        """The run is over (finished or interrupted): its claims may be taken over at once."""
        self.rows.close()
        _OPEN_RUNS.discard(self.run_id)


# (the claim's Lease, its age in seconds) -> why this run may not write the set
Busy = Callable[[Lease, float], str]


class SetWriter:
    """The lifecycle of one set in one run: claim, renewal, fence, completion."""

    def __init__(
        self,
        run: RunWriters,
        identity: SetIdentity,
        *,
        tags: list[str],
        busy: Busy,
        source_set: str = "",
        existing: ImageSet | None = None,
        lease: Lease | None = None,
        doing: str = "wrote",
    ) -> None:
        self.run = run
        self.doing = doing  # what the run does to the set, for messages: "uploaded", "transformed"
        self.identity = identity
        self.tags = tags
        self.busy = busy
        self.source_set = source_set
        self.existing = existing  # the row as last read (None: no row yet)
        self.lease = lease or Lease()
        self.etag: str | None = existing.etag if existing else None
        self.token = ""  # this run's claim
        self.created = False  # this run created the set's row (so nothing of it is stored yet)
        self.took_over = False  # this run took the set over from a run whose claim had expired
        self.lost: str | None = None  # why this run no longer owns the set
        self.renewed_at = 0.0  # time.monotonic() of this run's last write of its claim
        self._renewing: asyncio.Lock | None = None

    @property
    def label(self) -> str:
        return str(self.identity)

    def _changing(self) -> Conflict:
        return Conflict(f"set {self.label}: its row kept changing under concurrent runs; rerun to finish it")

    def _taken_over(self, consequence: str) -> str:
        return (
            f"set {self.label} was taken over by another run while this one {self.doing} it "
            f"(this run's claim had expired); {consequence}"
        )

    def _claim_fields(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "PartitionKey": ident.partition_key,
            "RowKey": ident.row_key,
            "Writer": self.run.writer,
            "Claim": self.token,
            "Renewed": datetime.datetime.now(datetime.UTC).isoformat(),
        }

    async def reread(self) -> ImageSet:
        ident = self.identity
        entity = await self.run.storage.get_entity(self.run.storage.sets, ident.partition_key, ident.row_key)
        if entity is None:
            raise Conflict(f"set {self.label}: its row was deleted during the run; rerun to recreate it")
        self.lease = Lease.of(entity)
        self.existing = ImageSet.from_entity(entity)
        return self.existing

    async def claim(self, token: str) -> str | None:
        """Own the set version before its first blob: None when this run may write it (or it is already
        complete: see self.existing), else why not.

        No row: create the pending row with this run's claim (exactly one creator wins). A pending row
        claimed with the same token (an interrupted upload of the same content, or one running now):
        write our claim on it and go on; both write the same bytes. Claimed with another token: refused
        while that claim is renewed and its run may be alive; otherwise taken over with a write
        conditional on the row's ETag (exactly one taker wins). Every claim write is conditional, so
        each decision is made on the row as it is.
        """
        self.token = token
        if self.existing is None:
            pending = ImageSet(self.identity, tags=self.tags, status=PENDING, source_set=self.source_set).to_entity()
            sent = time.monotonic()  # the lease counts from before the write: never longer than the reader's
            try:
                self.etag = await self.run.rows.create({**pending, **self._claim_fields()})
                self.renewed_at = sent
                self.existing = ImageSet.from_entity(pending)
                self.created = True
                return None
            except Conflict:
                await self.reread()  # another run created it meanwhile
        for _attempt in range(ATTEMPTS):
            row, lease = self.existing, self.lease
            assert row is not None
            if row.is_complete:
                return None
            took_over = False
            if lease.claim != token:
                if not lease.expired():
                    return self.busy(lease, max(lease.age(), 0.0))
                took_over = True
            sent = time.monotonic()
            try:
                self.etag = await self.run.rows.update(self._claim_fields(), row.etag)
            except Conflict:
                await self.reread()
                continue
            self.renewed_at = sent
            self.took_over = self.took_over or took_over
            return None
        raise self._changing()

    async def renew(self) -> None:
        """Write this run's claim again, conditional on the row's ETag. A row changed by another run with
        the same token is fine (its ETag is taken); by any other change, the claim is lost."""
        asked = time.monotonic()
        if self._renewing is None:
            self._renewing = asyncio.Lock()
        async with self._renewing:
            if self.lost or self.renewed_at >= asked:
                return  # renewed while this call waited (the fence and the timer at once)
            for _attempt in range(ATTEMPTS):
                started = time.monotonic()
                try:
                    self.etag = await self.run.rows.update(self._claim_fields(), self.etag)
                    self.renewed_at = started
                    return
                except Conflict:
                    row = await self.reread()
                    if row.is_complete or self.lease.claim != self.token:
                        self.lost = self._taken_over("this run stopped writing to it")
                        return
                    self.etag = row.etag
            raise self._changing()

    async def fence(self) -> None:
        """Before a write that changes a blob: this run must still own the set. A claim not renewed for
        half the lease (storage slow, the process stopped) is renewed first, or the write is refused."""
        if not self.lost and time.monotonic() - self.renewed_at > LEASE_SECONDS / 2:
            await self.renew()
        if self.lost:
            raise ClaimLost(self.lost)

    async def _keep_claim(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            with contextlib.suppress(CorpusError):  # storage trouble: the fence before each write decides
                await self.renew()
            if self.lost:
                return

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """The claim renewed in the background while the set's blobs are written; stopped before the
        completing write (a renewal racing it would change the ETag it is conditional on)."""
        keeper = asyncio.create_task(self._keep_claim())
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if self.lost:
            raise ClaimLost(self.lost)

    async def complete(self, image_set: ImageSet) -> ImageSet:
        """Mark the set complete, conditional on this run's claim being the row's latest write (a run
        that lost its claim cannot complete), then hand it to the run's tag writer. A set completed
        meanwhile by another run with the same content is taken as it is; with other content, refused."""
        entity = image_set.to_entity()
        entity["Indexed"] = False
        for _attempt in range(ATTEMPTS):
            try:
                self.etag = await self.run.rows.update(entity, self.etag)
                break
            except Conflict:
                # the row changed since this run's last claim write (or this very update landed and
                # only its answer was lost, then retried into a 412): decide on its new state
                current = await self.reread()
                if current.is_complete:
                    if current.content_digest != image_set.content_digest:
                        raise ImmutableSetError(
                            f"set {self.label} was completed meanwhile by another run with "
                            "different content; versions are immutable"
                        ) from None
                    if not current.indexed:
                        await self.run.tags.add(current)
                    return current
                if self.lease.claim != self.token:
                    raise ClaimLost(self._taken_over("this run did not complete it")) from None
                self.etag = current.etag  # a run with the same token renewed its claim: same bytes
        else:
            raise self._changing()
        image_set.etag = self.etag
        await self.run.tags.add(image_set)
        return image_set


# ----- the run loop ------------------------------------------------------------------------
T = TypeVar("T")
R = TypeVar("R", bound=HasStatus)


class SetRun(Generic[T, R]):
    """The sets of one run, run ``parallel`` at once. Each set's outcome is made when the run learns of
    the set (``add``: an upload's sets as the crawl finds them, a transform's all at once from its
    plan); an interrupted run reports every set it knew of and did not finish as ``interrupted``:
    started or not, the rerun does them."""

    def __init__(self, outcome: Callable[[T], R], sets: list[R], failed: Callable[[T, BaseException], None]) -> None:
        self.outcome = outcome
        self.sets = sets  # the report's list: each outcome is appended once, when its set ends
        self.failed = failed
        self.unfinished: dict[int, R] = {}

    def add(self, item: T) -> T:
        self.unfinished[id(item)] = self.outcome(item)
        return item

    async def run(
        self, run_one: Callable[[T, R], Awaitable[Any]], items: Iterable[T] | AsyncIterator[T], parallel: int
    ) -> None:
        async def one(item: T) -> None:
            await run_one(item, self.unfinished[id(item)])

        async def known() -> AsyncIterator[T]:
            if isinstance(items, AsyncIterator):
                async for item in items:
                    yield self.add(item)
            else:
                for item in items:
                    yield item if id(item) in self.unfinished else self.add(item)

        try:
            async for o in ThrottleWork(parallel).map(one, known()):
                out = self.unfinished.pop(id(o.item))
                if o.error is not None:
                    out.status = "failed"
                    self.failed(o.item, o.error)
                self.sets.append(out)
        except (asyncio.CancelledError, KeyboardInterrupt):
            for out in self.unfinished.values():
                out.status = "interrupted"
                self.sets.append(out)
            self.unfinished.clear()
            raise
