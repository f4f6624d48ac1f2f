"""Transform jobs on a Dask cluster (``corpus transform --scheduler``): the only module that imports dask.

The split of work:

- the client (the ``corpus`` process) plans as for the local pool, keeps each output set's lifecycle
  (``pending`` row, ``complete`` row with counts and digest, tag index) and draws the progress bar from
  task completions;
- each Dask task is a chunk of one source set, ``transform_chunk``: source and output blob names in,
  per-file results out; the worker downloads, transforms (the same ``transforms.apply_spec`` as the
  local pool, so the same bytes) and uploads.

Credentials never travel through the scheduler: a worker builds its own ``Storage`` from its own
``AZURE_STORAGE_CONNECTION_STRING`` (or ``CORPUS_ACCOUNT_URL`` with a managed identity); the client sends
only blob names, the spec's canonical JSON and the corpus name. ``distributed`` is an optional extra,
imported only when a scheduler is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import transforms

from .config import ConnectionInfo, connection_from_settings, redact
from .errors import ConfigError, CorpusError
from .lifecycle import ClaimLost
from .models import ImageSet, SetIdentity
from .results import Failure, failure_reason
from .storage import Storage
from .throttle import ThrottleWork
from .transformjob import Fence, JobArgs, Plan, TransformJob, TransformSetOutcome, transform_image

SCHEDULER_ENV = "CORPUS_DASK_SCHEDULER"
CONNECTION_ENV = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL_ENV = "CORPUS_ACCOUNT_URL"
CHUNK_MIN, CHUNK_MAX = 4, 32  # images per task: enough to overlap a worker's I/O with its CPU and pay for
CHUNKS_PER_THREAD = 4  # the task's set-up, small enough that a set spreads and progress moves
TASK_RETRIES = 2  # a task that raised runs again (maybe on a worker that has credentials or reaches storage)
CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler
WORKER_WAIT = 30.0  # seconds to wait for the first worker to join
IO_IN_FLIGHT = 4  # images of one chunk in flight on a worker (downloads and uploads overlap the CPU)


class WorkerConfigError(ConfigError):
    """A worker cannot reach storage as configured (no credentials, a malformed connection string)."""


def require_distributed() -> ModuleType:
    """``distributed``, or a ConfigError (exit 2) telling how to install the extra."""
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            "--scheduler needs Dask's distributed scheduler, an optional extra that is not installed "
            f"({exc.name or exc}): pip install 'corpus-manager[distributed]'"
        ) from None
    return distributed


def check_cluster_options(scheduler: str, workers: int | None) -> None:
    """Usage errors of a cluster run, found before anything is read or written."""
    if not scheduler.strip():
        raise ConfigError(
            f"--scheduler ({SCHEDULER_ENV}) is empty: give the scheduler's address, e.g. tcp://10.0.0.4:8786"
        )
    if workers is not None:
        raise ConfigError(
            "--workers sizes the local process pool; with --scheduler the cluster's workers do the "
            "work (start more `dask worker` processes to scale)"
        )
    require_distributed()


# ----- worker side ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FileResult:
    source: str  # source blob name
    output: str  # output blob name
    md5_hex: str = ""
    size: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ChunkResult:
    files: list[FileResult]
    worker: str  # the worker's address, for messages
    account: str  # the account the worker wrote to (a name, not a secret): checked against the client's


_cpu_lock = threading.Lock()
_cpu_executor: ThreadPoolExecutor | None = None


def _cpu() -> ThreadPoolExecutor:
    """One ImageMagick thread per worker process, shared by its task threads: wand is not thread-safe and
    the per-image time limit is process-wide; parallelism comes from worker processes (``--nworkers``)."""
    global _cpu_executor
    with _cpu_lock:
        if _cpu_executor is None:
            _cpu_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-imagemagick")
        return _cpu_executor


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def worker_connection() -> ConnectionInfo:
    """The worker's own storage settings, from its own environment; never the client's."""
    conn = os.environ.get(CONNECTION_ENV) or None
    url = os.environ.get(ACCOUNT_URL_ENV) or None
    if not conn and not url:
        raise WorkerConfigError(
            f"Dask worker {_worker_name()} has no storage credentials: set {CONNECTION_ENV} (or {ACCOUNT_URL_ENV} "
            "for a managed identity) in the environment of every `dask worker`; credentials are never sent "
            "through the scheduler"
        )
    try:
        return connection_from_settings()  # the environment's rule: the connection string wins over the URL
    except ConfigError as exc:
        raise WorkerConfigError(f"Dask worker {_worker_name()}: {exc}") from None


def transform_chunk(corpus: str, spec_json: str, pairs: Sequence[tuple[str, str]]) -> ChunkResult:
    """One Dask task: transform ``(source blob, output blob)`` pairs of one set. Per-file failures are
    returned, not raised, so one bad image fails only itself; a worker that cannot reach storage at all
    raises (WorkerConfigError) and the task fails."""
    info = worker_connection()
    return asyncio.run(_transform_chunk(info, corpus, spec_json, pairs))


async def _transform_chunk(
    info: ConnectionInfo, corpus: str, spec_json: str, pairs: Sequence[tuple[str, str]]
) -> ChunkResult:
    files: list[FileResult] = []
    async with Storage(info, corpus, pool_size=IO_IN_FLIGHT) as storage:

        async def one(pair: tuple[str, str]) -> FileResult:
            done = await transform_image(storage, _cpu(), spec_json, *pair)
            return FileResult(*pair, done.md5_hex, done.size)

        async for o in ThrottleWork(IO_IN_FLIGHT).map(one, pairs):
            if o.error is not None:
                files.append(FileResult(*o.item, error=failure_reason(o.error)))
            else:
                assert o.result is not None
                files.append(o.result)
    return ChunkResult(files, _worker_name(), info.account_name)


# ----- client side ---------------------------------------------------------------------------
def chunk_size(todo: int, threads: int) -> int:
    """Images per task for a set of ``todo`` images on a cluster of ``threads`` worker threads: a few tasks
    per thread (a set spreads, the tail balances, progress moves), within CHUNK_MIN..CHUNK_MAX."""
    return max(1, min(CHUNK_MAX, max(CHUNK_MIN, math.ceil(todo / (CHUNKS_PER_THREAD * threads)))))


async def _connect(distributed: ModuleType, scheduler: str) -> Any:
    hint = (
        f"start one with `dask scheduler` and workers with `dask worker {scheduler}`, or fix --scheduler "
        f"({SCHEDULER_ENV})"
    )
    client = None
    try:
        client = distributed.Client(scheduler, asynchronous=True, timeout=CONNECT_TIMEOUT, set_as_default=False)
        return await client
    except (OSError, TimeoutError, ValueError) as exc:
        if client is not None:  # closed here, on the loop: left to the garbage collector, its close()
            with contextlib.suppress(Exception):  # is a coroutine nobody awaits (a RuntimeWarning)
                await client.close()
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ConfigError(
            f"cannot reach the Dask scheduler at {redact(scheduler)} ({redact(detail)}); {hint}"
        ) from None


async def _worker_threads(client: Any, scheduler: str) -> int:
    try:
        await client.wait_for_workers(1, timeout=WORKER_WAIT)
    except TimeoutError:
        raise ConfigError(
            f"the Dask scheduler at {redact(scheduler)} has no workers after {WORKER_WAIT:.0f} s: "
            f"start some with `{CONNECTION_ENV}=... dask worker {scheduler} --nthreads 1`"
        ) from None
    return max(1, sum((await client.nthreads()).values()))


@dataclass
class ClusterTransformJob(TransformJob):
    """Output sets made on a Dask cluster: each set's missing images go out as chunk tasks."""

    client: Any = field(kw_only=True)
    killed_worker: type[BaseException] = field(kw_only=True)
    chunks: ThrottleWork = field(kw_only=True)  # tasks in flight on the cluster, shared by all sets
    threads: int = field(kw_only=True)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    counter: itertools.count[int] = field(default_factory=itertools.count)

    async def run_chunk(self, pairs: list[tuple[str, str]], fence: Fence) -> ChunkResult:
        await fence()  # the worker writes the chunk's blobs: this run must own the set when it sends them
        future = self.client.submit(
            transform_chunk,
            self.storage.corpus,
            self.spec.canonical_json(),
            pairs,
            key=f"corpus-transform-{self.token}-{next(self.counter)}",
            pure=False,
            retries=TASK_RETRIES,
        )
        try:
            return await future
        finally:
            future.release()

    def chunk_reason(self, error: BaseException) -> str:
        if isinstance(error, self.killed_worker):
            tries = getattr(error, "allowed_failures", None)
            last = getattr(getattr(error, "last_worker", None), "address", None)
            return (
                f"the Dask workers running it died ({tries + 1 if tries is not None else 'several'} tries"
                + (f", the last on {last}" if last else "")
                + "); see the workers' logs (out of memory?)"
            )
        return failure_reason(error)

    async def process(
        self, source: ImageSet, identity: SetIdentity, todo: list[str], out: TransformSetOutcome, fence: Fence
    ) -> None:
        # the set's lifecycle is TransformJob's; only the per-image work goes to the cluster
        storage, spec = self.storage, self.spec
        size = chunk_size(len(todo), self.threads)
        chunks = [
            [(source.blob_prefix + n, identity.blob_name(transforms.output_name(n, spec))) for n in todo[i : i + size]]
            for i in range(0, len(todo), size)
        ]
        lost: dict[str, int] = {}  # reason a whole chunk failed -> images it held

        async def run_chunk(pairs: list[tuple[str, str]]) -> ChunkResult:
            return await self.run_chunk(pairs, fence)

        async for o in self.chunks.map(run_chunk, chunks):
            if o.error is None and o.result is not None and o.result.account != storage.info.account_name:
                o.error = CorpusError(
                    f"Dask worker {o.result.worker} stores to account {o.result.account!r}, this "
                    f"client to {storage.info.account_name!r}: give the workers the same account"
                )
            if o.error is not None:
                if not isinstance(o.error, ClaimLost):  # a lost claim is named once, for the set
                    reason = self.chunk_reason(o.error)
                    lost[reason] = lost.get(reason, 0) + len(o.item)
                out.failed += len(o.item)
                self.progress.advance(files=len(o.item))
                continue
            assert o.result is not None
            nbytes = 0
            for f in o.result.files:
                if f.error is not None:
                    self.report.failures.append(Failure(f.source, f.error))
                    out.failed += 1
                else:
                    out.transformed += 1
                    nbytes += f.size
            out.bytes += nbytes
            self.progress.advance(files=len(o.item), nbytes=nbytes)
        for reason, count in lost.items():
            self.report.failures.append(
                Failure(f"set {source.identity}", f"{count} of {len(todo)} images not transformed: {reason}")
            )


async def run_on_cluster(
    job_args: JobArgs,
    plans: list[Plan],
    *,
    scheduler: str,
    register: Callable[[str], Awaitable[None]] | None,
) -> None:
    """Run the planned sets on the Dask cluster at ``scheduler``; fills the report as the local pool does.
    ``register``: registers the transform with the workers' ImageMagick version (None: registered)."""
    distributed = require_distributed()
    client = await _connect(distributed, scheduler)
    try:
        threads = await _worker_threads(client, scheduler)
        job_args.report.workers = threads
        if register is not None:
            # the ImageMagick version is the workers' (the client never loads wand)
            future = client.submit(transforms.imagemagick_version, pure=False, retries=TASK_RETRIES)
            await register(await future)
        job = ClusterTransformJob(
            **job_args.args(),
            client=client,
            killed_worker=distributed.KilledWorker,
            # two tasks per worker thread: one running, one queued, so no worker waits on the client
            chunks=ThrottleWork(max(2, 2 * threads)),
            threads=threads,
        )
        # sets in flight: enough for their chunks to fill the cluster
        await job.run(plans, max(4, 2 * threads))
    finally:
        await client.close()
