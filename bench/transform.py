"""The transform suite (issue 4): `corpus transform` beside `convert` per file and a bare Wand pool.

Same images (photo-like 512x512 JPEG/PNG), same operations (``resize=256x256`` then ``charcoal=1``),
same machine, one run, each contender once per round (order rotated), medians:

- (a) ``xargs-convert``: the C# way, ``convert IN -resize 256x256 -charcoal 1 OUT`` forked once per
  file, ``xargs -P <cores>``, local files, ImageMagick's defaults (OpenMP threads = cores); and
  ``xargs-convert-1t``, the same with ``MAGICK_THREAD_LIMIT=1`` (one thread per process, as the pool
  uses), because on small images the threads can cost more than they give: the targets take the
  faster of the two as (a).
- (b) ``wand-pool``: bench/wandpool.py, ``transforms.create_pool`` + ``apply_spec`` (the very worker
  `corpus transform` runs) on local files, no storage: the compute limit.
- (c) ``corpus-transform``: ``corpus transform NAME --version rN --op ... --json`` end to end through
  Azurite; the source sets are uploaded once before the rounds and every round registers a fresh
  transform version, so every round downloads, transforms and uploads all the images.
- (d) ``rclone-convert-rclone`` (issue 15): what a user without the tool really does, end to end through
  the same Azurite: ``rclone copy`` of the sources down (``--transfers 32 --checkers 32``), (a)'s
  ``xargs -P <cores> convert`` on them, ``rclone copy`` of the outputs up to a fresh prefix; one bash
  script per round, measured with everything it waited for.

Targets: (c) at least 1.3x faster than (a), and at least 0.8x of (b)'s speed (issue 4); (c) at least
1.2x faster than (d), and at least 0.8x of (b) (issue 15).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import azurite, tools
from .common import Context, Row, Sample, machine, summarize
from .corpora import PhotoSpec, make_photo_corpus
from .harness import corpus_argv, corpus_env, header, rotate, step, storage_context, table
from .measure import Measured

RESULTS = Path(__file__).resolve().parent / "results"
WANDPOOL = Path(__file__).resolve().parent / "wandpool.py"
OPS = ("resize=256x256", "charcoal=1")
CONVERT_ARGS = ("-resize", "256x256", "-charcoal", "1")  # the same operations, in convert's words
FULL = PhotoSpec(20, 20, 512)
QUICK = PhotoSpec(4, 10, 512)
XARGS, XARGS_1T, POOL, CORPUS = "xargs-convert", "xargs-convert-1t", "wand-pool", "corpus-transform"
PIPELINE = "rclone-convert-rclone"
OUT_CONTAINER = "txpipeline"
SCENARIO = "transform"


def imagemagick_convert() -> str:
    """ImageMagick's own convert binary: Debian's versioned name first, since a `convert` found earlier
    on PATH may be a wrapper script (one more fork per file would be charged to contender (a))."""
    for name in ("convert-im6.q16", "magick", "convert"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("bench: ImageMagick's convert is missing (apt-get install imagemagick)")


def _count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


class TransformSuite:
    def __init__(self, ctx: Context, spec: PhotoSpec, src: Path, workers: int) -> None:
        self.ctx = ctx
        self.spec = spec
        self.src = src
        self.workers = workers
        self.files = sorted(p for p in src.rglob("*") if p.is_file())
        self.nbytes = sum(p.stat().st_size for p in self.files)
        self.convert = imagemagick_convert()
        self.corpus = ctx.fresh_name("tx")
        self.samples: list[Sample] = []
        self.pool_md5: dict[str, str] = {}  # output name -> MD5 of (b)'s output, to compare with (c)'s
        self.corpus_versions: list[str] = []

    # ----- preparation (not measured) ----------------------------------------------------------
    def prepare(self) -> None:
        self._xargs_list()
        print(f"bench: uploading the {len(self.files)} source images once to corpus {self.corpus}", flush=True)
        m = self.ctx.run(
            corpus_argv("upload", str(self.src), "--version", "v1", "--corpus", self.corpus, "--json"),
            corpus_env(self.ctx),
            "prepare-upload",
        )
        if m.returncode != 0:
            raise SystemExit(f"bench: the source upload failed (exit {m.returncode}): {m.stderr.strip()[-400:]}")
        uploaded = json.loads(m.stdout)["files"]["uploaded"]
        if uploaded != len(self.files):
            raise SystemExit(f"bench: the source upload stored {uploaded} files, expected {len(self.files)}")
        self._pipeline_prepare()

    def _pipeline_prepare(self) -> None:
        """(d)'s remotes (container SAS: the corpus's container to read, one to write), and its convert list
        over the names the blobs really have (``original/<dir>/v1/<file>``), mapped from DOWN to UP."""
        self.rclone_conf = self.ctx.work / "rclone-pipeline.conf"
        src_sas = self.ctx.endpoint.container_sas_url(self.corpus)
        out_sas = self.ctx.endpoint.container_sas_url(OUT_CONTAINER)
        self.rclone_conf.write_text(
            f"[src]\ntype = azureblob\nsas_url = {src_sas}\n\n[out]\ntype = azureblob\nsas_url = {out_sas}\n"
        )
        self.rclone_conf.chmod(0o600)  # it holds SASes
        container = self.ctx.endpoint.blob_service.get_container_client(self.corpus)
        names = sorted(b.name[len("original/") :] for b in container.list_blobs(name_starts_with="original/"))
        if len(names) != len(self.files):
            raise SystemExit(f"bench: the corpus holds {len(names)} originals, expected {len(self.files)}")
        self.down, self.up = self.ctx.work / "pipeline-down", self.ctx.work / "pipeline-up"
        self.pipeline_names = names
        self.pipeline_list = self.ctx.work / "pipeline-args.txt"
        self.pipeline_list.write_text(
            "".join(f"{self.down / n} {' '.join(CONVERT_ARGS)} {self.up / n}\n" for n in names)
        )

    def _xargs_list(self) -> None:
        # One line per file: `IN -resize 256x256 -charcoal 1 OUT`, OUT under a directory made per round.
        # (Corpus paths hold no blanks or quotes, so xargs -L 1 splits each line into exactly these args.)
        self.xargs_out = self.ctx.work / "xargs-out"
        self.list_file = self.ctx.work / "convert-args.txt"
        lines = []
        for f in self.files:
            rel = f.relative_to(self.src)
            lines.append(" ".join([str(f), *CONVERT_ARGS, str(self.xargs_out / rel)]))
        self.list_file.write_text("\n".join(lines) + "\n")

    def _fresh_xargs_out(self) -> None:
        shutil.rmtree(self.xargs_out, ignore_errors=True)
        for f in self.files:  # convert does not make directories; make them outside the timing
            (self.xargs_out / f.relative_to(self.src)).parent.mkdir(parents=True, exist_ok=True)

    # ----- contenders ------------------------------------------------------------------------------
    def _check_local(self, root: Path) -> str:
        got = _count_files(root)
        return "" if got == len(self.files) else f"{got} output files, expected {len(self.files)}"

    def run_xargs(self, rnd: int, one_thread: bool, record: bool = True) -> None:
        self._fresh_xargs_out()
        argv = ["xargs", "-a", str(self.list_file), "-P", str(self.workers), "-L", "1", self.convert]
        env = self.ctx.child_env({"MAGICK_THREAD_LIMIT": "1"} if one_thread else None)
        step(
            self.ctx,
            self.samples if record else None,
            SCENARIO,
            XARGS_1T if one_thread else XARGS,
            rnd,
            argv,
            env,
            files=len(self.files),
            nbytes=self.nbytes,
            check=lambda _m: self._check_local(self.xargs_out),
        )

    def run_pool(self, rnd: int, record: bool = True) -> None:
        out = self.ctx.work / "pool-out"
        shutil.rmtree(out, ignore_errors=True)
        argv = [sys.executable, str(WANDPOOL), str(self.src), str(out), "--workers", str(self.workers)]
        argv += [x for op in OPS for x in ("--op", op)]

        def check(m: Measured) -> str:
            if m.stdout.strip() != str(len(self.files)):
                return f"wrote {m.stdout.strip() or 'nothing'}, expected {len(self.files)}"
            return self._check_local(out)

        s = step(
            self.ctx,
            self.samples if record else None,
            SCENARIO,
            POOL,
            rnd,
            argv,
            self.ctx.child_env(),
            files=len(self.files),
            nbytes=self.nbytes,
            check=check,
        )
        if s.ok and not self.pool_md5:
            self.pool_md5 = {
                str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()
            }

    def run_corpus(self, rnd: int, record: bool = True) -> None:
        version = f"r{rnd}" if record else "warm"
        argv = corpus_argv(
            "transform",
            "bench",
            "--version",
            version,
            *[x for op in OPS for x in ("--op", op)],
            "--workers",
            str(self.workers),
            "--corpus",
            self.corpus,
            "--json",
        )

        def check(m: Measured) -> str:
            try:
                r = json.loads(m.stdout)
                got = (r["images"]["transformed"], r["sets"]["failed"], len(r["failures"]))
            except (ValueError, KeyError, TypeError):
                return "no JSON report on stdout"
            want = (len(self.files), 0, 0)
            return "" if got == want else f"report says transformed/sets failed/failures = {got}, expected {want}"

        s = step(
            self.ctx,
            self.samples if record else None,
            SCENARIO,
            CORPUS,
            rnd,
            argv,
            corpus_env(self.ctx),
            files=len(self.files),
            nbytes=self.nbytes,
            check=check,
        )
        if s.ok:
            self.corpus_versions.append(version)

    def run_pipeline(self, rnd: int, record: bool = True) -> None:
        """(d): rclone down, xargs convert, rclone up, as one script; a fresh DOWN and UP each round (dirs
        made outside the timing, as for (a)); the outputs go to a fresh prefix of the output container."""
        shutil.rmtree(self.down, ignore_errors=True)
        shutil.rmtree(self.up, ignore_errors=True)
        for n in self.pipeline_names:
            (self.up / n).parent.mkdir(parents=True, exist_ok=True)
        rclone, n = tools.rclone(), str(self.ctx.parallel)
        flags = f"--config {self.rclone_conf} --transfers {n} --checkers {n} -q"
        prefix = f"r{rnd}" if record else "warm"
        script = (
            "set -euo pipefail\n"
            f"{rclone} copy src:{self.corpus}/original {self.down} {flags}\n"
            f"xargs -a {self.pipeline_list} -P {self.workers} -L 1 {self.convert}\n"
            f"{rclone} copy {self.up} out:{OUT_CONTAINER}/{prefix} {flags}\n"
        )

        def check(_m: Measured) -> str:
            stored = sum(
                1
                for _ in self.ctx.endpoint.blob_service.get_container_client(OUT_CONTAINER).list_blobs(
                    name_starts_with=f"{prefix}/"
                )
            )
            return "" if stored == len(self.files) else f"{stored} outputs stored, expected {len(self.files)}"

        step(
            self.ctx,
            self.samples if record else None,
            SCENARIO,
            PIPELINE,
            rnd,
            ["bash", "-c", script],
            self.ctx.child_env(),
            files=len(self.files),
            nbytes=self.nbytes,
            check=check,
        )

    def run(self) -> list[Sample]:
        runners = {
            XARGS: lambda r, rec=True: self.run_xargs(r, False, rec),
            XARGS_1T: lambda r, rec=True: self.run_xargs(r, True, rec),
            POOL: lambda r, rec=True: self.run_pool(r, rec),
            CORPUS: lambda r, rec=True: self.run_corpus(r, rec),
            PIPELINE: lambda r, rec=True: self.run_pipeline(r, rec),
        }
        print("bench: warm-up (one unrecorded run each: page cache, .pyc, Azurite's JIT)", flush=True)
        for fn in runners.values():
            fn(0, False)
        for rnd in range(1, self.ctx.rounds + 1):
            print(f"bench: round {rnd} of {self.ctx.rounds}", flush=True)
            for name in rotate(list(runners), rnd - 1):
                runners[name](rnd)
        return self.samples

    def same_pixels(self) -> str:
        """Do (c)'s stored outputs have the same bytes as (b)'s? (They run the same worker.)"""
        if not self.pool_md5 or not self.corpus_versions:
            return "not compared (a run failed)"
        prefix = f"transform/bench/{self.corpus_versions[-1]}/"
        container = self.ctx.endpoint.blob_service.get_container_client(self.corpus)
        stored = {}
        for b in container.list_blobs(name_starts_with=prefix):
            md5 = b.content_settings.content_md5
            # transform/bench/TV/{dir}/{version}/{file} -> {dir}/{file}, (b)'s layout
            rel = b.name[len(prefix) :]
            d, _, rest = rel.rpartition("/")
            d, _, _version = d.rpartition("/")
            stored[f"{d}/{rest}"] = bytes(md5).hex() if md5 else ""
        if stored == self.pool_md5:
            return f"yes: all {len(stored)} outputs byte-identical"
        diff = sorted(set(stored.items()) ^ set(self.pool_md5.items()))
        return f"NO: {len(diff)} differences, e.g. {diff[:2]}"

    def profile(self, out_dir: Path) -> dict[str, Any]:
        """py-spy over one extra `corpus transform` (parent and workers): where the parent's time goes."""
        from . import profile

        raw = out_dir / "profile-transform-corpus.txt"
        argv = corpus_argv(
            "transform",
            "bench",
            "--version",
            "prof",
            *[x for op in OPS for x in ("--op", op)],
            "--workers",
            str(self.workers),
            "--corpus",
            self.corpus,
            "--json",
        )
        # --idle: waiting stacks too, so a worker's share of samples spent waiting for work is visible
        spy = [
            tools.py_spy(),
            "record",
            "--format",
            "raw",
            "--rate",
            "200",
            "--nonblocking",
            "--subprocesses",
            "--idle",
            "-o",
            str(raw),
            "--",
        ]
        m = self.ctx.run(spy + argv, corpus_env(self.ctx), "profile-transform")
        if m.returncode != 0 or not raw.exists():
            return {"error": f"py-spy exited {m.returncode}: {m.stderr.strip()[-300:]}"}
        parent = raw.with_name("profile-transform-parent.txt")
        parent.write_text(
            "".join(
                line
                for line in raw.read_text().splitlines(keepends=True)
                if _processes(line) == 1 and not _idle_leaf(line)
            )
        )
        return {
            "raw": str(raw),
            "wall": round(m.wall, 2),
            "workers": worker_time(raw),
            "parent": {"raw": str(parent), "wall": round(m.wall, 2), **profile.analyze(parent)},
        }


