"""``python -m bench.responsiveness`` (``make bench-responsiveness``): how fast a run ends when it must.

The README promises bounds in seconds that the tests no longer time (a test that times fails on a
loaded machine; the tests check what makes the bounds hold, by counting): Ctrl-C stops upload,
transform and download within 5 s; storage that refuses connections fails the run at once; storage
that resets every connection fails it within about 10 s; storage that dies mid-run ends the run
within about 10 s. This measures each, from the moment of the event (the SIGINT sent, the CLI
started, the proxy refusing) to the exit, beside an anchor measured in the same run: the CLI's own
start-up (``corpus --help``), so a loaded machine shows as a slow anchor.

Each scenario runs the real CLI on a private Azurite (or through the tests' fault proxy,
``tests/faults/proxy.py``), ``--rounds`` times; medians. Results: ``bench/results/responsiveness.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import azurite
from .common import machine
from .corpora import _chunk, split_iend
from .tools import BENCH_DIR

RESULTS = Path(__file__).resolve().parent / "results"
WAIT = 120.0  # a scenario that has not reached its trigger (or ended) by then failed


@dataclass
class Scenario:
    name: str
    what: str
    bound: float | None  # the README's bound in seconds; None for the anchor


SCENARIOS = [
    Scenario("anchor", "`corpus --help`: the CLI's start-up and exit", None),
    Scenario("ctrl-c-upload", "SIGINT to `corpus upload` of 480 files, 2 in flight, after 10 blobs", 5.0),
    Scenario("ctrl-c-transform", "SIGINT to `corpus transform` (2 workers) of 240 images, after 10 outputs", 5.0),
    Scenario("ctrl-c-download", "SIGINT to `corpus download` of 400 files, 1 in flight, after 10 files", 5.0),
    Scenario("refused", "`corpus upload` with nothing listening at the endpoint: start to exit 2", 5.0),
    Scenario("resetting", "`corpus upload` through a proxy resetting every request: start to exit 2", 15.0),
    Scenario("dies-mid-run", "`corpus upload` of 300 files; the proxy refuses from request 60: to exit 1", 15.0),
]


def _png(base: bytes, n: int) -> bytes:
    """``base`` made unique by a text chunk saying n (valid, and decodes to the same pixels)."""
    head, iend = split_iend(base)
    return head + _chunk(b"tEXt", b"Comment\0" + str(n).encode()) + iend


def _base(size: int) -> bytes:
    from wand.image import Image

    with Image(width=size, height=size, pseudo="gradient:red-blue") as img:
        img.strip()
        img.format = "png"
        return bytes(img.make_blob())


def _tree(root: Path, sets: int, per_set: int, size: int) -> Path:
    base = _base(size)
    for d in range(sets):
        (root / f"set{d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_set):
            (root / f"set{d}" / f"{i:03}.png").write_bytes(_png(base, d * 1000 + i))
    return root


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "corpus_manager.cli", *args]


class Bench:
    def __init__(self, endpoint: azurite.Endpoint, work: Path) -> None:
        self.endpoint = endpoint
        self.work = work
        self.count = 0

    def env(self, corpus: str, conn: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CORPUS_ACCOUNT_URL"}
        env.update(AZURE_STORAGE_CONNECTION_STRING=conn or self.endpoint.connection_string, CORPUS_NAME=corpus)
        env["PYTHONPATH"] = str(azurite.ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def fresh(self, prefix: str) -> tuple[str, Path]:
        self.count += 1
        scratch = self.work / f"{prefix}{self.count}"
        scratch.mkdir(parents=True)
        return f"r{prefix}{self.count}{os.getpid() % 10000}", scratch

    def upload(self, corpus: str, root: Path) -> None:
        run = subprocess.run(
            _cli("upload", str(root), "--version", "v1"), env=self.env(corpus), capture_output=True, timeout=600
        )
        if run.returncode != 0:
            raise RuntimeError(f"preparing {corpus}: upload exited {run.returncode}: {run.stderr[-500:]!r}")


def _wait(condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {WAIT:.0f} s")
        time.sleep(0.05)


def _exit_after(proc: subprocess.Popen[bytes], event: Callable[[], None], expect: int) -> float:
    """Seconds from ``event()`` to the process's exit; raises unless it exits with ``expect``."""
    started = time.monotonic()
    event()
    try:
        proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"still running {WAIT:.0f} s after the event") from None
    seconds = time.monotonic() - started
    if proc.returncode != expect:
        raise RuntimeError(f"exit {proc.returncode}, expected {expect}")
    return seconds


