"""SIGKILL Azurite at seeded random points of an upload and of a transform, restart it on the same
--location, rerun the same command until it exits 0: the corpus must not lie (``invariants.py``).

The kill points are request counts, drawn from a seeded RNG (``FAULT_SEED`` overrides the seed; it
is in every failure message): a counting proxy (``proxy.py``, no faults) sits between the tool and
Azurite, so each kill falls while a run is in the middle of its requests, whatever the machine's
speed. The tool usually rides out the restart (its retries span ~5-7 s, a restart takes ~1-3 s);
when it does not, it exits non-zero and the loop reruns it.

Azurite keeps blob and table metadata in two LokiJS databases, each saved every 5 s on its own
timer, so a SIGKILL forgets writes it had acknowledged, and not the same ones in both: a set's
``complete`` row can survive while some of its blobs do not. The rerun cannot see that (a complete
set is, on purpose, never listed again), so after the reruns these tests run ``corpus status --verify``
(the explicit check that lists every complete set and sets those that lie back to pending) and the
same command once more. What the reruns alone left behind is printed (``-s``) as a finding.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import ACCOUNT, KEY, Azurite, free_port, unique_png
from .invariants import local_images, read_corpus, summary, violations
from .proxy import FaultPlan, FaultyStorage, faulty_storage

SEED = int(os.environ.get("FAULT_SEED", "52026"))
KILLS = 5
MAX_RUNS = 25  # every run of the command in one test, reruns included


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of this test's own (it gets killed), on free ports with its own --location."""
    az = Azurite(tmp_path / "azurite", free_port(), free_port(), free_port())
    az.start()
    try:
        yield az
    finally:
        az.stop()


@pytest.fixture
def counting_proxy(own_azurite: Azurite) -> Iterator[FaultyStorage]:
    with faulty_storage(own_azurite.blob_port, own_azurite.table_port, FaultPlan(SEED), ACCOUNT, KEY) as p:
        yield p


def _env(conn: str, corpus: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CORPUS_ACCOUNT_URL"}
    env.update(AZURE_STORAGE_CONNECTION_STRING=conn, CORPUS_NAME=corpus)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "corpus_manager.cli", *args]


def _kill_during(
    cmd: list[str], env: dict[str, str], proxy: FaultyStorage, az: Azurite, targets: list[int], what: str
) -> list[str]:
    """Run ``cmd`` (again whenever it exits) and SIGKILL + restart Azurite as the proxy's request count
    passes each target; then rerun until it exits 0. Returns the log of what happened."""
    log: list[str] = []
    runs = 0
    t0 = time.monotonic()

    def at() -> str:
        return f"{time.monotonic() - t0:.1f}s"

    proc: subprocess.Popen[bytes] | None = None

    def start() -> subprocess.Popen[bytes]:
        nonlocal runs
        runs += 1
        assert runs <= MAX_RUNS, f"{what}: more than {MAX_RUNS} runs (FAULT_SEED={SEED}): {log}"
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    pending = list(targets)
    while pending:
        target = pending.pop(0)
        while proxy.requests < target:
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    log.append(f"{at()} run exited {proc.returncode} at request {proxy.requests}")
                proc = start()
            time.sleep(0.002)
        if proc is None or proc.poll() is not None:
            pending.insert(0, proxy.requests + 10)  # the run had just ended: kill a little into the next one
            continue
        az.stop(signal.SIGKILL)
        log.append(f"{at()} SIGKILL at request {proxy.requests}")
        az.start()
        log.append(f"{at()} restarted")
    assert proc is not None
    code = proc.wait(timeout=120)
    log.append(f"{at()} run exited {code}")
    while code != 0:
        code = subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode
        runs += 1
        log.append(f"{at()} rerun exited {code}")
        assert runs <= MAX_RUNS, f"{what}: still failing after {MAX_RUNS} runs (FAULT_SEED={SEED}): {log}"
    return log


def _wait_saved(location: Path, since_ns: int) -> None:
    """Wait until Azurite has saved all it acknowledged before ``since_ns`` (wall clock): its LokiJS
    databases (blob, blob extent, table metadata) are saved on a 5 s timer, each by a rename, so each
    file written after that moment holds every earlier write."""
    files = [location / f"__azurite_db_{db}__.json" for db in ("blob", "blob_extent", "table")]
    deadline = time.monotonic() + 60
    while unsaved := [f.name for f in files if not f.exists() or f.stat().st_mtime_ns <= since_ns]:
        assert time.monotonic() < deadline, f"Azurite had not saved {unsaved} 60 s after the upload"
        time.sleep(0.1)


