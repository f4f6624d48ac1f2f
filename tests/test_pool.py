"""The transforms' process pool (transforms.pool.WorkerPool, made by transforms.create_pool): real worker
processes, stopped through its public API only; a crashed worker costs one task; no worker outlives its
parent, however the parent ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import transforms
from transforms.pool import WorkerPool

from .processes import alive

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60  # seconds: the generous bound of every wait below, never a speed claim


def _hold(path: str) -> None:
    """A task that says where it runs, then keeps its worker busy."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would


def _gone(pid: int) -> bool:
    """Exited and reaped: no /proc entry (not even a zombie)."""
    return not Path(f"/proc/{pid}").exists()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {WAIT} s")
        time.sleep(0.02)


def test_terminate_workers_kills_the_running_tasks_and_reaps_every_worker(tmp_path: Path) -> None:
    pool = transforms.create_pool(2)
    marks = [tmp_path / "a", tmp_path / "b"]
    running = [pool.submit(_hold, str(m)) for m in marks]
    waiting = pool.submit(_hold, str(tmp_path / "c"))
    _wait_for(lambda: all(m.exists() and m.read_text() for m in marks), "both workers running a task")
    pids = [int(m.read_text()) for m in marks]
    pool.terminate_workers()  # returns once they are gone
    assert all(_gone(p) for p in pids), "a worker is still there after terminate_workers()"
    for f in running:
        with pytest.raises(BrokenProcessPool, match="terminated"):
            f.result(timeout=WAIT)
    with pytest.raises(CancelledError):
        waiting.result(timeout=WAIT)
    assert not (tmp_path / "c").exists()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(abs, -1)


def test_a_worker_that_dies_fails_only_its_task_and_is_replaced() -> None:
    with transforms.create_pool(2) as pool:
        assert pool.submit(abs, -1).result(timeout=WAIT) == 1
        with pytest.raises(BrokenProcessPool, match="died \\(killed by SIGKILL\\)"):
            pool.submit(_die).result(timeout=WAIT)
        # the pool goes on (ProcessPoolExecutor would now refuse every task: one image would fail them all)
        assert list(pool.map(abs, [-2, -3, -4], timeout=WAIT)) == [2, 3, 4]
        assert pool.submit(transforms.policy_status).result(timeout=WAIT) is not None  # a new, initialised one


def test_an_initializer_that_fails_breaks_the_pool_with_its_reason() -> None:
    with WorkerPool(1, initializer=int, initargs=("not a number",)) as pool:
        with pytest.raises(BrokenProcessPool, match="could not start: ValueError: invalid literal"):
            pool.submit(abs, -1).result(timeout=WAIT)
        with pytest.raises(BrokenProcessPool):
            pool.submit(abs, -1)


def test_shutdown_finishes_the_submitted_tasks_then_the_workers_exit() -> None:
    pool = WorkerPool(2)
    futures = [pool.submit(time.sleep, 0.01) for _ in range(6)] + [pool.submit(os.getpid)]
    pool.shutdown(wait=True)
    assert all(f.done() and f.exception() is None for f in futures)
    assert _gone(futures[-1].result())


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the parent no chance to clean up: each idle worker sees the parent's end of its pipe
    close and exits (ProcessPoolExecutor's workers waited on their queue forever)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "import transforms\n"
        "if __name__ == '__main__':\n"
        "    pool = transforms.create_pool(2)\n"
        "    futures = [pool.submit(os.getpid) for _ in range(2)]\n"
        "    [f.result() for f in futures]\n"
        "    print(*[p.pid for p in multiprocessing.active_children()], flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers and all(alive(p) for p in workers), workers
        parent.kill()
        parent.wait(timeout=WAIT)
        _wait_for(lambda: not [p for p in workers if alive(p)], "the orphaned workers exiting")
    finally:
        if parent.poll() is None:
            parent.kill()
