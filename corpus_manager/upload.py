"""crawl -> sets -> blobs -> rows: ``upload_tree`` and its report.

Each directory group becomes one ImageSet. Its files are hashed and sniffed first (hashing.py); then
its row is written ``pending`` with this run's claim on the set version (the ContentDigest it will
store: one writer per set version, see lifecycle.py), its files go through the shared upload limit
(one Put Blob, or blocks for a big file, never held whole), and only when every file is stored is the
row marked ``complete`` and indexed by tag. A rerun reads each unfinished set's listing once and
uploads only what is missing or different; a complete set is verified from local MD5s against its
ContentDigest without a single blob request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from . import lifecycle
from . import storage as storage_module
from .crawler import Crawler, DirGroup
from .errors import ConfigError, Conflict, CorpusError, CorruptRow, ImmutableSetError, StorageError
from .hashing import KEEP_BUDGET, PUT_BUDGET, HashedFile, KeepBudget, hash_set
from .imagetypes import CONTENT_TYPES
from .lifecycle import ClaimLost, Lease, RunWriters, SetRun, SetWriter
from .models import COMPLETE, ORIGINAL_PARTITION, ImageSet, SetIdentity, check_name, content_digest
from .results import Failure, NullProgress, ProgressSink, SetRunReport, failure_reason, per_second
from .storage import BlobInfo, Storage, eq
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
class UploadReport(SetRunReport[SetOutcome]):
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

    @property
    def sets_uploaded(self) -> int:
        return self.count("uploaded")

    @property
    def sets_refused(self) -> int:
        return self.count("refused")

    @property
    def files_per_second(self) -> float:
        return per_second(self.files_uploaded, self.elapsed)

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


class UploadSetJob:
    """One directory group's set in one run: hashed, verified or claimed, uploaded, completed (the
    claim, renewal, fence and completion are its ``SetWriter``'s, as for every producer of sets)."""

    def __init__(self, up: Uploader, group: DirGroup, outcome: SetOutcome) -> None:
        self.up = up
        self.group = group
        identity = SetIdentity(group.rel_dir, up.version)
        existing = up.existing.get(identity)
        self.writer = SetWriter(
            up.writers,
            identity,
            tags=group.tags,
            busy=self._busy,
            existing=existing,
            lease=up.leases.get(identity),
            doing="uploaded",
        )
        self.identity = identity
        self.existing: ImageSet | None = existing
        self.listing: dict[str, BlobInfo] = {}
        self.outcome = outcome
        self.digest = ""

    @property
    def label(self) -> str:
        return str(self.identity)

    def _busy(self, lease: Lease, age: float) -> str:
        return (
            f"set {self.label} is being uploaded by another run with different content ({lease.holder}, "
            f"active {age:.0f} s ago); versions are immutable: upload yours as a new "
            f"--version (if that run died, a rerun after {lifecycle.LEASE_SECONDS:.0f} s takes the set over)"
        )

    async def run(self) -> SetOutcome:
        up, out, writer = self.up, self.outcome, self.writer
        verify_only = self.existing is not None and self.existing.is_complete
        listing: asyncio.Task[dict[str, BlobInfo]] | None = None
        results: list[HashedFile] = []
        try:
            if self.existing is not None and not verify_only:
                # read while the files are hashed: what an earlier (interrupted) run of this content stored
                listing = asyncio.create_task(self._list())
            hashed = await hash_set(self.group.files, up.keep if not verify_only else None, up.hashing)
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
                self.checked(good)
                if verify_only:
                    return await self.verify(digest, pairs, failed)
                out.status = "failed" if failed else "empty"
                return out
            refusal = await writer.claim(digest)
            self.existing = writer.existing
            if refusal is not None or (self.existing is not None and self.existing.is_complete):
                self.checked(good)  # nothing of this set is written by this run
                if refusal is not None:
                    up.failures.append(Failure(self.group.abs_dir, refusal, "refused"))
                    out.status = "refused"
                    return out
                return await self.verify(digest, pairs, failed)  # completed meanwhile by another run
            async with writer.held():
                if writer.took_over:
                    self.listing = await self._list()  # what the run it took over from left
                elif listing is not None:
                    self.listing = await listing
                failed = await self.put_all(good)
            if failed:
                out.failed += failed
                out.status = "failed"
                return out
            return await self.complete(image_count=len(good), total_bytes=sum(r.size for r in good), pairs=pairs)
        finally:
            if listing is not None and not listing.done():
                listing.cancel()
                with contextlib.suppress(BaseException):
                    await listing
            elif listing is not None and not listing.cancelled():
                listing.exception()  # retrieved: an unused listing's failure is no one's to report
            for r in results:
                self.release(r)

    async def _list(self) -> dict[str, BlobInfo]:
        await self.up.storage.ensure_container()  # a run may have died between the pending row and it
        return await self.up.storage.list_prefix(self.identity.blob_prefix)

    def checked(self, good: list[HashedFile]) -> None:
        for r in good:
            r.state = "checked"
            self.advance(r)

    def release(self, r: HashedFile) -> None:
        if r.kept:
            self.up.keep.give(r.kept)
            r.kept, r.data = 0, None

    def advance(self, r: HashedFile) -> None:
        if not r.advanced:
            r.advanced = True
            self.up.progress.advance(files=1, nbytes=r.size)

    # ----- blobs ------------------------------------------------------------------------------
    async def put_all(self, good: list[HashedFile]) -> int:
        """Upload what is not stored yet; returns how many files failed (a lost claim stops them all)."""
        up, failed = self.up, 0
        async for o in up.uploads.map(self.put_one, good):
            self.release(o.item)
            if o.error is not None:
                self.advance(o.item)
                if not isinstance(o.error, ClaimLost):  # a lost claim is named once, for the set
                    failed += 1
                    up.fail(o.item.file.path, o.error)
        if self.writer.lost:
            return failed
        names = {self.identity.blob_prefix + r.file.name for r in good}
        for name in [n for n in self.listing if n not in names]:  # left by an interrupted run of files gone locally
            await self.writer.fence()
            await up.uploads.run(partial(up.storage.delete_blob, name))
        return failed

    async def put_one(self, res: HashedFile) -> HashedFile:
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
        await self.writer.fence()
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
                token=up.writers.run_id,
                budget=up.put_budget,
                before_commit=self.writer.fence,
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
        """Mark the set complete (SetWriter.complete). A run that took the set over first checks the
        listing: a run it took over from may have written after its claim expired."""
        up, out = self.up, self.outcome
        if self.writer.took_over:
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
            tags=self.group.tags,
            status=COMPLETE,
            image_count=image_count,
            total_bytes=total_bytes,
            content_digest=self.digest,
        )
        await self.writer.complete(image_set)
        out.status = "uploaded"
        return out

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
                await self.up.writers.tags.add(existing)
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

    def corrupt(self, res: HashedFile) -> HashedFile:
        """A file that is not a whole image: named, never uploaded nor compared."""
        res.state = "corrupt"
        self.outcome.corrupt += 1
        self.up.failures.append(Failure(res.file.path, f"{res.bad}; not uploaded", "corrupt"))
        self.advance(res)
        return res


