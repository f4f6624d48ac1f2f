"""Ctrl-C in the middle of `corpus transform` and `corpus download`, as a terminal sends it: SIGINT to the
whole foreground process group (the tool and its worker processes). The tool stops before the work is
done, exits 130, says what was done and what was not, leaves no worker process behind, and a rerun
finishes. How fast it stops (the README's 5 seconds) is a speed claim: `python -m bench.responsiveness`.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from corpus_manager.dlcache import CACHE_NAME

from ..conftest import KEY, unique_png
from ..helpers import blobs, rows, upload_ok, wait_for
from ..processes import alive, descendants

CLI = [sys.executable, "-m", "corpus_manager.cli"]


def _ctrl_c(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT to the process group, as a terminal's Ctrl-C does; returns stdout and stderr once it exits."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=60)  # generous: the test is that it stops, not how fast
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the tool was still running 60 s after Ctrl-C") from None


def _wait_gone(pids: set[int]) -> None:
    """Wait for processes to end (a worker signalled a moment ago may still be on its way out)."""
    deadline = time.monotonic() + 60
    while left := sorted(p for p in pids if alive(p)):
        assert time.monotonic() < deadline, f"orphan worker processes remain 60 s after the tool exited: {left}"
        time.sleep(0.05)


def test_sigint_during_transform_stops_reports_leaves_no_worker_and_rerun_finishes(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    for d in range(4):
        for i in range(30):
            unique_png(tmp_path / f"set{d}" / f"{i:03}.png", d * 1000 + i, size="128x128")
    upload_ok(conn, corpus_name, tmp_path)
    cmd = [*CLI, "transform", "soft", "--version", "1", "--op", "blur=4", "--op", "charcoal=2", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def some_outputs() -> bool:
        return sum(n.startswith("transform/") for n in blobs(conn, corpus_name)) >= 10

    wait_for(some_outputs, "the transform getting going", proc)
    workers = set(descendants(proc.pid))
    assert len(workers) >= 2, "the worker processes should be running"
    out, err = _ctrl_c(proc)
    assert proc.returncode == 130, err
    lines = out.splitlines()
    assert lines[0] == (
        "Interrupted: transform soft@1 is partly done; unfinished sets stay pending and a rerun finishes them"
    )
    done_sets = int(lines[1].split(": ")[1].split()[0])
    assert lines[1] == (
        f"  sets        4 total: {done_sets} transformed, 0 already done, 0 failed, {4 - done_sets} interrupted"
    )  # every unfinished set is counted, started or not
    assert "Rerun the same command to finish the rest." in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and KEY not in out + err, err
    _wait_gone(workers)
    done_before = sum(n.startswith("transform/") for n in blobs(conn, corpus_name))
    assert 10 <= done_before < 120
    outputs = [r for r in rows(conn, corpus_name) if r["TransformName"]]
    assert any(r["Status"] == "pending" for r in outputs)
    assert not [
        r
        for r in rows(conn, corpus_name, "tags")
        if r["TransformName"] and r["Path"] in {o["Path"] for o in outputs if o["Status"] == "pending"}
    ]

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{120 - done_before} transformed, {done_before} already done" in rerun.stdout
    outputs = [r for r in rows(conn, corpus_name) if r["TransformName"]]
    assert len(outputs) == 4 and all(r["Status"] == "complete" and r["ImageCount"] == 30 for r in outputs)


def test_sigint_during_download_stops_reports_keeps_no_partial_file_and_rerun_finishes(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for d in range(4):
        for i in range(100):
            unique_png(root / f"set{d}" / f"{i:03}.png", d * 1000 + i, size="64x64")
    upload_ok(conn, corpus_name, root)
    out = tmp_path / "out"
    manifest = tmp_path / "m.jsonl"
    cmd = [*CLI, "download", "--out", str(out), "--manifest", str(manifest), "--max-parallel-downloads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def downloaded() -> list[Path]:  # every file, temporary ones too (not the MD5 cache)
        return [p for p in out.rglob("*") if p.is_file() and p.name != CACHE_NAME]

    wait_for(lambda: len([p for p in downloaded() if p.suffix == ".png"]) >= 10, "the download getting going", proc)
    out_text, err = _ctrl_c(proc)
    assert proc.returncode == 130, err
    lines = out_text.splitlines()
    assert lines[0] == (
        f"Interrupted: download to {out} stopped; every file there is whole (checked against its "
        "MD5) and a rerun downloads only the rest"
    )
    files = downloaded()
    assert not [p for p in files if p.name.endswith(".part")], "a partial download was left behind"
    got = int(lines[1].split()[1])
    assert got == len(files) and 10 <= got < 400
    assert lines[1].endswith(f", {400 - got} not downloaded yet")
    assert lines[-1] == f"  manifest    {manifest} not written (the rerun writes it)" and not manifest.exists()
    assert "Rerun the same command to finish the rest." in err
    assert "Traceback" not in err and KEY not in out_text + err
    stored = blobs(conn, corpus_name)

    for p in files:  # whatever is there is whole
        assert hashlib.md5(p.read_bytes()).hexdigest() == stored[p.relative_to(out).as_posix()]["md5"]

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[1] == (
        f"  files       {400 - got} downloaded, {got} already present, 0 failed, 0 refused"
    )
    assert len(downloaded()) == 400 and len(manifest.read_text().splitlines()) == 400
