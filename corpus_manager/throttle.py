"""The bounded async runner: the original tool's ``ThrottleWork``, done right.

At most ``limit`` calls are in flight (a slot is taken *before* a task is created, so never N+1),
items are pulled lazily from any (async) iterable, so a million-file corpus never becomes a million
tasks, and every call ends as an ``Outcome`` holding its item and either its result or its
exception: a late failure can never drop the list of earlier ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Outcome(Generic[T, R]):
    item: T
    result: R | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ThrottleWork:
    """A concurrency limit that several ``map`` calls may share (one pool of slots per resource)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the parallelism limit must be at least 1, got {limit}")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self.in_flight = 0
        self.peak = 0

    async def run(self, fn: Callable[[], Awaitable[R]]) -> R:
        """Run one call inside a slot."""
        async with self._slots:
            self._enter()
            try:
                return await fn()
            finally:
                self.in_flight -= 1

    def _enter(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    async def map(
        self, fn: Callable[[T], Awaitable[R]], items: Iterable[T] | AsyncIterable[T]
    ) -> AsyncIterator[Outcome[T, R]]:
        """Yield one Outcome per item, in completion order."""
        running: set[asyncio.Task[Outcome[T, R]]] = set()

        async def call(item: T) -> Outcome[T, R]:
            try:
                return Outcome(item, await fn(item))
            except Exception as exc:  # collected with its item, never raised past the others
                return Outcome(item, error=exc)

        def release(_: asyncio.Task[Outcome[T, R]]) -> None:
            # a done-callback runs even for a task cancelled before it started, so no slot leaks
            self.in_flight -= 1
            self._slots.release()

        source = _aiter(items)
        try:
            while True:
                # take the slot first, then the item: the source is never read ahead of the limit
                await self._slots.acquire()
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    self._slots.release()
                    break
                except BaseException:
                    self._slots.release()
                    raise
                self._enter()
                task = asyncio.create_task(call(item))
                task.add_done_callback(release)
                running.add(task)
                for task in [t for t in running if t.done()]:
                    running.discard(task)
                    yield task.result()
            while running:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            await source.aclose()


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncGenerator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def iterate_in_thread(iterator: Iterable[T]) -> AsyncIterator[T]:
    """Pull a blocking iterator (the crawler) one item at a time off the event loop."""
    it = iter(iterator)
    done = object()
    while True:
        item = await asyncio.to_thread(next, it, done)
        if item is done:
            return
        yield cast(T, item)


# File descriptors left for everything but the transfers: stdio, the event loop, the table
# requests, the crawl's open directories, the interpreter's own files.
FD_RESERVE = 64


def open_file_cap(requested: int, option: str, *, per_item: int = 2, others: int = 0) -> tuple[int, str | None]:
    """``requested`` transfers in flight, or fewer if the open-file limit (``ulimit -n``) cannot hold
    them: each holds ``per_item`` descriptors (a socket and a local file), ``others`` more are in use
    (e.g. table requests). Returns the limit to use and, when it is lower, a note saying so."""
    try:
        import resource  # POSIX only
    except ImportError:
        return requested, None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested, None
    cap = max(1, (soft - FD_RESERVE - others) // per_item)
    if requested <= cap:
        return requested, None
    return cap, (f"{option} {requested} is more than the open-file limit allows (ulimit -n {soft}): {cap} run at once")


class ByteBudget:
    """At most ``limit`` bytes held at once by the holders of ``hold(n)``: the memory of file bytes in
    flight stays bounded whatever the file sizes and the parallelism. Waiters are served first come,
    first served (a big request is never starved by small ones); a request larger than the whole
    budget waits until it is alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.limit

    def _grant(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, fut = self._waiters.pop(0)
            if not fut.done():
                self._grant(n)
                fut.set_result(None)

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self._grant(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as it was cancelled: hand it back
            else:
                self._waiters = [w for w in self._waiters if w[1] is not fut]
                self._wake()  # a big waiter leaving may let smaller ones behind it in
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self.acquire(n)
        try:
            yield
        finally:
            self.release(n)
