"""``corpus export --release NAME --format webdataset``: a release as deterministic WebDataset tar shards.

The plan (which samples, in which order, in which shard) is a pure function of the manifest, the
release's seed and the shard size (``corpus_manager.shards``). Each shard is written once into a
temporary file while its images arrive (``max_parallel_downloads`` GETs in flight, within a byte
budget), hashed as it is written (SHA-256, MD5, and the MD5 of each 8 MiB block), then published:

- into the container under ``exports/NAME/webdataset/`` by ``Storage.put_blocks`` (Put Block, then Put
  Block List): the blocks of an interrupted upload are never committed, so no partial shard is ever
  visible under its name, and no shard is ever held whole in memory (the file is staged in the
  temporary directory, ``$TMPDIR``: point it at a disk where ``/tmp`` is a RAM-backed tmpfs). At most
  two shards are staged at once: one uploading while the next is built;
- or into ``--out DIR`` by a rename of ``DIR/.NAME.partial-RUN`` to ``DIR/NAME``.

A rerun writes nothing that is there already: a shard whose plan digest, size and hash match the
previous ``index.json`` is not even read again, and one rebuilt after an interruption is only
published when its bytes differ from what is there. ``index.json`` is written last, once every shard
of the export is in place, so an index never names a shard that is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import ConfigError
from .results import Failure, NullProgress, ProgressSink
from .shards import DEFAULT_SHARD_SIZE, FORMATS, HashingWriter, ShardPlan, parse_size, plan_shards
from .storage import BLOCK_SIZE, Storage
from .stream import EXPORT_PREFIX, _Window, check_image, open_release, read_index
from .throttle import ByteBudget

FETCH_BUDGET = 64 * 1024 * 1024  # image bytes fetched but not yet written, whatever their sizes
_SHARD = re.compile(r"^(?P<split>.+)-\d{6}\.tar$")


@dataclass
class ExportReport:
    release: str
    destination: str
    shard_size: int
    split: str | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)  # index.json's entries, in order
    shards_written: int = 0  # shards stored by this run
    shards_present: int = 0  # shards already there with the same SHA-256: not written
    images_read: int = 0
    bytes_written: int = 0
    index_written: bool = False
    removed: list[str] = field(default_factory=list)  # shards of an earlier plan no longer in the index
    failures: list[Failure] = field(default_factory=list)
    elapsed: float = 0.0
    interrupted: bool = False

    @property
    def writes(self) -> int:
        """Blobs or files this run created or replaced (shards and index.json)."""
        return self.shards_written + int(self.index_written)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.interrupted else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "format": "webdataset",
            "destination": self.destination,
            "split": self.split,
            "shard_size": self.shard_size,
            "shards": self.shards,
            "shards_written": self.shards_written,
            "shards_present": self.shards_present,
            "images_read": self.images_read,
            "bytes_written": self.bytes_written,
            "index_written": self.index_written,
            "removed": self.removed,
            "failures": [f.to_json() for f in self.failures],
            "elapsed": round(self.elapsed, 3),
            "interrupted": self.interrupted,
        }


def plan_digest(plan: ShardPlan) -> str:
    """What decides a shard's bytes: its samples' keys, extensions and records (names, sizes, MD5s)."""
    h = hashlib.sha256()
    for s in plan.samples:
        h.update(f"{s.key}.{s.ext}\0".encode() + s.meta + b"\0")
    return h.hexdigest()


class _Destination:
    """Where shards go: the container (``_Container``) or a local directory (``_Local``)."""

    label: str

    async def existing(self) -> dict[str, tuple[int, str | None]]:
        """The shards there now: name -> (bytes, MD5 hex or None)."""
        raise NotImplementedError

    async def old_index(self) -> dict[str, Any] | None:
        raise NotImplementedError

    async def unchanged(self, entry: dict[str, Any], have: tuple[int, str | None]) -> bool:
        """Whether what is stored under ``entry['name']`` is ``entry``'s bytes, without building it."""
        raise NotImplementedError

    def temp(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    async def publish(self, name: str, fh: IO[bytes], writer: HashingWriter, token: str) -> None:
        raise NotImplementedError

    async def discard(self, fh: IO[bytes]) -> None:
        fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fh.name)

    async def remove(self, name: str) -> None:
        raise NotImplementedError

    async def write_index(self, data: bytes) -> None:
        raise NotImplementedError


