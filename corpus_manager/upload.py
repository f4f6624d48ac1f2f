"""crawl -> sets -> blobs -> rows: ``upload_tree`` and its report.

Each directory group becomes one ImageSet. Its row is written ``pending`` before its first blob,
its files go through the shared upload limit (read, MD5, sniff, PUT), and only when every file is
stored is the row marked ``complete`` and indexed by tag. A rerun reads each unfinished set's
listing once and uploads only what is missing or different; a complete set is verified from local
MD5s against its ContentDigest without a single blob request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .crawler import Crawler, DirGroup, LocalFile
from .errors import ConfigError, Conflict, CorpusError, CorruptRow, ImmutableSetError
from .imagetypes import CONTENT_TYPES, NotAnImage, sniff
from .models import COMPLETE, ORIGINAL_PARTITION, PENDING, ImageSet, SetIdentity, check_name, content_digest
from .results import Failure, NullProgress, ProgressSink
from .rowcommit import GroupCommit
from .storage import BlobInfo, Storage
from .tagindex import TagIndexWriter
from .throttle import ThrottleWork, iterate_in_thread, open_file_cap


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
            "sets": {"total": len(self.sets), "uploaded": self.sets_uploaded, "skipped": self.sets_skipped,
                     "refused": self.sets_refused, "failed": self.sets_failed},
            "files": {"uploaded": self.files_uploaded, "already_stored": self.files_already_stored,
                      "corrupt": self.files_corrupt, "failed": self.files_failed, "ignored": self.files_ignored},
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


# Files up to this size are read, hashed and sniffed on the event loop: a page-cache read and MD5 of
# 20 KB take ~20-50 us, less than a thread hop (submit, wake-up, GIL hand-off, loop wake-up) costs.
INLINE_READ_MAX = 256 * 1024


def _read_and_check(path: str) -> tuple[bytes, bytes, str | None, str | None]:
    """Read, hash and sniff one file: in a worker thread, or inline for small files."""
    with open(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    try:
        return data, digest, sniff(data), None
    except NotAnImage as exc:
        return data, digest, None, str(exc)


def _check_all(files: list[LocalFile]) -> list[tuple[int, bytes, str | None] | OSError]:
    """A complete set's files, read and hashed in one worker-thread call (size, MD5, why corrupt)."""
    out: list[tuple[int, bytes, str | None] | OSError] = []
    for f in files:
        try:
            data, md5, _kind, bad = _read_and_check(f.path)
            out.append((len(data), md5, bad))
        except OSError as exc:
            out.append(exc)
    return out


# The run's ImageSets writes (pending rows, complete rows, Indexed flags), group-committed: the rows
# of original sets share a partition, so 100 sets cost a few requests instead of 300 (rowcommit.py).
_SetRows = GroupCommit