def _processes(line: str) -> int:
    return sum(1 for f in line.split(";") if f.startswith("process "))


def _idle_leaf(line: str) -> bool:
    leaf = line.rpartition(" ")[0].rsplit(";", 1)[-1]
    # waiting, not working: the event loop's select, thread waits, and the pool's pipe reads and writes
    # (the executor's feeder thread blocks in _send while a busy worker is not reading its pipe)
    return any(
        w in leaf
        for w in (
            "select (selectors.py",
            "wait (threading.py",
            "_wait_for_tstate_lock",
            "recv_bytes",
            "poll (multiprocessing",
            "_recv (multiprocessing",
            "get (multiprocessing/queues",
            "_send (multiprocessing/connection",
        )
    )


def worker_time(raw: Path) -> dict[str, Any]:
    """How the pool workers spent their lives (py-spy --idle samples): starting (imports), transforming
    (under transforms/worker.py) or waiting for work; the parent's own samples are left out."""
    counts = {"start-up": 0, "transforming": 0, "waiting": 0}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        if len(procs) < 2 or "resource_tracker" in procs[-1] or not n.isdigit():
            continue
        if any("_find_and_load" in f for f in frames):
            counts["start-up"] += int(n)
        elif any("transforms/worker.py" in f for f in frames):
            counts["transforming"] += int(n)
        else:
            counts["waiting"] += int(n)
    total = sum(counts.values()) or 1
    return {k: {"samples": v, "share": round(v / total, 3)} for k, v in counts.items()}