class _Container(_Destination):
    def __init__(self, storage: Storage, release: str) -> None:
        self.storage = storage
        self.prefix = EXPORT_PREFIX.format(name=release)
        self.release = release
        self.label = f"{storage.corpus}/{self.prefix}"

    async def existing(self) -> dict[str, tuple[int, str | None]]:
        listed = await self.storage.list_prefix(self.prefix)
        return {name[len(self.prefix) :]: (info.size, info.md5_hex) for name, info in listed.items()}

    async def old_index(self) -> dict[str, Any] | None:
        return await read_index(self.storage, self.release)

    async def unchanged(self, entry: dict[str, Any], have: tuple[int, str | None]) -> bool:
        return have == (entry["bytes"], entry.get("md5"))

    def temp(self, name: str) -> IO[bytes]:
        return tempfile.NamedTemporaryFile(prefix="corpus-shard-", suffix=".tar", delete=False)

    async def publish(self, name: str, fh: IO[bytes], writer: HashingWriter, token: str) -> None:
        fh.close()
        try:
            await self.storage.put_blocks(
                self.prefix + name,
                fh.name,
                size=writer.size,
                block_size=BLOCK_SIZE,
                content_type="application/x-tar",
                md5=writer.md5.digest(),
                block_md5s=writer.block_md5s,
                token=token,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fh.name)

    async def remove(self, name: str) -> None:
        await self.storage.delete_blob(self.prefix + name)

    async def write_index(self, data: bytes) -> None:
        await self.storage.put_blob(
            self.prefix + "index.json", data, content_type="application/json", md5=hashlib.md5(data).digest()
        )


class _Local(_Destination):
    def __init__(self, out: str) -> None:
        self.out = os.path.abspath(out)
        self.label = self.out

    async def existing(self) -> dict[str, tuple[int, str | None]]:
        found: dict[str, tuple[int, str | None]] = {}
        if not os.path.isdir(self.out):
            return found
        for entry in os.scandir(self.out):
            if entry.name.startswith(".") and ".partial-" in entry.name:
                os.unlink(entry.path)  # a temporary shard an interrupted run left behind
            elif _SHARD.match(entry.name) and entry.is_file():
                found[entry.name] = (entry.stat().st_size, None)
        return found

    async def old_index(self) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.out, "index.json"), "rb") as fh:
                parsed: dict[str, Any] = json.load(fh)
                return parsed
        except (FileNotFoundError, ValueError):
            return None

    async def unchanged(self, entry: dict[str, Any], have: tuple[int, str | None]) -> bool:
        if have[0] != entry["bytes"]:
            return False
        return await asyncio.to_thread(_file_sha256, os.path.join(self.out, entry["name"])) == entry["sha256"]

    def temp(self, name: str) -> IO[bytes]:
        os.makedirs(self.out, exist_ok=True)
        return open(os.path.join(self.out, f".{name}.partial-{uuid.uuid4().hex[:12]}"), "wb")

    async def publish(self, name: str, fh: IO[bytes], writer: HashingWriter, token: str) -> None:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(fh.name, os.path.join(self.out, name))  # atomic: the old shard or the new one, never half

    async def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.out, name))

    async def write_index(self, data: bytes) -> None:
        os.makedirs(self.out, exist_ok=True)
        temp = os.path.join(self.out, f".index.json.partial-{uuid.uuid4().hex[:12]}")
        with open(temp, "wb") as fh:
            fh.write(data)
        os.replace(temp, os.path.join(self.out, "index.json"))


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


