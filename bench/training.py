"""``python -m bench.training``: training straight from the corpus (issue 16), ratios in one run.

One private Azurite; 2,000 PNGs of 20 KB in 100 directories uploaded once and pinned as a release.
Then, per round (contenders in a rotating order, each a fresh process, wall clock around it):

- ``bare GET``: the ceiling: 2,000 GETs by aiohttp on one session, ``--parallel`` in flight, each body
  read and MD5-hashed, nothing else (a container SAS, like the tool's own thin path);
- ``rclone copy``: the release's blobs (``--files-from``) copied down to a fresh directory
  (``--transfers N --checkers N``);
- ``iter_release``: every image of the release through ``corpus_manager.iter_release(prefetch=N)``;
- ``export``: ``corpus export --release R --format webdataset`` into the container (its export deleted
  before each round, so every round writes every shard);
- ``iter_shards``: every sample of that export through ``corpus_manager.iter_shards``.

Targets (issue 16): iter_release >= 1.0x rclone's images/s and >= 0.85x the bare-GET ceiling; export
wall <= 1.5x rclone copy's; iter_shards >= 5x iter_release's images/s. Medians of the rounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import azurite, tools
from .common import machine
from .corpora import CorpusSpec, make_corpus

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench" / "training"
RESULTS = Path(__file__).resolve().parent / "results"
CORPUS, RELEASE = "benchtrain", "bench-1"

BARE_GET = r"""
import asyncio, hashlib, sys, time, aiohttp
start = time.monotonic()
base, sas, parallel, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), open(sys.argv[4]).read().split()
async def main():
    todo = iter(names)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=parallel)) as s:
        async def worker():
            for n in todo:
                async with s.get(f"{base}/{n}?{sas}") as r:
                    assert r.status == 200, r.status
                    hashlib.md5(await r.read()).hexdigest()
        await asyncio.gather(*(worker() for _ in range(parallel)))
