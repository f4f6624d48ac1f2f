"""The query/download suite (issue 3): a tag query reads one partition; download beside `rclone copy`.

The corpus: 20,000 complete sets in the tables, of which tag T (``robin``) matches exactly 50.
Those 50 are uploaded for real with `corpus upload` (2,000 PNGs of 20 KB: blobs, set rows, tag
rows); the other 19,950 are set rows and tag rows only, written directly through the library's
models and Storage in entity group transactions (no blobs: nothing ever reads them but the scan).
Filler sets: ``bulk/grpNN`` in 200 versions each, so their tags are ``bulk`` (all of them) and ``grpNN`` (200 each).

Query: ``corpus query --tag robin --json`` beside the full scan ``corpus query --json`` (every
complete set: 20,000 ImageSets rows), each run >= 3 times as a CLI (wall, CPU, the server's CPU),
and once through bench/queryprobe.py, which runs the same library call in one process and reports
``Storage.stats``: entities read, table queries, partitions, and the in-process latency (median of 5).

Download: ``corpus download --tag robin --out DIR --max-parallel-downloads N --json`` beside
``rclone copy dst:CONTAINER DIR --transfers N`` (a container-SAS remote: the container holds exactly
the 2,000 blobs of the 50 sets), each into a fresh DIR per round, order alternated; then the no-op
rerun of each into its own DIR. Medians: wall, CPU, peak RSS, files/s, ratio to rclone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import azurite, tools
from .common import Context, Row, Sample, machine, summarize
from .corpora import CorpusSpec, make_corpus
from .harness import (
    RESULT_COLUMNS,
    corpus_argv,
    corpus_env,
    header,
    ratio,
    result_table,
    rotate,
    step,
    storage_context,
    table,
)
from .measure import Measured

RESULTS = Path(__file__).resolve().parent / "results"
PROBE = Path(__file__).resolve().parent / "queryprobe.py"
KB = 1 << 10
TAG = "robin"
FILLER_TAG = "bulk"
GROUPS = 100
CONCURRENT_BATCHES = 8


@dataclass(frozen=True)
class Sizes:
    total_sets: int
    tagged: CorpusSpec  # the sets tag T matches, uploaded for real


FULL = Sizes(20_000, CorpusSpec(50, 40, 20 * KB, seed=3))
QUICK = Sizes(2_000, CorpusSpec(10, 20, 20 * KB, seed=3))


# ----- the corpus ----------------------------------------------------------------------------------
def make_tagged_tree(spec: CorpusSpec) -> Path:
    """``.bench/corpora/query-SLUG/robin/SLUG/gN/setNN``: uploaded from ``query-SLUG/``, every set's first
    tag is ``robin``."""
    return make_corpus(spec, tools.BENCH_DIR / "corpora" / f"query-{spec.slug}" / TAG).parent.parent


async def write_filler(ctx: Context, corpus: str, count: int) -> tuple[int, int]:
    """``count`` complete, indexed original sets as rows only, 100 per entity group transaction.

    Returns (set rows, tag rows) written."""
    from corpus_manager.config import parse_connection_string
    from corpus_manager.models import COMPLETE, ImageSet, SetIdentity, content_digest, tag_rows, tags_for
    from corpus_manager.storage import TAG_BATCH, Storage

    info = parse_connection_string(ctx.endpoint.connection_string)
    sets: list[dict[str, Any]] = []
    tags: dict[str, list[dict[str, Any]]] = {}
    for i in range(count):
        # 100 directories x 200 versions: the tags are the path's components, as an upload would give them
        path = f"{FILLER_TAG}/grp{i % GROUPS:02d}"
        ident = SetIdentity(path, f"v{i // GROUPS:04d}")
        digest = content_digest([(f"img{j}.png", hashlib.md5(f"{i}/{j}".encode()).hexdigest()) for j in range(2)])
        image_set = ImageSet(
            ident,
            tags=tags_for(path),
            status=COMPLETE,
            image_count=20,
            total_bytes=20 * 20 * KB,
            content_digest=digest,
            indexed=True,
        )
        sets.append(image_set.to_entity())
        for row in tag_rows(image_set):
            tags.setdefault(row["PartitionKey"], []).append(row)
    batches = [(True, sets[i : i + TAG_BATCH]) for i in range(0, len(sets), TAG_BATCH)]
    for rows in tags.values():
        batches += [(False, rows[i : i + TAG_BATCH]) for i in range(0, len(rows), TAG_BATCH)]
    async with Storage(info, corpus) as storage:
        await storage.ensure()
        gate = asyncio.Semaphore(CONCURRENT_BATCHES)

        async def write(is_set: bool, rows: list[dict[str, Any]]) -> None:
            async with gate:
                await storage.upsert_batch(storage.sets if is_set else storage.tags, rows)

        await asyncio.gather(*(write(is_set, rows) for is_set, rows in batches))
    return len(sets), sum(len(r) for r in tags.values())


class QuerySuite:
    def __init__(self, ctx: Context, sizes: Sizes, root: Path) -> None:
        self.ctx = ctx
        self.sizes = sizes
        self.root = root
        self.corpus = ctx.fresh_name("qx")
        self.samples: list[Sample] = []
        self.probes: dict[str, Any] = {}
        self.files = sizes.tagged.files
        self.nbytes = sizes.tagged.total_bytes

    # ----- preparation (timed for the record, not part of the results) ---------------------------
    def prepare(self) -> dict[str, float]:
        t0 = time.perf_counter()
        m = self.ctx.run(
            corpus_argv(
                "upload",
                str(self.root),
                "--version",
                "v1",
                "--corpus",
                self.corpus,
                "--json",
                "--max-parallel-uploads",
                str(self.ctx.parallel),
            ),
            corpus_env(self.ctx),
            "prepare-upload",
        )
        if m.returncode != 0:
            raise SystemExit(f"bench: uploading the tagged sets failed (exit {m.returncode}): {m.stderr[-400:]}")
        report = json.loads(m.stdout)
        if report["files"]["uploaded"] != self.files:
            raise SystemExit(f"bench: the upload stored {report['files']['uploaded']} files, expected {self.files}")
        t1 = time.perf_counter()
        filler = self.sizes.total_sets - self.sizes.tagged.dirs
        nsets, ntags = asyncio.run(write_filler(self.ctx, self.corpus, filler))
        t2 = time.perf_counter()
        print(
            f"bench: corpus {self.corpus}: {self.sizes.tagged.dirs} sets tagged {TAG!r} uploaded "
            f"({self.files:,} files) in {t1 - t0:.1f} s; {nsets:,} filler set rows and {ntags:,} tag rows "
            f"written in {t2 - t1:.1f} s",
            flush=True,
        )
        self.sas_url = self.ctx.endpoint.container_sas_url(self.corpus)
        self.rclone_conf = self.ctx.work / "rclone.conf"
        tools.write_rclone_config(self.rclone_conf, self.sas_url)
        return {
            "upload_seconds": round(t1 - t0, 1),
            "filler_seconds": round(t2 - t1, 1),
            "filler_sets": nsets,
            "filler_tag_rows": ntags,
        }

    # ----- query --------------------------------------------------------------------------------
    def _query_check(self, want_sets: int) -> Callable[[Measured], str]:
        def check(m: Measured) -> str:
            try:
                got = len(json.loads(m.stdout))
            except (ValueError, TypeError):
                return "no JSON list on stdout"
            return "" if got == want_sets else f"{got} sets listed, expected {want_sets}"

        return check

    def run_query(self, rnd: int, which: str, record: bool = True) -> None:
        tags = ["--tag", TAG] if which == "tag" else []
        want = self.sizes.tagged.dirs if which == "tag" else self.sizes.total_sets
        name = f"corpus query --tag {TAG}" if which == "tag" else "corpus query (scan)"
        step(
            self.ctx,
            self.samples if record else None,
            "query",
            name,
            rnd,
            corpus_argv("query", *tags, "--corpus", self.corpus, "--json"),
            corpus_env(self.ctx),
            files=want,
            nbytes=0,
            check=self._query_check(want),
        )

    def probe(self) -> None:
        for which, tags in (("tag", ["--tag", TAG]), ("scan", [])):
            m = self.ctx.run(
                [sys.executable, str(PROBE), self.corpus, *tags, "--repeat", "5"],
                corpus_env(self.ctx),
                f"probe-{which}",
            )
            if m.returncode != 0:
                self.probes[which] = {"error": f"exit {m.returncode}: {m.stderr.strip()[-300:]}"}
                continue
            self.probes[which] = json.loads(m.stdout)

    # ----- download -------------------------------------------------------------------------------
    def _dir(self, name: str, rnd: int) -> Path:
        return self.ctx.work / "dl" / f"{name}-r{rnd}"

    def _count(self, root: Path) -> int:
        return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0

    def run_download(self, rnd: int, who: str, rerun: bool, record: bool = True) -> None:
        out = self._dir(who, rnd)
        scenario = "rerun" if rerun else "download"
        if who == "corpus":
            argv = corpus_argv(
                "download",
                "--tag",
                TAG,
                "--out",
                str(out),
                "--max-parallel-downloads",
                str(self.ctx.parallel),
                "--corpus",
                self.corpus,
                "--json",
            )

            def check(m: Measured) -> str:
                try:
                    files = json.loads(m.stdout)["files"]
                except (ValueError, KeyError, TypeError):
                    return "no JSON report on stdout"
                got = (files["downloaded"], files["already_present"], files["failed"] + files["refused"])
                want = (0, self.files, 0) if rerun else (self.files, 0, 0)
                if got != want:
                    return f"downloaded/present/failed = {got}, expected {want}"
                n = self._count(out)
                return "" if n == self.files else f"{n} files in --out, expected {self.files}"

            name, env = "corpus download", corpus_env(self.ctx)
        else:
            argv = [
                tools.rclone(),
                "--config",
                str(self.rclone_conf),
                "copy",
                f"dst:{self.corpus}",
                str(out),
                "--transfers",
                str(self.ctx.parallel),
                "-q",
            ]

            def check(m: Measured) -> str:
                n = self._count(out)
                return "" if n == self.files else f"{n} files in the target, expected {self.files}"

            name, env = "rclone copy", self.ctx.child_env()
        step(
            self.ctx,
            self.samples if record else None,
            scenario,
            name,
            rnd,
            argv,
            env,
            files=self.files,
            nbytes=self.nbytes,
            check=check,
        )

    def profile(self, out_dir: Path) -> dict[str, Any]:
        """py-spy over one extra `corpus download` into a fresh DIR: where its client CPU goes."""
        from . import profile

        raw = out_dir / "profile-download-corpus.txt"
        out = self._dir("profile", 0)
        argv = corpus_argv(
            "download",
            "--tag",
            TAG,
            "--out",
            str(out),
            "--max-parallel-downloads",
            str(self.ctx.parallel),
            "--corpus",
            self.corpus,
            "--json",
        )
        spy = [tools.py_spy(), "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(raw), "--"]
        m = self.ctx.run(spy + argv, corpus_env(self.ctx), "profile-download")
        if m.returncode != 0 or not raw.exists():
            return {"error": f"py-spy exited {m.returncode}: {m.stderr.strip()[-300:]}"}
        return {"raw": str(raw), "wall": round(m.wall, 2), **profile.analyze(raw)}

    # ----- rounds -------------------------------------------------------------------------------
    def run(self) -> list[Sample]:
        print("bench: warm-up (one unrecorded run each)", flush=True)
        self.run_query(0, "tag", record=False)
        self.run_query(0, "scan", record=False)
        for who in ("corpus", "rclone"):
            self.run_download(0, who, rerun=False, record=False)
        self.probe()
        for rnd in range(1, self.ctx.rounds + 1):
            print(f"bench: round {rnd} of {self.ctx.rounds}", flush=True)
            for which in rotate(["tag", "scan"], rnd - 1):
                self.run_query(rnd, which)
            order = rotate(["corpus", "rclone"], rnd - 1)
            for who in order:
                self.run_download(rnd, who, rerun=False)
            for who in order:
                self.run_download(rnd, who, rerun=True)
        return self.samples


# ----- report ------------------------------------------------------------------------------------
def render_query(rows: list[Row], probes: dict[str, Any]) -> str:
    head = [
        "query",
        "sets",
        "entities read",
        "table queries",
        "partitions",
        "in-process s",
        "CLI wall s",
        "(min-max)",
        "CLI CPU s",
        "server CPU s",
    ]
    lines = []
    for r in rows:
        if r.scenario != "query":
            continue
        p = probes.get("tag" if "--tag" in r.contender else "scan", {})
        parts = p.get("partitions") or []
        lines.append(
            [
                r.contender,
                f"{r.files:,}",
                f"{p.get('entity_reads', 'n/a'):,}" if "entity_reads" in p else "n/a",
                str(p.get("table_queries", "n/a")),
                ", ".join(parts) if parts else "(ImageSets scan)",
                f"{p['median_seconds']:.3f}" if "median_seconds" in p else "n/a",
                f"{r.wall:.2f}",
                f"{r.wall_min:.2f}-{r.wall_max:.2f}",
                f"{r.cpu:.2f}",
                "n/a" if r.server_cpu is None else f"{r.server_cpu:.2f}",
            ]
        )
    return table(head, lines, left=1)


def render_download(rows: list[Row]) -> str:
    cols = [c for c in RESULT_COLUMNS if c != "of ceiling"]
    return result_table([r for r in rows if r.scenario != "query"], cols)


def verdicts(rows: list[Row], probes: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    tag, scan = probes.get("tag", {}), probes.get("scan", {})
    reads = tag.get("entity_reads")
    out = [
        {
            "target": f"--tag {TAG} reads only its partition ({sizes.tagged.dirs} entities, 1 partition)",
            "measured": "n/a"
            if reads is None
            else f"{reads} entities, partitions {tag.get('partitions')}; the scan "
            f"read {scan.get('entity_reads', 'n/a')}",
            "passed": None if reads is None else (reads == sizes.tagged.dirs and len(tag.get("partitions", [])) == 1),
        }
    ]
    by = {(r.scenario, r.contender): r for r in rows}
    for scenario in ("download", "rerun"):
        c = by.get((scenario, "corpus download"))
        out.append(
            {
                "target": f"{scenario}: corpus download vs rclone copy (reported; issue 3 sets no threshold)",
                "measured": "n/a"
                if c is None or c.speed_vs_anchor is None
                else f"{ratio(c.speed_vs_anchor)} speed, {ratio(c.cpu_vs_anchor)} CPU",
                "passed": None,
            }
        )
    return out


def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    versions = {"python": sys.version.split()[0], "rclone": tools.rclone_version(), "azurite": azurite.version()}
    root = make_tagged_tree(sizes.tagged)
    started = time.time()
    with storage_context(
        "query",
        parallel=args.parallel,
        rounds=rounds,
        quick=args.quick,
        in_memory=args.in_memory,
        keep_work=args.keep_work,
    ) as ctx:
        suite = QuerySuite(ctx, sizes, root)
        prep = suite.prepare()
        samples = suite.run()
        profile_on = args.profile if args.profile is not None else not args.quick
        prof = suite.profile(RESULTS) if profile_on else {}
    anchors = {"download": "rclone copy", "rerun": "rclone copy"}
    rows = summarize(samples, anchors, {})
    checks = verdicts(rows, suite.probes, sizes)
    print()
    print(header("Query/download benchmark", versions))
    print(
        f"{sizes.total_sets:,} complete sets in the tables; tag {TAG!r} matches {sizes.tagged.dirs} of them "
        f"({sizes.tagged.describe()}, real blobs); N = {args.parallel}; medians of {rounds} round(s)"
    )
    print()
    print(render_query(rows, suite.probes))
    print(
        "entities read / table queries / partitions / in-process s: Storage.stats of one Corpus.query call "
        "(bench/queryprobe.py, median of 5 after a warm-up); CLI: `corpus query ... --json` as a process."
    )
    print()
    print(render_download(rows))
    print(
        "vs rclone = rclone's wall / this wall (> 1 faster); CPU vs rc = this CPU / rclone's (< 1 cheaper). "
        "rerun = the same command again into the same DIR (nothing to fetch)."
    )
    print()
    print("Checks (issue 3):")
    print(
        table(
            ["check", "measured", "result"],
            [
                [v["target"], v["measured"], "n/a" if v["passed"] is None else ("PASS" if v["passed"] else "MISS")]
                for v in checks
            ],
            left=2,
        )
    )
    if args.quick:
        print("(--quick: small sizes, a smoke run)")
    if prof:
        from . import profile

        print()
        print(profile.render("corpus download", prof))
    payload = {
        "suite": "query",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions,
        "parallel": args.parallel,
        "rounds": rounds,
        "quick": args.quick,
        "total_sets": sizes.total_sets,
        "tag": TAG,
        "tagged_sets": sizes.tagged.dirs,
        "tagged_files": sizes.tagged.describe(),
        "preparation": prep,
        "elapsed_seconds": round(time.time() - started, 1),
        "probes": suite.probes,
        "summary": [r.to_json() for r in rows],
        "checks": checks,
        "profile": prof,
        "samples": [s.__dict__ for s in samples],
    }
    # a smoke run never overwrites the full run's results
    out = args.json_out or RESULTS / ("query-quick.json" if args.quick else "query.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nbench: wrote {out}")
    failed = sum(1 for s in samples if not s.ok)
    if failed:
        print(f"bench: {failed} run(s) failed; see the notes in the JSON", file=sys.stderr)
    return 1 if failed else 0
