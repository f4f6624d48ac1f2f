"""Run one contender as a child process and measure it the way the kernel sees it.

``os.wait4`` gives the child's own user and system CPU and its peak RSS (``ru_maxrss``, which on
Linux also covers any grandchildren it waited for), so every contender, Python or Go, is measured
by the same rule and nothing of the harness itself is counted. When the harness owns the Azurite
process, the server's CPU over the same interval is read from /proc: on a 2-core machine the
server shares the CPU with the client, so a contender that makes the server work harder is slower
for that reason too, and the column shows it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


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
    """Run ``argv`` to completion; stdout and stderr go to files under ``out_dir`` (kept for post-mortems)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = out_dir / f"{label}.out", out_dir / f"{label}.err"
    timed_out = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        server_before = process_cpu(server_pid)
        started = time.perf_counter()
        # A session of its own, so a timeout can stop the child and anything it started.
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )

        def kill() -> None:
            nonlocal timed_out
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            # wait4 and not Popen.wait: it is the call that returns the child's rusage.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        server_after = process_cpu(server_pid)
    proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it is reaped
    server = None if server_before is None or server_after is None else server_after - server_before
    return Measured(
        wall=wall,
        user=usage.ru_utime,
        sys=usage.ru_stime,
        maxrss_mb=usage.ru_maxrss / 1024,
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace")[-4000:],
        server_cpu=server,
        timed_out=timed_out,
    )