# ----- report ------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def total_cpu(r: Row) -> float:
    """Client CPU plus the storage server's: on one machine, both come out of the same cores."""
    return r.cpu + (r.server_cpu or 0.0)


def verdicts(rows: list[Row]) -> list[dict[str, Any]]:
    """The targets on wall time (what the issue asks), each with the same ratio on total CPU beside it:
    on a machine shared with other work the wall clock is noisy, CPU seconds much less so."""
    by = {r.contender: r for r in rows if not r.failed_rounds or r.rounds}
    c, b = by.get(CORPUS), by.get(POOL)
    a_rows = [r for r in (by.get(XARGS), by.get(XARGS_1T)) if r is not None]
    a = min(a_rows, key=lambda r: r.wall) if a_rows else None
    out = []
    d = by.get(PIPELINE)
    for ref, label, want in (
        (a, f"(c) vs (a) [{a.contender if a else 'n/a'}] >= 1.3x faster (issue 4)", 1.3),
        (b, "(c) speed of (b) >= 0.8x (issues 4, 15)", 0.8),
        (d, "(c) vs (d) rclone + convert + rclone >= 1.2x faster (issue 15)", 1.2),
    ):
        wall = ref.wall / c.wall if ref and c and c.wall > 0 else None
        cpu = total_cpu(ref) / total_cpu(c) if ref and c and total_cpu(c) > 0 else None
        out.append(
            {
                "target": label,
                "measured": f"{_fmt(wall)} (on total CPU: {_fmt(cpu)})",
                "wall_ratio": wall,
                "cpu_ratio": cpu,
                "passed": None if wall is None else wall >= want,
            }
        )
    return out


