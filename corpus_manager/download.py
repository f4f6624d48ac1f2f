"""``corpus download``: the sets a query selects, onto local disk by blob name, with a manifest.

Each selected set is listed once (its blobs directly under its prefix); every blob goes through one
``ThrottleWork`` bound (``--max-parallel-downloads``), the same runner and kind of bound as uploads.
A blob lands at ``OUT/<blob name>`` only if that path is provably inside OUT: names with ``..`` or
``.`` segments, empty segments, a leading ``/``, a backslash, a drive letter or a NUL (any control
character on Windows) are refused, and the resolved path (symbolic links followed) must still be under
OUT. A file already there with the blob's size and MD5 is kept (its MD5 from ``dlcache.Md5Cache`` while
the file is unchanged, so a rerun hashes nothing). A blob up to ``storage.DOWNLOAD_WHOLE`` is fetched
whole and written in one writer-thread call (``dlcache.write_whole``); a bigger one is streamed to a
temporary file in ``storage.STREAM_CHUNK`` pieces, hashed as it arrives. Either is checked against the
blob's Content-MD5 before it is renamed into place: a target is never half-written and a mismatch never
passes silently. One thread owns each temporary file from creation to rename or unlink (``_TempFile``),
so no cancel can strand one; a rerun removes those a killed run left (``_remove_if_abandoned``). The name
checks are ``dltarget``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import stat
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, NamedTuple

try:
    import fcntl  # POSIX: a temporary file's owner holds a lock on it (see _remove_if_abandoned)
except ImportError:  # Windows refuses to delete a file another process has open, which serves the same end
    fcntl = None  # type: ignore[assignment]  # the module, or None where the OS has none

from . import storage as _st
from .dlcache import Md5Cache, is_temp_name, temp_path, write_whole
from .dltarget import UnsafeBlobName, local_target, target_and_stat  # noqa: F401 (re-exported)
from .errors import ConfigError, CorpusError
from .filemanifest import MANIFEST_FIELDS, manifest_kind, neutralise_cell, write_manifest  # noqa: F401 (re-exported)
from .query import QueryFilter, SetRow, query_sets
from .results import Failure, NullProgress, ProgressSink
from .storage import BlobInfo, Storage
from .throttle import ThrottleWork, open_file_cap


class ChecksumMismatch(CorpusError):
    """What arrived is not what the blob's Content-MD5 says it is."""


@dataclass
class FileRecord:
    """One image on disk: a manifest record."""

    local_path: str
    blob_name: str
    set_path: str
    tags: list[str]
    version: str
    transform_name: str
    transform_version: str
    bytes: int
    md5: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DownloadItem:
    """A file for ``download_items``: blob, MD5 and size, ``target`` ('/'-separated, relative to --out) and its
    record; ``pinned``: ``md5_hex`` (a release's) rules, not the blob's Content-MD5 at download time."""

    blob_name: str
    md5_hex: str | None
    size: int
    target: str
    record: FileRecord
    pinned: bool = False


@dataclass
class DownloadReport:
    out: str
    manifest: str | None = None
    sets: int = 0
    files_downloaded: int = 0
    files_present: int = 0
    files_failed: int = 0
    files_refused: int = 0
    bytes_downloaded: int = 0
    elapsed: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    retries: int = 0  # requests storage failed (error, reset, no answer) that were tried again
    records: list[FileRecord] = field(default_factory=list)
    files_selected: int = 0  # images of the selected sets, by their rows
    interrupted: bool = False
    manifest_error: str | None = None  # why --manifest could not be written (the files are still there)
    files_hashed: int = 0  # local files read and hashed to compare (unchanged ones come from the MD5 cache)

    @property
    def files_not_done(self) -> int:
        """Selected files with no outcome yet (an interrupted run)."""
        done = self.files_downloaded + self.files_present + self.files_failed + self.files_refused
        return max(0, self.files_selected - done)

    @property
    def files_per_second(self) -> float:
        return self.files_downloaded / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.interrupted else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "manifest": self.manifest,
            "manifest_error": self.manifest_error,
            "sets": self.sets,
            "files": {
                "downloaded": self.files_downloaded,
                "already_present": self.files_present,
                "failed": self.files_failed,
                "refused": self.files_refused,
            },
            "interrupted": self.interrupted,
            "files_not_done": self.files_not_done,  # of the selected sets' images, when interrupted
            "bytes_downloaded": self.bytes_downloaded,
            "elapsed_seconds": round(self.elapsed, 3),
            "files_per_second": round(self.files_per_second, 1),
            "failures": [f.to_json() for f in self.failures],
            "warnings": self.warnings,
            "retries": self.retries,
            "files_hashed": self.files_hashed,  # local files hashed to compare (0 on a rerun of unchanged files)
        }


