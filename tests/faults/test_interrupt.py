"""Ctrl-C in the middle of a run: stop before the work is done, say what was done, and the rerun finishes.

How fast it stops (the README's 5 seconds) is a speed claim: `python -m bench.responsiveness`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from ..conftest import KEY, unique_png
from ..helpers import blobs, rows


def _wait_for_blobs(conn: str, corpus: str, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(blobs(conn, corpus)) >= at_least:
                return
        except Exception:
            pass  # the container may not exist yet
        time.sleep(0.05)
    raise AssertionError("the upload never got going")


def test_sigint_during_upload_stops_reports_and_rerun_finishes(conn: str, corpus_name: str, tmp_path: Path) -> None:
    for d in range(8):
        for i in range(60):
            unique_png(tmp_path / f"dir{d}" / f"{i:03}.png", d * 1000 + i)
    cmd = [
        sys.executable,
        "-m",
        "corpus_manager.cli",
        "upload",
        str(tmp_path),
        "--version",
        "v1",
        "--max-parallel-uploads",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_blobs(conn, corpus_name, 10, proc)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)  # generous: the test is that it stops, not how fast
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the upload was still running 60 s after Ctrl-C") from None
    assert proc.returncode == 130, err
    assert out.startswith("Interrupted: version v1 from")
    assert " interrupted" in out.splitlines()[1]  # names the sets left unfinished
    assert "Rerun the same command to finish the rest." in err
    assert KEY not in out + err and "Traceback" not in err
    stored_before = len(blobs(conn, corpus_name))
    assert 0 < stored_before < 480
    assert any(r["Status"] == "pending" for r in rows(conn, corpus_name))

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{480 - stored_before} uploaded, {stored_before} already stored" in rerun.stdout
    assert all(r["Status"] == "complete" for r in rows(conn, corpus_name))
    assert len(rows(conn, corpus_name)) == 8 and len(blobs(conn, corpus_name)) == 480