class Uploader:
    """One upload run: its limits, budgets, writers, the rows it read and what it found wrong."""

    def __init__(self, storage: Storage, version: str, uploads: int, upserts: int, progress: ProgressSink) -> None:
        self.storage = storage
        self.version = version
        self.uploads = ThrottleWork(uploads)
        self.writers = RunWriters(storage, ThrottleWork(upserts))
        self.progress = progress
        self.existing: dict[SetIdentity, ImageSet] = {}
        self.leases: dict[SetIdentity, Lease] = {}  # the claims on the pending rows among them
        self.keep = KeepBudget(KEEP_BUDGET)
        self.hashing = asyncio.Semaphore(os.cpu_count() or 2)  # hashing calls at once: see HASH_CALL_BYTES
        self.put_budget = ByteBudget(PUT_BUDGET)
        self.failures: list[Failure] = []
        self.duplicates: list[list[str]] = []

    def fail(self, item: str, exc: BaseException) -> None:
        self.failures.append(Failure(item, failure_reason(exc)))

    def note_duplicates(self, identity: SetIdentity, results: list[HashedFile]) -> None:
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
                self.leases[image_set.identity] = Lease.of(entity)


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
    up = Uploader(storage, version, max_parallel_uploads, max_parallel_upserts, progress)
    if dry_run:
        try:
            await _plan(up, crawler, report)
        finally:
            up.writers.close()
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

        def failed(group: DirGroup, exc: BaseException) -> None:
            up.fail(group.abs_dir, exc)

        async def run_set(group: DirGroup, outcome: SetOutcome) -> SetOutcome:
            return await UploadSetJob(up, group, outcome).run()

        sets = SetRun(lambda g: SetOutcome(g.rel_dir, version, "failed"), report.sets, failed)
        try:
            await sets.run(run_set, groups(), _set_parallelism(max_parallel_uploads))
            up.failures.extend(await up.writers.flush())
        except (asyncio.CancelledError, KeyboardInterrupt):
            report.interrupted = True
            raise
        finally:
            up.writers.close()
            _finish(report, up, crawler, started)
    return report


def _finish(report: UploadReport, up: Uploader, crawler: Crawler, started: float) -> None:
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


async def _plan(up: Uploader, crawler: Crawler, report: UploadReport) -> None:
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