def _remove_if_abandoned(path: Path) -> bool:
    """Unlink a temporary file of ours that no live run owns (its owner died: SIGKILL, power loss). An
    owner holds an exclusive ``flock`` on its file until it is renamed or unlinked, and the kernel drops
    the lock when the owner dies: a lock we can take means an abandoned file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # its owner is alive
        # still the file we locked (not one made since under the same name)
        if not os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
            return False
        path.unlink()  # on Windows this fails while another process has the file open: alive
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class _Commit(NamedTuple):
    expected_md5: str | None


_ABORT = object()


class _Aborted(Exception):
    """The download ended (failed, cancelled) before its verdict: the owner removes the file."""


class _TempFile:
    """One download's temporary file, owned by one thread from creation to rename or unlink.

    The event loop only hands it chunks (``write``), then a verdict: ``commit`` (with the MD5 the bytes must
    have) or ``abort``. The owning thread (``_own``, one call in the writer pool) creates the file beside the
    target, writes and hashes the chunks, and renames it into place and counts it, or unlinks it: all in that
    one call. A cancel (Ctrl-C, SIGTERM) can only send ``abort``: it never strands a file, nor counts one that
    is not there; ``download_items`` ends only once every owner is done (even when cancelled: it waits in a
    thread that ``asyncio.run`` waits for). At most one chunk waits for the owner: a download holds about
    two chunks, whatever the blob's size. (A small download is one call too: ``write_small``.)
    """

    def __init__(self, downloader: _Downloader, target: Path) -> None:
        self.downloader = downloader
        self.target = target
        self.loop = asyncio.get_running_loop()
        self.messages: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.room = asyncio.Semaphore(1)
        self.done: asyncio.Future[tuple[str, int]] | None = None
        self.error: BaseException | None = None  # set by the owner when it failed: the writer stops

    def _start(self) -> None:
        if self.done is None:
            self.done = asyncio.wrap_future(self.downloader.writers.submit(self._own))
            # an aborted download never awaits its owner: its error is known, and not worth a log line
            self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def write(self, chunk: bytes) -> None:
        await self.room.acquire()
        if self.error is not None:
            raise self.error
        self._start()
        self.messages.put(chunk)

    async def commit(self, expected_md5: str | None) -> tuple[str, int]:
        """The MD5 hex and size of the file now in place; raises (and leaves nothing) if it is not whole."""
        self._start()
        self.messages.put(_Commit(expected_md5))
        assert self.done is not None
        return await self.done

    def abort(self) -> None:
        """No await: safe in any cleanup path. Nothing to do when no owner was started (no file exists)."""
        if self.done is not None:
            self.messages.put(_ABORT)

    def _release(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for room any more
            self.loop.call_soon_threadsafe(self.room.release)

    def _own(self) -> tuple[str, int]:
        """The owner: runs in a writer thread, once, from the first message to the verdict."""
        h = hashlib.md5(usedforsecurity=False)
        size = 0
        temp: Path | None = None
        fh: IO[bytes] | None = None
        try:
            message = self.messages.get()
            if message is _ABORT:
                raise _Aborted  # the download stopped before anything was written
            temp, fh = self.downloader.create_temp(self.target)
            while not isinstance(message, _Commit):
                if message is _ABORT:
                    raise _Aborted
                assert isinstance(message, bytes)
                fh.write(message)
                h.update(message)
                size += len(message)
                self._release()
                message = self.messages.get()
            # the blob may have been replaced since the listing: its own Content-MD5 is the authority
            if h.hexdigest() != message.expected_md5:
                raise _mismatch(h.hexdigest(), message.expected_md5)
            fh.flush()
            st = os.fstat(fh.fileno())  # the file's stat for the MD5 cache, as write_whole takes it
            # renamed while still open and locked, so no other run's cleanup can take it meanwhile; counted
            # in the same step, so the summary's count is the files that are there
            os.replace(temp, self.target)
            temp = None
            self.downloader.count_downloaded(size)
            self.downloader.cache.remember(self.target, st, h.hexdigest())
            return h.hexdigest(), size
        except BaseException as exc:
            self.error = exc
            self._release()  # a writer waiting for room wakes and stops
            if temp is not None:
                _unlink_quietly(temp)
            raise
        finally:
            if fh is not None:
                fh.close()


class _Downloader:
    def __init__(
        self, storage: Storage, out_root: Path, limit: int, progress: ProgressSink, report: DownloadReport
    ) -> None:
        self.storage = storage
        self.out_root = out_root
        self.limit = limit
        self.progress = progress
        self.report = report
        # the temporary files' owners: their own threads, since an owner waits for its download's chunks,
        # and anything the downloads need from the default executor (DNS) must never queue behind them
        self.writers = ThreadPoolExecutor(max_workers=min(limit, 32), thread_name_prefix="corpus-download")
        self.lock = threading.Lock()  # the counts the owners update, and the set of swept directories
        self.swept: set[str] = set()
        self.inside: set[str] = set()  # directories resolved inside out_root (see local_target)
        self.made: set[str] = set()  # directories this run made or found (no mkdir per file)
        self.cache = Md5Cache(out_root)

    async def one(self, item: DownloadItem) -> tuple[str, FileRecord]:
        target, st = target_and_stat(self.out_root, item.target, self.inside)
        if not item.md5_hex:
            raise ChecksumMismatch("the blob has no Content-MD5 to check against; not downloaded")
        # on the loop when it is a stat and a cache look-up (the rerun); a thread to sweep or to hash
        there = self.settled(target, st, item)
        if there is None:
            there = await asyncio.to_thread(self.inspect, target, item)
        if there:
            self.report.files_present += 1
            return "present", replace(item.record, local_path=str(target), bytes=item.size, md5=item.md5_hex)
        md5_hex, size = await self.fetch(item, target)
        return "downloaded", replace(item.record, local_path=str(target), bytes=size, md5=md5_hex)

    def settled(self, target: Path, st: os.stat_result | None, item: DownloadItem) -> bool | None:
        """Is the file there (``st``: its stat, None if absent) the blob, known without more I/O? None: ask
        ``inspect``."""
        if os.path.dirname(target) not in self.swept:
            return None
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        if st.st_size != item.size:
            return False
        md5 = self.cache.md5_of(target, st)
        return None if md5 is None else md5 == item.md5_hex

    def inspect(self, target: Path, item: DownloadItem) -> bool:
        """(In a thread.) Sweep the target's directory (once a run); is the file there the blob?"""
        self.sweep(target.parent)
        return self.cache.local_md5(target, item.size) == item.md5_hex

    def sweep(self, directory: Path) -> None:
        """Remove the temporary files earlier runs left in ``directory`` when they were killed."""
        with self.lock:
            if str(directory) in self.swept:
                return
            self.swept.add(str(directory))
        try:
            with os.scandir(directory) as entries:
                stale = [Path(e.path) for e in entries if is_temp_name(e.name) and e.is_file(follow_symlinks=False)]
        except OSError:
            return  # not there yet: nothing to sweep
        for path in stale:
            _remove_if_abandoned(path)

    def create_temp(self, target: Path) -> tuple[Path, IO[bytes]]:
        """(In the owner's thread.) A new temporary file beside ``target``, open and locked by its owner."""
        parent = os.path.dirname(target)
        if parent not in self.made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.made.add(parent)
        while True:
            temp = temp_path(target)
            fh = open(temp, "xb")  # noqa: SIM115 (its owner closes it)
            try:
                if fcntl is None:
                    return temp, fh
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # waits only while another run's sweep looks at it
                if os.path.samestat(os.fstat(fh.fileno()), os.stat(temp, follow_symlinks=False)):
                    return temp, fh
            except FileNotFoundError:
                pass
            except BaseException:
                fh.close()
                _unlink_quietly(temp)
                raise
            fh.close()  # another run's sweep removed it before the lock was ours: make another

    def count_downloaded(self, size: int) -> None:
        with self.lock:
            self.report.files_downloaded += 1
            self.report.bytes_downloaded += size

    async def fetch(self, item: DownloadItem, target: Path) -> tuple[str, int]:
        def expected(props: BlobInfo) -> str | None:
            return item.md5_hex if item.pinned else (props.md5_hex or item.md5_hex)

        if item.size <= _st.DOWNLOAD_WHOLE:
            # a photo: one GET into memory, then its whole life on disk in one writer-thread call
            data, props = await self.storage.get_blob(item.blob_name)
            done = self.writers.submit(self.write_small, target, data, expected(props))
            return await asyncio.wrap_future(done), len(data)
        owner = _TempFile(self, target)
        try:
            props = await self.storage.download_to(item.blob_name, owner.write)
            md5_hex, size = await owner.commit(expected(props))
        except BaseException:
            owner.abort()
            raise
        return md5_hex, size

    def write_small(self, target: Path, data: bytes, expected_md5: str | None) -> str:
        """(A writer thread, one call.) Check, write, rename, count and remember a small download."""
        md5_hex, st = write_whole(target, data, expected_md5, self.create_temp, _mismatch)
        self.count_downloaded(len(data))
        self.cache.remember(target, st, md5_hex)
        return md5_hex


