"""SIGTERM (and SIGINT) as a service manager, `timeout` or `kill` send it: `corpus download` and `corpus transform`
stop cleanly, exit 143 (130 for SIGINT), summarise what was done, and leave neither a temporary file nor a
process behind; a cancel landing anywhere in a download (the temporary file's creation included) leaves no
file; a rerun removes the temporary files a killed run left, and only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from corpus_manager import Corpus
from corpus_manager.dlcache import CACHE_NAME
from corpus_manager.download import DownloadReport, temp_path

from ..conftest import KEY, unique_png
from ..helpers import blobs, upload_ok, wait_for
from ..processes import alive, descendants

CLI = [sys.executable, "-m", "corpus_manager.cli"]
WAIT = 120  # seconds: the generous bound of every wait below (a loaded machine), never a speed claim


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Its stdout and stderr once both reach EOF, i.e. once no process (a worker, the resource tracker)
    holds them open any more."""
    try:
        return proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(
            f"the command's stdout/stderr stayed open {WAIT} s after the signal: a process of "
            f"it is still alive (exit {proc.poll()})"
        ) from None


# ----- download --------------------------------------------------------------------------------
def _files(out: Path) -> list[Path]:
    """Every file download left under ``out`` (temporary ones too), but its MD5 cache."""
    return [p for p in out.rglob("*") if p.is_file() and p.name != CACHE_NAME]


def _temp_files(out: Path) -> list[Path]:
    """Files under ``out`` that are not downloaded images: temporary files."""
    return [p for p in _files(out) if not p.name.endswith(".png")]


def _cancel_at_temp_file(n: int, out: Path, conn: str, corpus: str) -> DownloadReport:
    """A download into ``out`` cancelled the moment its ``n``-th temporary file shows up on disk (or finished
    before that); returns once asyncio.run has returned, as the CLI does."""
    report = DownloadReport(out=str(out))
    seen: set[str] = set()

    async def go() -> None:
        async with Corpus(corpus, connection_string=conn) as c:
            task = asyncio.create_task(c.download(str(out), max_parallel_downloads=8, report=report))
            while not task.done() and len(seen) < n:  # looked at between every two steps of the download
                seen.update(p.name for p in _temp_files(out))
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())
    return report


