"""``run_report``: checks, the worker pool's lifetime, the model, the pages. ``Corpus.report`` calls it."""

from __future__ import annotations

import os
from concurrent.futures import Executor

import transforms

from ..errors import ConfigError
from ..query import QueryFilter, SetRow
from ..results import ProgressSink
from ..storage import Storage
from .model import PAGE_SETS, ReleaseTable, ReportModel, build_model
from .render import render


def check_out(out: str) -> None:
    """A usage error, before anything is read or written, when ``out`` cannot be the report's folder."""
    if not out:
        raise ConfigError("--out needs a folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out!r} exists and is not a folder")


async def run_report(
    storage: Storage,
    out: str,
    filters: QueryFilter,
    *,
    per_set: int = 12,
    workers: int | None = None,
    pool: Executor | None = None,
    progress: ProgressSink | None = None,
    rows: list[SetRow] | None = None,
    page_sets: int = PAGE_SETS,
    release: ReleaseTable | None = None,
) -> ReportModel:
    """Build the model (thumbnails made in ``pool``, or a pool of ``workers`` processes made and stopped
    here) and write its pages into ``out``."""
    if per_set < 1:
        raise ConfigError("--per-set must be at least 1")
    if page_sets < 1:
        raise ConfigError("page_sets must be at least 1")
    check_out(out)
    os.makedirs(out, exist_ok=True)
    own_pool = None
    finished = False
    try:
        if pool is None:
            # processes: ImageMagick is not thread-safe
            pool = own_pool = transforms.create_pool(workers)
        model = await build_model(
            storage, out, filters, per_set=per_set, pool=pool, progress=progress, rows=rows, page_sets=page_sets
        )
        model.release = release
        render(model)
        finished = True
        return model
    finally:
        if own_pool is not None and finished:
            own_pool.shutdown()
        elif own_pool is not None:
            own_pool.terminate_workers()  # interrupted: no worker outlives the run
