"""``SyncCorpus``: the library for scripts, without ``async with`` or ``await``.

    with SyncCorpus("images") as corpus:
        corpus.upload("photos/", version="v1")
        found = corpus.query(["robin"])

Every public method of ``Corpus`` is here with the same name and arguments, and returns what awaiting
it returns. The calls run on a private event loop in a thread of its own, started when the corpus
opens and stopped when it closes, so they also work where the calling thread already runs a loop
(Jupyter, a function called from within ``asyncio.run``); the caller waits for each call. An exception
a call raises comes out as it is (the same object). Ctrl-C while waiting cancels the call as the CLI
does: what finished is stored, temporary files and worker processes are cleaned up, then
KeyboardInterrupt is raised.

Progress sinks (``progress=``) are called on the corpus's loop thread, not the caller's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from .config import ConnectionInfo
from .corpus import Corpus

P = ParamSpec("P")
T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread of its own until ``stop()``."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="corpus-manager-sync", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        # asyncio.run, as the CLI: at the end it cancels what is left, closes async generators and waits
        # for the threads the loop started (asyncio.to_thread), so nothing runs on after stop().
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stopping.wait()

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine ``make()`` makes on the loop and wait for its outcome."""
        if threading.current_thread() is self.thread:
            raise RuntimeError(
                "a SyncCorpus method was called on the corpus's own event loop thread (from a "
                "progress sink?): it would wait for itself forever"
            )
        loop = self._loop
        assert loop is not None
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            try:
                task = loop.create_task(make())
            except BaseException as exc:  # making the coroutine failed: the caller gets that error
                outcome.set_exception(exc)
                return
            tasks.append(task)
            task.add_done_callback(functools.partial(_copy_outcome, outcome))

        loop.call_soon_threadsafe(start)
        try:
            return outcome.result()
        except KeyboardInterrupt:
            # Ctrl-C in the waiting thread: cancel the call and let it clean up before raising. A second
            # Ctrl-C is not held back. (start() runs before this cancel: the loop keeps their order.)
            loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
            with contextlib.suppress(Exception, asyncio.CancelledError):
                outcome.result()
            raise

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already ended (interpreter shutdown)
                self._loop.call_soon_threadsafe(self._stopping.set)
        if threading.current_thread() is not self.thread:
            self.thread.join()


def _copy_outcome(outcome: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        outcome.set_exception(asyncio.CancelledError())
    elif (error := task.exception()) is not None:
        outcome.set_exception(error)  # the very exception: its type, message and attributes unchanged
    else:
        outcome.set_result(task.result())


def _shut(runner: _LoopThread, corpus: Corpus) -> None:
    """Close ``corpus`` and stop its loop; also run when an open SyncCorpus is garbage-collected or the
    interpreter exits, so its connections are closed."""
    try:
        runner.run(lambda: corpus.__aexit__(None, None, None))
    finally:
        runner.stop()


def _blocking(
    method: Callable[Concatenate[Corpus, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncCorpus, P], T]:
    """``Corpus.method`` as a blocking method of SyncCorpus: same signature (``help()`` shows it) and docs."""

    @functools.wraps(method)
    def call(self: SyncCorpus, /, *args: P.args, **kwargs: P.kwargs) -> T:
        corpus = self._corpus
        return self._runner_open().run(lambda: method(corpus, *args, **kwargs))

    call.__qualname__ = f"SyncCorpus.{method.__name__}"
    return call


class SyncCorpus:
    """A corpus for synchronous code: ``Corpus``'s methods, each a plain call that returns its result.

    >>> with SyncCorpus("images") as corpus:                      # doctest: +SKIP
    ...     report = corpus.upload("photos/", version="v1")
    ...     found = corpus.query(["robin"], version="v1")

    The arguments are ``Corpus``'s. The corpus opens on first use (or ``open()``/``with``) and must be
    closed (``close()``, or the end of the ``with`` block); a call after ``close()`` opens it again.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        pool_size: int = 64,
    ) -> None:
        self._corpus = Corpus(name, connection_string=connection_string, account_url=account_url, pool_size=pool_size)
        self._lock = threading.Lock()
        self._runner: _LoopThread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def name(self) -> str:
        return self._corpus.name

    @property
    def connection(self) -> ConnectionInfo:
        """The storage settings in use (``Corpus.connection``; its repr shows no secret)."""
        return self._corpus.connection

    @property
    def pool_size(self) -> int:
        """HTTP connections the corpus may hold open at once (``Corpus.pool_size``)."""
        return self._corpus.pool_size

    @pool_size.setter
    def pool_size(self, value: int) -> None:
        runner = self._runner
        if runner is None:
            self._corpus.pool_size = value
            return

        async def resize() -> None:  # on the loop: an open corpus remakes its connection pool there
            self._corpus.pool_size = value

        runner.run(resize)

    def open(self) -> SyncCorpus:
        """Open the corpus (start its loop thread); a method call does it when needed."""
        self._runner_open()
        return self

    def close(self) -> None:
        """Close the corpus's connections and stop its loop thread. Idempotent."""
        with self._lock:
            finalizer, self._finalizer, self._runner = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> SyncCorpus:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self._corpus!r}"

    def _runner_open(self) -> _LoopThread:
        with self._lock:
            if self._runner is None:
                runner = _LoopThread()
                try:
                    runner.run(self._corpus.__aenter__)
                except BaseException:
                    runner.stop()
                    raise
                self._runner = runner
                # holds the runner and the Corpus, not self: a SyncCorpus dropped unclosed is closed for you
                self._finalizer = weakref.finalize(self, _shut, runner, self._corpus)
            return self._runner

    upload = _blocking(Corpus.upload)
    query = _blocking(Corpus.query)
    download = _blocking(Corpus.download)
    status = _blocking(Corpus.status)
    transform = _blocking(Corpus.transform)
    transforms = _blocking(Corpus.transforms)
    create_release = _blocking(Corpus.create_release)
    release = _blocking(Corpus.release)
    releases = _blocking(Corpus.releases)
    diff_releases = _blocking(Corpus.diff_releases)
    verify_release = _blocking(Corpus.verify_release)
    report = _blocking(Corpus.report)
    export = _blocking(Corpus.export)


__all__ = ["SyncCorpus"]