def render(rows: list[Row]) -> str:
    by = {r.contender: r for r in rows}
    b, d = by.get(POOL), by.get(PIPELINE)
    a_rows = [r for r in (by.get(XARGS), by.get(XARGS_1T)) if r is not None]
    a = min(a_rows, key=lambda r: r.wall) if a_rows else None
    head = [
        "contender",
        "role",
        "wall s",
        "(min-max)",
        "CPU s",
        "RSS MB",
        "img/s",
        "vs (a)",
        "vs (b)",
        "vs (d)",
        "server CPU s",
        "CPU+server s",
        "CPU vs (a)",
        "CPU vs (b)",
    ]
    roles = {XARGS: "(a)", XARGS_1T: "(a) 1 thread", POOL: "(b)", CORPUS: "(c)", PIPELINE: "(d) end to end"}
    lines = []
    for r in rows:
        lines.append(
            [
                r.contender + (f" ({r.failed_rounds} failed)" if r.failed_rounds else ""),
                roles.get(r.contender, ""),
                f"{r.wall:.2f}",
                f"{r.wall_min:.2f}-{r.wall_max:.2f}",
                f"{r.cpu:.2f}",
                f"{r.maxrss_mb:.0f}",
                f"{r.files_per_s:.1f}",
                _fmt(a.wall / r.wall if a and r.wall else None),
                _fmt(b.wall / r.wall if b and r.wall else None),
                _fmt(d.wall / r.wall if d and r.wall else None),
                "n/a" if r.server_cpu is None else f"{r.server_cpu:.2f}",
                f"{total_cpu(r):.2f}",
                _fmt(total_cpu(a) / total_cpu(r) if a and total_cpu(r) else None),
                _fmt(total_cpu(b) / total_cpu(r) if b and total_cpu(r) else None),
            ]
        )
    note = (
        "vs (a) = the faster (a)'s wall / this wall; vs (b), vs (d) likewise (> 1 faster). CPU = user+sys "
        "of the child and everything it waited for (convert children, pool workers); CPU+server adds Azurite's; "
        "CPU vs = the same ratios on CPU+server (> 1 cheaper). Medians over rounds."
    )
    return table(head, lines) + "\n" + note