async def export_release(
    storage: Storage,
    name: str,
    *,
    fmt: str = "webdataset",
    split: str | None = None,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    out: str | None = None,
    max_parallel_downloads: int = 20,
    progress: ProgressSink | None = None,
    report: ExportReport | None = None,
) -> ExportReport:
    """Export release ``name`` (only ``split``, if given) as WebDataset shards of at most ``shard_size``
    into the container (``exports/NAME/webdataset/``) or into directory ``out``. See the module doc."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: supported formats are {', '.join(FORMATS)}")
    try:
        size = parse_size(shard_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    progress = progress or NullProgress()
    dest: _Destination = _Local(out) if out is not None else _Container(storage, name)
    started = time.monotonic()
    release = await open_release(storage, name)
    plans = plan_shards(release.split(split), release.seed, size)
    report = report if report is not None else ExportReport(name, dest.label, size)
    report.split, report.shard_size = split, size
    try:
        await _export(
            storage, release.manifest_sha256, release.seed, plans, dest, size, max_parallel_downloads, progress, report
        )
    except asyncio.CancelledError:
        report.interrupted = True
        raise
    finally:
        report.elapsed = time.monotonic() - started
    return report


async def _export(
    storage: Storage,
    manifest_sha256: str,
    seed: int,
    plans: list[ShardPlan],
    dest: _Destination,
    size: int,
    parallel: int,
    progress: ProgressSink,
    report: ExportReport,
) -> None:
    existing, old = await dest.existing(), await dest.old_index()
    old_entries = {e["name"]: e for e in (old or {}).get("shards", [])}
    token = uuid.uuid4().hex  # this run's block IDs: never a block another run staged
    entries: dict[str, dict[str, Any]] = {}
    todo: list[ShardPlan] = []
    for plan in plans:
        entry = old_entries.get(plan.name)
        have = existing.get(plan.name)
        if entry and entry.get("plan") == plan_digest(plan) and have and await dest.unchanged(entry, have):
            entries[plan.name] = entry
            report.shards_present += 1
        else:
            todo.append(plan)
    progress.grow(files=sum(len(p.samples) for p in todo))

    budget = ByteBudget(FETCH_BUDGET)

    async def fetch(sample: Any) -> tuple[bytes | None, str | None]:
        await budget.acquire(sample.size)
        try:
            data, info = await storage.get_blob(sample.blob_name)
            check_image(sample.record, data, info)
            return data, None
        except asyncio.CancelledError:
            budget.release(sample.size)
            raise
        except Exception as exc:  # the shard fails, with the reason; the other shards go on
            budget.release(sample.size)
            return None, str(exc)

    window = _Window([s for p in todo for s in p.samples], fetch, max(1, parallel))
    ready: list[tuple[bytes | None, str | None]] = []
    publishing: tuple[asyncio.Task[None], IO[bytes]] | None = None
    try:
        for plan in todo:
            fh, handed = dest.temp(plan.name), False
            try:
                writer, failed = HashingWriter(fh, BLOCK_SIZE), None
                for sample in plan.samples:
                    if not ready:
                        ready = list(reversed(await window.take()))
                    data, error = ready.pop()
                    if data is None:
                        failed = failed or error
                        continue
                    if failed is None:
                        writer.add_sample(sample, data)
                    report.images_read += 1
                    budget.release(sample.size)
                    progress.advance(files=1)
                writer.end()
                if failed is not None:
                    report.failures.append(Failure(plan.name, f"not written: {failed}"))
                    continue
                entry = _entry(plan, writer)
                entries[plan.name] = entry
                if publishing is not None:
                    await publishing[0]  # at most one shard uploading while the next is built
                task = asyncio.ensure_future(_publish(dest, plan, fh, writer, token, existing, entry, report))
                publishing, handed = (task, fh), True
            finally:
                if not handed:  # failed, interrupted, or an error: its temporary file goes
                    await dest.discard(fh)
        if publishing is not None:
            await publishing[0]
            publishing = None
    finally:
        if publishing is not None:
            publishing[0].cancel()
            await asyncio.gather(publishing[0], return_exceptions=True)
            await dest.discard(publishing[1])  # a task cancelled before it ran never cleaned up itself
        await window.close()

    report.shards = [entries[p.name] for p in plans if p.name in entries]
    if report.failures:
        return  # the index is written only when every shard it names is in place
    splits = {p.split for p in plans}
    for name in sorted(existing):  # shards of an earlier plan of these splits (another shard size)
        found = _SHARD.match(name)
        if found and found.group("split") in splits and name not in entries:
            await dest.remove(name)
            report.removed.append(name)
    # the other splits' shards stay in the index only while they are of this same manifest
    kept: list[dict[str, Any]] = []
    if old is not None and old.get("manifest_sha256") == manifest_sha256:
        kept = [e for e in old.get("shards", []) if e["split"] not in splits]
    index = {
        "format": "webdataset",
        "release": report.release,
        "manifest_sha256": manifest_sha256,
        "seed": seed,
        "shard_size": size,
        "shards": sorted(kept + report.shards, key=lambda e: e["name"]),
    }
    data = (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
    if old is None or (json.dumps(old, indent=1, sort_keys=True) + "\n").encode() != data or report.removed:
        await dest.write_index(data)
        report.index_written = True


def _entry(plan: ShardPlan, writer: HashingWriter) -> dict[str, Any]:
    return {
        "name": plan.name,
        "split": plan.split,
        "bytes": writer.size,
        "samples": len(plan.samples),
        "sha256": writer.sha256.hexdigest(),
        "md5": writer.md5.hexdigest(),
        "plan": plan_digest(plan),
    }


async def _publish(
    dest: _Destination,
    plan: ShardPlan,
    fh: IO[bytes],
    writer: HashingWriter,
    token: str,
    existing: dict[str, tuple[int, str | None]],
    entry: dict[str, Any],
    report: ExportReport,
) -> None:
    have = existing.get(plan.name)
    if have is not None and await dest.unchanged(entry, have):
        await dest.discard(fh)  # rebuilt after an interruption, and the same bytes are there: no write
        report.shards_present += 1
        return
    try:
        await dest.publish(plan.name, fh, writer, token)
    except BaseException:
        await dest.discard(fh)
        raise
    report.shards_written += 1
    report.bytes_written += writer.size


__all__ = ["DEFAULT_SHARD_SIZE", "ExportReport", "export_release", "plan_digest"]
