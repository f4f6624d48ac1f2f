"""Transform jobs: plan which sets need a versioned ImageMagick recipe, run it, record the lineage.

A transform ``NAME@TV`` is an immutable recipe (canonical spec, digest, source) registered once in
the ImageTransforms table. A run plans from two table partitions (the source sets and the outputs of
``NAME@TV``), skips sources whose output is complete, and processes the rest: each image is
downloaded, transformed in a process pool (Wand, one ImageMagick thread per worker, the safety
policy applied in each worker) and uploaded, with a bounded number of images in flight so download,
CPU and upload overlap and memory stays flat. Output sets follow the upload lifecycle: ``pending``
row, blobs, ``complete`` row, tag index. The ``wand`` import lives in the ``transforms`` package,
which only the worker processes load.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import transforms
from transforms import Spec, SpecError

from .errors import ConfigError, Conflict, CorpusError, CorruptRow, TransformSpecError
from .models import COMPLETE, PENDING, ImageSet, ImageTransform, SetIdentity, check_name, content_digest
from .query import open_for_reading
from .results import Failure, NullProgress, ProgressSink
from .rowcommit import GroupCommit
from .storage import Storage, eq, etag_of
from .tagindex import index_set
from .throttle import ThrottleWork

ORIGINAL_SOURCE = "original"


def parse_spec(ops: Sequence[str] | None = None, spec_file: str | None = None) -> Spec:
    """``--op`` list or ``--spec FILE`` -> a validated Spec; a bad one is a usage error (exit 2)."""
    if not ops and spec_file is None:
        raise TransformSpecError("a transform needs operations: give --op OP[=ARG] (repeatable) or --spec FILE")
    try:
        return transforms.spec_from_args(list(ops or ()), spec_file)
    except SpecError as exc:
        raise TransformSpecError(str(exc)) from None
    except OSError as exc:
        raise TransformSpecError(f"cannot read spec file {spec_file}: {exc.strerror or exc}") from None


def parse_label(label: str, what: str = "--from") -> tuple[str, str]:
    """``NAME@TV`` -> (NAME, TV), both validated."""
    name, sep, version = label.partition("@")
    if not sep:
        raise ConfigError(f"{what} {label!r} must be NAME@VERSION")
    return check_name(name, "transform name"), check_name(version, "transform version")


@dataclass
class TransformSetOutcome:
    path: str
    version: str
    status: str  # transformed | skipped | failed | planned | interrupted
    images: int = 0
    transformed: int = 0
    already_done: int = 0
    failed: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TransformReport:
    name: str
    version: str
    command_line: str = ""
    source: str = ORIGINAL_SOURCE
    dry_run: bool = False
    sets: list[TransformSetOutcome] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    workers: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    retries: int = 0  # requests storage failed (error, reset, no answer) that were tried again
    registered: bool = False  # this run registered the transform
    scheduler: str | None = None  # the Dask scheduler the job ran on (None: the local pool)

    def _count(self, status: str) -> int:
        return sum(1 for s in self.sets if s.status == status)

    @property
    def sets_transformed(self) -> int:
        return self._count("transformed")

    @property
    def sets_skipped(self) -> int:
        return self._count("skipped")

    @property
    def sets_failed(self) -> int:
        return self._count("failed")

    @property
    def images_transformed(self) -> int:
        return sum(s.transformed for s in self.sets)

    @property
    def images_per_second(self) -> float:
        return self.images_transformed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "transform": {
                "name": self.name,
                "version": self.version,
                "command_line": self.command_line,
                "source": self.source,
            },
            "dry_run": self.dry_run,
            "sets": {
                "total": len(self.sets),
                "transformed": self.sets_transformed,
                "skipped": self.sets_skipped,
                "failed": self.sets_failed,
                "planned": self._count("planned"),
                "interrupted": self._count("interrupted"),
            },
            "images": {
                "transformed": self.images_transformed,
                "already_done": sum(s.already_done for s in self.sets),
                "failed": sum(s.failed for s in self.sets),
            },
            "workers": self.workers,
            "scheduler": self.scheduler,
            "elapsed_seconds": round(self.elapsed, 3),
            "images_per_second": round(self.images_per_second, 1),
            "failures": [f.to_json() for f in self.failures],
            "interrupted": self.interrupted,
            "retries": self.retries,
            "set_results": [s.to_json() for s in self.sets],
        }


async def check_registered(storage: Storage, name: str, version: str, spec: Spec, source: str) -> bool:
    """True when NAME@TV is registered with this very recipe; TransformSpecError when with another."""
    entity = await storage.get_entity(storage.transforms, name, version)
    if entity is None:
        return False
    existing = ImageTransform.from_entity(entity)
    if existing.spec_digest != spec.digest:
        raise TransformSpecError(
            f"transform {name}@{version} is already registered as `{existing.command_line}`; "
            f"`{spec.command_line()}` is a different spec: transforms are immutable, use a new --version"
        )
    if existing.source != source:
        raise TransformSpecError(
            f"transform {name}@{version} was registered on {existing.source}, not {source}; "
            "use a new --version for another source"
        )
    return True


async def register_transform(
    storage: Storage, name: str, version: str, spec: Spec, source: str, imagemagick_version: str
) -> bool:
    """Register NAME@TV (or find it registered with the same recipe). True when this call registered it."""
    row = ImageTransform(
        name,
        version,
        spec.canonical_json(),
        spec.digest,
        spec.command_line(),
        datetime.now(UTC).isoformat(timespec="seconds"),
        imagemagick_version,
        source,
    )
    try:
        await storage.create_entity(storage.transforms, row.to_entity())
        return True
    except Conflict:
        await check_registered(storage, name, version, spec, source)  # registered concurrently: same recipe?
        return False


async def list_transforms(storage: Storage) -> list[ImageTransform]:
    out = []
    async for entity in storage.query(storage.transforms):
        out.append(ImageTransform.from_entity(entity))
    return sorted(out, key=lambda t: (t.name, t.version))


@dataclass
class _Plan:
    source: ImageSet
    output: ImageSet | None  # an existing (pending) output row, if any


class SetJob:
    """The lifecycle of output sets, shared by the local pool (``_Job``) and the Dask cluster
    (``distributed._ClusterJob``): checks, pending row, the images still missing (``process``, the one
    part that differs), final listing, complete row, tag rows."""

    storage: Storage
    name: str
    version: str
    spec: Spec
    upserts: ThrottleWork
    progress: ProgressSink
    report: TransformReport

    _writers: tuple[GroupCommit, GroupCommit] | None = None

    async def process(self, source: ImageSet, identity: SetIdentity, todo: list[str], out: TransformSetOutcome) -> None:
        """Transform and store the source files ``todo``; count them in ``out``, name failures in the report."""
        raise NotImplementedError

    @property
    def writers(self) -> tuple[GroupCommit, GroupCommit]:
        """The job's ImageSets and TagIndex writes, group-committed across its sets (made on first use):
        output sets that finish together share their transactions, as an upload's sets do."""
        if self._writers is None:
            self._writers = (
                GroupCommit(self.storage, self.upserts),
                GroupCommit(self.storage, self.upserts, self.storage.tags),
            )
        return self._writers

    async def run_set(self, plan: _Plan, out: TransformSetOutcome) -> TransformSetOutcome:
        storage, source = self.storage, plan.source
        identity = source.identity.derived(self.name, self.version)
        listing = await storage.list_prefix(source.blob_prefix)
        names = sorted(n[len(source.blob_prefix) :] for n in listing)
        out.images = len(names)
        if len(names) != source.image_count:
            # storage lost blobs its row counts (e.g. an emulator killed before saving): transforming
            # what is left would make a complete output that lies about its source
            self.report.failures.append(
                Failure(
                    f"set {source.identity}",
                    f"its row counts {source.image_count} images but {len(names)} blobs "
                    f"are stored under {source.blob_prefix}; not transformed (`corpus status --verify`, then "
                    "the upload rerun, repairs it)",
                )
            )
            out.status = "failed"
            return out
        collisions = transforms.colliding_outputs(names, self.spec)
        if collisions:
            output, inputs = next(iter(sorted(collisions.items())))
            self.report.failures.append(
                Failure(
                    f"set {source.identity}",
                    f"{len(collisions)} outputs would be written by two inputs "
                    f"(e.g. {' and '.join(inputs)} -> {output}); the set is not transformed",
                )
            )
            out.status = "failed"
            return out
        done: set[str] = set()
        etag: str | None = None
        if plan.output is not None:
            etag = plan.output.etag
            done = {n[len(identity.blob_prefix) :] for n in await storage.list_prefix(identity.blob_prefix)}
        else:
            pending = ImageSet(identity, tags=source.tags, status=PENDING, source_set=source.identity.key)
            try:
                etag = await self.writers[0].create(pending.to_entity())
            except Conflict:  # another job created it meanwhile
                entity = await storage.get_entity(storage.sets, identity.partition_key, identity.row_key)
                etag = etag_of(entity)
        todo = [n for n in names if transforms.output_name(n, self.spec) not in done]
        out.already_done = len(names) - len(todo)
        self.progress.advance(files=out.already_done)
        await self.process(source, identity, todo, out)
        if out.failed:
            out.status = "failed"  # stays pending: a rerun retries what failed
            return out
        # the complete set = everything stored under the output prefix for this source
        final = await storage.list_prefix(identity.blob_prefix)
        pairs = [(n[len(identity.blob_prefix) :], info.md5_hex or "") for n, info in final.items()]
        expected = {transforms.output_name(n, self.spec) for n in names}
        if {p for p, _ in pairs} != expected:
            missing = sorted(expected - {p for p, _ in pairs})
            self.report.failures.append(Failure(f"set {identity}", f"outputs missing after the run: {missing[:3]}"))
            out.status = "failed"
            return out
        complete = ImageSet(
            identity,
            tags=source.tags,
            status=COMPLETE,
            image_count=len(pairs),
            total_bytes=sum(info.size for info in final.values()),
            content_digest=content_digest(pairs),
            source_set=source.identity.key,
        )
        entity = complete.to_entity()
        entity["Indexed"] = False
        try:
            complete.etag = await self.writers[0].update(entity, etag)
        except Conflict:
            # another job finished it meanwhile (the output is deterministic): take its row
            # (or our own update landed and only its answer was lost, then retried into a 412)
            current = await storage.get_entity(storage.sets, identity.partition_key, identity.row_key)
            if current is None or ImageSet.from_entity(current).status != COMPLETE:
                raise
            complete = ImageSet.from_entity(current)
            if complete.indexed:
                out.status = "transformed"
                return out
        await index_set(storage, complete, self.upserts, set_rows=self.writers[0], tag_writer=self.writers[1])
        out.status = "transformed"
        return out


