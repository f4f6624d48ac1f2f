"""The machine says no mid-run: a manifest that cannot be written (read-only directory, full disk) and
more parallel transfers than the open-file limit holds. The run still ends with its summary, naming
what failed and why; nothing is lost that could be done."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import unique_png, write_image
from .helpers import run
from .test_badinput import _unprivileged, world_readable_dir  # noqa: F401 (a fixture)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "corpus_manager.cli", *args]


def _stored(conn: str, corpus: str, root: Path) -> None:
    for i, color in enumerate(("red", "blue")):
        write_image(root / "birds" / f"{i}.png", color=color)
    assert run(conn, corpus, lambda c: c.upload(str(root), "v1")).ok


def test_a_manifest_in_a_read_only_directory_is_named_with_the_summary_and_exit_1(
    conn: str,
    corpus_name: str,
    world_readable_dir: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    _stored(conn, corpus_name, world_readable_dir / "photos")
    out, locked = world_readable_dir / "out", world_readable_dir / "locked"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    locked.mkdir()
    locked.chmod(0o555)
    manifest = locked / "m.jsonl"
    cmd = _unprivileged(_cli("download", "--out", str(out), "--manifest", str(manifest)), locked)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    assert res.returncode == 1, res.stderr
    assert res.stderr == f"failed: {manifest}: manifest not written: Permission denied\n"
    assert res.stdout.splitlines() == [
        f"Downloaded 1 sets to {out}",
        "  files       2 downloaded, 0 already present, 0 failed, 0 refused",
        res.stdout.splitlines()[2],  # bytes and time
        f"  manifest    {manifest} not written: Permission denied",
        "  problems    1 (listed above on stderr)",
    ]
    assert sorted(p.name for p in (out / "original" / "birds" / "v1").iterdir()) == ["0.png", "1.png"]
    assert list(locked.iterdir()) == []


def test_a_manifest_on_a_full_disk_is_named_in_the_json_and_no_partial_file_is_left(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """A real full file system: a private tmpfs, filled up, in a mount namespace of the run's own."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("mounting a tmpfs needs root and unshare")
    _stored(conn, corpus_name, tmp_path / "photos")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    manifest = disk / "m.jsonl"
    script = (
        'd="$1"; shift; mount -t tmpfs -o size=8k tmpfs "$d" || exit 99; '
        'dd if=/dev/zero of="$d/fill" bs=4k 2>/dev/null; "$@"; rc=$?; ls -A "$d" >&2; exit $rc'
    )
    res = subprocess.run(
        [
            unshare,
            "-m",
            "sh",
            "-c",
            script,
            "sh",
            str(disk),
            *_cli("download", "--out", str(out), "--manifest", str(manifest), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["manifest_error"] == "not written: No space left on device"
    assert report["failures"] == [
        {"item": str(manifest), "reason": "manifest not written: No space left on device", "kind": "failed"}
    ]
    assert report["files"]["downloaded"] == 2
    assert res.stderr == "fill\n"  # what the full disk holds after the run: no manifest, no temporary file
    assert sorted(p.name for p in (out / "original" / "birds" / "v1").iterdir()) == ["0.png", "1.png"]


def _nofile(limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def test_parallelism_beyond_the_open_file_limit_is_capped_and_said_once(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for i in range(400):
        unique_png(root / f"d{i % 4}" / f"{i:03}.png", i)
    up = subprocess.run(
        _cli("upload", str(root), "--version", "v1", "--max-parallel-uploads", "100000"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _nofile(256),
    )
    assert up.returncode == 0, up.stderr
    assert re.fullmatch(
        r"warning: --max-parallel-uploads 100000 is more than the open-file limit allows "
        r"\(ulimit -n 256\): \d+ run at once\n",
        up.stderr,
    ), up.stderr
    assert "  files       400 uploaded, 0 already stored, 0 corrupt, 0 failed" in up.stdout
    assert "retried" not in up.stdout  # no upload met "Too many open files"

    out = tmp_path / "out"
    down = subprocess.run(
        _cli("download", "--out", str(out), "--max-parallel-downloads", "100000"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _nofile(256),
    )
    assert down.returncode == 0, down.stderr[-2000:]
    assert re.fullmatch(
        r"warning: --max-parallel-downloads 100000 is more than the open-file limit allows "
        r"\(ulimit -n 256\): \d+ run at once\n",
        down.stderr,
    ), down.stderr[-2000:]
    assert down.stdout.splitlines()[:2] == [
        f"Downloaded 4 sets to {out}",
        "  files       400 downloaded, 0 already present, 0 failed, 0 refused",
    ]