async def _set_items(
    storage: Storage, sets: list[SetRow], limit: int, progress: ProgressSink, report: DownloadReport
) -> AsyncIterator[DownloadItem]:
    """Each set's blobs, as its listing arrives (listings overlap the downloads of earlier sets)."""
    async for o in ThrottleWork(limit).map(lambda s: storage.list_prefix(s.blob_prefix), sets):
        row = o.item
        if o.error is not None:
            report.failures.append(Failure(row.blob_prefix, f"cannot list the set: {o.error}"))
            continue
        blobs: dict[str, BlobInfo] = o.result or {}
        if len(blobs) != row.images:
            note = (
                f"set {row.identity} lists {len(blobs)} blobs under {row.blob_prefix} but its row "
                f"says {row.images} images"
            )
            report.warnings.append(note)
            progress.note(note)
        progress.grow(files=len(blobs), nbytes=sum(b.size for b in blobs.values()))
        for name in sorted(blobs):
            b = blobs[name]
            rec = FileRecord(
                local_path="",  # filled in once the file is there
                blob_name=name,
                set_path=row.path,
                tags=list(row.tags),
                version=row.version,
                transform_name=row.transform_name,
                transform_version=row.transform_version,
                bytes=b.size,
                md5=b.md5_hex or "",
            )
            yield DownloadItem(name, b.md5_hex, b.size, name, rec)


