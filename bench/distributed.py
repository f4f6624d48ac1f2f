"""``python -m bench.distributed``: `corpus transform --scheduler` with 1 and 2 Dask workers (issue 7).

The README's recipe, measured: a private Azurite on free ports, one photo-like corpus uploaded once, then
for each worker count N a real `dask scheduler` and `dask worker --nworkers N --nthreads 1` (the storage
connection string in the workers' environment only), one unrecorded warm-up job on the cluster (workers
load ImageMagick), and the timed `corpus transform ... --scheduler ... --json` into a fresh transform
version. The local pool (`--workers N`) runs the same job beside it, as the reference.

Two scenarios: (a) CPU-bound, a few large sets (the work scales with workers); (b) many one-image sets,
where the client's table writes (a pending row, a complete row and the tag rows per set) are the floor
that workers do not lower.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import azurite, common
from .corpora import PhotoSpec, make_photo_corpus
from .tools import BENCH_DIR

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PY = sys.executable
DASK = str(Path(sys.executable).with_name("dask"))


@dataclass(frozen=True)
class Scenario:
    key: str
    spec: PhotoSpec
    ops: tuple[str, ...]
    what: str


SCENARIOS = {
    "a": Scenario(
        "a",
        PhotoSpec(dirs=8, files_per_dir=12, side=512),
        ("resize=256x256", "charcoal=1"),
        "CPU-bound: 96 images of 512x512 in 8 sets, resize=256x256 charcoal=1",
    ),
    "b": Scenario(
        "b",
        PhotoSpec(dirs=120, files_per_dir=1, side=64, seed=2),
        ("flip",),
        "client-bound: 120 sets of one 64x64 image, flip",
    ),
}
QUICK = {
    "a": Scenario(
        "a",
        PhotoSpec(dirs=4, files_per_dir=6, side=256),
        ("resize=128x128", "charcoal=1"),
        "quick: 24 images of 256x256 in 4 sets",
    ),
    "b": Scenario("b", PhotoSpec(dirs=30, files_per_dir=1, side=64, seed=2), ("flip",), "quick: 30 one-image sets"),
}


def free_port() -> int:
    return azurite.free_port()


class Cluster:
    """A `dask scheduler` and `dask worker --nworkers N --nthreads 1`, as the README starts them."""

    def __init__(self, workers: int, conn: str, logs: Path) -> None:
        self.workers = workers
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conn = conn

    def _spawn(self, argv: list[str], log: str, env: dict[str, str]) -> None:
        out = open(self.logs / log, "wb")  # noqa: SIM115 - the child keeps it open
        self.procs.append(
            subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        )
        out.close()

    def start(self) -> None:
        base = {
            k: v for k, v in os.environ.items() if k not in ("AZURE_STORAGE_CONNECTION_STRING", "CORPUS_ACCOUNT_URL")
        }
        self._spawn(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
            f"scheduler-{self.workers}.log",
            base,
        )
        # only the workers get the storage credentials; the scheduler never sees them
        self._spawn(
            [DASK, "worker", self.address, "--nworkers", str(self.workers), "--nthreads", "1", "--no-dashboard"],
            f"workers-{self.workers}.log",
            {**base, "AZURE_STORAGE_CONNECTION_STRING": self.conn},
        )
        from distributed import Client

        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(self.address, timeout=5, set_as_default=False) as client:
                    client.wait_for_workers(self.workers, timeout=120)
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
        self.procs.clear()


def corpus_cli(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    done = subprocess.run([PY, "-m", "corpus_manager.cli", *args, "--json"], capture_output=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"corpus {' '.join(args[:3])} exited {done.returncode}: {done.stderr.decode(errors='replace')[-800:]}"
        )
    return json.loads(done.stdout), wall


def run_scenario(
    sc: Scenario,
    endpoint: azurite.Endpoint,
    counts: list[int],
    corpora: Path,
    logs: Path,
    rounds: int,
    modes: list[str],
) -> list[dict[str, Any]]:
    root = make_photo_corpus(sc.spec, corpora, shutil.which("convert") or "convert")
    corpus = f"dist{sc.key}{int(time.time()) % 100000}"
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": endpoint.connection_string, "CORPUS_NAME": corpus}
    env.pop("CORPUS_ACCOUNT_URL", None)
    env.pop("CORPUS_DASK_SCHEDULER", None)
    corpus_cli(["upload", str(root), "--version", "v1"], env)
    ops = [a for op in sc.ops for a in ("--op", op)]
    out: list[dict[str, Any]] = []
    # every cluster up at once (idle workers cost next to nothing) so the rounds can interleave the
    # contenders: a load that drifts over the run (a shared machine) then hits them all alike
    clusters = {n: Cluster(n, endpoint.connection_string, logs) for n in counts}
    try:
        for n, cluster in clusters.items():
            cluster.start()
            # warm-up: the workers load ImageMagick, the client's imports are cached
            corpus_cli(["transform", "warm", "--version", f"d{n}", *ops, "--scheduler", cluster.address], env)
        contenders = [(mode, n) for n in counts for mode in modes]
        for r in range(rounds):
            shift = r % len(contenders)
            for mode, n in contenders[shift:] + contenders[:shift]:
                extra = ["--scheduler", clusters[n].address] if mode == "dask" else ["--workers", str(n)]
                load = os.getloadavg()[0]
                report, wall = corpus_cli(["transform", "bench", "--version", f"{mode}{n}r{r}", *ops, *extra], env)
                images = report["images"]["transformed"]
                if images != sc.spec.files or report["failures"]:
                    raise RuntimeError(
                        f"{mode} with {n}: {images} of {sc.spec.files} images, failures {report['failures'][:3]}"
                    )
                job = report["elapsed_seconds"]
                out.append(
                    {
                        "scenario": sc.key,
                        "mode": mode,
                        "workers": n,
                        "round": r,
                        "images": images,
                        "wall_s": round(wall, 3),
                        "job_s": job,
                        "images_per_s": round(images / job, 2),
                        "load_before": round(load, 2),
                    }
                )
                print(
                    f"  {sc.key} {mode:5} {n} worker(s) round {r}: {images} images, job {job:.2f} s "
                    f"({images / job:.1f} images/s), process {wall:.2f} s, load average before {load:.1f}",
                    flush=True,
                )
    finally:
        for cluster in clusters.values():
            cluster.stop()
    return out


def summarize(samples: list[dict[str, Any]]) -> list[str]:
    lines = ["scenario  mode   workers  images  median s  images/s  vs 1 worker  best s  images/s  vs 1 worker"]
    keys = sorted({(s["scenario"], s["mode"]) for s in samples})
    for scenario, mode in keys:
        base = best_base = None
        for n in sorted({s["workers"] for s in samples if (s["scenario"], s["mode"]) == (scenario, mode)}):
            jobs = [s["job_s"] for s in samples if (s["scenario"], s["mode"], s["workers"]) == (scenario, mode, n)]
            # the median says what a run on this (shared) machine gave; the best run, what it gives uncontended
            job, best = statistics.median(jobs), min(jobs)
            images = next(s["images"] for s in samples if s["scenario"] == scenario)
            rate, best_rate = images / job, images / best
            base, best_base = base or rate, best_base or best_rate
            lines.append(
                f"{scenario:<9} {mode:<6} {n:>7}  {images:>6}  {job:8.2f}  {rate:8.1f}  {rate / base:10.2f}x"
                f"  {best:6.2f}  {best_rate:8.1f}  {best_rate / best_base:10.2f}x"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="a,b", help="a (CPU-bound), b (many one-image sets). Default: both.")
    p.add_argument("--workers", default="1,2", help="Worker counts to run (default 1,2).")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--modes", default="dask,local", help="dask (--scheduler), local (--workers N).")
    p.add_argument("--quick", action="store_true", help="Small corpora: a smoke run (~1 min).")
    p.add_argument("--json-out", type=Path, default=RESULTS / "distributed.json")
    args = p.parse_args(argv)
    try:
        import distributed  # noqa: F401 - only to fail early with the install hint
    except ImportError:
        print("bench: the distributed extra is missing: pip install -e '.[distributed]'", file=sys.stderr)
        return 2
    table = QUICK if args.quick else SCENARIOS
    wanted = [table[k.strip()] for k in args.scenario.split(",") if k.strip()]
    counts = [int(n) for n in args.workers.split(",")]
    work = BENCH_DIR / "work-distributed"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    server = azurite.Azurite(work / "azurite")
    endpoint = server.start()
    samples: list[dict[str, Any]] = []
    try:
        for sc in wanted:
            print(f"bench: scenario {sc.key}: {sc.what}", flush=True)
            samples += run_scenario(
                sc,
                endpoint,
                counts,
                BENCH_DIR / "corpora",
                work / "logs",
                args.rounds,
                [m.strip() for m in args.modes.split(",") if m.strip()],
            )
    finally:
        server.stop()
    lines = summarize(samples)
    print("\n".join(lines))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {
                "machine": common.machine(),
                "samples": samples,
                "table": lines,
                "scenarios": {s.key: s.what for s in wanted},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"bench: wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
