"""crawl -> sets -> blobs -> rows: ``upload_tree`` and its report.

Each directory group becomes one ImageSet. Its files are hashed and sniffed first; then its row is
written ``pending`` with this run's claim on the set version (the ContentDigest it will store: one
writer per set version, see ``_SetJob.claim``), its files go through the shared upload limit (one Put
Blob, or blocks for a big file, never held whole), and only when every file is stored is the row
marked ``complete`` and indexed by tag. A rerun reads each unfinished set's listing once and uploads
only what is missing or different; a complete set is verified from local MD5s against its
ContentDigest without a single blob request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import math
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from . import storage as storage_module
from .crawler import Crawler, DirGroup, LocalFile
from .errors import ConfigError, Conflict, CorpusError, CorruptRow, ImmutableSetError, StorageError
from .imagetypes import CONTENT_TYPES, HEAD, TAIL, NotAnImage, sniff, sniff_parts
from .models import COMPLETE, ORIGINAL_PARTITION, PENDING, ImageSet, SetIdentity, check_name, content_digest
from .results import Failure, NullProgress, ProgressSink
from .rowcommit import GroupCommit
from .storage import BlobInfo, Storage, eq
from .tagindex import TagIndexWriter
from .throttle import ByteBudget, ThrottleWork, iterate_in_thread, open_file_cap


@dataclass
class SetOutcome:
    path: str
    version: str
    status: str  # uploaded | skipped | refused | failed | empty | planned | interrupted
    images: int = 0
    uploaded: int = 0
    already_stored: int = 0
    corrupt: int = 0
    failed: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class UploadReport:
    root: str
    version: str
    dry_run: bool = False
    sets: list[SetOutcome] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    files_uploaded: int = 0
    files_already_stored: int = 0
    files_corrupt: int = 0
    files_failed: int = 0
    files_ignored: int = 0
    bytes_uploaded: int = 0
    bytes_seen: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    retries: int = 0  # requests storage failed (error, reset, no answer) that were tried again
    warnings: list[str] = field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for s in self.sets if s.status == status)

    @property
    def sets_uploaded(self) -> int:
        return self._count("uploaded")

    @property
    def sets_skipped(self) -> int:
        return self._count("skipped")

    @property
    def sets_refused(self) -> int:
        return self._count("refused")

    @property
    def sets_failed(self) -> int:
        return self._count("failed")

    @property
    def files_per_second(self) -> float:
        return self.files_uploaded / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "version": self.version,
            "dry_run": self.dry_run,
            "sets": {
                "total": len(self.sets),
                "uploaded": self.sets_uploaded,
                "skipped": self.sets_skipped,
                "refused": self.sets_refused,
                "failed": self.sets_failed,
            },
            "files": {
                "uploaded": self.files_uploaded,
                "already_stored": self.files_already_stored,
                "corrupt": self.files_corrupt,
                "failed": self.files_failed,
                "ignored": self.files_ignored,
            },
            "bytes_uploaded": self.bytes_uploaded,
            "elapsed_seconds": round(self.elapsed, 3),
            "files_per_second": round(self.files_per_second, 1),
            "duplicates": self.duplicates,
            "failures": [f.to_json() for f in self.failures],
            "interrupted": self.interrupted,
            "retries": self.retries,
            "warnings": self.warnings,
            "set_results": [s.to_json() for s in self.sets],
        }


@dataclass
class _FileResult:
    file: LocalFile
    md5_hex: str = ""
    size: int = 0
    state: str = ""  # uploaded | stored | checked | corrupt
    md5: bytes = b""
    kind: str | None = None
    bad: str | None = None  # why it is not an image (corrupt)
    data: bytes | None = None  # its bytes, kept from hashing for its Put Blob (within the run's KEEP_BUDGET)
    kept: int = 0  # bytes of KEEP_BUDGET it holds
    blocks: list[bytes] | None = None  # above the block threshold: each block's MD5, for Put Block
    advanced: bool = False  # counted in the progress


# Every file of a set is hashed before the set's first blob: the set's claim (see _SetJob.claim) is its
# ContentDigest. Files up to KEEP_FILE_MAX keep their bytes for their Put Blob while the run keeps less
# than KEEP_BUDGET so (a set of small images is read once, and sent without another thread hop); any
# other file is read again when its upload comes (from the page cache), within PUT_BUDGET for the run:
# memory stays bounded whatever the files' sizes. (Keeping 2 MB files too cost 56 MB more peak RSS in
# the upload bench's scenario c, for no gain in time.)
KEEP_FILE_MAX = 1024 * 1024
KEEP_BUDGET = 32 * 1024 * 1024
PUT_BUDGET = 256 * 1024 * 1024
# Files up to the block threshold are hashed in worker-thread calls of about this many bytes each (one
# thread hop for a set of photos, several for a big set, so its hashing runs on every core), those
# above KEEP_FILE_MAX in pieces of HASH_CHUNK (never held whole). At most one call per core runs at
# once, taken in the order the sets came: the first set is hashed at full speed and starts uploading
# while the next ones are hashed, instead of every set waiting for all of them.
HASH_CALL_BYTES = 8 * 1024 * 1024
HASH_CHUNK = 1024 * 1024


class _KeepBudget:
    """The bytes files keep from hashing to upload, across the run (taken from worker threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


def _read_and_check(path: str) -> tuple[bytes, bytes, str | None, str | None]:
    """Read, hash and sniff one file whole (a file at most the block threshold), in a worker thread."""
    with open(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    try:
        return data, digest, sniff(data), None
    except NotAnImage as exc:
        return data, digest, None, str(exc)


def _fill(fh: Any, view: memoryview) -> int:
    """Read into ``view`` until it is full or the file ends: a block is always a whole block."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _hash_blocks(f: LocalFile, block_size: int, *, blocks: bool = True) -> _FileResult:
    """A file streamed in pieces of ``block_size``: its MD5, each piece's MD5 when ``blocks`` (the MD5s
    of a big file's blocks), the kind from its head and tail. Holds one piece at a time, never the file."""
    block_md5s: list[bytes] = []
    whole: Any = None
    head, tail, size = b"", b"", 0
    buf = bytearray(block_size)
    view = memoryview(buf)
    with open(f.path, "rb", buffering=0) as fh:
        while n := _fill(fh, view):
            chunk = view[:n]
            if not blocks:
                whole = whole or hashlib.md5(usedforsecurity=False)
                whole.update(chunk)
            else:
                part = hashlib.md5(chunk, usedforsecurity=False)
                block_md5s.append(part.digest())
                if whole is None:
                    whole = part.copy()  # after the first block the file's MD5 is the block's: not hashed twice
                else:
                    whole.update(chunk)
            if size < HEAD:
                head += bytes(chunk[: HEAD - size])
            tail = (tail + bytes(chunk[-TAIL:]))[-TAIL:]
            size += n
            if n < block_size:
                break
    md5 = (whole or hashlib.md5(usedforsecurity=False)).digest()
    res = _FileResult(f, md5.hex(), size, md5=md5, blocks=block_md5s or None)
    try:
        res.kind = sniff_parts(head, tail, size)
    except NotAnImage as exc:
        res.bad = str(exc)
    return res


def _hash_files(
    files: list[LocalFile], keep: _KeepBudget | None, threshold: int, block_size: int
) -> list[_FileResult | OSError]:
    """Hash files in one worker-thread call. A file up to KEEP_FILE_MAX is read whole (and kept for its
    upload when ``keep`` has room for it); a bigger one is streamed, in blocks above ``threshold``."""
    out: list[_FileResult | OSError] = []
    for f in files:
        try:
            if f.size > threshold:
                res = _hash_blocks(f, block_size)
            elif f.size > KEEP_FILE_MAX:
                res = _hash_blocks(f, HASH_CHUNK, blocks=False)
                if res.size > threshold:  # it grew since the crawl: a big file after all
                    res = _hash_blocks(f, block_size)
            else:
                held = f.size if keep is not None and keep.take(f.size) else 0
                try:
                    data, md5, kind, bad = _read_and_check(f.path)
                except BaseException:
                    if held and keep is not None:
                        keep.give(held)
                    raise
                res = _FileResult(f, md5.hex(), len(data), md5=md5, kind=kind, bad=bad)
                if len(data) > threshold:  # it grew since the crawl: a big file after all
                    if held and keep is not None:
                        keep.give(held)
                    res = _hash_blocks(f, block_size)
                elif held and bad is None:
                    res.data, res.kept = data, held
                elif held and keep is not None:
                    keep.give(held)
            out.append(res)
        except OSError as exc:
            out.append(exc)
    return out


# The run's ImageSets writes (pending rows, complete rows, Indexed flags), group-committed: the rows
# of original sets share a partition, so 100 sets cost a few requests instead of 300 (rowcommit.py).
_SetRows = GroupCommit


# A set version has one writer. Its pending row carries the writer's claim: ``Claim`` (the ContentDigest
# of what it will store), ``Writer`` (its run id) and ``Renewed`` (when it last renewed the claim, UTC).
# The owner renews it every RENEW_SECONDS while it uploads the set; a claim not renewed for LEASE_SECONDS
# belongs to a run that died (or froze) and may be taken over. Clocks of the runs' machines are assumed
# to agree within a few seconds (NTP), far less than the lease.
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0


@dataclass
class _Lease:
    """The claim on a pending row (empty for a row written before claims existed)."""

    writer: str = ""
    claim: str = ""
    renewed: datetime.datetime | None = None

    @classmethod
    def of(cls, entity: Mapping[str, Any]) -> _Lease:
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


class ClaimLost(Conflict):
    """Another run took over the set this run was uploading: this run writes nothing more to it."""


class _SetJob:
    """The lifecycle of one set in one run."""

    def __init__(self, up: _Uploader, group: DirGroup) -> None:
        self.up = up
        self.group = group
        self.identity = SetIdentity(group.rel_dir, up.version)
        self.existing: ImageSet | None = up.existing.get(self.identity)
        self.lease: _Lease = up.leases.get(self.identity, _Lease())
        self.listing: dict[str, BlobInfo] = {}
        self.etag: str | None = self.existing.etag if self.existing else None
        self.outcome = SetOutcome(self.identity.path, self.identity.version, "failed")
        self.tags = group.tags
        self.digest = ""
        self.took_over = False  # this run took the set over from a run whose claim had expired
        self.lost: str | None = None  # why this run no longer owns the set
        self.renewed_at = 0.0  # time.monotonic() of this run's last write of its claim
        self._renewing: asyncio.Lock | None = None

    @property
    def label(self) -> str:
        return str(self.identity)

    async def run(self) -> SetOutcome:
        up, out = self.up, self.outcome
        verify_only = self.existing is not None and self.existing.is_complete
        listing: asyncio.Task[dict[str, BlobInfo]] | None = None
        results: list[_FileResult] = []
        keeper: asyncio.Task[None] | None = None
        try:
            if self.existing is not None and not verify_only:
                # read while the files are hashed: what an earlier (interrupted) run of this content stored
                listing = asyncio.create_task(self._list())
            hashed = await self.hash_all(keep=not verify_only)
            failed = 0
            for f, item in zip(self.group.files, hashed, strict=True):
                if isinstance(item, OSError):
                    failed += 1
                    up.fail(f.path, item)
                    up.progress.advance(files=1)
                    continue
                results.append(self.corrupt(item) if item.bad is not None else item)
            out.failed = failed
            good = sorted((r for r in results if r.state != "corrupt"), key=lambda r: r.file.name)
            out.images = len(good)
            self.up.note_duplicates(self.identity, good)
            pairs = [(r.file.name, r.md5_hex) for r in good]
            digest = self.digest = content_digest(pairs)
            if verify_only or failed or not good:
                for r in good:
                    r.state = "checked"
                    self.advance(r)
                if verify_only:
                    return await self.verify(digest, pairs, failed)
                out.status = "failed" if failed else "empty"
                return out
            refusal = await self.claim(digest)
            if refusal is not None or (self.existing is not None and self.existing.is_complete):
                for r in good:  # nothing of this set is written by this run
                    r.state = "checked"
                    self.advance(r)
                if refusal is not None:
                    up.failures.append(Failure(self.group.abs_dir, refusal, "refused"))
                    out.status = "refused"
                    return out
                return await self.verify(digest, pairs, failed)  # completed meanwhile by another run
            keeper = asyncio.create_task(self._keep_claim())
            if self.took_over:
                self.listing = await self._list()  # what the run it took over from left
            elif listing is not None:
                self.listing = await listing
            failed = await self.put_all(good)
            if self.lost:
                raise ClaimLost(self.lost)
            if failed:
                out.failed += failed
                out.status = "failed"
                return out
            keeper.cancel()  # no renewal may race the completing write (each would change the ETag)
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            return await self.complete(image_count=len(good), total_bytes=sum(r.size for r in good), pairs=pairs)
        finally:
            for task in (listing, keeper):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                elif task is not None and not task.cancelled():
                    task.exception()  # retrieved: an unused listing's failure is no one's to report
            for r in results:
                self.release(r)

    async def _list(self) -> dict[str, BlobInfo]:
        await self.up.storage.ensure_container()  # a run may have died between the pending row and it
        return await self.up.storage.list_prefix(self.identity.blob_prefix)

    async def hash_all(self, keep: bool) -> list[_FileResult | OSError]:
        """Every file of the set hashed and sniffed, in worker threads: files up to the block threshold
        in calls of about HASH_CALL_BYTES (kept for their upload when ``keep`` and the run's budget
        allow), each bigger file in a call of its own, so a set's big files are hashed in parallel."""
        threshold, block_size = storage_module.BLOCK_THRESHOLD, storage_module.BLOCK_SIZE
        budget = self.up.keep if keep else None
        calls: list[list[LocalFile]] = []
        batch: list[LocalFile] = []
        batch_bytes = 0
        for f in self.group.files:
            if f.size > threshold:
                calls.append([f])
                continue
            if batch and batch_bytes + f.size > HASH_CALL_BYTES:
                calls.append(batch)
                batch, batch_bytes = [], 0
            batch.append(f)
            batch_bytes += f.size
        if batch:
            calls.append(batch)

        async def call(files: list[LocalFile]) -> list[_FileResult | OSError]:
            async with self.up.hashing:
                return await asyncio.to_thread(_hash_files, files, budget, threshold, block_size)

        done = await asyncio.gather(*(call(c) for c in calls))
        by_path = {id(f): r for c, rs in zip(calls, done, strict=True) for f, r in zip(c, rs, strict=True)}
        return [by_path[id(f)] for f in self.group.files]

    def release(self, r: _FileResult) -> None:
        if r.kept:
            self.up.keep.give(r.kept)
            r.kept, r.data = 0, None

    def advance(self, r: _FileResult) -> None:
        if not r.advanced:
            r.advanced = True
            self.up.progress.advance(files=1, nbytes=r.size)

    # ----- the claim ------------------------------------------------------------------------
    def _claim_fields(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "PartitionKey": ident.partition_key,
            "RowKey": ident.row_key,
            "Writer": self.up.run_id,
            "Claim": self.digest,
            "Renewed": datetime.datetime.now(datetime.UTC).isoformat(),
        }

    async def claim(self, digest: str) -> str | None:
        """Own the set version before its first blob: None when this run may write it (or it is already
        complete: see self.existing), else why not.

        No row: create the pending row with this run's claim (exactly one creator wins). A pending row
        claimed for the same content (an interrupted run of it, or one running now): write our claim on
        it and go on; both write the same bytes. Claimed for other content: refused while that claim is
        renewed; once it has not been for LEASE_SECONDS, taken over with a write conditional on the row's
        ETag (exactly one taker wins). Every claim write is conditional, so each decision is made on the
        row as it is.
        """
        up = self.up
        if self.existing is None:
            pending = ImageSet(self.identity, tags=self.tags, status=PENDING).to_entity()
            sent = time.monotonic()  # the lease counts from before the write: never longer than the reader's
            try:
                self.etag = await up.set_rows.create({**pending, **self._claim_fields()})
                self.renewed_at = sent
                self.existing = ImageSet.from_entity(pending)
                return None
            except Conflict:
                self.existing = await self.reread()  # another run created it meanwhile
        for _attempt in range(5):
            row, lease = self.existing, self.lease
            assert row is not None
            if row.is_complete:
                return None
            took_over = False
            if lease.claim != digest:
                age = lease.age()
                if age < LEASE_SECONDS:
                    who = f"run {lease.writer[:8]}" if lease.writer else "another run"
                    return (
                        f"set {self.label} is being uploaded by another run with different content ({who}, "
                        f"active {max(age, 0):.0f} s ago); versions are immutable: upload yours as a new "
                        f"--version (if that run died, a rerun after {LEASE_SECONDS:.0f} s takes the set over)"
                    )
                took_over = True
            sent = time.monotonic()
            try:
                self.etag = await up.set_rows.update(self._claim_fields(), row.etag)
            except Conflict:
                self.existing = await self.reread()
                continue
            self.renewed_at = sent
            self.took_over = self.took_over or took_over
            return None
        raise Conflict(f"set {self.label}: its row kept changing under concurrent runs; rerun to finish it")

    async def _keep_claim(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            with contextlib.suppress(CorpusError):  # storage trouble: the fence before each write decides
                await self.renew()
            if self.lost:
                return

    async def renew(self) -> None:
        """Write this run's claim again, conditional on the row's ETag. A row changed by another run of
        the same content is fine (its ETag is taken); by any other change, the claim is lost."""
        asked = time.monotonic()
        if self._renewing is None:
            self._renewing = asyncio.Lock()
        async with self._renewing:
            if self.lost or self.renewed_at >= asked:
                return  # renewed while this call waited (the fence and the timer at once)
            for _attempt in range(5):
                started = time.monotonic()
                try:
                    self.etag = await self.up.set_rows.update(self._claim_fields(), self.etag)
                    self.renewed_at = started
                    return
                except Conflict:
                    row = await self.reread()
                    if row.is_complete or self.lease.claim != self.digest:
                        self.lost = (
                            f"set {self.label} was taken over by another run while this one uploaded it "
                            "(this run's claim had expired); this run stopped writing to it"
                        )
                        return
                    self.etag = row.etag
            raise Conflict(f"set {self.label}: its row kept changing under concurrent runs; rerun to finish it")

    async def fence(self) -> None:
        """Before a write that changes a blob: this run must still own the set. A claim not renewed for
        half the lease (storage slow, the process stopped) is renewed first, or the write is refused."""
        if not self.lost and time.monotonic() - self.renewed_at > LEASE_SECONDS / 2:
            await self.renew()
        if self.lost:
            raise ClaimLost(self.lost)

    # ----- blobs ------------------------------------------------------------------------------
    async def put_all(self, good: list[_FileResult]) -> int:
        """Upload what is not stored yet; returns how many files failed (a lost claim stops them all)."""
        up, failed = self.up, 0
        async for o in up.uploads.map(self.put_one, good):
            self.release(o.item)
            if o.error is not None:
                self.advance(o.item)
                if not isinstance(o.error, ClaimLost):  # a lost claim is named once, for the set
                    failed += 1
                    up.fail(o.item.file.path, o.error)
        if self.lost:
            return failed
        names = {self.identity.blob_prefix + r.file.name for r in good}
        for name in [n for n in self.listing if n not in names]:  # left by an interrupted run of files gone locally
            await self.fence()
            await up.uploads.run(partial(up.storage.delete_blob, name))
        return failed

    async def put_one(self, res: _FileResult) -> _FileResult:
        up, out = self.up, self.outcome
        name = self.identity.blob_name(res.file.name)
        known = self.listing.get(name)
        if known is not None and known.md5_hex == res.md5_hex and known.size == res.size:
            res.state = "stored"
            out.already_stored += 1
            self.advance(res)
            return res
        assert res.kind is not None
        content_type = CONTENT_TYPES[res.kind]
        await self.fence()
        if res.data is not None:
            await up.storage.put_blob(name, res.data, content_type=content_type, md5=res.md5)
        elif res.blocks is not None and res.size > storage_module.BLOCK_THRESHOLD:
            await up.storage.put_blocks(
                name,
                res.file.path,
                size=res.size,
                block_size=storage_module.BLOCK_SIZE,
                content_type=content_type,
                md5=res.md5,
                block_md5s=res.blocks,
                token=up.run_id,
                budget=up.put_budget,
                before_commit=self.fence,
            )
        else:
            async with up.put_budget.hold(res.size):
                data = await asyncio.to_thread(storage_module.read_range, res.file.path, 0, res.size)
                if len(data) != res.size:
                    raise StorageError(
                        f"upload of {name}: the file is shorter than when it was hashed "
                        f"({len(data)} of {res.size} bytes); not stored"
                    )
                # the service checks the bytes against the MD5 from hashing: a file changed since fails
                await up.storage.put_blob(name, data, content_type=content_type, md5=res.md5)
        res.state = "uploaded"
        out.uploaded += 1
        out.bytes += res.size
        self.advance(res)
        return res

    # ----- completion -------------------------------------------------------------------------
    async def complete(self, *, image_count: int, total_bytes: int, pairs: list[tuple[str, str]]) -> SetOutcome:
        """Mark the set complete, conditional on this run's claim being the row's latest write: a run
        that lost its claim cannot complete. A run that took the set over first checks the listing: a
        run it took over from may have written after its claim expired."""
        up, out, digest = self.up, self.outcome, self.digest
        if self.took_over:
            prefix = self.identity.blob_prefix
            stored = await up.storage.list_prefix(prefix)
            want = {prefix + n: md5 for n, md5 in pairs}
            wrong = sorted(n for n in set(stored) | set(want) if n not in stored or stored[n].md5_hex != want.get(n))
            if wrong:
                raise Conflict(
                    f"set {self.label}: {len(wrong)} blob(s) changed while this run finished the set it "
                    f"took over (e.g. {wrong[0]}); the run it took over from may still be writing: "
                    "rerun to finish it"
                )
        image_set = ImageSet(
            self.identity,
            tags=self.tags,
            status=COMPLETE,
            image_count=image_count,
            total_bytes=total_bytes,
            content_digest=digest,
        )
        entity = image_set.to_entity()
        entity["Indexed"] = False
        for _attempt in range(5):
            try:
                self.etag = await up.set_rows.update(entity, self.etag)
                break
            except Conflict:
                # the row changed since this run's last claim write: decide on its new state
                current = await self.reread()
                if current.is_complete:
                    if current.content_digest != digest:
                        raise ImmutableSetError(
                            f"set {self.label} was completed meanwhile by another run with "
                            "different content; versions are immutable"
                        ) from None
                    if not current.indexed:
                        await up.tag_index.add(current)
                    out.status = "uploaded"
                    return out
                if self.lease.claim != digest:
                    raise ClaimLost(
                        f"set {self.label} was taken over by another run while this one uploaded it "
                        "(this run's claim had expired); this run did not complete it"
                    ) from None
                self.etag = current.etag  # a run of the same content renewed its claim: same bytes
        else:
            raise Conflict(f"set {self.label}: its row kept changing under concurrent runs; rerun to finish it")
        image_set.etag = self.etag
        await up.tag_index.add(image_set)
        out.status = "uploaded"
        return out

    async def reread(self) -> ImageSet:
        ident = self.identity
        entity = await self.up.storage.get_entity(self.up.storage.sets, ident.partition_key, ident.row_key)
        if entity is None:
            raise Conflict(f"set {self.label}: its row was deleted during the run; rerun to recreate it")
        self.lease = _Lease.of(entity)
        return ImageSet.from_entity(entity)

    async def verify(self, digest: str, pairs: list[tuple[str, str]], failed: int) -> SetOutcome:
        out, existing = self.outcome, self.existing
        assert existing is not None
        if failed:
            out.status = "failed"
            return out
        if digest == existing.content_digest:
            out.status = "skipped"
            out.already_stored = len(pairs)
            if not existing.indexed:
                await self.up.tag_index.add(existing)
            return out
        stored = await self.up.storage.list_prefix(self.identity.blob_prefix)
        prefix = self.identity.blob_prefix
        remote = {name[len(prefix) :]: info.md5_hex for name, info in stored.items()}
        local = dict(pairs)
        added = sorted(set(local) - set(remote))
        removed = sorted(set(remote) - set(local))
        changed = sorted(n for n in set(local) & set(remote) if local[n] != remote[n])
        detail = ", ".join(
            f"{len(v)} {k}" + (f" (e.g. {v[0]})" if v else "")
            for k, v in (("added", added), ("changed", changed), ("removed", removed))
            if v
        )
        err = ImmutableSetError(
            f"set {self.label} is complete and its local content differs "
            f"({detail or 'digest differs'}); "
            "versions are immutable: upload it as a new --version"
        )
        self.up.failures.append(Failure(self.group.abs_dir, str(err), "refused"))
        out.status = "refused"
        return out

    def corrupt(self, res: _FileResult) -> _FileResult:
        """A file that is not a whole image: named, never uploaded nor compared."""
        res.state = "corrupt"
        self.outcome.corrupt += 1
        self.up.failures.append(Failure(res.file.path, f"{res.bad}; not uploaded", "corrupt"))
        self.advance(res)
        return res


class _Uploader:
    def __init__(self, storage: Storage, version: str, uploads: int, upserts: int, progress: ProgressSink) -> None:
        self.storage = storage
        self.version = version
        self.uploads = ThrottleWork(uploads)
        self.upserts = ThrottleWork(upserts)
        self.set_rows = _SetRows(storage, self.upserts)
        # tag rows batched across sets; a set is flagged Indexed once its rows are stored, the flags
        # group-committed with the other set rows
        self.tag_index = TagIndexWriter(storage, self.upserts, update_set=self.set_rows.update)
        self.progress = progress
        self.existing: dict[SetIdentity, ImageSet] = {}
        self.leases: dict[SetIdentity, _Lease] = {}  # the claims on the pending rows among them
        self.run_id = uuid.uuid4().hex  # this run, in the claims it writes and its block IDs
        self.keep = _KeepBudget(KEEP_BUDGET)
        self.hashing = asyncio.Semaphore(os.cpu_count() or 2)  # hashing calls at once: see HASH_CALL_BYTES
        self.put_budget = ByteBudget(PUT_BUDGET)
        self.failures: list[Failure] = []
        self.duplicates: list[list[str]] = []

    def fail(self, item: str, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, CorpusError) else f"{exc.__class__.__name__}: {exc}"
        self.failures.append(Failure(item, reason))

    def note_duplicates(self, identity: SetIdentity, results: list[_FileResult]) -> None:
        by_md5: dict[str, list[str]] = defaultdict(list)
        for r in results:
            by_md5[r.md5_hex].append(r.file.name)
        for names in by_md5.values():
            if len(names) > 1:
                prefix = f"{identity.path}/" if identity.path else ""
                self.duplicates.append([prefix + n for n in names])

    async def load_existing(self) -> None:
        """One paged query for every set of this version, instead of a read per set."""
        where = eq("PartitionKey", ORIGINAL_PARTITION) & eq("Version", self.version)
        async for entity in self.storage.query(self.storage.sets, where):
            try:
                image_set = ImageSet.from_entity(entity)
            except CorruptRow as exc:
                self.progress.note(str(exc))
                self.failures.append(Failure(f"{entity.get('PartitionKey')}/{entity.get('RowKey')}", str(exc)))
                continue
            self.existing[image_set.identity] = image_set
            if not image_set.is_complete:
                self.leases[image_set.identity] = _Lease.of(entity)


def _set_parallelism(uploads: int) -> int:
    # Enough sets in flight that their table round trips overlap other sets' PUTs.
    return max(2, min(uploads, 32))


async def upload_tree(
    storage: Storage,
    root: str,
    version: str,
    *,
    extensions: Any = None,
    max_parallel_uploads: int = 20,
    max_parallel_upserts: int = 5,
    dry_run: bool = False,
    progress: ProgressSink | None = None,
    on_crawler: Callable[[Crawler], None] | None = None,
    report: UploadReport | None = None,
) -> UploadReport:
    """Crawl ``root`` and upload every image set as ``version``. See the module docstring.

    Pass ``report`` to have it filled in place: if the run is cancelled (Ctrl-C), it still says what
    was done and what was not.
    """
    check_name(version, "version")
    if max_parallel_uploads < 1 or max_parallel_upserts < 1:
        raise ConfigError("--max-parallel-uploads and --max-parallel-upserts must be at least 1")
    crawler = Crawler(root, extensions) if extensions is not None else Crawler(root)
    if on_crawler:
        on_crawler(crawler)
    progress = progress or NullProgress()
    if report is None:
        report = UploadReport(root=crawler.root, version=version)
    report.root, report.version, report.dry_run = crawler.root, version, dry_run
    started = time.perf_counter()
    # each upload holds a socket and a file, each table write a socket (table writes get at most a
    # quarter of the descriptors): never more in flight than the open-file limit holds
    max_parallel_upserts, capped_upserts = open_file_cap(max_parallel_upserts, "--max-parallel-upserts", per_item=4)
    max_parallel_uploads, capped = open_file_cap(
        max_parallel_uploads, "--max-parallel-uploads", others=max_parallel_upserts
    )
    report.warnings += [note for note in (capped, capped_upserts) if note]
    up = _Uploader(storage, version, max_parallel_uploads, max_parallel_upserts, progress)
    if dry_run:
        try:
            await _plan(up, crawler, report)
        finally:
            _finish(report, up, crawler, started)
    else:
        # the container is made before the first blob (or at once for a version with no rows yet):
        # a no-op rerun never touches a blob, nor imports the blob SDK
        await storage.ensure(container=False)
        await up.load_existing()
        if not up.existing:
            await storage.ensure_container()

        async def groups() -> Any:
            async for group in iterate_in_thread(crawler):
                progress.grow(files=len(group.files), nbytes=sum(f.size for f in group.files))
                yield group

        in_flight: dict[int, _SetJob] = {}

        async def run_set(group: DirGroup) -> SetOutcome:
            job = in_flight[id(group)] = _SetJob(up, group)
            try:
                result = await job.run()
            except asyncio.CancelledError:
                raise  # stays listed: the report names it as interrupted
            except BaseException:
                in_flight.pop(id(group), None)
                raise
            in_flight.pop(id(group), None)
            return result

        try:
            async for o in ThrottleWork(_set_parallelism(max_parallel_uploads)).map(run_set, groups()):
                if o.error is not None:
                    up.fail(o.item.abs_dir, o.error)
                    report.sets.append(SetOutcome(o.item.rel_dir, version, "failed"))
                else:
                    assert o.result is not None
                    report.sets.append(o.result)
            await up.tag_index.flush()
            up.failures.extend(up.tag_index.failures)
        except (asyncio.CancelledError, KeyboardInterrupt):
            report.interrupted = True
            for job in in_flight.values():
                job.outcome.status = "interrupted"
                report.sets.append(job.outcome)
            raise
        finally:
            up.set_rows.close()
            _finish(report, up, crawler, started)
    return report


def _finish(report: UploadReport, up: _Uploader, crawler: Crawler, started: float) -> None:
    report.failures = list(up.failures) + [Failure(p.path, p.reason, p.kind) for p in crawler.problems]
    report.duplicates = up.duplicates
    report.files_ignored = crawler.ignored
    sets = report.sets
    report.files_uploaded = sum(s.uploaded for s in sets)
    report.files_already_stored = sum(s.already_stored for s in sets)
    report.files_corrupt = sum(s.corrupt for s in sets)
    report.files_failed = sum(s.failed for s in sets)
    report.bytes_uploaded = sum(s.bytes for s in sets)
    report.sets.sort(key=lambda s: (s.path, s.version))
    report.elapsed = time.perf_counter() - started


async def _plan(up: _Uploader, crawler: Crawler, report: UploadReport) -> None:
    """--dry-run: crawl and name what would be uploaded; read rows if storage answers, write nothing."""
    try:
        await up.storage.ensure(create=False)
        await up.load_existing()
    except CorpusError:
        pass  # no corpus yet (or unreachable): everything would be uploaded
    for group in crawler:
        try:
            identity = SetIdentity(group.rel_dir, up.version)
            for f in group.files:
                identity.blob_name(f.name)
        except CorpusError as exc:
            up.fail(group.abs_dir, exc)
            continue
        existing = up.existing.get(identity)
        state = "planned" if existing is None or not existing.is_complete else "skipped"
        planned = state == "planned"
        report.sets.append(
            SetOutcome(
                identity.path,
                identity.version,
                state,
                images=len(group.files),
                uploaded=len(group.files) if planned else 0,
                already_stored=0 if planned else len(group.files),
                bytes=sum(f.size for f in group.files) if planned else 0,
            )
        )