def _mismatch(got: str, expected: str | None) -> ChecksumMismatch:
    return ChecksumMismatch(f"downloaded content has MD5 {got} but the blob's Content-MD5 is {expected}; not written")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CorpusError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot write: {exc.strerror or exc}"
    return f"{exc.__class__.__name__}: {exc}"


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


async def download_sets(
    storage: Storage,
    out: str,
    filters: QueryFilter | None = None,
    *,
    manifest: str | None = None,
    max_parallel_downloads: int = 20,
    progress: ProgressSink | None = None,
    report: DownloadReport | None = None,
) -> DownloadReport:
    """Download every image of the complete sets ``filters`` selects into ``out``. See the module docstring.

    Pass ``report`` to have it filled in place: if the run is cancelled (Ctrl-C), it still says what
    was done and what was not."""
    out_path = check_download_args(out, manifest, max_parallel_downloads)
    progress = progress or NullProgress()
    result = await query_sets(storage, filters)
    if report is None:
        report = DownloadReport(out=str(out_path.resolve()))
    report.sets = len(result.sets)
    report.files_selected = sum(s.images for s in result.sets)
    for p in result.problems:
        report.failures.append(p)
        progress.note(str(p))
    limit = open_file_cap(max_parallel_downloads, "--max-parallel-downloads", per_item=3)[0]
    items = _set_items(storage, result.sets, limit, progress, report)
    return await download_items(
        storage,
        items,
        out,
        manifest=manifest,
        max_parallel_downloads=max_parallel_downloads,
        progress=progress,
        report=report,
    )


