"""``Corpus``: the library's front door. One Storage (one set of clients) per ``async with``."""

from __future__ import annotations

from typing import Any

from .config import connection_from_settings, corpus_from_settings
from .crawler import Crawler
from .results import ProgressSink
from .storage import Storage
from .upload import UploadReport, upload_tree


class Corpus:
    """A corpus: one container and its three tables.

    >>> async with Corpus("images") as corpus:          # doctest: +SKIP
    ...     report = await corpus.upload("photos/", version="v1")
    """

    def __init__(self, name: str | None = None, *, connection_string: str | None = None,
                 account_url: str | None = None, pool_size: int = 64) -> None:
        self.name = corpus_from_settings(name)
        self.connection = connection_from_settings(connection_string, account_url)
        self.storage = Storage(self.connection, self.name, pool_size=pool_size)

    async def __aenter__(self) -> Corpus:
        await self.storage.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.storage.close()

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, {self.connection!r})"

    async def upload(self, root: str, version: str, *, extensions: Any = None, max_parallel_uploads: int = 20,
                     max_parallel_upserts: int = 5, dry_run: bool = False,
                     progress: ProgressSink | None = None) -> UploadReport:
        """Crawl ``root`` and upload each directory of images as an ImageSet of ``version``."""
        self.storage.pool_size = max(self.storage.pool_size, max_parallel_uploads)
        return await upload_tree(self.storage, root, version, extensions=extensions,
                                 max_parallel_uploads=max_parallel_uploads,
                                 max_parallel_upserts=max_parallel_upserts, dry_run=dry_run, progress=progress)


__all__ = ["Corpus", "Crawler"]
