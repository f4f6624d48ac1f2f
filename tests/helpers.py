"""Test helpers that read what a run stored, straight from Azurite through the library's Storage."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from corpus_manager.config import parse_connection_string
from corpus_manager.storage import Storage

T = TypeVar("T")


def with_storage(conn: str, corpus: str, fn: Callable[[Storage], Awaitable[T]]) -> T:
    async def run() -> T:
        async with Storage(parse_connection_string(conn), corpus) as storage:
            return await fn(storage)

    return asyncio.run(run())


def blobs(conn: str, corpus: str) -> dict[str, dict[str, Any]]:
    """Every blob: name -> {size, md5, content_type}."""

    async def fn(storage: Storage) -> dict[str, dict[str, Any]]:
        out = {}
        async for b in storage.container.list_blobs():
            md5 = b.content_settings.content_md5
            out[b.name] = {"size": b.size, "md5": bytes(md5).hex() if md5 else None,
                           "content_type": b.content_settings.content_type}
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