def main(args: argparse.Namespace) -> int:
    spec = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    convert = imagemagick_convert()
    versions = {"python": sys.version.split()[0], "imagemagick": _im_version(convert), "azurite": azurite.version()}
    src = make_photo_corpus(spec, tools.BENCH_DIR / "corpora", convert)
    started = time.time()
    with storage_context(
        "transform",
        parallel=args.parallel,
        rounds=rounds,
        quick=args.quick,
        in_memory=args.in_memory,
        keep_work=args.keep_work,
    ) as ctx:
        suite = TransformSuite(ctx, spec, src, workers)
        suite.prepare()
        print(
            f"bench: {len(suite.files)} images ({suite.nbytes / 2**20:.1f} MB), ops {' + '.join(OPS)}, "
            f"{workers} workers / xargs -P {workers}, {rounds} round(s); convert = {suite.convert}",
            flush=True,
        )
        samples = suite.run()
        identical = suite.same_pixels()
        profile_on = args.profile if args.profile is not None else not args.quick
        prof = suite.profile(RESULTS) if profile_on else {}
    rows = summarize(samples, {}, {})
    checks = verdicts(rows)
    print()
    print(header("Transform benchmark", versions))
    print(
        f"{spec.describe()}, {suite.nbytes / 2**20:.1f} MB; ops {' then '.join(OPS)}; {workers} processes each; "
        f"medians of {rounds} round(s)"
    )
    print()
    print(render(rows))
    print(f"(c)'s stored outputs equal (b)'s: {identical}")
    print()
    print("Targets (issues 4 and 15):")
    print(
        table(
            ["target", "measured", "result"],
            [
                [v["target"], v["measured"], "n/a" if v["passed"] is None else ("PASS" if v["passed"] else "MISS")]
                for v in checks
            ],
            left=1,
        )
    )
    if args.quick:
        print("(--quick: small sizes, a smoke run; the targets are defined for the full sizes)")
    if prof and "error" not in prof:
        from . import profile

        print()
        shares = ", ".join(f"{k} {v['share'] * 100:.0f}%" for k, v in prof["workers"].items())
        print(f"pool workers under py-spy --idle (samples of the worker processes): {shares}")
        print(profile.render("corpus transform (parent process, busy samples)", prof["parent"]))
    elif prof:
        print(f"\nprofile: {prof['error']}")
    payload = {
        "suite": "transform",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions,
        "corpus": spec.describe(),
        "source_bytes": suite.nbytes,
        "ops": list(OPS),
        "workers": workers,
        "rounds": rounds,
        "quick": args.quick,
        "elapsed_seconds": round(time.time() - started, 1),
        "summary": [r.to_json() for r in rows],
        "targets": checks,
        "outputs_identical_b_c": identical,
        "samples": [s.__dict__ for s in samples],
        "profile": prof,
    }
    # a smoke run never overwrites the full run's results
    out = args.json_out or RESULTS / ("transform-quick.json" if args.quick else "transform.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nbench: wrote {out}")
    failed = sum(1 for s in samples if not s.ok)
    if failed:
        print(f"bench: {failed} run(s) failed; see the notes in the JSON", file=sys.stderr)
    return 1 if failed else 0


def _im_version(convert: str) -> str:
    line = tools._first_line([convert, "-version"])
    parts = line.split()
    return parts[2] if len(parts) > 2 and line.startswith("Version:") else line
