"""Run one contender as a child process and measure it the way the kernel sees it.

``os.wait4`` (in launch.py, a tiny launcher: see there why) gives the child's own user and system
CPU and its peak RSS (``ru_maxrss``, which on Linux also covers any grandchildren it waited for), so
every contender, Python or Go, is measured by the same rule and nothing of the harness is counted.
When the harness owns the Azurite process, the server's CPU over the same interval is read from
/proc: on a 2-core machine the server shares the CPU with the client, so a contender that makes
the server work harder is slower for that reason too, and the column shows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
LAUNCH = Path(__file__).resolve().parent / "launch.py"


@dataclass
class Measured:
    wall: float
    user: float
    sys: float
    maxrss_mb: float
    returncode: int
    stdout: str
    stderr: str
    server_cpu: float | None = None
    timed_out: bool = False

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def process_cpu(pid: int | None) -> float | None:
    """User+system CPU seconds of a running process (all its threads), or None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the ")" closing the command name: state is field 3, utime 14 and stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    out_dir: Path,
    label: str,
    server_pid: int | None = None,
    timeout: float = 900.0,
) -> Measured:
    """Run ``argv`` to completion through launch.py; stdout and stderr go to files under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path, res_path = (out_dir / f"{label}.{ext}" for ext in ("out", "err", "rusage.json"))
    res_path.unlink(missing_ok=True)
    timed_out = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        server_before = process_cpu(server_pid)
        # A session of its own, so a timeout stops the launcher and the contender (and its children).
        proc = subprocess.Popen(
            [sys.executable, "-S", "-I", str(LAUNCH), str(res_path), "--", *argv],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        server_after = process_cpu(server_pid)
    server = None if server_before is None or server_after is None else server_after - server_before
    try:
        r = json.loads(res_path.read_text())
    except (OSError, ValueError):
        r = {"wall": float("nan"), "user": 0.0, "sys": 0.0, "maxrss_kb": 0, "returncode": -1}
    return Measured(
        wall=r["wall"],
        user=r["user"],
        sys=r["sys"],
        maxrss_mb=r["maxrss_kb"] / 1024,
        returncode=r["returncode"],
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace")[-4000:],
        server_cpu=server,
        timed_out=timed_out,
    )
