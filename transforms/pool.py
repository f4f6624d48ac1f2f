"""A process pool (a ``concurrent.futures.Executor``) that owns its worker processes outright.

Why not ``ProcessPoolExecutor``: before Python 3.14 only its private attributes reach the workers, so it
cannot kill them on demand; its workers outlive a parent killed by a signal (they wait on a queue whose write
end they hold themselves, and keep the parent's stdout open); and one crashed worker breaks the whole pool.
Here, with public ``multiprocessing`` API only:

- each worker is a ``Process`` joined to the parent by one duplex ``Pipe`` and is sent one task at a time
  (so a task never waits behind a slow one while another worker is free); it exits when the parent's end
  closes, so it never outlives the parent, however the parent died;
- ``terminate_workers()`` kills and reaps every worker now (``Process.kill``, ``join``): an interrupted
  run stops within moments and leaves no process behind;
- workers ignore SIGINT and SIGTERM: a signal sent to the whole process group (a terminal's Ctrl-C,
  ``kill -TERM -PGID``) is the parent's to handle (it cancels its work and terminates the workers). They
  start with both signals blocked, so one that arrives while a worker still imports is not acted on;
- a worker that dies mid-task fails that task only (``BrokenProcessPool``) and is replaced; an initializer
  that fails breaks the pool, as in ProcessPoolExecutor.

One dispatcher thread per pool starts the workers, hands tasks to idle ones and collects the results.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # registers its exit hook before ours (see _at_exit)
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _block_stop_signals() -> None:
    """Block SIGINT and SIGTERM in the calling thread (a process started from it inherits the mask)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def _worker_main(conn: Connection, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    """A worker process: ignore stop signals, initialise, then run tasks until the parent's end closes."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # pending ones are discarded: ignored
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        _reply(conn, ("init-failed", f"{exc.__class__.__name__}: {exc}"))
        return
    if not _reply(conn, ("ready", None)):
        return
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed its end (shutdown) or is gone
        except BaseException as exc:  # the task does not unpickle here (e.g. its function is not importable)
            reply: tuple[str, Any] = ("error", exc)
        else:
            try:
                reply = ("ok", fn(*args, **kwargs))
            except BaseException as exc:
                reply = ("error", exc)
        if not _reply(conn, reply):
            return


def _reply(conn: Connection, message: tuple[str, Any]) -> bool:
    """Send to the parent; False when the parent is gone. A result that does not pickle becomes an error."""
    try:
        conn.send(message)  # pickled whole before anything is written: a pickling error leaves the pipe clean
    except OSError:
        return False
    except Exception as exc:
        return _reply(conn, ("error", RuntimeError(f"the task's result could not be sent back: {exc!r}")))
    return True


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


@dataclass(eq=False)
class _Task:
    future: Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    started: bool = False  # its future is running (it was sent once; a worker that died first gave it back)

    def start(self) -> bool:
        """Mark the future running; False when it was cancelled meanwhile."""
        if not self.started:
            self.started = self.future.set_running_or_notify_cancel()
            return self.started
        return True

    def drop(self, reason: str | None) -> None:
        """Settle a task that will not run: cancelled, or failed with ``reason`` once it is running."""
        if not self.started and (reason is None or not self.start()):
            self.future.cancel()
        else:
            self.future.set_exception(BrokenProcessPool(reason or "the worker pool was terminated"))


@dataclass(eq=False)
class _Worker:
    process: Any  # multiprocessing's Process of the pool's context
    conn: Connection
    ready: bool = False  # its initializer ran
    task: _Task | None = None  # the one it runs


class WorkerPool(Executor):
    """See the module docstring. ``shutdown`` is the standard one; ``terminate_workers`` kills at once."""

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        max_workers = max_workers or os.cpu_count() or 1
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        # spawn by default: a forked child would inherit the parent's threads and library state
        # Any: typeshed's BaseContext has no Process (each concrete context has its own)
        self._context: Any = mp_context or multiprocessing.get_context("spawn")
        self._initializer, self._initargs = initializer, initargs
        self._lock = threading.Lock()
        self._pending: deque[_Task] = deque()  # guarded by _lock; everything else is the dispatcher's
        self._closing = False  # no new tasks; the dispatcher stops once the pending and running ones are done
        self._terminating = False  # the dispatcher kills the workers and stops now
        self._broken: str | None = None
        self._finished = False
        self._workers: list[_Worker] = []
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._woken = False
        self._thread: threading.Thread | None = None

    # ----- the Executor API (any thread) ---------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._broken is not None:
                raise BrokenProcessPool(self._broken)
            if self._closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            self._pending.append(_Task(future, fn, args, kwargs))
            if self._thread is None:
                # a daemon thread, so a pool never shut down cannot hold up the interpreter's exit; the
                # exit hook below stops its workers
                self._thread = threading.Thread(target=self._dispatch, name="worker-pool", daemon=True)
                _live_pools.add(self)
                self._thread.start()
            self._wake()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; the workers exit once the pending (unless ``cancel_futures``) and running tasks are
        done. ``wait``: return only then."""
        with self._lock:
            if cancel_futures:
                while self._pending:
                    self._pending.popleft().future.cancel()
            self._closing = True
            self._wake()
        if wait:
            self._join()

    def terminate_workers(self) -> None:
        """Kill every worker now and reap it: tasks not started are cancelled, running ones fail with
        BrokenProcessPool. Returns once no worker process is left. The pool takes no new tasks."""
        with self._lock:
            self._closing = self._terminating = True
            self._wake()
        self._join()

    # ----- the dispatcher thread -----------------------------------------------------------------
    def _wake(self) -> None:  # with _lock held
        if not self._woken and self._thread is not None and not self._finished:
            self._woken = True
            self._wake_w.send_bytes(b"")

    def _join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _dispatch(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            with self._lock:
                self._broken = self._broken or f"the worker pool failed: {exc.__class__.__name__}: {exc}"
        finally:
            self._finish()

    def _step(self) -> bool:
        """One round: start workers, hand out tasks, wait for something to happen. False: stop."""
        while self._wake_r.poll():
            self._wake_r.recv_bytes()
        with self._lock:
            self._woken = False
            if self._terminating or self._broken is not None:
                return False
            pending, closing = len(self._pending), self._closing
        idle = [w for w in self._workers if w.ready and w.task is None]
        starting = sum(not w.ready for w in self._workers)
        while pending > len(idle) + starting and len(self._workers) < self._max_workers:
            self._start_worker()
            starting += 1
        for idle_worker in idle:
            self._hand_out(idle_worker)
        busy = any(w.task is not None for w in self._workers)
        if closing and not busy:
            with self._lock:
                if not self._pending:
                    return False
        waitables: dict[Any, _Worker | None] = {self._wake_r: None}
        for w in self._workers:
            waitables[w.conn] = w
            waitables[w.process.sentinel] = w
        for ready in wait(list(waitables)):
            worker = waitables[ready]
            if worker is None or worker not in self._workers:
                continue
            if ready is worker.conn:
                self._receive(worker)
            else:  # it exited: read what it sent before, then reap it
                while worker in self._workers and worker.conn.poll():
                    self._receive(worker)
                self._reap(worker)
        return True

    def _start_worker(self) -> None:
        parent_end, child_end = multiprocessing.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child_end, self._initializer, self._initargs), name="worker-pool-process"
        )
        if os.name == "posix" and self._context.get_start_method() != "fork":
            # the tracker is started by the first start() otherwise, and starting it unblocks both signals in
            # the calling thread just before that first worker is forked
            resource_tracker.ensure_running()
        _block_stop_signals()
        process.start()
        child_end.close()  # the worker's end lives in the worker only: its death closes it
        self._workers.append(_Worker(process, parent_end))

    def _hand_out(self, worker: _Worker) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                task = self._pending.popleft()
            if not task.start():
                continue  # cancelled while it waited
            try:
                worker.conn.send((task.fn, task.args, task.kwargs))
            except OSError:
                with self._lock:  # the worker is gone; its sentinel says so next: the task waits for another
                    self._pending.appendleft(task)
                return
            except Exception as exc:  # the task does not pickle: it fails, the worker stays idle
                task.future.set_exception(exc)
                continue
            worker.task = task
            return

    def _receive(self, worker: _Worker) -> None:
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            self._reap(worker)
            return
        except Exception as exc:  # the result does not unpickle here
            kind, value = "error", exc
        if kind == "ready":
            worker.ready = True
        elif kind == "init-failed":
            with self._lock:
                self._broken = f"a worker process could not start: {value}"
        elif worker.task is not None:
            task, worker.task = worker.task, None
            if kind == "ok":
                task.future.set_result(value)
            else:
                task.future.set_exception(value)

    def _reap(self, worker: _Worker) -> None:
        """A worker exited on its own (a crash, a kill from outside)."""
        self._workers.remove(worker)
        worker.process.join()
        worker.conn.close()
        how = _describe(worker.process.exitcode)
        if not worker.ready:
            with self._lock:  # it died before its initializer finished: a new one would likely too
                self._broken = self._broken or f"a worker process died while starting ({how})"
        elif worker.task is not None:
            worker.task.future.set_exception(BrokenProcessPool(f"the worker process running this task died ({how})"))

    def _finish(self) -> None:
        """Stop every worker (kill, unless this is a clean shutdown of idle workers) and settle every future."""
        with self._lock:
            kill = self._terminating or self._broken is not None
            reason = self._broken or "the worker pool was terminated"
            pending = list(self._pending)
            self._pending.clear()
            self._closing = self._finished = True
        for w in self._workers:
            if kill:
                with contextlib.suppress(Exception):
                    w.process.kill()
            w.conn.close()  # an idle worker reads EOF and exits
        for w in self._workers:
            w.process.join()
            if w.task is not None:
                w.task.future.set_exception(BrokenProcessPool(reason))
        self._workers.clear()
        for task in pending:
            task.drop(self._broken)
        self._wake_r.close()
        self._wake_w.close()
        _live_pools.discard(self)


_live_pools: set[WorkerPool] = set()


@atexit.register
def _at_exit() -> None:
    """At interpreter exit, before multiprocessing's own hook (registered earlier, so run later), which would
    wait forever for workers still waiting for tasks: kill the workers of pools never shut down; let the
    shut-down ones finish their tasks."""
    for pool in list(_live_pools):
        if pool._closing and not pool._terminating:
            pool._join()
        else:
            pool.terminate_workers()