def _verify_and_finish(cmd: list[str], env: dict[str, str], direct: dict[str, str]) -> str:
    """`corpus status --verify --repair` (straight to Azurite), then the command again; returns what verify
    said. (--repair indexes complete sets whose run was killed between their tag rows and their flag.)"""
    verify = subprocess.run(
        _cli("status", "--verify", "--repair"), env=direct, capture_output=True, text=True, timeout=120
    )
    assert verify.returncode in (0, 1), verify.stderr  # 1: some sets did not match and are pending again
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    return next((line.strip() for line in verify.stdout.splitlines() if "verified" in line), verify.stdout)


def test_sigkill_azurite_during_upload(own_azurite: Azurite, counting_proxy: FaultyStorage, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"FAULT_SEED={SEED}")
    root = tmp_path / "photos"
    for d in range(10):
        for i in range(30):
            unique_png(root / f"t{d % 3}" / f"set{d}" / f"{i:03}.png", d * 1000 + i)
    corpus = "kill" + format(SEED, "x")
    env = _env(counting_proxy.connection_string, corpus)
    cmd = _cli("upload", str(root), "--version", "v1", "--max-parallel-uploads", "4")
    targets = sorted(rng.sample(range(15, 260), KILLS))
    log = _kill_during(cmd, env, counting_proxy, own_azurite, targets, "upload")

    expected = local_images(root, "v1")
    before = violations(read_corpus(own_azurite.connection_string, corpus), expected)
    print(f"upload kills {targets}: {log}; after the reruns alone: {before or 'no violation'}")
    verified = _verify_and_finish(cmd, env, _env(own_azurite.connection_string, corpus))
    state = read_corpus(own_azurite.connection_string, corpus)
    print(f"status --verify: {verified}; then {summary(state)}")
    assert violations(state, expected) == [], f"FAULT_SEED={SEED} {log} {summary(state)}"
    assert len(state["blobs"]) == 300 and [r["Status"] for r in state["sets"]] == ["complete"] * 10


def test_sigkill_azurite_during_transform(own_azurite: Azurite, counting_proxy: FaultyStorage, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    print(f"FAULT_SEED={SEED}")
    root = tmp_path / "photos"
    for d in range(10):
        for i in range(20):
            unique_png(root / f"t{d % 3}" / f"set{d}" / f"{i:03}.png", d * 1000 + i)
    corpus = "killt" + format(SEED, "x")
    direct = _env(own_azurite.connection_string, corpus)
    up = subprocess.run(
        _cli("upload", str(root), "--version", "v1"), env=direct, capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, up.stderr
    _wait_saved(own_azurite.location, time.time_ns())  # the kills are for the transform, not the upload
    env = _env(counting_proxy.connection_string, corpus)
    cmd = _cli("transform", "small", "--version", "1", "--op", "resize=8x8", "--workers", "1")
    targets = sorted(rng.sample(range(10, 330), KILLS))
    log = _kill_during(cmd, env, counting_proxy, own_azurite, targets, "transform")

    expected = local_images(root, "v1")
    state = read_corpus(own_azurite.connection_string, corpus)
    before = violations(state, expected, transform_prefix="transform/small/1/")
    print(f"transform kills {targets}: {log}; after the reruns alone: {before or 'no violation'}")
    verified = _verify_and_finish(cmd, env, direct)
    if any(r["Status"] != "complete" for r in read_corpus(own_azurite.connection_string, corpus)["sets"]):
        # verify demoted an original set whose blobs were lost: its upload finishes it, then the transform
        assert (
            subprocess.run(
                _cli("upload", str(root), "--version", "v1"), env=direct, capture_output=True, timeout=120
            ).returncode
            == 0
        )
        assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    state = read_corpus(own_azurite.connection_string, corpus)
    print(f"status --verify: {verified}; then {summary(state)}")
    assert violations(state, expected, transform_prefix="transform/small/1/") == [], (
        f"FAULT_SEED={SEED} {log} {summary(state)}"
    )
    outputs = [r for r in state["sets"] if r["PartitionKey"] != "original"]
    assert len(outputs) == 10 and all(r["Status"] == "complete" and r["ImageCount"] == 20 for r in outputs)
    assert sum(1 for b in state["blobs"] if b.startswith("transform/small/1/")) == 200
