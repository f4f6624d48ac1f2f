"""The download suite (issue 15): `corpus download` beside rclone, AzCopy and the bare-GET ceiling.

Each scenario's files are uploaded once with `corpus upload` (one corpus, so one container, each): the
container then holds exactly the blobs of the corpus's complete sets, and every contender fetches all
of them into a fresh directory per round:

- ``corpus`` (and ``--variant`` copies): ``corpus download --corpus C --out DIR --max-parallel-downloads N
  --json`` (no filter: every complete set);
- ``rclone``: ``rclone copy dst:C DIR --transfers N --checkers N -q`` (container-SAS remote);
- ``azcopy``: ``azcopy copy 'URL/*?SAS' DIR --recursive`` with ``AZCOPY_CONCURRENCY_VALUE=N`` (its default
  ``--check-md5=FailIfDifferent`` checks each blob's Content-MD5); rerun: ``azcopy sync URL?SAS DIR``;
- ``bare-get``: bench/bareget.py, one listing and one hand-built aiohttp GET per blob with a container
  SAS, hashed and written: the ceiling (Azurite's own cost).

Scenarios: ``first`` (2,000 x 20 KB in 50 sets), ``rerun`` (the no-op rerun of ``first`` into the same
DIR: the bare loop has none), ``big`` (200 x 2 MB in 10 sets), ``huge`` (one 1 GiB blob: peak RSS).
Contenders alternate (order rotated each round), one unrecorded warm-up each, medians of the rounds;
a run counts only if it exits 0 and DIR then holds exactly the expected files (corpus: its JSON
report's counts too). Ratios against rclone (the anchor) and bare-get (the ceiling).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tools
from .bigfiles import make_big_corpus
from .common import Context, Row, Sample, machine, summarize
from .corpora import CorpusSpec, make_corpus
from .harness import (
    contender_kinds,
    corpus_argv,
    corpus_env,
    corpus_variants,
    header,
    result_table,
    rotate,
    step,
    storage_context,
    table,
    tool_versions,
)
from .measure import Measured

RESULTS = Path(__file__).resolve().parent / "results"
BAREGET = Path(__file__).resolve().parent / "bareget.py"
KB, MB, MiB = 1 << 10, 1 << 20, 1 << 20
SIDECAR_PREFIX = ".corpus-"  # what `corpus download` keeps in --out besides the images (not counted)


@dataclass(frozen=True)
class Sizes:
    first: CorpusSpec
    big: CorpusSpec
    huge: int  # bytes of the one big blob


FULL = Sizes(CorpusSpec(50, 40, 20 * KB, seed=15), CorpusSpec(10, 20, 2 * MB, seed=16), 1024 * MiB)
QUICK = Sizes(CorpusSpec(10, 20, 20 * KB, seed=15), CorpusSpec(4, 5, 2 * MB, seed=16), 64 * MiB)
SCENARIOS = ("first", "rerun", "big", "huge")
RCLONE, AZCOPY, BARE = "rclone", "azcopy", "bare-get"


def _count(root: Path) -> int:
    if not root.exists():
        return 0
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith(SIDECAR_PREFIX))


class DownloadSuite:
    def __init__(self, ctx: Context, sizes: Sizes, wanted: list[str]) -> None:
        self.ctx = ctx
        self.sizes = sizes
        self.wanted = wanted
        self.samples: list[Sample] = []
        self.corpora: dict[str, str] = {}  # scenario family (first, big, huge) -> corpus/container name
        self.files: dict[str, int] = {}
        self.nbytes: dict[str, int] = {}
        self.sas: dict[str, str] = {}
        self.conf: dict[str, Path] = {}
        names = list(ctx.variants)
        if ctx.wants("rclone"):
            names.append(RCLONE)
        if ctx.wants("azcopy"):
            names.append(AZCOPY)
        if ctx.wants("bare"):
            names.append(BARE)
        self.contenders = names

    # ----- preparation (not measured) -----------------------------------------------------------
    def prepare(self) -> None:
        corpora = tools.BENCH_DIR / "corpora"
        sources: dict[str, tuple[Path, int, int]] = {}
        if {"first", "rerun"} & set(self.wanted):
            s = self.sizes.first
            sources["first"] = (make_corpus(s, corpora), s.files, s.total_bytes)
        if "big" in self.wanted:
            s = self.sizes.big
            sources["big"] = (make_corpus(s, corpora), s.files, s.total_bytes)
        if "huge" in self.wanted:
            sources["huge"] = (make_big_corpus(corpora, self.sizes.huge, files=1, seed=15), 1, self.sizes.huge)
        for family, (root, files, nbytes) in sources.items():
            name = self.ctx.fresh_name(f"dl{family}")
            t0 = time.perf_counter()
            m = self.ctx.run(
                corpus_argv("upload", str(root), "--version", "v1", "--corpus", name, "--json"),
                corpus_env(self.ctx),
                f"prepare-{family}",
            )
            if m.returncode != 0:
                raise SystemExit(f"bench: uploading {root} failed (exit {m.returncode}): {m.stderr.strip()[-400:]}")
            got = json.loads(m.stdout)["files"]["uploaded"]
            if got != files:
                raise SystemExit(f"bench: the upload of {root} stored {got} files, expected {files}")
            print(
                f"bench: {family}: {files:,} files ({nbytes / MB:,.0f} MB) in corpus {name}, "
                f"uploaded in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            self.corpora[family], self.files[family], self.nbytes[family] = name, files, nbytes
            self.sas[family] = self.ctx.endpoint.container_sas_url(name)
            self.conf[family] = self.ctx.work / f"rclone-{family}.conf"
            tools.write_rclone_config(self.conf[family], self.sas[family])

    # ----- one run --------------------------------------------------------------------------------
    def _dir(self, who: str, family: str, rnd: int) -> Path:
        return self.ctx.work / "dl" / f"{family}-{who.replace(':', '_')}-r{rnd}"

    def _invocation(self, who: str, family: str, out: Path, rerun: bool) -> tuple[list[str], dict[str, str], Any]:
        files, name, sas = self.files[family], self.corpora[family], self.sas[family]
        if who in self.ctx.variants:
            argv = corpus_argv(
                "download",
                "--corpus",
                name,
                "--out",
                str(out),
                "--max-parallel-downloads",
                str(self.ctx.parallel),
                "--json",
            )

            def check_report(m: Measured) -> str:
                try:
                    f = json.loads(m.stdout)["files"]
                except (ValueError, KeyError, TypeError):
                    return "no JSON report on stdout"
                got = (f["downloaded"], f["already_present"], f["failed"] + f["refused"])
                want = (0, files, 0) if rerun else (files, 0, 0)
                return "" if got == want else f"downloaded/present/failed = {got}, expected {want}"

            return argv, corpus_env(self.ctx, self.ctx.variants[who]), check_report
        if who == RCLONE:
            argv = [
                tools.rclone(),
                "--config",
                str(self.conf[family]),
                "copy",
                f"dst:{name}",
                str(out),
                "--transfers",
                str(self.ctx.parallel),
                "--checkers",
                str(self.ctx.parallel),
                "-q",
            ]
            return argv, self.ctx.child_env(), None
        if who == AZCOPY:
            logs = self.ctx.work / "azcopy"
            logs.mkdir(parents=True, exist_ok=True)
            env = self.ctx.child_env(
                {
                    "AZCOPY_CONCURRENCY_VALUE": str(self.ctx.parallel),
                    "AZCOPY_LOG_LOCATION": str(logs),
                    "AZCOPY_JOB_PLAN_LOCATION": str(logs),
                    "AZCOPY_DISABLE_SYSLOG": "true",
                }
            )
            base, _, query = sas.partition("?")
            # --from-to: AzCopy cannot tell an emulator's URL is a blob one
            common = (
                "--recursive",
                "--from-to=BlobLocal",
                "--skip-version-check",
                "--log-level=ERROR",
                "--output-level=quiet",
            )
            if rerun:
                argv = [tools.azcopy(), "sync", sas, str(out), "--delete-destination=false", *common]
            else:
                argv = [tools.azcopy(), "copy", f"{base}/*?{query}", str(out), *common]
            return argv, env, None
        argv = [sys.executable, str(BAREGET), str(out), "--parallel", str(self.ctx.parallel)]

        def check_count(m: Measured) -> str:
            return (
                "" if m.stdout.strip() == str(files) else f"fetched {m.stdout.strip() or 'nothing'}, expected {files}"
            )

        return argv, self.ctx.child_env({"BENCH_CONTAINER_URL": sas}), check_count

    def run_one(self, scenario: str, who: str, rnd: int, record: bool = True) -> None:
        family = "first" if scenario == "rerun" else scenario
        out = self._dir(who, family, rnd)
        rerun = scenario == "rerun"
        if not rerun:
            shutil.rmtree(out, ignore_errors=True)
        argv, env, check_out = self._invocation(who, family, out, rerun)
        files = self.files[family]

        def check(m: Measured) -> str:
            reason = check_out(m) if check_out else ""
            if reason:
                return reason
            n = _count(out)
            return "" if n == files else f"{n} files in the target, expected {files}"

        step(
            self.ctx,
            self.samples if record else None,
            scenario_id(scenario, self.sizes),
            who,
            rnd,
            argv,
            env,
            files=files,
            nbytes=self.nbytes[family],
            check=check,
        )
        if scenario in ("big", "huge"):
            shutil.rmtree(out, ignore_errors=True)

    def run(self) -> list[Sample]:
        print("bench: warm-up (one unrecorded first download each)", flush=True)
        warm = "first" if "first" in self.files else next(iter(self.files))
        for who in self.contenders:
            self.run_one(warm, who, 0, record=False)
            shutil.rmtree(self._dir(who, warm, 0), ignore_errors=True)
        for rnd in range(1, self.ctx.rounds + 1):
            print(f"bench: round {rnd} of {self.ctx.rounds}", flush=True)
            order = rotate(self.contenders, rnd - 1)
            if {"first", "rerun"} & set(self.wanted):
                for who in order:
                    self.run_one("first", who, rnd, record="first" in self.wanted)
                for who in order:
                    if "rerun" in self.wanted and who != BARE:
                        self.run_one("rerun", who, rnd)
                for who in order:
                    shutil.rmtree(self._dir(who, "first", rnd), ignore_errors=True)
            for scenario in ("big", "huge"):
                if scenario in self.wanted:
                    for who in order:
                        self.run_one(scenario, who, rnd)
        return self.samples

    def profile(self, out_dir: Path) -> dict[str, Any]:
        """py-spy over one extra `corpus download` of ``first`` and its rerun: where the client CPU goes."""
        from . import profile

        results: dict[str, Any] = {}
        out_dir.mkdir(parents=True, exist_ok=True)  # a fresh clone has no bench/results yet: py-spy would fail
        out = self._dir("profile", "first", 0)
        shutil.rmtree(out, ignore_errors=True)
        for what in ("first", "rerun"):
            raw = out_dir / f"profile-download-{what}.txt"
            argv = corpus_argv(
                "download",
                "--corpus",
                self.corpora["first"],
                "--out",
                str(out),
                "--max-parallel-downloads",
                str(self.ctx.parallel),
                "--json",
            )
            spy = [tools.py_spy(), "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(raw), "--"]
            m = self.ctx.run(spy + argv, corpus_env(self.ctx), f"profile-download-{what}")
            if m.returncode != 0 or not raw.exists():
                results[what] = {"error": f"py-spy exited {m.returncode}: {m.stderr.strip()[-300:]}"}
            else:
                results[what] = {"raw": str(raw), "wall": round(m.wall, 2), **profile.analyze(raw)}
        shutil.rmtree(out, ignore_errors=True)
        return results


def scenario_id(scenario: str, sizes: Sizes) -> str:
    f, b = sizes.first, sizes.big
    return {
        "first": f"first {f.files}x{f.size // KB}KB",
        "rerun": f"rerun {f.files}x{f.size // KB}KB",
        "big": f"big {b.files}x{b.size // MB}MB",
        "huge": f"huge 1x{sizes.huge // MiB}MiB",
    }[scenario]


# ----- report ----------------------------------------------------------------------------------------
def render(rows: list[Row]) -> str:
    note = (
        "vs rclone = rclone's wall / this wall (> 1 faster); CPU vs rc = this client CPU / rclone's (< 1 cheaper); "
        "of ceiling = bare-get's wall / this wall. Medians over rounds."
    )
    return result_table(rows) + "\n" + note


def verdicts(rows: list[Row], sizes: Sizes, corpus_names: list[str]) -> list[dict[str, Any]]:
    by = {(r.scenario, r.contender): r for r in rows}
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, unit: str, passed: bool | None) -> None:
        measured = "n/a" if value is None else (f"{value:.0f} MB" if unit == "MB" else f"{value:.2f}x")
        out.append({"contender": name, "target": target, "measured": measured, "value": value, "passed": passed})

    first, rerun = scenario_id("first", sizes), scenario_id("rerun", sizes)
    big, huge = scenario_id("big", sizes), scenario_id("huge", sizes)
    for name in corpus_names:
        c = by.get((first, name))
        if c is not None:
            add(
                name,
                "first: files/s >= 1.0x rclone",
                c.speed_vs_anchor,
                "x",
                None if c.speed_vs_anchor is None else c.speed_vs_anchor >= 1.0,
            )
            add(
                name,
                "first: files/s >= 0.85x bare-GET ceiling",
                c.of_ceiling,
                "x",
                None if c.of_ceiling is None else c.of_ceiling >= 0.85,
            )
            add(
                name,
                "first: client CPU <= 1.2x rclone's",
                c.cpu_vs_anchor,
                "x",
                None if c.cpu_vs_anchor is None else c.cpu_vs_anchor <= 1.2,
            )
        c = by.get((rerun, name))
        if c is not None:
            # wall ratio as corpus wall / rclone wall, the way the target is written
            v = 1 / c.speed_vs_anchor if c.speed_vs_anchor else None
            add(name, "rerun: wall <= 1.0x rclone's", v, "x", None if v is None else v <= 1.0)
        c = by.get((big, name))
        if c is not None:
            add(
                name,
                "big: MB/s >= 1.0x rclone",
                c.speed_vs_anchor,
                "x",
                None if c.speed_vs_anchor is None else c.speed_vs_anchor >= 1.0,
            )
        c = by.get((huge, name))
        if c is not None:
            add(name, "huge: peak RSS <= 200 MB", c.maxrss_mb, "MB", c.maxrss_mb <= 200)
    return out


def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    default = ",".join(SCENARIOS)
    wanted = [s.strip() for s in (args.scenario if args.scenario != "a,b,c,d,e" else default).split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCENARIOS))
    if unknown:
        sys.exit(f"bench: unknown download scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    variants = corpus_variants(args)
    kinds = contender_kinds(args)
    versions = tool_versions(kinds)
    started = time.time()
    with storage_context(
        "download",
        parallel=args.parallel,
        rounds=rounds,
        quick=args.quick,
        in_memory=args.in_memory,
        keep_work=args.keep_work,
        variants=variants,
        contenders=kinds,
    ) as ctx:
        ctx.timeout = 1800.0
        suite = DownloadSuite(ctx, sizes, wanted)
        suite.prepare()
        print(
            f"bench: contenders {', '.join(suite.contenders)}; N={args.parallel}; {rounds} round(s); "
            f"scenarios {', '.join(wanted)}",
            flush=True,
        )
        samples = suite.run()
        profile_on = args.profile if args.profile is not None else (not args.quick and "first" in suite.files)
        prof = suite.profile(RESULTS) if profile_on and "corpus" in variants else {}
    ids = [scenario_id(s, sizes) for s in SCENARIOS]
    rows = summarize(samples, {i: RCLONE for i in ids}, {i: BARE for i in ids})
    checks = verdicts(rows, sizes, list(variants))
    print()
    print(header("Download benchmark", versions))
    print(
        f"N = {args.parallel} in flight for every contender; medians of {rounds} round(s); client CPU = "
        "user+sys of the child (os.wait4); server CPU = Azurite's over the same interval."
    )
    print()
    print(render(rows))
    print()
    print("Targets (issue 15):")
    print(
        table(
            ["contender", "target", "measured", "result"],
            [
                [
                    v["contender"],
                    v["target"],
                    v["measured"],
                    "n/a" if v["passed"] is None else ("PASS" if v["passed"] else "MISS"),
                ]
                for v in checks
            ],
            left=2,
        )
    )
    if args.quick:
        print("(--quick: small sizes, a smoke run; the targets are defined for the full sizes)")
    from . import profile

    for what, result in prof.items():
        print()
        print(
            f"profile: {result['error']}" if "error" in result else profile.render(f"corpus download ({what})", result)
        )
    payload = {
        "suite": "download",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions,
        "parallel": args.parallel,
        "rounds": rounds,
        "quick": args.quick,
        "elapsed_seconds": round(time.time() - started, 1),
        "summary": [r.to_json() for r in rows],
        "targets": checks,
        "samples": [s.__dict__ for s in samples],
        "profile": prof,
    }
    out = args.json_out or RESULTS / ("download-quick.json" if args.quick else "download.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nbench: wrote {out}")
    print(f"bench: child logs in {ctx.log_dir}")
    failed = sum(1 for s in samples if not s.ok)
    if failed:
        print(f"bench: {failed} run(s) failed; see the notes in the JSON", file=sys.stderr)
    return 1 if failed else 0