class _SetJob:
    """The lifecycle of one set in one run."""

    def __init__(self, up: _Uploader, group: DirGroup) -> None:
        self.up = up
        self.group = group
        self.identity = SetIdentity(group.rel_dir, up.version)
        self.existing: ImageSet | None = up.existing.get(self.identity)
        self.listing: dict[str, BlobInfo] = {}
        self.row_ready: asyncio.Future[None] | None = None
        self.etag: str | None = self.existing.etag if self.existing else None
        self.outcome = SetOutcome(self.identity.path, self.identity.version, "failed")
        self.tags = group.tags

    @property
    def label(self) -> str:
        return str(self.identity)

    @property
    def completed_elsewhere(self) -> bool:
        """Another run (two uploads of one root at once) completed the set after this one started it."""
        return self.row_ready is not None and self.existing is not None and self.existing.is_complete

    async def run(self) -> SetOutcome:
        up, out = self.up, self.outcome
        verify_only = self.existing is not None and self.existing.is_complete
        if self.existing is not None and not verify_only:
            await up.storage.ensure_container()  # a run may have died between the pending row and it
            self.listing = await up.storage.list_prefix(self.identity.blob_prefix)
        results: list[_FileResult] = []
        failed = 0
        if verify_only:
            # a complete set needs no request, only its local MD5s: one thread call for the whole set
            # instead of a task and a thread hop per file (a no-op rerun is nothing else)
            checked = await asyncio.to_thread(_check_all, self.group.files)
            for f, item in zip(self.group.files, checked, strict=True):
                if isinstance(item, OSError):
                    failed += 1
                    up.fail(f.path, item)
                    up.progress.advance(files=1)
                    continue
                size, md5, bad = item
                results.append(self.checked(f, md5, size, bad))
        else:
            async for o in up.uploads.map(self.one_file, self.group.files):
                if o.error is not None:
                    failed += 1
                    up.fail(o.item.path, o.error)
                    up.progress.advance(files=1)
                    continue
                assert o.result is not None
                results.append(o.result)
        out.failed = failed
        good = sorted((r for r in results if r.state != "corrupt"), key=lambda r: r.file.name)
        out.images = len(good)
        self.up.note_duplicates(self.identity, good)
        pairs = [(r.file.name, r.md5_hex) for r in good]
        digest = content_digest(pairs)
        if verify_only or self.completed_elsewhere:
            return await self.verify(digest, pairs, failed)
        if failed:
            out.status = "failed"
            return out
        if not good:
            out.status = "empty"
            return out
        await self.ensure_row()  # a set whose files were all stored by an earlier run still needs its row
        if self.completed_elsewhere:
            return await self.verify(digest, pairs, failed)
        extra = [name for name in self.listing if name not in {self.identity.blob_prefix + n for n, _ in pairs}]
        for name in extra:  # left by an interrupted run of files that are gone locally
            await up.uploads.run(lambda n=name: up.storage.delete_blob(n))
        image_set = ImageSet(self.identity, tags=self.tags, status=COMPLETE, image_count=len(good),
                             total_bytes=sum(r.size for r in good), content_digest=digest)
        entity = image_set.to_entity()
        entity["Indexed"] = False
        for _attempt in range(3):
            try:
                self.etag = await up.set_rows.update(entity, self.etag)
                break
            except Conflict:
                # another run changed the row since we read it (ETag mismatch): decide on its new state
                current = await self.reread()
                if current.is_complete:
                    if current.content_digest != digest:
                        raise ImmutableSetError(f"set {self.label} was completed meanwhile by another run with "
                                                "different content; versions are immutable") from None
                    if not current.indexed:
                        await up.tag_index.add(current)
                    out.status = "uploaded"
                    return out
                self.etag = current.etag
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
        remote = {name[len(prefix):]: info.md5_hex for name, info in stored.items()}
        local = dict(pairs)
        added = sorted(set(local) - set(remote))
        removed = sorted(set(remote) - set(local))
        changed = sorted(n for n in set(local) & set(remote) if local[n] != remote[n])
        detail = ", ".join(f"{len(v)} {k}" + (f" (e.g. {v[0]})" if v else "")
                           for k, v in (("added", added), ("changed", changed), ("removed", removed)) if v)
        err = ImmutableSetError(f"set is complete and its local content differs ({detail or 'digest differs'}); "
                                "versions are immutable: upload it as a new --version")
        self.up.failures.append(Failure(self.group.abs_dir, str(err), "refused"))
        out.status = "refused"
        return out

    async def ensure_row(self) -> None:
        """Write the pending row once, just before the set's first blob (a set of only corrupt files gets none)."""
        if self.existing is not None:
            return
        if self.row_ready is None:
            self.row_ready = asyncio.get_running_loop().create_future()
            try:
                pending = ImageSet(self.identity, tags=self.tags, status=PENDING)
                try:
                    self.etag = await self.up.set_rows.create(pending.to_entity())
                    self.existing = pending
                except Conflict:
                    # another run created it meanwhile: continue from its row (if that run already
                    # completed it, this one only verifies: see completed_elsewhere)
                    self.existing = await self.reread()
                    self.etag = self.existing.etag
                self.row_ready.set_result(None)
            except BaseException as exc:
                self.row_ready.set_exception(exc)
                self.row_ready.exception()  # mark retrieved; each waiter re-raises it
                raise
        else:
            await asyncio.shield(self.row_ready)

    def checked(self, f: LocalFile, md5: bytes, size: int, bad: str | None) -> _FileResult:
        """A file of a complete set, hashed: checked, or corrupt (named, never compared)."""
        res = _FileResult(f, md5.hex(), size, "checked")
        if bad is not None:
            res.state = "corrupt"
            self.outcome.corrupt += 1
            self.up.failures.append(Failure(f.path, f"{bad}; not uploaded", "corrupt"))
        self.up.progress.advance(files=1, nbytes=size)
        return res

    async def one_file(self, f: LocalFile) -> _FileResult:
        up = self.up
        if f.size <= INLINE_READ_MAX:
            data, md5, kind, bad = _read_and_check(f.path)
        else:
            data, md5, kind, bad = await asyncio.to_thread(_read_and_check, f.path)
        res = _FileResult(f, md5.hex(), len(data))
        out = self.outcome
        if bad is not None:
            res.state = "corrupt"
            out.corrupt += 1
            up.failures.append(Failure(f.path, f"{bad}; not uploaded", "corrupt"))
            up.progress.advance(files=1, nbytes=len(data))
            return res
        name = self.identity.blob_name(f.name)
        known = self.listing.get(name)
        if known is not None and known.md5_hex == res.md5_hex and known.size == len(data):
            res.state = "stored"
            out.already_stored += 1
        else:
            await self.ensure_row()
            if self.completed_elsewhere:  # nothing of it may be overwritten: the set is only verified
                res.state = "checked"
                up.progress.advance(files=1, nbytes=len(data))
                return res
            assert kind is not None
            await up.storage.put_blob(name, data, content_type=CONTENT_TYPES[kind], md5=md5)
            res.state = "uploaded"
            out.uploaded += 1
            out.bytes += len(data)
        up.progress.advance(files=1, nbytes=len(data))
        return res