class _Job(SetJob):
    """Output sets made by a local process pool."""

    def __init__(
        self,
        storage: Storage,
        name: str,
        version: str,
        spec: Spec,
        pool: Executor,
        slots: int,
        upserts: int,
        progress: ProgressSink,
        report: TransformReport,
    ) -> None:
        self.storage = storage
        self.name = name
        self.version = version
        self.spec = spec
        self.spec_json = spec.canonical_json()
        self.pool = pool
        self.images = ThrottleWork(slots)
        self.upserts = ThrottleWork(upserts)
        self.progress = progress
        self.report = report

    async def process(self, source: ImageSet, identity: SetIdentity, todo: list[str], out: TransformSetOutcome) -> None:
        async def one(file_name: str) -> tuple[str, str, int]:
            return await self.one_image(source, identity, file_name)

        async for o in self.images.map(one, todo):
            if o.error is not None:
                reason = (
                    str(o.error)
                    if isinstance(o.error, CorpusError | transforms.ImageError)
                    else (f"{o.error.__class__.__name__}: {o.error}")
                )
                self.report.failures.append(Failure(source.blob_prefix + o.item, reason))
                out.failed += 1
                self.progress.advance(files=1)
                continue
            assert o.result is not None
            out.transformed += 1
            out.bytes += o.result[2]

    async def one_image(self, source: ImageSet, identity: SetIdentity, file_name: str) -> tuple[str, str, int]:
        storage = self.storage
        blob_name = source.blob_prefix + file_name
        data, info = await storage.get_blob(blob_name)
        if info.md5_hex and hashlib.md5(data, usedforsecurity=False).hexdigest() != info.md5_hex:
            raise CorpusError(f"downloaded bytes do not match the blob's Content-MD5 ({len(data)} bytes)")
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.pool, transforms.apply_spec, self.spec_json, data, blob_name)
        out_name = transforms.output_name(file_name, self.spec)
        md5 = hashlib.md5(result.data, usedforsecurity=False).digest()
        await storage.put_blob(identity.blob_name(out_name), result.data, content_type=result.content_type, md5=md5)
        self.progress.advance(files=1, nbytes=len(result.data))
        return out_name, md5.hex(), len(result.data)


