"""How each contender is invoked, and how the bench checks that it really did the work.

Every contender gets the same source tree, the same parallelism N and a container of its own:
- ``corpus`` (and prototype variants): the CLI, ``--max-parallel-uploads N``, a fresh corpus name;
- ``rclone copy --transfers N --checkers N`` to a container-SAS remote (defaults otherwise: checksums on,
  Content-MD5 set on each blob, modtime kept in metadata, which is what it compares on a rerun);
- ``azcopy copy --put-md5`` with ``AZCOPY_CONCURRENCY_VALUE=N`` (its requests in flight: AzCopy's one
  documented concurrency knob; its "advanced" pools default to 64 files being started, never the limit
  at N <= 64, and 16 scanning goroutines, and are left alone); its no-op rerun is ``azcopy sync``
  (lists both sides and compares last-modified times, as rclone compares size and modtime), chosen
  over ``copy --overwrite=ifSourceNewer``, which asks the service about each file one at a time;
- ``bare-put``: the minimal aiohttp PUT loop (bench/bareput.py), the physical limit.
A run counts only if the child exits 0 and the container then holds exactly the expected blobs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import tools
from .azurite import ROOT
from .common import Context

BAREPUT = Path(__file__).resolve().parent / "bareput.py"
CORPUS_TABLES = ("ImageSets", "ImageTransforms", "TagIndex")


@dataclass
class Target:
    """Where one contender writes in one round: a container (for corpus, also its three tables)."""

    container: str
    tables: tuple[str, ...] = ()
    sas_url: str = ""
    config: Path | None = None


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    # Reads the child's stdout; returns "" when the run did what was asked, else the reason.
    check_output: Callable[[str], str] = field(default=lambda _out: "")
    expect_blobs: int | None = None  # blobs the container must hold afterwards (None: do not count)


class Contender:
    kind = ""

    def __init__(self, name: str) -> None:
        self.name = name

    def target(self, ctx: Context, tag: str) -> Target:
        container = ctx.fresh_name(tag)
        return Target(container, sas_url=ctx.endpoint.container_sas_url(container))

    def upload(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        raise NotImplementedError

    def rerun(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation | None:
        return None  # this contender has no no-op rerun to measure

    def plan(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation | None:
        return None  # this contender has no crawl-and-plan to measure


class Corpus(Contender):
    kind = "corpus"

    def __init__(self, name: str, pythonpath: str | None) -> None:
        super().__init__(name)
        self.pythonpath = pythonpath

    def target(self, ctx: Context, tag: str) -> Target:
        # The CLI creates its container and tables itself: creating them here would hide that cost.
        name = ctx.fresh_name(tag)
        return Target(name, tables=tuple(name + t for t in CORPUS_TABLES))

    def _argv(self, ctx: Context, src: Path, t: Target, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "corpus_manager.cli",
            "upload",
            str(src),
            "--version",
            "v1",
            "--corpus",
            t.container,
            "--max-parallel-uploads",
            str(ctx.parallel),
            "--json",
            *extra,
        ]

    def _env(self, ctx: Context) -> dict[str, str]:
        return ctx.child_env(
            {"AZURE_STORAGE_CONNECTION_STRING": ctx.endpoint.connection_string},
            # The repo's own contender gets this tree first too: without PYTHONPATH the child would
            # import whatever checkout the venv holds installed editable (the shared venv's is /work/main).
            pythonpath=self.pythonpath or str(ROOT),
        )

    def upload(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        return Invocation(self._argv(ctx, src, t), self._env(ctx), _corpus_check(uploaded=files, stored=0), files)

    def rerun(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        return Invocation(self._argv(ctx, src, t), self._env(ctx), _corpus_check(uploaded=0, stored=files), files)

    def plan(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        return Invocation(
            self._argv(ctx, src, t, "--dry-run"), self._env(ctx), _corpus_check(uploaded=files, stored=0, dry_run=True)
        )


def _corpus_check(*, uploaded: int, stored: int, dry_run: bool = False) -> Callable[[str], str]:
    def check(out: str) -> str:
        try:
            report = json.loads(out)
            got = (report["files"]["uploaded"], report["files"]["already_stored"], report["dry_run"])
        except (ValueError, KeyError, TypeError):
            return "no JSON report on stdout"
        want = (uploaded, stored, dry_run)
        return "" if got == want else f"report says uploaded/already_stored/dry_run = {got}, expected {want}"

    return check


class Rclone(Contender):
    kind = "rclone"

    def target(self, ctx: Context, tag: str) -> Target:
        t = super().target(ctx, tag)
        t.config = ctx.work / f"rclone-{t.container}.conf"
        tools.write_rclone_config(t.config, t.sas_url)
        return t

    def _argv(self, ctx: Context, src: Path, t: Target, *extra: str) -> list[str]:
        # -q: errors only, like `corpus --json`, so neither side pays for progress output.
        return [
            tools.rclone(),
            "--config",
            str(t.config),
            "copy",
            str(src),
            f"dst:{t.container}",
            "--transfers",
            str(ctx.parallel),
            # a user who tunes one tunes both: rclone's default 8 checkers (parallel stat/compare ahead of
            # the transfers) would hold N transfers back on small files (issue 11)
            "--checkers",
            str(ctx.parallel),
            "-q",
            *extra,
        ]

    def upload(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        return Invocation(self._argv(ctx, src, t), ctx.child_env(), expect_blobs=files)

    def rerun(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        return Invocation(self._argv(ctx, src, t), ctx.child_env(), expect_blobs=files)

    def plan(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        return Invocation(self._argv(ctx, src, t, "--dry-run"), ctx.child_env(), expect_blobs=0)


class AzCopy(Contender):
    kind = "azcopy"

    def _env(self, ctx: Context) -> dict[str, str]:
        logs = ctx.work / "azcopy"
        logs.mkdir(parents=True, exist_ok=True)
        return ctx.child_env(
            {
                "AZCOPY_CONCURRENCY_VALUE": str(ctx.parallel),
                "AZCOPY_LOG_LOCATION": str(logs),
                "AZCOPY_JOB_PLAN_LOCATION": str(logs),
                "AZCOPY_DISABLE_SYSLOG": "true",
            }
        )

    _common = ("--skip-version-check", "--log-level=ERROR", "--output-level=quiet", "--put-md5")

    def upload(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        # SRC/* (expanded by AzCopy, not a shell) puts the tree's contents at the container root, as rclone does.
        argv = [tools.azcopy(), "copy", f"{src}/*", t.sas_url, "--recursive", "--from-to=LocalBlob", *self._common]
        return Invocation(argv, self._env(ctx), expect_blobs=files)

    def rerun(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        argv = [
            tools.azcopy(),
            "sync",
            str(src),
            t.sas_url,
            "--recursive",
            "--from-to=LocalBlob",
            "--delete-destination=false",
            *self._common,
        ]
        return Invocation(argv, self._env(ctx), expect_blobs=files)


class BarePut(Contender):
    kind = "bare"

    def upload(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        env = ctx.child_env({"BENCH_CONTAINER_URL": t.sas_url})
        argv = [sys.executable, str(BAREPUT), str(src), "--parallel", str(ctx.parallel)]
        return Invocation(argv, env, _count_check(files), files)

    def plan(self, ctx: Context, src: Path, t: Target, files: int) -> Invocation:
        argv = [sys.executable, str(BAREPUT), str(src), "--crawl-only"]
        return Invocation(argv, ctx.child_env(), _count_check(files))


def _count_check(files: int) -> Callable[[str], str]:
    def check(out: str) -> str:
        got = out.strip()
        return "" if got == str(files) else f"stored/crawled {got or 'nothing'}, expected {files}"

    return check


def build(ctx: Context) -> list[Contender]:
    out: list[Contender] = []
    if ctx.wants("corpus"):
        out += [Corpus(name, path) for name, path in ctx.variants.items()]
    if ctx.wants("rclone"):
        out.append(Rclone("rclone"))
    if ctx.wants("azcopy"):
        out.append(AzCopy("azcopy"))
    if ctx.wants("bare"):
        out.append(BarePut("bare-put"))
    return out
