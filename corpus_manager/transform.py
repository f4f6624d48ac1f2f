"""Transform jobs: plan which sets need a versioned ImageMagick recipe, run it, record the lineage.

A transform ``NAME@TV`` is an immutable recipe (canonical spec, digest, source) registered once in
the ImageTransforms table. A run plans from two table partitions (the source sets and the outputs of
``NAME@TV``), skips sources whose output is complete, and processes the rest: each image is
downloaded, transformed in a process pool (Wand, one ImageMagick thread per worker, the safety
policy applied in each worker) and uploaded, with a bounded number of images in flight so download,
CPU and upload overlap and memory stays flat. Output sets follow the one set lifecycle (lifecycle.py,
through transformjob.py, shared with the Dask cluster's ``distributed.py``): ``pending`` row with this
run's claim, blobs, ``complete`` row, tag index. The ``wand`` import lives in the ``transforms``
package, which only the worker processes load.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import transforms
from transforms import Spec, SpecError

from .errors import ConfigError, Conflict, CorruptRow, TransformSpecError
from .lifecycle import Lease
from .models import SOURCE_ORIGINALS, ImageSet, ImageTransform, SetIdentity, check_name, set_partition
from .query import open_for_reading
from .results import Failure, NullProgress, ProgressSink
from .storage import Storage, eq
from .throttle import ThrottleWork
from .transformjob import (
    Fence,
    ImageOutput,
    JobArgs,
    Plan,
    TransformJob,
    TransformReport,
    TransformSetOutcome,
    index_outputs,
    transform_image,
)


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
class PoolTransformJob(TransformJob):
    """Output sets made by a local process pool: ``images`` in flight across the run's sets, so
    download, CPU and upload overlap and memory stays flat."""

    pool: Executor = field(kw_only=True)
    images: ThrottleWork = field(kw_only=True)

    async def process(
        self, source: ImageSet, identity: SetIdentity, todo: list[str], out: TransformSetOutcome, fence: Fence
    ) -> None:
        spec_json = self.spec.canonical_json()

        async def one(file_name: str) -> ImageOutput:
            output = identity.blob_name(transforms.output_name(file_name, self.spec))
            source_blob = source.blob_prefix + file_name
            done = await transform_image(self.storage, self.pool, spec_json, source_blob, output, fence)
            self.progress.advance(files=1, nbytes=done.size)
            return done

        async for o in self.images.map(one, todo):
            if o.error is not None:
                self.image_failed(source.blob_prefix + o.item, o.error, out)
                self.progress.advance(files=1)
                continue
            assert o.result is not None
            out.transformed += 1
            out.bytes += o.result.size


def _matches(image_set: ImageSet, tags: Sequence[str], source_version: str | None) -> bool:
    if source_version is not None and image_set.version != source_version:
        return False
    have = {t.casefold() for t in image_set.tags}
    return all(t.casefold() in have for t in tags)


async def _load_partition(
    storage: Storage, partition: str, report: TransformReport, progress: ProgressSink
) -> dict[tuple[str, str], tuple[ImageSet, Lease]]:
    """Every set of one family, by (path, version), with the claim on its row (pending rows have one)."""
    out: dict[tuple[str, str], tuple[ImageSet, Lease]] = {}
    async for entity in storage.query(storage.sets, eq("PartitionKey", partition)):
        try:
            image_set = ImageSet.from_entity(entity)
        except CorruptRow as exc:
            progress.note(str(exc))
            report.failures.append(Failure(f"row {entity.get('RowKey')!r}", str(exc)))
            continue
        out[(image_set.path, image_set.version)] = (image_set, Lease.of(entity))
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
    source_label = SOURCE_ORIGINALS
    source_partition = set_partition()
    if source:
        src_name, src_version = parse_label(source)
        if (src_name, src_version) == (name, version):
            raise ConfigError(f"transform {name}@{version} cannot read its own outputs")
        source_label = f"{src_name}@{src_version}"
        source_partition = set_partition(src_name, src_version)
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
        outputs = await _load_partition(storage, set_partition(name, version), report, progress)
        plans: list[Plan] = []
        unindexed: list[ImageSet] = []  # complete outputs a killed run left without their tag rows
        for key, (src, _) in sorted(sources.items()):
            if not src.is_complete or not _matches(src, tags, source_version):
                continue
            existing, lease = outputs.get(key, (None, None))
            if existing is not None and existing.is_complete:
                report.sets.append(
                    TransformSetOutcome(
                        src.path, src.version, "skipped", images=existing.image_count, already_done=existing.image_count
                    )
                )
                if not existing.indexed:
                    unindexed.append(existing)
                continue
            plans.append(Plan(src, existing, lease))
        if dry_run:
            report.sets.extend(
                TransformSetOutcome(p.source.path, p.source.version, "planned", images=p.source.image_count)
                for p in plans
            )
            return report
        if unindexed:
            await index_outputs(storage, unindexed, max_parallel_upserts, report)
        if registered and not plans:
            return report  # nothing to do: no worker is started
        job_args = JobArgs(
            storage=storage,
            name=name,
            version=version,
            spec=spec,
            upserts=ThrottleWork(max_parallel_upserts),
            progress=progress,
            report=report,
        )
        if scheduler is not None:
            from .distributed import run_on_cluster

            report.scheduler = scheduler

            async def register(im_version: str) -> None:
                report.registered = await register_transform(storage, name, version, spec, source_label, im_version)

            await run_on_cluster(job_args, plans, scheduler=scheduler, register=None if registered else register)
            return report
        if pool is None:
            pool = own_pool = transforms.create_pool(workers)
        if not registered:
            # the ImageMagick version is the workers' (the parent never loads wand)
            im_version = await asyncio.get_running_loop().run_in_executor(pool, transforms.imagemagick_version)
            report.registered = await register_transform(storage, name, version, spec, source_label, im_version)
        job = PoolTransformJob(
            **job_args.args(),
            pool=pool,
            images=ThrottleWork(max(2, workers * 3)),  # enough in flight that workers never wait on storage
        )
        await job.run(plans, max(2, workers))
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
