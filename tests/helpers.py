"""Test helpers that read what a run stored, straight from Azurite through the library's Storage."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import subprocess
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from corpus_manager import Corpus
from corpus_manager.config import parse_connection_string
from corpus_manager.storage import Storage

T = TypeVar("T")


def run(conn: str, corpus: str, fn: Callable[[Corpus], Awaitable[T]]) -> T:
    """``fn(corpus)`` inside ``async with Corpus(...)``, from synchronous test code."""

    async def go() -> T:
        async with Corpus(corpus, connection_string=conn) as c:
            return await fn(c)

    return asyncio.run(go())


def with_storage(conn: str, corpus: str, fn: Callable[[Storage], Awaitable[T]]) -> T:
    async def run() -> T:
        async with Storage(parse_connection_string(conn), corpus) as storage:
            return await fn(storage)

    return asyncio.run(run())


def upload_ok(conn: str, corpus: str, root: Path, version: str = "v1") -> Any:
    """Upload ``root`` as ``version`` through the library; the test's setup, so it must succeed."""
    report = run(conn, corpus, lambda c: c.upload(str(root), version))
    assert report.ok, report.failures
    return report


def wait_for(
    condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None, timeout: float = 120.0
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (and ``proc``'s stderr if it exited first).
    The bound is generous for a loaded machine, never a speed claim; an exception means "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if condition():
                return
        except Exception:
            pass  # not there yet (e.g. the container is being created)
        time.sleep(0.05)
    exited = proc is not None and proc.poll() is not None
    err = proc.communicate(timeout=30)[1] if proc is not None and exited else ""
    code = f" (exit {proc.returncode})" if proc is not None and exited else ""
    raise AssertionError(f"{what} never happened within {timeout:g} s{code}: {(err or '')[-2000:]}")


def blobs(conn: str, corpus: str) -> dict[str, dict[str, Any]]:
    """Every blob: name -> {size, md5, content_type}."""

    async def fn(storage: Storage) -> dict[str, dict[str, Any]]:
        out = {}
        async for b in storage.container.list_blobs():
            md5 = b.content_settings.content_md5
            out[b.name] = {
                "size": b.size,
                "md5": bytes(md5).hex() if md5 else None,
                "content_type": b.content_settings.content_type,
            }
        return out

    return with_storage(conn, corpus, fn)


def rows(conn: str, corpus: str, table: str = "sets") -> list[dict[str, Any]]:
    async def fn(storage: Storage) -> list[dict[str, Any]]:
        return [dict(e) async for e in storage.query(getattr(storage, table))]

    return with_storage(conn, corpus, fn)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def container_exists(conn: str, corpus: str) -> bool:
    async def fn(storage: Storage) -> bool:
        return bool(await storage.container.exists())

    return with_storage(conn, corpus, fn)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height: a few KB that decode to width*height pixels."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    body = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000))
    body += compressor.compress(row * (height % 1000)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
