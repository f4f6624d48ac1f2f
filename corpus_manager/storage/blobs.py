"""Blobs: put (one Put Blob, or blocks for a big file), get, download, list, delete.

Writes are thin requests on the shared session (``http.send``) unless the fast path is off; so are reads
(Get Blob, List Blobs: ``reads``) whenever a read SAS can be had. Deletes, and reads without such a SAS, go
through the blob SDK, imported on first use only: a no-op rerun never pays for it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import ResourceNotFoundError

from .. import storage as tuning
from ..errors import StorageError
from ..throttle import ByteBudget
from .errors import http_error
from .listing import BlobInfo
from .reads import Reads


def _info(name: str, props: Any) -> BlobInfo:
    """A BlobInfo from the SDK's blob properties."""
    settings = props.content_settings
    md5 = settings.content_md5 if settings else None
    return BlobInfo(name, props.size, bytes(md5).hex() if md5 else None, settings.content_type if settings else None)


class Blobs(Reads):
    """The blob operations of Storage."""

    async def list_prefix(self, prefix: str) -> dict[str, BlobInfo]:
        """The blobs directly under a prefix (delimiter '/'), so nested sets never mix; size and Content-MD5
        as the listing says. Thin (``reads``: pages of LIST_PAGE, parsed with expat) or through the SDK."""
        from_sdk = await self._read_sas() is None
        self.stats.blob_lists += 1
        if not from_sdk:
            return {b.name: b for b in await self._thin_list(prefix, f"listing {prefix}")}
        from azure.storage.blob import BlobProperties  # loaded already: self.container imports the blob SDK

        out: dict[str, BlobInfo] = {}
        with self.translate(f"listing {prefix}"):
            async for item in self.container.walk_blobs(name_starts_with=prefix, delimiter="/"):
                if not isinstance(item, BlobProperties):
                    continue  # a nested prefix (another set), not a blob
                out[item.name] = _info(item.name, item)
        return out

    async def list_flat(self, prefix: str) -> AsyncIterator[list[BlobInfo]]:
        """Every blob whose name starts with ``prefix``, nested or not (no delimiter), a page at a time
        (up to LIST_PAGE, in name order). One listing of a whole prefix family (``original/``) costs the
        service far less than one delimiter listing per set in it (bench/README.md, "Releases")."""
        self.stats.blob_lists += 1
        if await self._read_sas() is not None:
            async for listed in self._thin_pages(prefix, f"listing {prefix}", delimiter=False):
                yield listed
            return
        page: list[BlobInfo] = []
        items = self.container.list_blobs(name_starts_with=prefix)
        while True:
            with self.translate(f"listing {prefix}"):  # not around the yield: only the SDK's failures
                item = await anext(items, None)
            if item is None:
                break
            page.append(_info(item.name, item))
            if len(page) >= tuning.LIST_PAGE:
                yield page
                page = []
        if page:
            yield page

    async def put_blob(
        self, name: str, data: bytes, *, content_type: str, md5: bytes, metadata: Mapping[str, str] | None = None
    ) -> None:
        """Store ``data`` as block blob ``name`` with its Content-Type and Content-MD5 (which the service
        checks against the bytes it received: a mismatch is an error, never a stored blob).

        One Put Blob request on the shared session, not ``ContainerClient.upload_blob``: that builds a
        BlobClient and its pipeline for every call and runs ~10 policies per request, ~1.5-2 ms of CPU
        per small blob against ~0.5 ms for this (bench/README.md). Authorised by a container SAS minted
        once per run from the account key, or the connection string's own SAS; retried like the SDK's
        LinearRetry. With --account-url (a bearer token from azure-identity), or the fast path off, it
        goes through the SDK.
        """
        self.stats.blob_puts += 1
        if self._container_ready is None or not self._container_ready.done():
            await self.ensure_container()
        what = f"upload of {name}"
        if not self.fast_path:
            from azure.storage.blob import ContentSettings

            with self.translate(what):
                await self.container.upload_blob(
                    name,
                    data,
                    overwrite=True,
                    metadata=dict(metadata) if metadata else None,
                    content_settings=ContentSettings(content_type=content_type, content_md5=bytearray(md5)),
                )
            return
        headers = {
            "x-ms-blob-type": "BlockBlob",
            "x-ms-version": tuning.API_VERSION,
            "x-ms-blob-content-type": content_type,
            "Content-MD5": base64.b64encode(md5).decode(),
        }
        for key, value in (metadata or {}).items():
            headers[f"x-ms-meta-{key}"] = value
        status, code = await self._blob_request(
            "PUT", f"{self._blob_base}{quote(name, safe='/')}", what, headers=headers, data=data
        )
        if status >= 300:
            raise http_error(what, status, code)

    async def put_blocks(
        self,
        name: str,
        path: str,
        *,
        size: int,
        block_size: int,
        content_type: str,
        md5: bytes,
        block_md5s: Sequence[bytes],
        token: str,
        budget: ByteBudget | None = None,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Store the first ``size`` bytes of the file at ``path`` as block blob ``name``, without ever
        holding the file: one Put Block per ``block_size`` piece, each read from disk when its turn comes
        (at most BLOCKS_IN_FLIGHT pieces of this file in memory, and within ``budget`` for the whole run),
        then one Put Block List that sets the blob's Content-Type and the whole file's Content-MD5.

        Each block carries its Content-MD5 from the hashing pass (``block_md5s``), which the service
        checks against the bytes it got: a file changed since it was hashed fails here, before the commit,
        so a stored blob's Content-MD5 is always that of its bytes. Every request is retried like
        put_blob's; a retried block is sent again under the same ID. Nothing under ``name`` changes
        before the commit; ``before_commit`` runs just before it (the caller's last chance to refuse).

        Block IDs (``block_id``) are ``token`` (the run's) and the block's index: the same length for
        every block of every run (the service requires one length per blob), the same when a block is
        retried, and a run never commits a block another run staged under the same name.
        """
        count = len(block_md5s)
        if count != max(1, -(-size // block_size)):
            raise ValueError(f"{count} block MD5s for {size} bytes in blocks of {block_size}")
        if self._container_ready is None or not self._container_ready.done():
            await self.ensure_container()
        ids = [block_id(token, i) for i in range(count)]
        what = f"upload of {name}"
        pending = iter(range(count))

        async def worker() -> None:
            for i in pending:  # shared by the workers: each block is taken by exactly one of them
                length = min(block_size, size - i * block_size)
                async with contextlib.AsyncExitStack() as stack:
                    if budget is not None:
                        await stack.enter_async_context(budget.hold(length))
                    data = await asyncio.to_thread(read_range, path, i * block_size, length)
                    if len(data) != length:
                        raise StorageError(
                            f"{what}: the file is shorter than when it was hashed "
                            f"({i * block_size + len(data)} of {size} bytes); not stored"
                        )
                    await self._put_block(name, ids[i], data, block_md5s[i], f"{what} (block {i + 1} of {count})")

        workers = [asyncio.create_task(worker()) for _ in range(min(tuning.BLOCKS_IN_FLIGHT, count))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:  # one failed (or this was cancelled): stop the others, wait for them
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if before_commit is not None:
            await before_commit()
        self.stats.block_lists += 1
        if not self.fast_path:
            from azure.storage.blob import BlobBlock, ContentSettings

            with self.translate(what):  # the SDK encodes the IDs in base64 itself
                await self.container.get_blob_client(name).commit_block_list(
                    [BlobBlock(block_id=i) for i in ids],
                    content_settings=ContentSettings(content_type=content_type, content_md5=bytearray(md5)),
                )
            return
        body = (
            '<?xml version="1.0" encoding="utf-8"?><BlockList>'
            + "".join(f"<Latest>{_b64(i)}</Latest>" for i in ids)
            + "</BlockList>"
        ).encode()
        headers = {
            "x-ms-version": tuning.API_VERSION,
            "x-ms-blob-content-type": content_type,
            # Put Block List stores this as the blob's Content-MD5 as is (no check: the blocks were checked)
            "x-ms-blob-content-md5": base64.b64encode(md5).decode(),
            "Content-Type": "application/xml",
        }
        status, code = await self._blob_request(
            "PUT", f"{self._blob_base}{quote(name, safe='/')}", what, query="comp=blocklist", headers=headers, data=body
        )
        if status >= 300:
            raise http_error(what, status, code)

    async def _put_block(self, name: str, bid: str, data: bytes, md5: bytes, what: str) -> None:
        self.stats.block_puts += 1
        if not self.fast_path:
            with self.translate(what):
                # validate_content: the SDK sends the block's Content-MD5 (computed again) for the same check
                await self.container.get_blob_client(name).stage_block(bid, data, validate_content=True)
            return
        headers = {"x-ms-version": tuning.API_VERSION, "Content-MD5": base64.b64encode(md5).decode()}
        status, code = await self._blob_request(
            "PUT",
            f"{self._blob_base}{quote(name, safe='/')}",
            what,
            query=f"comp=block&blockid={quote(_b64(bid), safe='')}",
            headers=headers,
            data=data,
        )
        if status >= 300:
            raise http_error(what, status, code)

    async def get_blob(self, name: str) -> tuple[bytes, BlobInfo]:
        """The whole blob in memory, and its properties (its Content-MD5 as stored)."""
        self.stats.blob_gets += 1
        if await self._read_sas() is not None:
            body = bytearray()
            a = await self._thin_get(
                f"{self._blob_base}{quote(name, safe='/')}", f"download of {name}", "", body.extend
            )
            return bytes(body), BlobInfo(name, a.size, a.md5_hex, a.content_type)
        with self.translate(f"download of {name}"):
            downloader = await self.container.download_blob(name)
            data = await downloader.readall()
            return data, _info(name, downloader.properties)

    async def download_to(self, name: str, write: Callable[[bytes], Awaitable[object]]) -> BlobInfo:
        """Stream a blob into ``write`` (no whole-blob buffer): a body up to DOWNLOAD_WHOLE in one call, a bigger
        one in chunks of at most DOWNLOAD_CHUNK, one at a time; returns its properties. A transfer cut off
        mid-body is resumed where it stopped (``Reads._thin_get``): ``write`` sees every byte once."""
        self.stats.blob_gets += 1
        if await self._read_sas() is not None:
            url = f"{self._blob_base}{quote(name, safe='/')}"
            a = await self._thin_get(url, f"download of {name}", "", write, awaited=True)
            return BlobInfo(name, a.size, a.md5_hex, a.content_type)
        with self.translate(f"download of {name}"):
            downloader = await self.container.download_blob(name)
            async for chunk in downloader.chunks():
                await write(chunk)
            return _info(name, downloader.properties)

    async def delete_blob(self, name: str) -> None:
        with self.translate(f"delete of {name}"), contextlib.suppress(ResourceNotFoundError):
            await self.container.delete_blob(name)

    async def container_public_access(self) -> str | None:
        with self.translate(f"container {self.corpus}"):
            props = await self.container.get_container_properties()
            return props.public_access


def block_id(token: str, index: int) -> str:
    """A block's ID before base64: 16 characters of the run's token and the 8-digit index (always 24
    characters, 32 in base64)."""
    return f"{token[:16]:<16}{index:08d}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def read_range(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes of a file from ``offset`` (fewer at its end), in a worker thread. Opened per
    block: no descriptor outlives a cancelled read."""
    with open(path, "rb") as fh:
        return os.pread(fh.fileno(), length, offset)