def _popen(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # its own process group, as a terminal's foreground job: Ctrl-C goes to the tool and its workers
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def anchor(b: Bench) -> float:
    started = time.monotonic()
    subprocess.run(_cli("--help"), env=b.env("anchor"), capture_output=True, check=True, timeout=WAIT)
    return time.monotonic() - started


def ctrl_c_upload(b: Bench) -> float:
    corpus, scratch = b.fresh("up")
    root = _tree(scratch / "photos", 8, 60, 16)
    proc = _popen(_cli("upload", str(root), "--version", "v1", "--max-parallel-uploads", "2"), b.env(corpus))
    _wait(lambda: b.endpoint.count_blobs(corpus) >= 10, proc, "10 blobs stored")
    return _exit_after(proc, lambda: os.killpg(proc.pid, signal.SIGINT), 130)


def ctrl_c_transform(b: Bench) -> float:
    corpus, scratch = b.fresh("tr")
    b.upload(corpus, _tree(scratch / "photos", 4, 60, 256))
    argv = _cli("transform", "soft", "--version", "1", "--op", "blur=4", "--op", "charcoal=2", "--workers", "2")
    proc = _popen(argv, b.env(corpus))
    _wait(lambda: b.endpoint.count_blobs(corpus) >= 240 + 10, proc, "10 outputs stored")
    return _exit_after(proc, lambda: os.killpg(proc.pid, signal.SIGINT), 130)


def ctrl_c_download(b: Bench) -> float:
    corpus, scratch = b.fresh("dl")
    b.upload(corpus, _tree(scratch / "photos", 4, 100, 64))
    out = scratch / "out"
    proc = _popen(_cli("download", "--out", str(out), "--max-parallel-downloads", "1"), b.env(corpus))
    _wait(lambda: sum(1 for p in out.rglob("*.png")) >= 10, proc, "10 files downloaded")
    return _exit_after(proc, lambda: os.killpg(proc.pid, signal.SIGINT), 130)


def refused(b: Bench) -> float:
    corpus, scratch = b.fresh("rf")
    root = _tree(scratch / "photos", 2, 3, 16)
    nowhere = f"http://127.0.0.1:{azurite.free_port()}/{b.endpoint.account}"  # nothing listens there
    conn = b.endpoint.connection_string.replace(b.endpoint.blob_endpoint, nowhere)
    conn = conn.replace(b.endpoint.table_endpoint, nowhere)
    return _start_to_exit(_cli("upload", str(root), "--version", "v1"), b.env(corpus, conn), 2)


def _start_to_exit(argv: list[str], env: dict[str, str], expect: int) -> float:
    """Seconds from starting the CLI to its exit (its start-up included, as a user waits for it)."""
    started = time.monotonic()
    _exit_after(_popen(argv, env), lambda: None, expect)
    return time.monotonic() - started


def _proxy(b: Bench, rate: float) -> contextlib.AbstractContextManager[Any]:
    """The tests' fault proxy in front of the bench's Azurite, resetting ``rate`` of the requests."""
    sys.path.insert(0, str(azurite.ROOT))
    from tests.faults.proxy import FaultPlan, faulty_storage

    blob_port = int(b.endpoint.blob_endpoint.rsplit(":", 1)[1].split("/")[0])
    table_port = int(b.endpoint.table_endpoint.rsplit(":", 1)[1].split("/")[0])
    plan = FaultPlan(1, rate=rate, kinds=("reset",))
    return faulty_storage(blob_port, table_port, plan, b.endpoint.account, b.endpoint.key)


def resetting(b: Bench) -> float:
    corpus, scratch = b.fresh("rs")
    root = _tree(scratch / "photos", 2, 3, 16)
    with _proxy(b, 1.0) as p:
        return _start_to_exit(_cli("upload", str(root), "--version", "v1"), b.env(corpus, p.connection_string), 2)


def dies_mid_run(b: Bench) -> float:
    corpus, scratch = b.fresh("dm")
    root = _tree(scratch / "photos", 10, 30, 16)
    with _proxy(b, 0.0) as p:
        argv = _cli("upload", str(root), "--version", "v1", "--max-parallel-uploads", "4")
        proc = _popen(argv, b.env(corpus, p.connection_string))
        _wait(lambda: p.requests >= 60, proc, "60 requests")
        return _exit_after(proc, p.refuse, 1)


RUNNERS: dict[str, Callable[[Bench], float]] = {
    "anchor": anchor,
    "ctrl-c-upload": ctrl_c_upload,
    "ctrl-c-transform": ctrl_c_transform,
    "ctrl-c-download": ctrl_c_download,
    "refused": refused,
    "resetting": resetting,
    "dies-mid-run": dies_mid_run,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.responsiveness", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenario", default=",".join(RUNNERS), help="comma-separated subset of " + ", ".join(RUNNERS))
    p.add_argument("--json-out", type=Path, default=RESULTS / "responsiveness.json")
    args = p.parse_args(argv)
    wanted = [s for s in SCENARIOS if s.name in args.scenario.split(",") or s.name == "anchor"]

    work = BENCH_DIR / "work-responsiveness"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = azurite.Azurite(work / "azurite")
    endpoint = server.start()
    results: dict[str, list[float]] = {s.name: [] for s in wanted}
    errors: dict[str, list[str]] = {s.name: [] for s in wanted}
    try:
        b = Bench(endpoint, work)
        for rnd in range(1, args.rounds + 1):
            for s in wanted:  # the anchor first in every round, beside the scenarios it anchors
                try:
                    seconds = RUNNERS[s.name](b)
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    errors[s.name].append(str(exc))
                    print(f"  round {rnd} {s.name:18} FAILED: {exc}", flush=True)
                    continue
                results[s.name].append(seconds)
                print(f"  round {rnd} {s.name:18} {seconds:6.2f} s", flush=True)
    finally:
        endpoint.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    info = machine()
    print(
        f"\nresponsiveness, {dt.date.today().isoformat()}, {info['cpu']} ({info['cores']} cores), "
        f"load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds"
    )
    anchor_s = statistics.median(results["anchor"]) if results["anchor"] else float("nan")
    failed = False
    rows = []
    for s in wanted:
        got = results[s.name]
        med = statistics.median(got) if got else float("nan")
        ok = bool(got) and not errors[s.name] and (s.bound is None or med <= s.bound)
        failed |= not ok
        span = f"{min(got):.2f}-{max(got):.2f}" if got else "-"
        bound = f"<= {s.bound:.0f} s" if s.bound is not None else "anchor"
        verdict = "PASS" if ok else "FAIL"
        print(f"  {s.name:18} {med:6.2f} s ({span}) {med / anchor_s:5.1f}x anchor  {bound:8} {verdict}  {s.what}")
        rows.append(
            {
                "scenario": s.name,
                "what": s.what,
                "seconds": got,
                "median": med,
                "bound": s.bound,
                "x_anchor": med / anchor_s,
                "errors": errors[s.name],
                "pass": ok,
            }
        )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(
        json.dumps(
            {"date": dt.date.today().isoformat(), "machine": info, "rounds": args.rounds, "results": rows}, indent=2
        )
    )
    print(f"\nwrote {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