def test_a_cancel_at_any_point_of_a_download_leaves_no_temporary_file(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """Cancelled as the 1st, 2nd, ... 40th temporary file appears, i.e. while a file is being created
    (the old `to_thread(open)` left the file when the cancel came before the task resumed: 39 of these 40
    runs did), with the other downloads in flight at every other stage. Whatever it hit, no temporary file
    is left, and every file there is whole and counted."""
    root = tmp_path / "photos"
    for i in range(40):
        unique_png(root / "s" / f"{i:03}.png", i)
    upload_ok(conn, corpus_name, root)
    stored = blobs(conn, corpus_name)
    strays: dict[int, list[str]] = {}
    for n in range(1, 41):
        out = tmp_path / f"cancel-at-{n}"
        report = _cancel_at_temp_file(n, out, conn, corpus_name)
        if left := _temp_files(out):
            strays[n] = [p.name for p in left]
        images = [p for p in _files(out) if p.name.endswith(".png")]
        for p in images:
            assert hashlib.md5(p.read_bytes()).hexdigest() == stored[p.relative_to(out).as_posix()]["md5"]
        assert report.files_downloaded == len(images), f"cancel at the {n}th temporary file"
    assert not strays, f"temporary files left by a cancelled download (by cancel point): {strays}"


def test_sigterm_during_download_exits_143_with_a_summary_no_temporary_file_and_the_rerun_sweeps_stale_ones(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for d in range(4):
        for i in range(60):
            unique_png(root / f"set{d}" / f"{i:03}.png", d * 1000 + i, size="64x64")
    upload_ok(conn, corpus_name, root)
    out = tmp_path / "out"
    cmd = [*CLI, "download", "--out", str(out), "--max-parallel-downloads", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: len(_files(out)) >= 10, "the download getting going", proc)
    os.kill(proc.pid, signal.SIGTERM)  # to the process alone, as `kill PID`, `timeout` or a service manager do
    out_text, err = _finish(proc)
    assert proc.returncode == 143, err
    lines = out_text.splitlines()
    assert lines[0] == (
        f"Interrupted: download to {out} stopped; every file there is whole (checked against its "
        "MD5) and a rerun downloads only the rest"
    )
    assert (
        "Terminated (SIGTERM): work in flight was stopped; what finished is stored. Rerun the same command to "
        "finish the rest."
    ) in err
    assert "Traceback" not in err and KEY not in out_text + err, err
    assert not _temp_files(out), "a temporary file was left behind"
    got = int(lines[1].split()[1])
    assert got == len(_files(out)) and 10 <= got < 240, lines
    assert lines[1].endswith(f", {240 - got} not downloaded yet")
    stored = blobs(conn, corpus_name)
    for p in _files(out):
        assert hashlib.md5(p.read_bytes()).hexdigest() == stored[p.relative_to(out).as_posix()]["md5"]

    # what a SIGKILLed run leaves (no chance to clean up), beside a run still writing its own temporary file
    # (it holds the owner's lock) and a file of the user's
    set_dir = out / "original" / "set0" / "v1"
    set_dir.mkdir(parents=True, exist_ok=True)
    stale = temp_path(set_dir / "000.png")
    stale.write_bytes(b"the first half of an image")
    live = temp_path(set_dir / "001.png")
    users = set_dir / "notes.part"
    users.write_text("mine")
    with open(live, "xb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert live.exists(), "the sweep removed a temporary file a live run owns"
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[1] == (
        f"  files       {240 - got} downloaded, {got} already present, 0 failed, 0 refused"
    )
    assert not stale.exists(), "the rerun left the temporary file of a killed run"
    assert users.read_text() == "mine"
    live.unlink()
    assert sorted(p.name for p in _temp_files(out)) == ["notes.part"]
    assert len(_files(out)) == 241


# ----- transform -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("signame", "to_group"),
    [("SIGTERM", False), ("SIGTERM", True), ("SIGINT", True)],
    ids=["sigterm-to-process", "sigterm-to-group", "sigint-to-group"],
)
def test_a_stop_signal_during_transform_leaves_no_worker_nor_resource_tracker(
    conn: str, corpus_name: str, tmp_path: Path, signame: str, to_group: bool
) -> None:
    """SIGTERM to the process alone used to kill it outright: its workers and the multiprocessing resource
    tracker lived on, holding the caller's stdout open. Now, whether the signal reaches the process or its
    whole group: exit 128 + the signal, the summary, and every helper process gone, so the caller's pipes
    close."""
    for d in range(2):
        for i in range(30):
            unique_png(tmp_path / f"set{d}" / f"{i:03}.png", d * 1000 + i, size="128x128")
    upload_ok(conn, corpus_name, tmp_path)
    cmd = [*CLI, "transform", "soft", "--version", "1", "--op", "blur=4", "--op", "charcoal=2", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(
        lambda: sum(n.startswith("transform/") for n in blobs(conn, corpus_name)) >= 4,
        "the transform getting going",
        proc,
    )
    helpers: dict[int, str] = {}

    def both_workers_and_the_tracker() -> bool:
        helpers.update(descendants(proc.pid))
        return (
            sum("spawn_main" in c for c in helpers.values()) == 2
            and sum("resource_tracker" in c for c in helpers.values()) == 1
        )

    wait_for(both_workers_and_the_tracker, "two workers and the resource tracker running", proc)
    sig = getattr(signal, signame)
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    out, err = _finish(proc)
    assert proc.returncode == 128 + sig, err
    assert out.splitlines()[0] == (
        "Interrupted: transform soft@1 is partly done; unfinished sets stay pending and a rerun finishes them"
    )
    assert "Rerun the same command to finish the rest." in err and "Traceback" not in err, err
    wait_for(lambda: not [p for p in helpers if alive(p)], f"every helper process exiting: {helpers}")
