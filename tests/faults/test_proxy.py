"""A flaky or dead network between the tool and storage (the fault proxy in ``proxy.py``).

Faults are drawn from a seeded RNG (``FAULT_SEED`` overrides it; it is printed on failure). The runs
go through the real CLI and the real Azurite; what was stored is checked afterwards straight from
Azurite with the SDK (``invariants.py``), not through the proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager import storage as storage_module
from corpus_manager.cli import cli
from corpus_manager.config import parse_connection_string
from corpus_manager.errors import StorageUnavailable
from corpus_manager.storage import Storage

from ..conftest import ACCOUNT, KEY, Azurite, free_port, unique_png
from .invariants import local_images, read_corpus, summary, violations
from .proxy import FaultPlan, FaultyStorage, faulty_storage

SEED = int(os.environ.get("FAULT_SEED", "61126"))
# The README's bounds in seconds (a refused connection fails the run at once; storage that dies ends it
# within about 10 s) are speed claims, measured by `python -m bench.responsiveness`. These tests check
# what makes them hold, by counting rather than timing: a refused connection is not retried, and once
# storage is down the remaining items fail without retries of their own.


def _tree(root: Path, sets: int, per_set: int) -> Path:
    for d in range(sets):
        for i in range(per_set):
            unique_png(root / f"tag{d % 3}" / f"dir{d}" / f"{i:03}.png", d * 1000 + i)
    return root


@pytest.fixture
def proxy(azurite: Azurite, corpus_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyStorage]:
    """The proxy in front of the session's Azurite, faults off; the CLI is pointed at it."""
    print(f"fault seed: FAULT_SEED={SEED}")  # shown by pytest when the test fails
    with faulty_storage(azurite.blob_port, azurite.table_port, FaultPlan(SEED), ACCOUNT, KEY) as p:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", p.connection_string)
        monkeypatch.delenv("CORPUS_ACCOUNT_URL", raising=False)
        yield p


def _invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_flaky_storage_upload_transform_download_complete_with_correct_data_and_report_retries(
    proxy: FaultyStorage, azurite: Azurite, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stalled request must be abandoned and retried, not waited on: the tool's read timeout is
    # shortened here (it is READ_TIMEOUT s in real runs) and the proxy stalls for longer than that. Not
    # shorter than 3 s: on a loaded machine a real answer can take a second, and its retry would be
    # counted beside the injected faults.
    monkeypatch.setattr(storage_module, "READ_TIMEOUT", 3.0)
    proxy.plan.stall_seconds = 30.0  # were the stall waited on, the run would take minutes, not seconds
    root = _tree(tmp_path / "photos", sets=6, per_set=8)
    proxy.set_rate(0.12)

    faults = sum(proxy.faults.values())
    code, out, err = _invoke(["upload", str(root), "--version", "v1", "--json", "--max-parallel-uploads", "8"])
    assert code == 0, err + out
    up = json.loads(out)
    up_faults = sum(proxy.faults.values()) - faults
    assert up_faults > 0 and up["retries"] == up_faults, (up["retries"], proxy.faults)
    assert up["files"]["uploaded"] == 48 and up["failures"] == []

    faults = sum(proxy.faults.values())
    code, out, err = _invoke(["transform", "thumbs", "--version", "1", "--op", "resize=8x8", "--workers", "1"])
    assert code == 0, err
    tr_faults = sum(proxy.faults.values()) - faults
    assert tr_faults > 0 and f"  retries     retried {tr_faults} requests" in out.splitlines(), out
    assert "6 transformed" in out

    faults = sum(proxy.faults.values())
    code, out, err = _invoke(["download", "--originals", "--out", str(tmp_path / "dl1"), "--json"])
    assert code == 0, err
    dl = json.loads(out)
    dl_faults = sum(proxy.faults.values()) - faults
    assert dl["files"]["downloaded"] == 48 and dl["retries"] == dl_faults, (dl, proxy.faults)
    faults = sum(proxy.faults.values())
    logs = len(proxy.blob.log), len(proxy.table.log)
    code, out, err = _invoke(["download", "--transform", "thumbs", "--out", str(tmp_path / "dl2")])
    assert code == 0, err
    assert f"retried {sum(proxy.faults.values()) - faults} requests" in out, (
        out,
        proxy.blob.log[logs[0] :],
        proxy.table.log[logs[1] :],
    )
    print(
        f"faults injected: {dict(proxy.faults)} in {proxy.requests} requests; retried: upload {up['retries']}, "
        f"transform {tr_faults}, download {dl['retries']} + {sum(proxy.faults.values()) - faults}"
    )
    # every kind of fault was met at least once over the three commands, and survived
    assert set(proxy.faults) == {"500", "503", "reset", "lost", "stall"}, proxy.faults

    expected = local_images(root, "v1")
    state = read_corpus(azurite.connection_string, corpus_name)
    assert violations(state, expected, transform_prefix="transform/thumbs/1/") == [], summary(state)
    assert sum(1 for r in state["sets"] if r["Status"] == "complete") == 12
    assert sum(1 for b in state["blobs"] if b.startswith("transform/thumbs/1/")) == 48
    for name, md5 in expected.items():  # what came down is what went up
        assert hashlib.md5((tmp_path / "dl1" / name).read_bytes()).hexdigest() == md5


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "corpus_manager.cli", *args]


