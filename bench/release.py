"""The release suite (issue 14): `release create` beside `rclone lsjson -R --hash`, `release verify --deep`
beside `rclone check --download`, on the same blobs.

The corpus: 1,000 sets of 40 PNGs (40,000 images of 2 KB), uploaded with `corpus upload`.

- create: ``corpus release create NAME --split train=80,val=10,test=10 --json`` (a new NAME each round:
  select the complete sets, list each set once, write the manifest and the row) beside
  ``rclone lsjson -R --hash dst:CONTAINER/original --checkers N`` (the listing with MD5s any tool must
  do). Target: corpus <= 1.5x rclone's wall.
- verify: ``corpus release verify NAME --deep --max-parallel-downloads N --json`` (every byte re-read,
  MD5s recomputed) beside ``rclone check --download LOCAL dst:CONTAINER/original --checkers N``
  (LOCAL: a copy of the blobs made once beforehand; rclone reads every remote byte and compares).
  Target: corpus's rate >= 0.9x rclone's, or the gap stated with its profile.

Medians of the rounds; order alternated per round. ``--scenario create`` (or ``verify``) runs one part alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import azurite, tools
from .azurite import ROOT
from .common import Context, Row, Sample, machine, summarize
from .corpora import CorpusSpec, make_corpus
from .harness import corpus_argv, header, result_table, rotate, step, storage_context, table
from .measure import Measured

RESULTS = Path(__file__).resolve().parent / "results"
KB = 1 << 10
FULL = CorpusSpec(1000, 40, 2 * KB, seed=14)
QUICK = CorpusSpec(50, 20, 2 * KB, seed=14)
SPLIT = "train=80,val=10,test=10"
PARTS = ("create", "verify")  # `--scenario create` (or verify) runs one of them


class ReleaseSuite:
    def __init__(self, ctx: Context, spec: CorpusSpec, root: Path, parts: tuple[str, ...] = PARTS) -> None:
        self.ctx, self.spec, self.root, self.parts = ctx, spec, root, parts
        self.corpus = ctx.fresh_name("rel")
        self.samples: list[Sample] = []
        self.n = str(ctx.parallel)

    def prepare(self) -> dict[str, float]:
        t0 = time.perf_counter()
        argv = corpus_argv("upload", str(self.root), "--version", "v1", "--corpus", self.corpus, "--json")
        m = self.ctx.run([*argv, "--max-parallel-uploads", self.n], self._env(), "prepare-upload")
        if m.returncode != 0:
            raise SystemExit(f"bench: the upload failed (exit {m.returncode}): {m.stderr[-400:]}")
        t1 = time.perf_counter()
        self.conf = self.ctx.work / "rclone.conf"
        tools.write_rclone_config(self.conf, self.ctx.endpoint.container_sas_url(self.corpus))
        if "verify" not in self.parts:  # the local copy and the release to verify are verify's alone
            print(f"bench: corpus {self.corpus}: {self.spec.describe()} uploaded in {t1 - t0:.1f} s", flush=True)
            return {"upload_seconds": round(t1 - t0, 1)}
        self.local = self.ctx.work / "local-copy"
        m = self.ctx.run(
            self._rclone("copy", "dst:" + self.corpus + "/original", str(self.local)),
            self.ctx.child_env(),
            "prepare-copy",
        )
        if m.returncode != 0:
            raise SystemExit(f"bench: rclone copy failed (exit {m.returncode}): {m.stderr[-400:]}")
        m = self.ctx.run(self._create("verified"), self._env(), "prepare-release")
        if m.returncode != 0:
            raise SystemExit(f"bench: release create failed (exit {m.returncode}): {m.stderr[-400:]}")
        t2 = time.perf_counter()
        print(f"bench: corpus {self.corpus}: {self.spec.describe()} uploaded in {t1 - t0:.1f} s", flush=True)
        return {"upload_seconds": round(t1 - t0, 1), "copy_and_release_seconds": round(t2 - t1, 1)}

    def _env(self) -> dict[str, str]:
        # this tree's corpus_manager, whatever the venv has installed (a worktree's bench measures itself)
        conn = {"AZURE_STORAGE_CONNECTION_STRING": self.ctx.endpoint.connection_string}
        return self.ctx.child_env(conn, pythonpath=str(ROOT))

    def _rclone(self, *args: str) -> list[str]:
        return [tools.rclone(), "--config", str(self.conf), *args, "--checkers", self.n, "-q"]

    def _create(self, name: str) -> list[str]:
        return corpus_argv("release", "create", name, "--split", SPLIT, "--corpus", self.corpus, "--json")

    def run_create(self, rnd: int, who: str, record: bool = True) -> None:
        files = self.spec.files
        if who == "corpus":
            argv, env, name = self._create(f"r{rnd}-{int(time.time())}"), self._env(), "corpus release create"

            def check(m: Measured) -> str:
                try:
                    out = json.loads(m.stdout)
                except ValueError:
                    return "no JSON on stdout"
                return "" if out["images"] == files and out["written"] else f"{out['images']} images, expected {files}"
        else:
            argv = [*self._rclone("lsjson", "-R", "--hash", "--files-only", f"dst:{self.corpus}/original")]
            env, name = self.ctx.child_env(), "rclone lsjson -R --hash"

            def check(m: Measured) -> str:
                try:
                    got = len(json.loads(m.stdout))
                except ValueError:
                    return "no JSON list on stdout"
                return "" if got == files else f"{got} entries, expected {files}"

        step(
            self.ctx,
            self.samples if record else None,
            "create",
            name,
            rnd,
            argv,
            env,
            files=files,
            nbytes=0,
            check=check,
        )

    def run_verify(self, rnd: int, who: str, record: bool = True) -> None:
        files, nbytes = self.spec.files, self.spec.total_bytes
        if who == "corpus":
            argv = corpus_argv(
                "release",
                "verify",
                "verified",
                "--deep",
                "--max-parallel-downloads",
                self.n,
                "--corpus",
                self.corpus,
                "--json",
            )
            env, name = self._env(), "corpus release verify --deep"

            def check(m: Measured) -> str:
                try:
                    out = json.loads(m.stdout)
                except ValueError:
                    return "no JSON on stdout"
                return "" if out["checked"] == files and out["bytes_read"] == nbytes else f"checked {out['checked']}"
        else:
            argv = self._rclone("check", "--download", str(self.local), f"dst:{self.corpus}/original")
            env, name = self.ctx.child_env(), "rclone check --download"
            check = None
        step(
            self.ctx,
            self.samples if record else None,
            "verify",
            name,
            rnd,
            argv,
            env,
            files=files,
            nbytes=nbytes,
            check=check,
        )

    def profile(self, out_dir: Path) -> dict[str, Any]:
        """py-spy over one extra `release verify --deep`: where its client CPU goes."""
        from . import profile

        raw = out_dir / "profile-release-verify.txt"
        argv = corpus_argv(
            "release", "verify", "verified", "--deep", "--max-parallel-downloads", self.n, "--corpus", self.corpus
        )
        spy = [tools.py_spy(), "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(raw), "--"]
        m = self.ctx.run(spy + argv, self._env(), "profile-verify")
        if m.returncode != 0 or not raw.exists():
            return {"error": f"py-spy exited {m.returncode}: {m.stderr.strip()[-300:]}"}
        return {"raw": str(raw), "wall": round(m.wall, 2), **profile.analyze(raw)}

    def run(self) -> list[Sample]:
        print("bench: warm-up (one unrecorded run each)", flush=True)
        runs = [f for p, f in (("create", self.run_create), ("verify", self.run_verify)) if p in self.parts]
        for who in ("corpus", "rclone"):
            for run in runs:
                run(0, who, record=False)
        for rnd in range(1, self.ctx.rounds + 1):
            print(f"bench: round {rnd} of {self.ctx.rounds}", flush=True)
            for run in runs:
                for who in rotate(["corpus", "rclone"], rnd - 1):
                    run(rnd, who)
        return self.samples


def render(rows: list[Row]) -> str:
    return result_table(
        rows, ["scenario", "contender", "wall s", "(min-max)", "CPU s", "RSS MB", "files/s", "MB/s", "vs rclone"]
    )


def verdicts(rows: list[Row]) -> list[dict[str, Any]]:
    by = {(r.scenario, r.contender): r for r in rows}
    create, verify = by.get(("create", "corpus release create")), by.get(("verify", "corpus release verify --deep"))
    out = []
    if create is not None and create.speed_vs_anchor:
        ratio = 1 / create.speed_vs_anchor  # wall / rclone's wall
        out.append(
            {
                "target": "release create <= 1.5x rclone lsjson's wall",
                "measured": f"{ratio:.2f}x",
                "passed": ratio <= 1.5,
            }
        )
    if verify is not None and verify.speed_vs_anchor:
        r = verify.speed_vs_anchor
        out.append(
            {
                "target": "verify --deep rate >= 0.9x rclone check --download",
                "measured": f"{r:.2f}x",
                "passed": r >= 0.9,
            }
        )
    return out


def main(args: argparse.Namespace) -> int:
    spec = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    versions = {"python": sys.version.split()[0], "rclone": tools.rclone_version(), "azurite": azurite.version()}
    parts = tuple(p for p in PARTS if p in args.scenario.split(",")) or PARTS  # upload's letters: both
    root = make_corpus(spec, tools.BENCH_DIR / "corpora" / "release")
    started = time.time()
    with storage_context(
        "release",
        parallel=args.parallel,
        rounds=rounds,
        quick=args.quick,
        in_memory=args.in_memory,
        keep_work=args.keep_work,
    ) as ctx:
        suite = ReleaseSuite(ctx, spec, root, parts)
        prep = suite.prepare()
        samples = suite.run()
        profile_on = args.profile if args.profile is not None else not args.quick and "verify" in parts
        prof = suite.profile(RESULTS) if profile_on else {}
    rows = summarize(samples, {"create": "rclone lsjson -R --hash", "verify": "rclone check --download"}, {})
    checks = verdicts(rows)
    print()
    print(header("Release benchmark", versions))
    print(f"{spec.describe()} (real blobs); N = {args.parallel}; medians of {rounds} round(s)")
    print()
    print(render(rows))
    print("vs rclone = rclone's wall / this wall (> 1 faster).")
    print()
    lines = [[v["target"], v["measured"], "PASS" if v["passed"] else "MISS"] for v in checks]
    print(table(["check", "measured", "result"], lines, left=2))
    if prof:
        from . import profile

        print()
        print(profile.render("corpus release verify --deep", prof))
    payload = {
        "suite": "release",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions,
        "parallel": args.parallel,
        "rounds": rounds,
        "parts": list(parts),
        "quick": args.quick,
        "corpus": spec.describe(),
        "preparation": prep,
        "elapsed_seconds": round(time.time() - started, 1),
        "summary": [r.to_json() for r in rows],
        "checks": checks,
        "profile": prof,
        "samples": [s.__dict__ for s in samples],
    }
    out = args.json_out or RESULTS / ("release-quick.json" if args.quick else "release.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nbench: wrote {out}")
    failed = sum(1 for s in samples if not s.ok)
    return 1 if failed else 0