asyncio.run(main())
print(len(names), time.monotonic() - start)
"""
ITER_RELEASE = r"""
import sys, time
from corpus_manager import iter_release
start = time.monotonic()
n = sum(1 for _ in iter_release(sys.argv[1], corpus=sys.argv[2], prefetch=int(sys.argv[3])))
print(n, time.monotonic() - start)
"""
ITER_SHARDS = r"""
import sys, time
from corpus_manager import iter_shards
start = time.monotonic()
n = sum(1 for _ in iter_shards(sys.argv[1], corpus=sys.argv[2]))
print(n, time.monotonic() - start)
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if out.returncode != 0:
        raise SystemExit(f"bench: {argv[:4]} failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall, out.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parallel", type=int, default=32)
    p.add_argument("--files", type=int, default=2000, help="images (20 KB each, 20 per directory)")
    args = p.parse_args(argv)
    spec = CorpusSpec(dirs=args.files // 20, files_per_dir=20, size=20 * 1024)
    src = make_corpus(spec, WORK / "corpora")
    shutil.rmtree(WORK / "azurite", ignore_errors=True)  # a fresh account: one corpus, one release
    az = azurite.Azurite(WORK / "azurite")
    ep = az.start()
    try:
        env = {
            **os.environ,
            "AZURE_STORAGE_CONNECTION_STRING": ep.connection_string,
            "CORPUS_NAME": CORPUS,
            "PYTHONPATH": str(ROOT),
        }
        env.pop("CORPUS_ACCOUNT_URL", None)
        cli = [sys.executable, "-m", "corpus_manager.cli"]
        timed([*cli, "upload", str(src), "--version", "v1", "--json"], env)
        timed([*cli, "release", "create", RELEASE, "--json"], env)
        sas_url = ep.container_sas_url(CORPUS)
        base, sas = sas_url.split("?", 1)
        names = WORK / "names.txt"
        from corpus_manager import SyncCorpus

        with SyncCorpus(CORPUS, connection_string=ep.connection_string) as c:
            records = c.release(RELEASE).records
        names.write_text("\n".join(r["blob_name"] for r in records))
        conf = WORK / "rclone.conf"
        tools.write_rclone_config(conf, sas_url)
        n = len(records)
        container = ep.blob_service.get_container_client(CORPUS)

        def drop_export() -> None:
            for b in list(container.list_blobs(name_starts_with=f"exports/{RELEASE}/")):
                container.delete_blob(b.name)

        def python_child(code: str, *argv: str) -> tuple[float, float]:
            """(process wall, time inside the child after its imports) of a counting child."""
            wall, out = timed([sys.executable, "-c", code, *argv], env)
            count, inner = out.split()
            assert int(count) == n, f"{count} of {n}"
            return wall, float(inner)

        def run(who: str, rnd: int) -> tuple[float, float]:
            if who == "bare GET":
                return python_child(BARE_GET, base, sas, str(args.parallel), str(names))
            if who == "rclone copy":
                out = WORK / f"rclone-{rnd}"
                shutil.rmtree(out, ignore_errors=True)
                n_ = str(args.parallel)
                argv = [tools.rclone(), "--config", str(conf), "copy", f"dst:{CORPUS}", str(out)]
                argv += ["--files-from", str(names), "--transfers", n_, "--checkers", n_, "-q"]
                wall = timed(argv, env)[0]
                got = sum(1 for f in out.rglob("*") if f.is_file())
                assert got == n, f"rclone copied {got} of {n}"
                shutil.rmtree(out, ignore_errors=True)
                return wall, wall
            if who == "iter_release":
                return python_child(ITER_RELEASE, RELEASE, CORPUS, str(args.parallel))
            if who == "export":
                drop_export()
                argv = [*cli, "export", "--release", RELEASE, "--format", "webdataset", "--json"]
                wall = timed([*argv, "--max-parallel-downloads", str(args.parallel)], env)[0]
                return wall, wall
            if who == "iter_shards":
                return python_child(ITER_SHARDS, RELEASE, CORPUS)
            raise AssertionError(who)

        order = ["bare GET", "rclone copy", "iter_release", "export", "iter_shards"]
        walls: dict[str, list[float]] = {k: [] for k in order}
        inner: dict[str, list[float]] = {k: [] for k in order}
        run("export", 0)  # warm-up, and the export iter_shards reads
        for rnd in range(1, args.rounds + 1):
            # iter_shards reads the export in the container: the warm-up's or a round's (the same bytes)
            for who in order[rnd - 1 :] + order[: rnd - 1]:
                wall, inside = run(who, rnd)
                walls[who].append(wall)
                inner[who].append(inside)
                print(f"bench: round {rnd} {who}: {wall:.2f} s ({inside:.2f} s after imports)", flush=True)
        load = os.getloadavg()
    finally:
        az.stop()
    med = {k: statistics.median(v) for k, v in walls.items()}
    med_in = {k: statistics.median(v) for k, v in inner.items()}
    rate = {k: n / v for k, v in med.items()}
    rate_in = {k: n / v for k, v in med_in.items()}
    # vs rclone: whole processes, as a user runs them; between the Python readers: the time after the
    # interpreter and its imports (1.5-3 s of `import corpus_manager` on a loaded machine, the same for both)
    ratios = {
        "iter_release vs rclone copy (images/s, process walls)": rate["iter_release"] / rate["rclone copy"],
        "iter_release vs bare GET (images/s, after imports)": rate_in["iter_release"] / rate_in["bare GET"],
        "export wall vs rclone copy wall": med["export"] / med["rclone copy"],
        "iter_shards vs iter_release (images/s, after imports)": rate_in["iter_shards"] / rate_in["iter_release"],
    }
    goals = [(">=", 1.0), (">=", 0.85), ("<=", 1.5), (">=", 5.0)]
    print(f"\n{n:,} images of 20 KB, {args.rounds} rounds, {args.parallel} in flight; medians; load {load}")
    print(f"{'contender':14} {'wall s':>8} {'images/s':>9} {'after imports s':>16} {'images/s':>9}")
    for k in order:
        print(f"{k:14} {med[k]:8.2f} {rate[k]:9.0f} {med_in[k]:16.2f} {rate_in[k]:9.0f}")
    for (k, v), (op, goal) in zip(ratios.items(), goals, strict=True):
        ok = v >= goal if op == ">=" else v <= goal
        print(f"{k:55} {v:5.2f}x  target {op} {goal}x  {'met' if ok else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.json").write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "images": n,
                "rounds": args.rounds,
                "parallel": args.parallel,
                "load_average": load,
                "walls": walls,
                "after_imports": inner,
                "medians": med,
                "medians_after_imports": med_in,
                "images_per_s": rate,
                "images_per_s_after_imports": rate_in,
                "ratios": ratios,
                "rclone": tools.rclone_version(),
                "azurite": azurite.version(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
