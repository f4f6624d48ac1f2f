"""A transform run's parts shared by the local process pool and the Dask cluster: the plan, the report,
the lifecycle of output sets, the per-image step, and the run loop.

Output sets follow the one set lifecycle (lifecycle.py): ``pending`` row with this run's claim (its run
id: a second run of the same NAME@TV is refused for a set this one writes), images, ``complete`` row
with its counts, digest and ``SourceSet``, tag rows. Only ``process`` (how the missing images are
transformed: ``transform.PoolTransformJob``, ``distributed.ClusterTransformJob``) differs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, fields
from typing import Any

import transforms
from transforms import Spec

from .errors import CorpusError
from .lifecycle import ClaimLost, Lease, RunWriters, SetRun, SetWriter
from .models import COMPLETE, SOURCE_ORIGINALS, ImageSet, SetIdentity, content_digest
from .results import Failure, ProgressSink, SetRunReport, failure_reason, per_second
from .storage import Storage
from .throttle import ThrottleWork

# before a blob write: raises ClaimLost when this run no longer owns the set
Fence = Callable[[], Awaitable[None]]


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
class TransformReport(SetRunReport[TransformSetOutcome]):
    name: str
    version: str
    command_line: str = ""
    source: str = SOURCE_ORIGINALS
    dry_run: bool = False
    sets: list[TransformSetOutcome] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    workers: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    retries: int = 0  # requests storage failed (error, reset, no answer) that were tried again
    registered: bool = False  # this run registered the transform
    scheduler: str | None = None  # the Dask scheduler the job ran on (None: the local pool)

    @property
    def sets_transformed(self) -> int:
        return self.count("transformed")

    @property
    def images_transformed(self) -> int:
        return sum(s.transformed for s in self.sets)

    @property
    def images_per_second(self) -> float:
        return per_second(self.images_transformed, self.elapsed)

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
                "planned": self.count("planned"),
                "interrupted": self.count("interrupted"),
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


@dataclass
class Plan:
    """One source set to transform, with its output's row if one exists (pending) and that row's claim."""

    source: ImageSet
    output: ImageSet | None = None
    lease: Lease | None = None


@dataclass(frozen=True)
class ImageOutput:
    md5_hex: str
    size: int


async def transform_image(
    storage: Storage, executor: Executor, spec_json: str, source: str, output: str, fence: Fence | None = None
) -> ImageOutput:
    """The per-image step, the same on the local pool and a Dask worker: download the source blob (its
    bytes checked against its Content-MD5), transform it in ``executor``, store the output blob."""
    data, info = await storage.get_blob(source)
    if info.md5_hex and hashlib.md5(data, usedforsecurity=False).hexdigest() != info.md5_hex:
        raise CorpusError(f"downloaded bytes do not match the blob's Content-MD5 ({len(data)} bytes)")
    # looked up at call time (not imported by name): one apply_spec for every caller
    result = await asyncio.get_running_loop().run_in_executor(executor, transforms.apply_spec, spec_json, data, source)
    md5 = hashlib.md5(result.data, usedforsecurity=False).digest()
    if fence is not None:
        await fence()
    await storage.put_blob(output, result.data, content_type=result.content_type, md5=md5)
    return ImageOutput(md5.hex(), len(result.data))


@dataclass
class JobArgs:
    """What every transform job is made of (a job's own fields aside): made once by ``run_transform``,
    for the local pool's job or the cluster's."""

    storage: Storage
    name: str
    version: str
    spec: Spec
    upserts: ThrottleWork
    progress: ProgressSink
    report: TransformReport

    def args(self) -> dict[str, Any]:
        """These fields as keyword arguments, for a job's constructor."""
        return {f.name: getattr(self, f.name) for f in fields(JobArgs)}


@dataclass
class TransformJob(JobArgs):
    """The output sets of one transform run (see the module docstring); ``process`` is the one part a
    subclass gives."""

    writers: RunWriters = field(init=False)

    def __post_init__(self) -> None:
        self.writers = RunWriters(self.storage, self.upserts)

    async def process(
        self, source: ImageSet, identity: SetIdentity, todo: list[str], out: TransformSetOutcome, fence: Fence
    ) -> None:
        """Transform and store the source files ``todo`` (``fence`` before each write); count them in
        ``out``, name failures in the report (a lost claim is named once, for the set)."""
        raise NotImplementedError

    def _busy(self, lease: Lease, age: float) -> str:
        return (
            f"another run of transform {self.name}@{self.version} is writing this output set ({lease.holder}, "
            f"active {age:.0f} s ago); not written by this run: rerun once that run has finished"
        )

    async def run_set(self, plan: Plan, out: TransformSetOutcome) -> TransformSetOutcome:
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
        writer = SetWriter(
            self.writers,
            identity,
            tags=source.tags,
            busy=self._busy,
            source_set=source.identity.key,
            existing=plan.output,
            lease=plan.lease,
            doing="transformed",
        )
        refusal = await writer.claim(self.writers.run_id)
        if refusal is not None:
            self.report.failures.append(Failure(f"set {identity}", refusal, "refused"))
            self.progress.advance(files=len(names))  # none of them is this run's to do
            out.status = "failed"
            return out
        assert writer.existing is not None
        if writer.existing.is_complete:  # completed meanwhile by another run
            if not writer.existing.indexed:
                await self.writers.tags.add(writer.existing)
            self.progress.advance(files=len(names))
            out.status, out.already_done = "skipped", writer.existing.image_count
            return out
        done: set[str] = set()
        if not writer.created:  # what an earlier run of this transform stored
            done = {n[len(identity.blob_prefix) :] for n in await storage.list_prefix(identity.blob_prefix)}
        todo = [n for n in names if transforms.output_name(n, self.spec) not in done]
        out.already_done = len(names) - len(todo)
        self.progress.advance(files=out.already_done)
        async with writer.held():
            await self.process(source, identity, todo, out, writer.fence)
        if out.failed:
            out.status = "failed"  # stays pending: a rerun retries what failed
            return out
        # the complete set = everything stored under the output prefix for this source
        final = await storage.list_prefix(identity.blob_prefix)
        pairs = [(n[len(identity.blob_prefix) :], info.md5_hex or "") for n, info in final.items()]
        expected = {transforms.output_name(n, self.spec) for n in names}
        stored = {p for p, _ in pairs}
        if stored != expected:
            missing = sorted(expected - stored)
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
        await writer.complete(complete)
        out.status = "transformed"
        return out

    def image_failed(self, item: str, error: BaseException, out: TransformSetOutcome) -> None:
        out.failed += 1
        if not isinstance(error, ClaimLost):  # a lost claim is named once, for the set
            self.report.failures.append(Failure(item, failure_reason(error)))

    async def run(self, plans: list[Plan], parallel: int) -> None:
        """Every planned set, ``parallel`` at once; the report gets each set's outcome (every unfinished
        one as ``interrupted`` when the run is interrupted) and the tag index's failures."""

        def failed(plan: Plan, error: BaseException) -> None:
            self.report.failures.append(Failure(f"set {plan.source.identity}", failure_reason(error)))

        self.progress.grow(files=sum(p.source.image_count for p in plans))
        sets = SetRun(
            lambda p: TransformSetOutcome(p.source.path, p.source.version, "interrupted"), self.report.sets, failed
        )
        for plan in plans:  # all known now: an interrupted run names each one it did not finish
            sets.add(plan)
        try:
            await sets.run(self.run_set, plans, parallel)
            self.report.failures.extend(await self.writers.flush())
        except (asyncio.CancelledError, KeyboardInterrupt):
            self.report.interrupted = True
            raise
        finally:
            self.writers.close()


async def index_outputs(storage: Storage, outputs: list[ImageSet], upserts: int, report: TransformReport) -> None:
    """Complete outputs a killed run left unindexed (between their row and their tag rows): indexed now."""
    writers = RunWriters(storage, ThrottleWork(upserts))
    try:
        for image_set in outputs:
            await writers.tags.add(image_set)
        report.failures.extend(await writers.flush())
    finally:
        writers.close()
