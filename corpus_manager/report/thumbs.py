"""Thumbnails of the report, cached in the container under ``thumbs/{recipe digest}/``.

A thumbnail is keyed by its source blob's MD5 and the recipe (``transforms.thumbnail``), so the same
image in two sets, or in a later report written to another folder, is made once. The cache's blob name
also carries the thumbnail's and the source's sizes, ``{md5}_{w}x{h}_{sw}x{sh}.jpg``: one listing of the
prefix tells which thumbnails exist and the sizes the charts need, with no request per image. An image
that cannot be decoded leaves ``{md5}.err`` holding the reason, so a later report shows the same
placeholder without decoding it again. Local files are named by the MD5 alone, never by user text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from transforms.errors import ImageError
from transforms.thumbnail import RECIPE_DIGEST, Thumbnail, make_thumbnail

from ..errors import CorpusError
from ..storage import BlobInfo, Storage

THUMBS_ROOT = "thumbs/"
PARALLEL = 16  # images read, thumbnailed or fetched at once (each held in memory meanwhile)
_CACHED = re.compile(r"([0-9a-f]{32})_(\d+)x(\d+)_(\d+)x(\d+)\.jpg")
_FAILED = re.compile(r"([0-9a-f]{32})\.err")


@dataclass(frozen=True)
class ThumbOutcome:
    thumb: str | None  # the local file, relative to the report folder; None: a placeholder
    width: int = 0
    height: int = 0
    source_size: tuple[int, int] | None = None
    reason: str | None = None  # why there is no thumbnail
    failed: bool = False  # the image could not be read at all (a storage error), not merely undecodable


def cache_prefix() -> str:
    return f"{THUMBS_ROOT}{RECIPE_DIGEST}/"


class ThumbCache:
    """Makes each thumbnail once (per MD5 and recipe) and writes it under ``out/thumbs/``."""

    def __init__(self, storage: Storage, out: str, pool: Executor, parallel: int = PARALLEL) -> None:
        self.storage, self.out, self.pool = storage, out, pool
        self.prefix = cache_prefix()
        self.cached_sizes: dict[str, tuple[int, int, int, int]] = {}  # md5 -> thumb w, h, source w, h
        self.cached_errors: set[str] = set()
        self.made = 0
        self.cached = 0
        self.unsaved: list[str] = []  # thumbnails shown but not stored in the cache, with the reason
        self._gate = asyncio.Semaphore(parallel)
        self._tasks: dict[str, asyncio.Task[ThumbOutcome]] = {}
        os.makedirs(os.path.join(out, "thumbs"), exist_ok=True)

    async def load(self) -> None:
        """What the cache holds: one listing of its prefix."""
        for name in await self.storage.list_prefix(self.prefix):
            base = name[len(self.prefix) :]
            if m := _CACHED.fullmatch(base):
                w, h, sw, sh = (int(g) for g in m.groups()[1:])
                self.cached_sizes[m.group(1)] = (w, h, sw, sh)
            elif m := _FAILED.fullmatch(base):
                self.cached_errors.add(m.group(1))

    def thumbnail(self, blob: BlobInfo) -> asyncio.Task[ThumbOutcome]:
        """The outcome for ``blob``, started now; the same content asked twice is one task."""
        key = blob.md5_hex or f"name:{blob.name}"
        if key not in self._tasks:
            self._tasks[key] = asyncio.ensure_future(self._one(blob))
        return self._tasks[key]

    async def _one(self, blob: BlobInfo) -> ThumbOutcome:
        async with self._gate:
            md5 = blob.md5_hex
            if md5 is not None and (hit := await self._from_cache(md5)) is not None:
                return hit
            try:
                data, _info = await self.storage.get_blob(blob.name)
            except CorpusError as exc:
                return ThumbOutcome(None, reason=f"could not read the image: {exc}", failed=True)
            if md5 is None:  # a blob stored without its Content-MD5: key it by its bytes
                md5 = hashlib.md5(data).hexdigest()
                if (hit := await self._from_cache(md5)) is not None:
                    return hit
            try:
                thumb: Thumbnail = await asyncio.get_running_loop().run_in_executor(self.pool, make_thumbnail, data)
            except ImageError as exc:
                reason = str(exc)
                if "time limit" not in reason:  # a slow moment is not a property of the image: not kept
                    await self._put(f"{self.prefix}{md5}.err", reason.encode(), "text/plain; charset=utf-8")
                return ThumbOutcome(None, reason=reason)
            except BrokenProcessPool as exc:  # the worker died on this image (the pool replaces it)
                return ThumbOutcome(None, reason=f"the thumbnail worker died: {exc}")
            name = f"{self.prefix}{md5}_{thumb.width}x{thumb.height}_{thumb.source_width}x{thumb.source_height}.jpg"
            await self._put(name, thumb.data, "image/jpeg")
            self.made += 1
            return self._write(md5, thumb.data, thumb.width, thumb.height, (thumb.source_width, thumb.source_height))

    async def _from_cache(self, md5: str) -> ThumbOutcome | None:
        if md5 in self.cached_sizes:
            w, h, sw, sh = self.cached_sizes[md5]
            name = f"{self.prefix}{md5}_{w}x{h}_{sw}x{sh}.jpg"
            try:
                data, _info = await self.storage.get_blob(name)
            except CorpusError:
                return None  # gone since the listing: make it again
            self.cached += 1
            return self._write(md5, data, w, h, (sw, sh))
        if md5 in self.cached_errors:
            try:
                data, _info = await self.storage.get_blob(f"{self.prefix}{md5}.err")
            except CorpusError:
                return None
            self.cached += 1
            return ThumbOutcome(None, reason=data.decode("utf-8", "replace"))
        return None

    async def _put(self, name: str, data: bytes, content_type: str) -> None:
        try:
            await self.storage.put_blob(name, data, content_type=content_type, md5=hashlib.md5(data).digest())
        except CorpusError as exc:  # the report still shows it; only a later report will make it again
            self.unsaved.append(f"{name}: {exc}")

    async def close(self) -> None:
        """Cancel what is still running (an interrupted report) and wait for it to stop."""
        pending = [t for t in self._tasks.values() if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _write(self, md5: str, data: bytes, width: int, height: int, source: tuple[int, int]) -> ThumbOutcome:
        rel = f"thumbs/{md5}.jpg"
        path = os.path.join(self.out, rel)
        tmp = f"{path}.{os.getpid()}.part"
        try:
            with open(tmp, "wb") as f:  # small: written in place of a thread hop
                f.write(data)
            os.replace(tmp, path)  # never a half-written thumbnail, even when interrupted
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return ThumbOutcome(rel, width, height, source)
