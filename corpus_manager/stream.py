"""Training straight from the corpus: ``iter_release`` (image by image, ``prefetch`` GETs in flight) and
``iter_shards`` (an export's WebDataset shards, read sequentially), both plain synchronous iterators.

Each runs its own event loop in a thread of its own (``sync._LoopThread``), and makes it, its storage
clients and its HTTP session only when iteration starts, in the process that iterates: nothing exists
at import or when the iterator is made, so an iterator made in a parent and handed to DataLoader
workers (fork or spawn) shares no socket, loop or lock with anyone. The caller needs no asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ConfigError, NotFound, StorageError
from .shards import read_tar, sample_of, shuffled
from .storage import BlobInfo, Storage

T = TypeVar("T")
Record = dict[str, Any]
EXPORT_PREFIX = "exports/{name}/webdataset/"


# ----- the release, as training reads it ----------------------------------------------------------
@dataclass(frozen=True)
class TrainingRelease:
    name: str
    records: list[Record]
    seed: int
    manifest_sha256: str

    def split(self, split: str | None) -> list[Record]:
        """The records of ``split`` in manifest order (all of them for None); an unknown split is an error
        naming the ones there are."""
        if split is None:
            return list(self.records)
        chosen = [r for r in self.records if r.get("split") == split]
        if not chosen:
            have = sorted({str(r.get("split")) for r in self.records})
            raise ConfigError(f"release {self.name!r} has no split {split!r} (its splits: {', '.join(have)})")
        return chosen


async def open_release(storage: Storage, name: str) -> TrainingRelease:
    """The release's manifest records and seed, read from storage."""
    from .release import load_release  # the releases feature owns the manifest's format and its row

    release = await load_release(storage, name)
    seed = int(release.definition.get("seed", 0))
    return TrainingRelease(name, list(release.records), seed, release.manifest_sha256)


def check_image(record: Record, data: bytes, info: BlobInfo | None) -> None:
    """The bytes read must have the manifest's MD5 (and the blob's stored Content-MD5, when it has one):
    a mismatch raises, naming the blob."""
    actual = hashlib.md5(data).hexdigest()
    stored = info.md5_hex if info is not None else None
    if actual != record["md5"] or (stored is not None and stored != actual):
        raise StorageError(
            f"{record['blob_name']}: MD5 mismatch (manifest {record['md5']}, bytes read {actual}"
            f"{f', stored Content-MD5 {stored}' if stored is not None else ''}): the blob changed or is corrupt"
        )


def _check_part(rank: int, world_size: int, prefetch: int = 1) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world_size {world_size}: need 0 <= rank < world_size")
    if prefetch < 1:
        raise ValueError(f"prefetch {prefetch}: must be at least 1")


