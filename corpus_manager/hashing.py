"""Hashing an upload's files: each file's MD5, its blocks' MD5s above the block threshold, and its kind.

Every file of a set is hashed before the set's first blob (the set's claim is its ContentDigest), in
worker threads, with at most one hashing call per core at once, in the order the sets came. Small files
keep their bytes for their Put Blob within a budget for the run; memory stays bounded whatever the
files' sizes.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass
from typing import Any

from . import storage as storage_module
from .crawler import LocalFile
from .imagetypes import HEAD, TAIL, NotAnImage, sniff, sniff_parts


@dataclass
class HashedFile:
    file: LocalFile
    md5_hex: str = ""
    size: int = 0
    state: str = ""  # uploaded | stored | checked | corrupt
    md5: bytes = b""
    kind: str | None = None
    bad: str | None = None  # why it is not an image (corrupt)
    data: bytes | None = None  # its bytes, kept from hashing for its Put Blob (within the run's KEEP_BUDGET)
    kept: int = 0  # bytes of KEEP_BUDGET it holds
    blocks: list[bytes] | None = None  # above the block threshold: each block's MD5, for Put Block
    advanced: bool = False  # counted in the progress


# Every file of a set is hashed before the set's first blob: the set's claim (see lifecycle.SetWriter.claim) is its
# ContentDigest. Files up to KEEP_FILE_MAX keep their bytes for their Put Blob while the run keeps less
# than KEEP_BUDGET so (a set of small images is read once, and sent without another thread hop); any
# other file is read again when its upload comes (from the page cache), within PUT_BUDGET for the run:
# memory stays bounded whatever the files' sizes. (Keeping 2 MB files too cost 56 MB more peak RSS in
# the upload bench's scenario c, for no gain in time.)
KEEP_FILE_MAX = 1024 * 1024
KEEP_BUDGET = 32 * 1024 * 1024
PUT_BUDGET = 256 * 1024 * 1024
# Files up to the block threshold are hashed in worker-thread calls of about this many bytes each (one
# thread hop for a set of photos, several for a big set, so its hashing runs on every core), those
# above KEEP_FILE_MAX in pieces of HASH_CHUNK (never held whole). At most one call per core runs at
# once, taken in the order the sets came: the first set is hashed at full speed and starts uploading
# while the next ones are hashed, instead of every set waiting for all of them.
HASH_CALL_BYTES = 8 * 1024 * 1024
HASH_CHUNK = 1024 * 1024


class KeepBudget:
    """The bytes files keep from hashing to upload, across the run (taken from worker threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


def _read_and_check(path: str) -> tuple[bytes, bytes, str | None, str | None]:
    """Read, hash and sniff one file whole (a file at most the block threshold), in a worker thread."""
    with open(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    try:
        return data, digest, sniff(data), None
    except NotAnImage as exc:
        return data, digest, None, str(exc)


def _fill(fh: Any, view: memoryview) -> int:
    """Read into ``view`` until it is full or the file ends: a block is always a whole block."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _hash_blocks(f: LocalFile, block_size: int, *, blocks: bool = True) -> HashedFile:
    """A file streamed in pieces of ``block_size``: its MD5, each piece's MD5 when ``blocks`` (the MD5s
    of a big file's blocks), the kind from its head and tail. Holds one piece at a time, never the file."""
    block_md5s: list[bytes] = []
    whole: Any = None
    head, tail, size = b"", b"", 0
    buf = bytearray(block_size)
    view = memoryview(buf)
    with open(f.path, "rb", buffering=0) as fh:
        while n := _fill(fh, view):
            chunk = view[:n]
            if not blocks:
                whole = whole or hashlib.md5(usedforsecurity=False)
                whole.update(chunk)
            else:
                part = hashlib.md5(chunk, usedforsecurity=False)
                block_md5s.append(part.digest())
                if whole is None:
                    whole = part.copy()  # after the first block the file's MD5 is the block's: not hashed twice
                else:
                    whole.update(chunk)
            if size < HEAD:
                head += bytes(chunk[: HEAD - size])
            tail = (tail + bytes(chunk[-TAIL:]))[-TAIL:]
            size += n
            if n < block_size:
                break
    md5 = (whole or hashlib.md5(usedforsecurity=False)).digest()
    res = HashedFile(f, md5.hex(), size, md5=md5, blocks=block_md5s or None)
    try:
        res.kind = sniff_parts(head, tail, size)
    except NotAnImage as exc:
        res.bad = str(exc)
    return res


def _hash_files(
    files: list[LocalFile], keep: KeepBudget | None, threshold: int, block_size: int
) -> list[HashedFile | OSError]:
    """Hash files in one worker-thread call. A file up to KEEP_FILE_MAX is read whole (and kept for its
    upload when ``keep`` has room for it); a bigger one is streamed, in blocks above ``threshold``."""
    out: list[HashedFile | OSError] = []
    for f in files:
        try:
            if f.size > threshold:
                res = _hash_blocks(f, block_size)
            elif f.size > KEEP_FILE_MAX:
                res = _hash_blocks(f, HASH_CHUNK, blocks=False)
                if res.size > threshold:  # it grew since the crawl: a big file after all
                    res = _hash_blocks(f, block_size)
            else:
                held = f.size if keep is not None and keep.take(f.size) else 0
                try:
                    data, md5, kind, bad = _read_and_check(f.path)
                except BaseException:
                    if held and keep is not None:
                        keep.give(held)
                    raise
                res = HashedFile(f, md5.hex(), len(data), md5=md5, kind=kind, bad=bad)
                if len(data) > threshold:  # it grew since the crawl: a big file after all
                    if held and keep is not None:
                        keep.give(held)
                    res = _hash_blocks(f, block_size)
                elif held and bad is None:
                    res.data, res.kept = data, held
                elif held and keep is not None:
                    keep.give(held)
            out.append(res)
        except OSError as exc:
            out.append(exc)
    return out


async def hash_set(
    files: list[LocalFile], keep: KeepBudget | None, hashing: asyncio.Semaphore
) -> list[HashedFile | OSError]:
    """Every file of a set hashed and sniffed, in worker threads (at most ``hashing`` calls at once):
    files up to the block threshold in calls of about HASH_CALL_BYTES (kept for their upload when
    ``keep`` has room), each bigger file in a call of its own, so a set's big files are hashed in parallel."""
    threshold, block_size = storage_module.BLOCK_THRESHOLD, storage_module.BLOCK_SIZE
    calls: list[list[LocalFile]] = []
    batch: list[LocalFile] = []
    batch_bytes = 0
    for f in files:
        if f.size > threshold:
            calls.append([f])
            continue
        if batch and batch_bytes + f.size > HASH_CALL_BYTES:
            calls.append(batch)
            batch, batch_bytes = [], 0
        batch.append(f)
        batch_bytes += f.size
    if batch:
        calls.append(batch)

    async def call(group: list[LocalFile]) -> list[HashedFile | OSError]:
        async with hashing:
            return await asyncio.to_thread(_hash_files, group, keep, threshold, block_size)

    done = await asyncio.gather(*(call(c) for c in calls))
    by_file = {id(f): r for c, rs in zip(calls, done, strict=True) for f, r in zip(c, rs, strict=True)}
    return [by_file[id(f)] for f in files]
