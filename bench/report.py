"""The report suite (issue 17): `corpus report` thumbnails against a bare Wand pool, and its cache.

200 sets x 20 photo-like 512x512 images (JPEG/PNG alternately), uploaded once; then, per round:

- (a) ``thumb-pool``: bench/thumbpool.py, the report's own recipe (``make_thumbnail``) in the same process
  pool on the same first 12 images of each set, from local files, no storage: the compute limit;
- (b) ``report-first``: ``corpus report --out DIR --per-set 12 --json`` with an empty thumbnail cache:
  lists every set, reads 2,400 images, makes and stores 2,400 thumbnails, writes the pages;
- (c) ``report-again``: the same report into another folder: every thumbnail from the cache.

Before each round the cache prefix is emptied, so (b) makes every thumbnail again. Targets: (b)'s
thumbnail throughput at least 0.8x (a)'s; (c)'s wall time at most 0.3x (b)'s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from . import azurite
from .common import Context, Sample, machine
from .corpora import PhotoSpec, make_photo_corpus
from .harness import corpus_argv, header, step, storage_context, table
from .tools import BENCH_DIR
from .transform import imagemagick_convert

RESULTS = Path(__file__).resolve().parent / "results"
THUMBPOOL = Path(__file__).resolve().parent / "thumbpool.py"
REPO = Path(__file__).resolve().parent.parent
FULL = PhotoSpec(200, 20, 512)
QUICK = PhotoSpec(20, 20, 512)
PER_SET = 12
POOL, FIRST, AGAIN = "thumb-pool", "report-first", "report-again"


def _empty_cache(ctx: Context, corpus: str) -> int:
    """Delete the corpus's thumbnail cache (not measured): the next report makes every thumbnail."""
    container = ctx.endpoint.blob_service.get_container_client(corpus)
    names = [b.name for b in container.list_blobs(name_starts_with="thumbs/")]
    for name in names:
        container.delete_blob(name)
    return len(names)


def run(args: argparse.Namespace) -> int:
    spec = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    workers = os.cpu_count() or 1
    json_out = args.json_out or RESULTS / "report.json"
    src = make_photo_corpus(spec, BENCH_DIR / "corpora", imagemagick_convert())
    thumbs = spec.dirs * min(PER_SET, spec.files_per_dir)
    versions = {"python": sys.version.split()[0], "azurite": azurite.version()}
    samples: list[Sample] = []
    with storage_context(
        "report", parallel=args.parallel, rounds=rounds, quick=args.quick, in_memory=args.in_memory, keep_work=False
    ) as ctx:
        # this tree's package, whatever the venv has installed (the children run in the scratch dir)
        env = ctx.child_env({"AZURE_STORAGE_CONNECTION_STRING": ctx.endpoint.connection_string}, pythonpath=str(REPO))
        corpus = ctx.fresh_name("rp")
        env["CORPUS_NAME"] = corpus
        print(f"bench: uploading {spec.describe()} once to corpus {corpus}", flush=True)
        up = step(
            ctx,
            None,
            "prepare",
            "upload",
            0,
            corpus_argv("upload", str(src), "--version", "v1"),
            env,
            files=0,
            nbytes=0,
        )
        if not up.ok:
            print(f"bench: upload failed: {up.reason}", file=sys.stderr)
            return 1

        def check_report(made: int, cached: int) -> Any:
            def check(m: Any) -> str:
                got = json.loads(m.stdout)["thumbnails"]
                return "" if got == {"made": made, "cached": cached} else f"thumbnails {got}, wanted {made} made"

            return check

        for rnd in range(1, rounds + 1):
            _empty_cache(ctx, corpus)
            out = ctx.work / f"r{rnd}"
            shutil.rmtree(out, ignore_errors=True)
            argv = [sys.executable, str(THUMBPOOL), str(src), str(out / "pool"), "--per-set", str(PER_SET)]
            step(ctx, samples, "report", POOL, rnd, [*argv, "--workers", str(workers)], env, files=thumbs, nbytes=0)
            report = corpus_argv("report", "--per-set", str(PER_SET), "--json")
            step(
                ctx,
                samples,
                "report",
                FIRST,
                rnd,
                [*report, "--out", str(out / "first")],
                env,
                files=thumbs,
                nbytes=0,
                check=check_report(thumbs, 0),
            )
            step(
                ctx,
                samples,
                "report",
                AGAIN,
                rnd,
                [*report, "--out", str(out / "again")],
                env,
                files=thumbs,
                nbytes=0,
                check=check_report(0, thumbs),
            )

    def median(name: str) -> float | None:
        walls = [s.wall for s in samples if s.contender == name and s.ok]
        return statistics.median(walls) if walls else None

    pool, first, again = median(POOL), median(FIRST), median(AGAIN)
    lines = []
    for name, wall in ((POOL, pool), (FIRST, first), (AGAIN, again)):
        rate = f"{thumbs / wall:.0f}" if wall else "n/a"
        lines.append([name, f"{wall:.2f}" if wall else "failed", rate])
    throughput = pool / first if pool and first else None
    cache_ratio = again / first if again and first else None
    print()
    print(header("Report benchmark", versions))
    print(
        f"{spec.describe()}; {thumbs} thumbnails ({PER_SET} per set); {workers} workers; medians of {rounds} round(s)"
    )
    print()
    print(table(["contender", "wall s", "thumbnails/s"], lines, left=1))
    print()
    verdicts = [
        (
            "report-first thumbnail throughput >= 0.8x thumb-pool",
            throughput,
            throughput is not None and throughput >= 0.8,
        ),
        ("report-again wall <= 0.3x report-first", cache_ratio, cache_ratio is not None and cache_ratio <= 0.3),
    ]
    for text, value, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value:.2f}x" if value is not None else f"  FAIL  {text}: n/a")
    payload = {
        "suite": "report",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions,
        "corpus": spec.describe(),
        "thumbnails": thumbs,
        "rounds": rounds,
        "walls": {POOL: pool, FIRST: first, AGAIN: again},
        "targets": [{"target": t, "ratio": v, "passed": ok} for t, v, ok in verdicts],
        "samples": [s.__dict__ for s in samples],
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nbench: wrote {json_out}")
    return 0 if all(ok for _t, _v, ok in verdicts) else 1


def main(args: argparse.Namespace) -> int:
    return run(args)