def _matches(image_set: ImageSet, tags: Sequence[str], source_version: str | None) -> bool:
    if source_version is not None and image_set.version != source_version:
        return False
    have = {t.casefold() for t in image_set.tags}
    return all(t.casefold() in have for t in tags)


async def _load_partition(
    storage: Storage, partition: str, report: TransformReport, progress: ProgressSink
) -> dict[tuple[str, str], ImageSet]:
    out: dict[tuple[str, str], ImageSet] = {}
    async for entity in storage.query(storage.sets, eq("PartitionKey", partition)):
        try:
            image_set = ImageSet.from_entity(entity)
        except CorruptRow as exc:
            progress.note(str(exc))
            report.failures.append(Failure(f"row {entity.get('RowKey')!r}", str(exc)))
            continue
        out[(image_set.path, image_set.version)] = image_set
    return out


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


async def run_transform(
    storage: Storage,
    name: str,
    version: str,
    spec: Spec,
    *,
    tags: Sequence[str] = (),
    source_version: str | None = None,
    source: str | None = None,
    workers: int | None = None,
    dry_run: bool = False,
    max_parallel_upserts: int = 5,
    progress: ProgressSink | None = None,
    report: TransformReport | None = None,
    pool: Executor | None = None,
    scheduler: str | None = None,
) -> TransformReport:
    """Apply ``spec`` as transform ``name@version`` to every complete source set that matches and
    has no complete output yet. ``source`` is ``NAME2@TV2`` to transform another transform's outputs.
    ``scheduler``: a Dask scheduler address; the images are then transformed on its workers."""
    if scheduler is not None:
        from .distributed import check_cluster_options  # dask is an optional extra, imported only here

        check_cluster_options(scheduler, workers)
    check_name(name, "transform name")
    check_name(version, "transform version")
    if source_version is not None:
        check_name(source_version, "--source-version")
    source_label = ORIGINAL_SOURCE
    source_partition = SetIdentity("x", "v").partition_key
    if source:
        src_name, src_version = parse_label(source)
        if (src_name, src_version) == (name, version):
            raise ConfigError(f"transform {name}@{version} cannot read its own outputs")
        source_label = f"{src_name}@{src_version}"
        source_partition = SetIdentity("x", "v", src_name, src_version).partition_key
    workers = workers or default_workers()
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    progress = progress or NullProgress()
    if report is None:
        report = TransformReport(name, version)
    report.command_line, report.source, report.dry_run, report.workers = (
        spec.command_line(),
        source_label,
        dry_run,
        workers,
    )
    started = time.perf_counter()
    own_pool: transforms.WorkerPool | None = None  # a pool made here is stopped here
    finished = False
    try:
        # A transform reads an existing corpus: it never creates one (a typo in --corpus is refused like
        # query's), and every check that can refuse the run (exit 2) reads only, so it writes nothing.
        await open_for_reading(storage)
        if source:
            src_name, src_version = parse_label(source)
            if await storage.get_entity(storage.transforms, src_name, src_version) is None:
                raise ConfigError(f"--from {source}: no such transform is registered (see `corpus transforms`)")
        registered = await check_registered(storage, name, version, spec, source_label)
        sources = await _load_partition(storage, source_partition, report, progress)
        output_partition = SetIdentity("x", "v", name, version).partition_key
        outputs = await _load_partition(storage, output_partition, report, progress)
        plans: list[_Plan] = []
        for key, src in sorted(sources.items()):
            if not src.is_complete or not _matches(src, tags, source_version):
                continue
            existing = outputs.get(key)
            if existing is not None and existing.is_complete:
                report.sets.append(
                    TransformSetOutcome(
                        src.path, src.version, "skipped", images=existing.image_count, already_done=existing.image_count
                    )
                )
                continue
            plans.append(_Plan(src, existing))
        if dry_run:
            report.sets.extend(
                TransformSetOutcome(p.source.path, p.source.version, "planned", images=p.source.image_count)
                for p in plans
            )
            return report
        if registered and not plans:
            return report  # nothing to do: no worker is started
        if scheduler is not None:
            from .distributed import run_on_cluster

            report.scheduler = scheduler
            await run_on_cluster(
                storage,
                name,
                version,
                spec,
                plans,
                scheduler=scheduler,
                registered=registered,
                source_label=source_label,
                report=report,
                progress=progress,
                max_parallel_upserts=max_parallel_upserts,
            )
            return report
        if pool is None:
            pool = own_pool = transforms.create_pool(workers)
        if not registered:
            # the ImageMagick version is the workers' (the parent never loads wand)
            im_version = await asyncio.get_running_loop().run_in_executor(pool, transforms.imagemagick_version)
            report.registered = await register_transform(storage, name, version, spec, source_label, im_version)
        progress.grow(files=sum(p.source.image_count for p in plans))
        slots = max(2, workers * 3)  # enough in flight that workers never wait on storage
        job = _Job(storage, name, version, spec, pool, slots, max_parallel_upserts, progress, report)
        outcomes = {id(p): TransformSetOutcome(p.source.path, p.source.version, "interrupted") for p in plans}

        async def run_one(plan: _Plan) -> TransformSetOutcome:
            return await job.run_set(plan, outcomes[id(plan)])

        try:
            async for o in ThrottleWork(max(2, workers)).map(run_one, plans):
                if o.error is not None:
                    out = outcomes[id(o.item)]
                    out.status = "failed"
                    reason = (
                        str(o.error)
                        if isinstance(o.error, CorpusError)
                        else (f"{o.error.__class__.__name__}: {o.error}")
                    )
                    report.failures.append(Failure(f"set {o.item.source.identity}", reason))
                report.sets.append(outcomes.pop(id(o.item)))
        except (asyncio.CancelledError, KeyboardInterrupt):
            report.interrupted = True
            report.sets.extend(outcomes.values())  # every unfinished set, started or not: the rerun does them
            raise
        finished = True
        return report
    finally:
        report.sets.sort(key=lambda s: (s.path, s.version))
        report.elapsed = time.perf_counter() - started
        if own_pool is not None and finished:
            own_pool.shutdown()  # its workers are idle: they exit
        elif own_pool is not None:
            # interrupted or failed: kill the workers now rather than wait for images nobody will read (up to
            # the per-image time limit each); no worker process outlives the run
            own_pool.terminate_workers()
