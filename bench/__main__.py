"""``python -m bench``: the upload benchmark of issue 5 (``make bench``).

Makes the corpora (once, reused), starts a private Azurite on free ports (or uses
BENCH_CONNECTION_STRING), warms every contender up, runs the rounds, prints the table and the
targets, writes the JSON, and profiles `corpus upload` of scenario (a) with py-spy.

Prototype variants of the package can run beside the repo's in the same rounds, against the same
rclone, with ``--variant NAME=PATH`` (PATH goes first on the child's PYTHONPATH).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from . import azurite, common, harness
from . import profile as prof
from . import upload as up
from .tools import BENCH_DIR

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--suite",
        choices=["upload", "query", "transform", "bigfiles", "download", "release", "report"],
        default="upload",
        help="Which benchmark suite: upload (issue 5), query (query + download, issue 3), transform "
        "(issue 4), bigfiles (three 800 MB images and the block threshold, issue 11.2), download (issue 15: first "
        "download, no-op rerun, 2 MB files, one 1 GiB blob, beside rclone, AzCopy and a bare GET loop), release "
        "(issue 14: release create and verify --deep beside rclone) or report (issue 17: thumbnails).",
    )
    p.add_argument(
        "--scenario",
        default="a,b,c,d,e",
        help="Comma-separated scenarios: a (first upload), b (no-op rerun), c (2 MB files), "
        "d (crawl + plan), e (many small sets vs one set of the same images). Default: all.",
    )
    p.add_argument("--rounds", type=int, default=None, help="Rounds per scenario (default 3; 1 with --quick).")
    p.add_argument("--quick", action="store_true", help="Small sizes: a smoke run of the harness.")
    p.add_argument(
        "--parallel",
        type=int,
        default=32,
        help="N: corpus --max-parallel-uploads, rclone --transfers, AzCopy concurrency, "
        "bare-PUT requests in flight (default 32).",
    )
    p.add_argument(
        "--contenders", default=None, help="Comma-separated subset of corpus,rclone,azcopy,bare (default: all)."
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="Also run a copy of corpus_manager found under PATH, as contender corpus:NAME.",
    )
    p.add_argument(
        "--no-repo-corpus",
        action="store_true",
        help="Leave out the repo's own corpus_manager (only the --variant ones run).",
    )
    p.add_argument(
        "--profile",
        dest="profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy profile of `corpus upload` in scenario (a) (default: on when (a) runs).",
    )
    p.add_argument("--json-out", type=Path, default=None, help="Default: bench/results/SUITE.json.")
    p.add_argument("--in-memory", action="store_true", help="Start Azurite with --inMemoryPersistence.")
    p.add_argument("--keep-work", action="store_true", help="Keep Azurite's data in .bench/work after the run.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.suite != "upload":  # the other suites take the shared options and run on their own
        from importlib import import_module

        return int(import_module(f".{args.suite}", __package__).main(args))
    args.json_out = args.json_out or RESULTS / "upload.json"
    wanted = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(up.SCENARIOS))
    if unknown:
        sys.exit(f"bench: unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(up.SCENARIOS)}")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1 or args.parallel < 1:
        sys.exit("bench: --rounds and --parallel must be at least 1")
    sizes = up.QUICK if args.quick else up.FULL
    variants = harness.corpus_variants(args)
    kinds = harness.contender_kinds(args)

    # Tools first: a missing one should stop the run before minutes of corpus making.
    versions = harness.tool_versions(kinds)

    corpora_dir = BENCH_DIR / "corpora"
    roots = up.make_corpora(sizes, wanted, corpora_dir)
    from .corpora import check_sample

    check_sample(roots["warmup"])

    env_conn = os.environ.get(azurite.ENV_CONNECTION)
    started = time.time()
    with harness.storage_context(
        "upload",
        parallel=args.parallel,
        rounds=rounds,
        quick=args.quick,
        in_memory=args.in_memory,
        keep_work=args.keep_work,
        variants=variants,
        contenders=kinds,
    ) as ctx:
        suite = up.UploadSuite(ctx, sizes, wanted, roots)
        print(
            f"bench: contenders {', '.join(c.name for c in suite.contenders)}; N={args.parallel}; "
            f"{rounds} round(s); scenarios {', '.join(wanted)}",
            flush=True,
        )
        samples = suite.run()
        profile_on = args.profile if args.profile is not None else "a" in wanted
        profiles = suite.profile(RESULTS) if profile_on and variants and "a" in wanted else {}
    ids = up.scenario_ids(sizes, wanted)
    anchors, ceilings = up.anchors_and_ceilings(ids)
    rows = common.summarize(samples, anchors, ceilings)
    descriptions = {k: v for k, v in up.describe(sizes).items() if k in ids}
    # a target whose scenario did not run is left out rather than shown as n/a
    verdicts = [v for v in up.targets(rows, sizes, list(variants), samples) if v.passed is not None]
    info = common.machine()
    print()
    print(
        f"Upload benchmark, {dt.date.today().isoformat()}, {info['cpu']} ({info['cores']} cores, "
        f"{info['memory_gb']} GB), {info['os']}; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    print(
        f"N = {args.parallel} in flight for every contender; medians of {rounds} round(s); "
        f"client CPU = user+sys of the child (os.wait4); server CPU = Azurite's over the same interval."
    )
    print()
    print(up.render_table(rows, descriptions))
    print()
    print("Targets (issues 5 and 11):")
    print(up.render_targets(verdicts, args.quick))
    for name, result in profiles.items():
        print()
        print(prof.render(name, result))
    payload = {
        "suite": "upload",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "versions": versions,
        "parallel": args.parallel,
        "rounds": rounds,
        "quick": args.quick,
        "azurite": "external" if env_conn else ("in-memory" if args.in_memory else "on disk"),
        "scenarios": descriptions,
        "elapsed_seconds": round(time.time() - started, 1),
        "summary": list(up.iter_rows_json(rows)),
        "targets": [v.to_json() for v in verdicts],
        "samples": [s.__dict__ for s in samples],
        "profiles": profiles,
    }
    up.write_json(args.json_out, payload)
    print(f"\nbench: wrote {args.json_out}")
    print(f"bench: child logs in {ctx.log_dir}")
    failed = sum(1 for s in samples if not s.ok)
    if failed:
        print(f"bench: {failed} run(s) failed; see the notes in the JSON", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