def _env(conn: str, corpus: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CORPUS_ACCOUNT_URL"}
    env.update(AZURE_STORAGE_CONNECTION_STRING=conn, CORPUS_NAME=corpus)
    return env


@pytest.mark.parametrize("how", ["closed port", "proxy refusing", "proxy resetting"])
def test_storage_down_for_the_whole_run_fails_cleanly_within_the_bound(
    how: str, azurite: Azurite, corpus_name: str, tmp_path: Path
) -> None:
    root = _tree(tmp_path / "photos", sets=2, per_set=3)
    plan = FaultPlan(SEED, rate=1.0 if how == "proxy resetting" else 0.0, kinds=("reset",))
    with faulty_storage(azurite.blob_port, azurite.table_port, plan, ACCOUNT, KEY) as p:
        conn = p.connection_string
        if how == "closed port":
            conn = conn.replace(str(p.blob.port), str(free_port())).replace(str(p.table.port), str(free_port()))
        elif how == "proxy refusing":
            p.refuse()
        # the timeout only guards against a hang: the run must end, and it ends with one line
        run = subprocess.run(
            _cli("upload", str(root), "--version", "v1"),
            env=_env(conn, corpus_name),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if how != "proxy resetting":
            # "at once": the reachability check does not retry a refused connection (counted, not timed)
            assert _probe_retries(conn) == 0
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach storage at http://127.0.0.1:"), run.stderr
    assert KEY not in run.stdout + run.stderr and "Traceback" not in run.stderr
    state = read_corpus(azurite.connection_string, corpus_name)
    assert state["sets"] == [] and state["blobs"] == {}, summary(state)  # nothing written, nothing complete


def _probe_retries(conn: str) -> int:
    """The retries of a reachability check (``Storage.ensure``) that fails, in this process."""

    async def probe() -> int:
        async with Storage(parse_connection_string(conn), "probe") as storage:
            with pytest.raises(StorageUnavailable, match="cannot reach storage"):
                await storage.ensure()
            return storage.stats.retries

    return asyncio.run(probe())


def _wait_requests(proxy: FaultyStorage, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while proxy.requests < n:
        assert proc.poll() is None, "the run ended before the outage"
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.01)


def test_short_outage_is_survived(proxy: FaultyStorage, azurite: Azurite, corpus_name: str, tmp_path: Path) -> None:
    root = _tree(tmp_path / "photos", sets=10, per_set=30)
    proc = subprocess.Popen(
        _cli(
            "upload",
            str(root),
            "--version",
            "v1",
            "--json",
            "--max-parallel-uploads",
            "4",
        ),
        env=_env(proxy.connection_string, corpus_name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_requests(proxy, 60, proc)
    proxy.refuse()  # every connection cut, every new one refused, for 2 s
    threading.Event().wait(2.0)
    proxy.restore()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["retries"] > 0 and report["files"]["uploaded"] == 300 and report["failures"] == []
    state = read_corpus(azurite.connection_string, corpus_name)
    assert violations(state, local_images(root, "v1")) == [], summary(state)
    assert [r["Status"] for r in state["sets"]] == ["complete"] * 10


def test_storage_dying_mid_run_ends_the_run_within_the_bound_and_rerun_finishes(
    proxy: FaultyStorage, azurite: Azurite, corpus_name: str, tmp_path: Path
) -> None:
    root = _tree(tmp_path / "photos", sets=10, per_set=30)
    cmd = _cli("upload", str(root), "--version", "v1", "--max-parallel-uploads", "4")
    env = _env(proxy.connection_string, corpus_name)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_requests(proxy, 60, proc)
    proxy.refuse()
    try:
        out, err = proc.communicate(timeout=180)  # only a guard against a hang: the run must end
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the run had not ended 180 s after storage died")
    assert proc.returncode == 1, err
    assert "Traceback" not in err and KEY not in out + err
    # every unfinished item is named with the reason; the summary says what was done
    assert "cannot reach storage at http://127.0.0.1:" in err
    assert "failed" in out.splitlines()[1]
    # The run ends soon because, once one request has run out of retries, the rest fail at once: only
    # the requests in flight when storage died were retried, not each unfinished file (5 retries each).
    failed = int(re.search(r"^  files .* (\d+) failed", out, re.M).group(1))  # type: ignore[union-attr]
    retried = re.search(r"retried (\d+) requests", out)
    retries = int(retried.group(1)) if retried else 0
    print(f"storage died mid-run: {failed} files failed, {retries} requests retried")
    assert retries < failed, out
    state = read_corpus(azurite.connection_string, corpus_name)
    assert violations(state, {}, transform_prefix="original/") == [], summary(state)  # nothing complete lies
    assert any(r["Status"] == "pending" for r in state["sets"]) or len(state["sets"]) < 10

    proxy.restore()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    state = read_corpus(azurite.connection_string, corpus_name)
    assert violations(state, local_images(root, "v1")) == [], summary(state)
    assert [r["Status"] for r in state["sets"]] == ["complete"] * 10