def part_of(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Every ``world_size``-th item from ``rank``: disjoint parts that together hold every item once."""
    return list(items[rank::world_size])


# ----- the machinery: a loop in a thread, a window of requests ------------------------------------
class _Window(Generic[T]):
    """At most ``size`` fetches in flight, results handed out in item order. A fetch that finishes
    ahead of a slower one before it frees its slot at once (no head-of-line wait), so ``size``
    requests stay in flight; at most ``ahead`` results (default 4 x ``size``) wait to be taken."""

    def __init__(
        self, items: Sequence[Any], fetch: Callable[[Any], Awaitable[T]], size: int, ahead: int | None = None
    ) -> None:
        self._items = iter(items)
        self._fetch = fetch
        self._size = size
        self._ahead = max(size, ahead if ahead is not None else 4 * size)
        self._running = 0
        self._closed = False
        self._pending: collections.deque[asyncio.Future[T]] = collections.deque()

    def _fill(self) -> None:
        while not self._closed and self._running < self._size and len(self._pending) < self._ahead:
            item = next(self._items, _END)
            if item is _END:
                return
            task = asyncio.ensure_future(self._fetch(item))
            self._running += 1
            task.add_done_callback(self._finished)
            self._pending.append(task)

    def _finished(self, _task: asyncio.Future[T]) -> None:
        self._running -= 1
        self._fill()

    async def take(self) -> list[T]:
        """The next result, and those right after it that are ready too (one hop between threads for
        several images); an empty list at the end."""
        self._fill()
        if not self._pending:
            return []
        out = [await self._pending.popleft()]
        while self._pending and self._pending[0].done() and len(out) < 256:
            out.append(self._pending.popleft().result())
        self._fill()
        return out

    async def close(self) -> None:
        self._closed = True
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._pending.clear()


_END = object()


class _Runner:
    """The iterator's loop thread, tied to the process that started it: an iterator carried across a
    fork (started in the parent) raises in the child instead of waiting forever on a loop thread that
    does not exist there, and its clean-up (when the child drops it) leaves the parent's loop alone."""

    def __init__(self) -> None:
        from .sync import _LoopThread

        self.pid = os.getpid()
        self.loop = _LoopThread()

    def check(self) -> None:
        """Raise in a process other than the one that started the iterator (a fork's child): checked
        before each item, so not even the items already fetched come out twice, in parent and child."""
        if os.getpid() != self.pid:
            raise RuntimeError(
                "this iterator was started in another process (before a fork): make a new one in this process"
            )

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        self.check()
        if not self.loop.thread.is_alive():  # interpreter shutdown stopped it: never wait for it
            raise RuntimeError("this iterator's event loop thread has stopped (interpreter shutdown)")
        return self.loop.run(make)

    def cleanup(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        # Not in a fork's child, and not once the loop thread is gone: an iterator dropped at interpreter
        # exit is finalised after daemon threads stopped, and waiting for its loop would hang the exit.
        if os.getpid() == self.pid and self.loop.thread.is_alive() and not sys.is_finalizing():
            with contextlib.suppress(Exception):
                self.loop.run(make)

    def stop(self) -> None:
        if os.getpid() == self.pid:
            self.loop.stop()


@contextlib.contextmanager
def _running_corpus(
    corpus: str | None, connection_string: str | None, account_url: str | None, pool_size: int
) -> Iterator[tuple[_Runner, Any]]:
    """A loop thread with an open Corpus on it, both made here (in the iterating process), and both
    closed at the end, also when the consumer stops early (generator close)."""
    from .corpus import Corpus  # here: corpus imports export, which imports this module

    c = Corpus(corpus, connection_string=connection_string, account_url=account_url, pool_size=pool_size)
    runner = _Runner()
    try:
        runner.run(c.__aenter__)
        try:
            yield runner, c
        finally:
            runner.cleanup(lambda: c.__aexit__(None, None, None))
    finally:
        runner.stop()


def iter_release(
    name: str,
    *,
    split: str | None = None,
    corpus: str | None = None,
    connection_string: str | None = None,
    account_url: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    prefetch: int = 32,
) -> Iterator[tuple[bytes, Record]]:
    """``(data, record)`` for every image of release ``name`` (of ``split``, if given), read straight from
    blob storage with at most ``prefetch`` GETs in flight, each image's MD5 checked against the
    manifest (a mismatch raises ``StorageError`` naming the blob).

    Order: the manifest's, or with ``shuffle`` a permutation by ``seed`` and ``epoch`` (the same on every
    machine; another epoch, another order). ``rank``/``world_size``: this caller's part, every
    ``world_size``-th image of that order from ``rank``, so the parts are disjoint and together cover
    the release once (give every part the same ``shuffle``, ``seed`` and ``epoch``).

    Nothing is opened until the first ``next()``: the connection, loop and thread belong to the
    process and thread that iterates (safe in DataLoader workers, fork or spawn). Stop early with
    ``close()`` (or just drop the iterator) and they are closed.

    ``corpus``, ``connection_string``, ``account_url``: as ``Corpus`` takes them (default: the
    environment, ``CORPUS_NAME`` else ``images``, and ``AZURE_STORAGE_CONNECTION_STRING``)."""
    _check_part(rank, world_size, prefetch)

    def run() -> Iterator[tuple[bytes, Record]]:
        with _running_corpus(corpus, connection_string, account_url, max(prefetch, 4)) as (runner, c):
            storage: Storage = c.storage
            release = runner.run(lambda: open_release(storage, name))
            records = release.split(split)
            if shuffle:
                records = shuffled(records, seed, epoch)

            async def fetch(record: Record) -> tuple[bytes, Record]:
                data, info = await storage.get_blob(record["blob_name"])
                check_image(record, data, info)
                return data, record

            window = _Window(part_of(records, rank, world_size), fetch, prefetch)
            try:
                while batch := runner.run(window.take):
                    for item in batch:
                        runner.check()
                        yield item
            finally:
                runner.cleanup(window.close)

    return run()


# ----- exported shards ------------------------------------------------------------------------
async def read_index(storage: Storage, name: str) -> dict[str, Any] | None:
    """An export's index.json, or None when there is none."""
    try:
        data, _ = await storage.get_blob(EXPORT_PREFIX.format(name=name) + "index.json")
    except NotFound:
        return None
    parsed: dict[str, Any] = json.loads(data)
    return parsed


async def _export_shards(storage: Storage, name: str, split: str | None) -> list[dict[str, Any]]:
    """The index entries of the export of release ``name`` (of ``split``, if given), in index order;
    a ConfigError when the release has no export."""
    index = await read_index(storage, name)
    if index is None:
        raise ConfigError(f"release {name!r} has no export (run: corpus export --release {name})")
    return [s for s in index["shards"] if split is None or s["split"] == split]


def iter_shards(
    name: str,
    *,
    split: str | None = None,
    corpus: str | None = None,
    connection_string: str | None = None,
    account_url: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[bytes, Record]]:
    """``(data, record)`` for every sample of the WebDataset shards ``corpus export`` stored for release
    ``name`` (``exports/NAME/webdataset/``), each shard streamed sequentially in one GET and parsed as
    it arrives (never held whole): the fast path for epoch after epoch over a big release.

    Yields samples, like ``iter_release`` (not shard streams). ``rank``/``world_size`` divide whole
    shards (every ``world_size``-th shard from ``rank``), so give it at least ``world_size`` shards;
    ``shuffle`` permutes the shards by ``seed`` and ``epoch`` (the samples within a shard are already
    shuffled by the release's seed). Each sample's MD5 is checked against its record and each shard's
    SHA-256 against the index (a mismatch raises naming the shard or the blob)."""
    _check_part(rank, world_size)

    def run() -> Iterator[tuple[bytes, Record]]:
        with _running_corpus(corpus, connection_string, account_url, 4) as (runner, c):
            storage: Storage = c.storage
            shards = runner.run(lambda: _export_shards(storage, name, split))
            if not shards:
                raise ConfigError(f"the export of release {name!r} has no shards of split {split!r}")
            if shuffle:
                shards = [{**s, "blob_name": s["name"]} for s in shards]
                shards = shuffled(shards, seed, epoch)
            for shard in part_of(shards, rank, world_size):
                yield from _read_shard(runner, storage, EXPORT_PREFIX.format(name=name) + shard["name"], shard)

    return run()


def shard_urls(
    name: str,
    *,
    split: str | None = None,
    corpus: str | None = None,
    connection_string: str | None = None,
    account_url: str | None = None,
    expiry_seconds: int = 3600,
) -> list[str]:
    """Read-only URLs of the export's shards (of ``split``, if given), in index order, for readers that
    fetch over HTTP (``webdataset.WebDataset(urls)``). Signed by a container SAS (read only, valid for
    ``expiry_seconds``) minted from the account key, or carrying the connection string's own SAS.
    They grant access: hand them to the training job, never print or log them."""
    import time
    from urllib.parse import quote

    from .storage import container_sas

    with _running_corpus(corpus, connection_string, account_url, 2) as (runner, c):
        storage: Storage = c.storage
        shards = runner.run(lambda: _export_shards(storage, name, split))
    info = storage.info
    if info.account_key:
        sas = container_sas(info.account_name, info.account_key, storage.corpus, "r", time.time() + expiry_seconds)
    elif info.sas_token:
        sas = info.sas_token.lstrip("?")
    else:
        raise ConfigError("shard URLs need an account key or a SAS in the connection string (not --account-url)")
    base = f"{info.blob_endpoint}/{quote(storage.corpus)}/{quote(EXPORT_PREFIX.format(name=name), safe='/')}"
    return [f"{base}{quote(s['name'])}?{sas}" for s in shards]


def _read_shard(runner: _Runner, storage: Storage, blob: str, entry: dict[str, Any]) -> Iterator[tuple[bytes, Record]]:
    """One shard's samples, its chunks passed from the loop through a small queue (4 chunks of ~4 MiB)."""
    queue: asyncio.Queue[bytes | None] | None = None
    digest = hashlib.sha256()

    async def start() -> asyncio.Task[BlobInfo]:
        nonlocal queue
        queue = asyncio.Queue(maxsize=4)

        async def download() -> BlobInfo:
            assert queue is not None
            try:
                info = await storage.download_to(blob, queue.put)
            except asyncio.CancelledError:
                raise  # the reader stopped: nobody waits for the end mark (and the queue may be full)
            except BaseException:
                await queue.put(None)  # the end mark; the reader then awaits this task and gets the error
                raise
            await queue.put(None)
            return info

        return asyncio.ensure_future(download())

    task = runner.run(start)

    async def next_chunk() -> bytes | None:
        assert queue is not None
        chunk = await queue.get()
        if chunk is None:
            await task  # the download's own error, if it failed
        return chunk

    def chunks() -> Iterator[bytes]:
        while (chunk := runner.run(next_chunk)) is not None:
            digest.update(chunk)
            yield chunk

    source = chunks()
    try:
        for data, record in sample_of(read_tar(source)):
            check_image(record, data, None)
            runner.check()
            yield data, record
        for _ in source:  # the bytes after the end-of-archive blocks count in the SHA-256 too
            pass
    finally:

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

        runner.cleanup(stop)
    if digest.hexdigest() != entry["sha256"]:
        raise StorageError(f"{blob}: SHA-256 {digest.hexdigest()} is not the index's {entry['sha256']}")


__all__ = ["TrainingRelease", "iter_release", "iter_shards", "open_release", "part_of", "shard_urls"]