class _Uploader:
    def __init__(self, storage: Storage, version: str, uploads: int, upserts: int,
                 progress: ProgressSink) -> None:
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
        query = "PartitionKey eq @pk and Version eq @v"
        async for entity in self.storage.query(self.storage.sets, query, {"pk": ORIGINAL_PARTITION,
                                                                          "v": self.version}):
            try:
                image_set = ImageSet.from_entity(entity)
            except CorruptRow as exc:
                self.progress.note(str(exc))
                self.failures.append(Failure(f"{entity.get('PartitionKey')}/{entity.get('RowKey')}", str(exc)))
                continue
            self.existing[image_set.identity] = image_set


def _set_parallelism(uploads: int) -> int:
    # Enough sets in flight that their table round trips overlap other sets' PUTs.
    return max(2, min(uploads, 32))


async def upload_tree(storage: Storage, root: str, version: str, *, extensions: Any = None,
                      max_parallel_uploads: int = 20, max_parallel_upserts: int = 5, dry_run: bool = False,
                      progress: ProgressSink | None = None,
                      on_crawler: Callable[[Crawler], None] | None = None,
                      report: UploadReport | None = None) -> UploadReport:
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
    max_parallel_upserts, capped_upserts = open_file_cap(max_parallel_upserts, "--max-parallel-upserts",
                                                         per_item=4)
    max_parallel_uploads, capped = open_file_cap(max_parallel_uploads, "--max-parallel-uploads",
                                                 others=max_parallel_upserts)
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
        report.sets.append(SetOutcome(identity.path, identity.version, state, images=len(group.files),
                                      uploaded=len(group.files) if planned else 0,
                                      already_stored=0 if planned else len(group.files),
                                      bytes=sum(f.size for f in group.files) if planned else 0))
