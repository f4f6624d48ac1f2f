"""What the query/download and transform suites share: their storage, one measured step, the header.

The upload suite (upload.py, driven by __main__.py) predates them; these two suites reuse its parts
(``Context``, ``run_measured`` through launch.py, ``Azurite``, ``machine``) and add only this glue.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import azurite, common, tools
from .common import Context, Row, Sample
from .measure import Measured
from .tools import BENCH_DIR


@contextlib.contextmanager
def storage_context(
    suite: str,
    *,
    parallel: int,
    rounds: int,
    quick: bool,
    in_memory: bool,
    keep_work: bool,
    variants: dict[str, str | None] | None = None,
    contenders: set[str] | None = None,
) -> Iterator[Context]:
    """A Context on a private Azurite (or BENCH_CONNECTION_STRING's storage) with a scratch dir emptied at
    the start (the last run's logs stay for a post-mortem, no more); Azurite's data dropped after."""
    # one dir per suite, so suites can run at the same time; the upload suite keeps .bench/work
    work = BENCH_DIR / ("work" if suite == "upload" else f"work-{suite}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server: azurite.Azurite | None = None
    env_conn = os.environ.get(azurite.ENV_CONNECTION)
    if env_conn:
        endpoint = azurite.parse_connection_string(env_conn)
        print(f"bench: using the storage of {azurite.ENV_CONNECTION} ({endpoint.blob_endpoint})", flush=True)
    else:
        server = azurite.Azurite(work / "azurite", in_memory=in_memory)
        endpoint = server.start()
        print(f"bench: Azurite on {endpoint.blob_endpoint} (data in {server.location})", flush=True)
    ctx = Context(
        endpoint=endpoint,
        work=work,
        corpora=BENCH_DIR / "corpora",
        parallel=parallel,
        rounds=rounds,
        quick=quick,
        variants={"corpus": None} if variants is None else variants,
        contenders=contenders,
    )
    try:
        yield ctx
    finally:
        endpoint.close()
        if server is not None:
            server.stop()
        if not keep_work:
            shutil.rmtree(work / "azurite", ignore_errors=True)


def corpus_env(ctx: Context, pythonpath: str | None = None) -> dict[str, str]:
    """A corpus child's environment: this tree's package first on its path (the venv may hold another
    checkout's, installed editable), or ``pythonpath`` (a variant's) when given."""
    return ctx.child_env(
        {"AZURE_STORAGE_CONNECTION_STRING": ctx.endpoint.connection_string}, pythonpath=pythonpath or str(azurite.ROOT)
    )


def corpus_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "corpus_manager.cli", *args]


@dataclass
class Step:
    """One measured child: its sample (when recorded) and its stdout for the caller's checks."""

    measured: Measured
    ok: bool
    reason: str


def step(
    ctx: Context,
    samples: list[Sample] | None,
    scenario: str,
    name: str,
    rnd: int,
    argv: list[str],
    env: dict[str, str],
    *,
    files: int,
    nbytes: int,
    check: Callable[[Measured], str] | None = None,
) -> Step:
    """Run ``argv`` measured; a run counts only if it exits 0 and ``check`` (stdout, outputs) says ""."""
    label = f"r{rnd}-{scenario}-{name}".replace(":", "_").replace("@", "_").replace(" ", "_")
    m = ctx.run(argv, env, label)
    if m.timed_out:
        reason = f"timed out after {ctx.timeout:.0f} s"
    elif m.returncode != 0:
        reason = f"exit {m.returncode}: {m.stderr.strip().splitlines()[-1] if m.stderr.strip() else ''}"
    else:
        reason = check(m) if check else ""
    ok = not reason
    server = f", server {m.server_cpu:.2f} s CPU" if m.server_cpu is not None else ""
    status = "ok" if ok else f"FAILED ({reason}); logs: {ctx.log_dir / label}.*"
    where = f"round {rnd}" if rnd else "warm-up"
    print(
        f"  {where:8} {scenario:10} {name:22} {m.wall:7.2f} s wall {m.cpu:6.2f} s CPU {m.maxrss_mb:6.0f} MB"
        f"{server}  {status}",
        flush=True,
    )
    if samples is not None:
        samples.append(Sample.of(scenario, name, rnd, files, nbytes, m, ok, reason))
    return Step(m, ok, reason)


def header(title: str, versions: dict[str, str]) -> str:
    info = common.machine()
    return (
        f"{title}, {dt.date.today().isoformat()}, {info['cpu']} ({info['cores']} cores, {info['memory_gb']} GB), "
        f"{info['os']}; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )


def rotate(items: list[str], by: int) -> list[str]:
    by %= max(1, len(items))
    return items[by:] + items[:by]


def table(head: list[str], lines: list[list[str]], left: int = 2) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *(fmt(x) for x in lines)])


def ratio(v: float | None) -> str:
    """A ratio cell: ``1.23x``, or ``n/a`` when there was no anchor to divide by."""
    return "n/a" if v is None else f"{v:.2f}x"


# Every suite's result table draws its cells from here, so the same column reads the same in each report.
RESULT_COLUMNS: dict[str, Callable[[Row], str]] = {
    "scenario": lambda r: r.scenario,
    "contender": lambda r: r.contender + (f" ({r.failed_rounds} failed)" if r.failed_rounds else ""),
    "wall s": lambda r: f"{r.wall:.2f}",
    "(min-max)": lambda r: f"{r.wall_min:.2f}-{r.wall_max:.2f}",
    "CPU s": lambda r: f"{r.cpu:.2f}",
    "RSS MB": lambda r: f"{r.maxrss_mb:.0f}",
    "files/s": lambda r: f"{r.files_per_s:,.0f}",
    "MB/s": lambda r: f"{r.mb_per_s:.1f}",
    "vs rclone": lambda r: ratio(r.speed_vs_anchor),
    "CPU vs rc": lambda r: ratio(r.cpu_vs_anchor),
    "of ceiling": lambda r: ratio(r.of_ceiling),
    "server CPU s": lambda r: "n/a" if r.server_cpu is None else f"{r.server_cpu:.2f}",
}


def result_table(rows: list[Row], columns: list[str] | None = None, left: int = 2) -> str:
    """The suites' result table: one line per row, the named ``columns`` (default: all of RESULT_COLUMNS)."""
    head = list(RESULT_COLUMNS) if columns is None else columns
    return table(head, [[RESULT_COLUMNS[c](r) for c in head] for r in rows], left=left)


def corpus_variants(args: argparse.Namespace) -> dict[str, str | None]:
    """The corpus contenders from ``--no-repo-corpus`` and ``--variant NAME=PATH``; exits on a bad one."""
    variants: dict[str, str | None] = {} if args.no_repo_corpus else {"corpus": None}
    for item in args.variant:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path, "corpus_manager").is_dir():
            sys.exit(f"bench: --variant wants NAME=PATH with PATH/corpus_manager, got {item!r}")
        variants[f"corpus:{name}"] = str(Path(path).resolve())
    return variants


def contender_kinds(args: argparse.Namespace) -> set[str] | None:
    """``--contenders`` as a set, or None for all of them."""
    return {k.strip() for k in args.contenders.split(",")} if args.contenders else None


def tool_versions(kinds: set[str] | None) -> dict[str, str]:
    """Versions for the header; only the tools that will run are asked, so a missing one that is not wanted
    does not stop the run (and a wanted one stops it before minutes of corpus making)."""
    versions = {"python": sys.version.split()[0]}
    if kinds is None or "rclone" in kinds:
        versions["rclone"] = tools.rclone_version()
    if kinds is None or "azcopy" in kinds:
        versions["azcopy"] = tools.azcopy_version()
    versions["azurite"] = azurite.version()
    return versions