def check_download_args(out: str, manifest: str | None, max_parallel_downloads: int) -> Path:
    """The usage errors of a download, raised before any work; returns --out as a Path."""
    if max_parallel_downloads < 1:
        raise ConfigError("--max-parallel-downloads must be at least 1")
    if manifest is not None:
        manifest_kind(manifest)  # a usage error before any work
    out_path = Path(out).expanduser()
    if out_path.exists() and not out_path.is_dir():
        raise ConfigError(f"--out {out!r} exists and is not a directory")
    return out_path


async def download_items(
    storage: Storage,
    items: Iterable[DownloadItem] | AsyncIterable[DownloadItem],
    out: str,
    *,
    manifest: str | None = None,
    max_parallel_downloads: int = 20,
    progress: ProgressSink | None = None,
    report: DownloadReport | None = None,
) -> DownloadReport:
    """Download ``items`` into ``out`` (see the module docstring): ``download_sets`` and a release's download
    both end here. The caller sets ``report.sets`` and ``report.files_selected``."""
    out_path = check_download_args(out, manifest, max_parallel_downloads)
    progress = progress or NullProgress()
    started = time.perf_counter()
    # each download holds a socket and a file, and as many set listings (a socket each) may run beside
    # them: never more in flight than the open-file limit holds
    max_parallel_downloads, capped = open_file_cap(max_parallel_downloads, "--max-parallel-downloads", per_item=3)
    if report is None:
        report = DownloadReport(out=str(out_path.resolve()))
    if capped:
        report.warnings.append(capped)
    report.out = str(out_path.resolve())
    report.manifest = str(Path(manifest).resolve()) if manifest else None
    try:
        out_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out!r} cannot be created: {exc.strerror or exc}") from None
    out_root = out_path.resolve()
    dl = _Downloader(storage, out_root, max_parallel_downloads, progress, report)
    await asyncio.to_thread(dl.cache.load)
    try:
        async for o in ThrottleWork(max_parallel_downloads).map(dl.one, items):
            blob_name = o.item.blob_name
            if o.error is not None:
                if isinstance(o.error, UnsafeBlobName):
                    report.files_refused += 1
                    report.failures.append(Failure(blob_name, f"{o.error}; not written", "refused"))
                else:
                    report.files_failed += 1
                    report.failures.append(Failure(blob_name, _reason(o.error)))
                progress.advance(files=1)
                continue
            assert o.result is not None
            _, rec = o.result
            # files_downloaded / files_present were counted where the file was settled
            report.records.append(rec)
            progress.advance(files=1, nbytes=rec.bytes)
    except (asyncio.CancelledError, KeyboardInterrupt):
        report.interrupted = True  # files in flight were dropped with their temporary files
        raise
    finally:
        # every owner has its verdict by now (each download ended, in its own except if cancelled): wait
        # for them to act on it, so the counts are final; in a thread, which asyncio.run waits for even
        # if this wait is cancelled
        await asyncio.to_thread(dl.writers.shutdown)
        await asyncio.to_thread(dl.cache.save)
        report.files_hashed = dl.cache.hashed
        report.records.sort(key=lambda r: r.blob_name)
        report.failures.sort(key=lambda f: (f.kind, f.item))
        report.elapsed = time.perf_counter() - started
    if manifest is not None:
        try:
            await asyncio.to_thread(write_manifest, manifest, report.records)
        except OSError as exc:  # a read-only directory, a full disk: the downloads stand, the run says so
            report.manifest_error = f"not written: {exc.strerror or exc}"
            report.failures.append(Failure(report.manifest or manifest, f"manifest {report.manifest_error}"))
    return report
