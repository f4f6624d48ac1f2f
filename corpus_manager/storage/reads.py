"""Thin reads: Get Blob and List Blobs as hand-built requests on the shared session, beside the thin Put Blob.

Why: the blob SDK builds a BlobClient and a pipeline of ~10 policies for every ``download_blob`` and parses
each listing into a tree and a model object per blob; a download of 2,000 photos spent most of its client
CPU there (bench/README.md, "Download"). Here a GET is one request with the run's read SAS, its body handed
on as it arrives, and a listing page (LIST_PAGE entries) is parsed by ``listing.parse_listing`` (expat, no
DTD, no entities). The same error mapping (``http_error``, ``translate``) and the same retry loop
(``http.retrying``) as every other request.

The read SAS (``_read_sas``) is minted once per run: a service SAS ("rl") from the account key, the
connection string's own SAS as is, or, with ``--account-url``, a user delegation SAS when the identity may
get a user delegation key. Without any (the identity may not; or ``fast_path`` is off) reads go through
the SDK, as before.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from azure.core.exceptions import AzureError
from yarl import URL

from .. import storage as tuning
from ..errors import Conflict, StorageError
from .clients import Connection
from .errors import http_error
from .http import container_sas, retrying
from .listing import BlobInfo, ListingError, md5_hex, parse_listing


@dataclass(frozen=True)
class Answer:
    """What the first answer of a thin GET says about the blob: its size, Content-MD5, type and ETag."""

    size: int
    md5_hex: str | None
    content_type: str | None
    etag: str

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Answer:
        total = headers.get("Content-Range", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else int(headers.get("Content-Length") or 0)
        # on a ranged answer Content-MD5 would be the range's; x-ms-blob-content-md5 is always the blob's
        md5 = headers.get("x-ms-blob-content-md5") or headers.get("Content-MD5") or ""
        return cls(size, md5_hex(md5), headers.get("Content-Type"), headers.get("ETag", ""))


class Reads(Connection):
    """The thin read requests of Storage (``Blobs`` decides when to use them)."""

    _rsas: str | None = None  # the read/list SAS; "" once known that none can be had
    _rsas_expiry = 0.0

    async def _probe_container(self, probe: int) -> None:
        """The container exists: one List Blobs of at most one entry (404 ContainerNotFound if not), so
        reading (download, query) never imports the blob SDK (~0.2 s of start-up CPU)."""
        if await self._read_sas() is None:
            return await super()._probe_container(probe)
        query = "restype=container&comp=list&maxresults=1"
        await self._thin_get(self._blob_base.rstrip("/"), f"container {self.corpus}", query, lambda _: None, whole=True)

    async def _thin_list(self, prefix: str, what: str) -> list[BlobInfo]:
        """Every blob directly under ``prefix`` (delimiter '/'), page after page of LIST_PAGE."""
        out: list[BlobInfo] = []
        async for page in self._thin_pages(prefix, what, delimiter=True):
            out += page
        return out

    async def _thin_pages(self, prefix: str, what: str, *, delimiter: bool) -> AsyncIterator[list[BlobInfo]]:
        """The blobs under ``prefix``, one page (up to LIST_PAGE) at a time: with ``delimiter`` only those
        directly under it, without it every blob whose name starts with it (a flat listing)."""
        marker = ""
        while True:
            query = f"restype=container&comp=list&prefix={quote(prefix, safe='')}"
            query += f"{'&delimiter=%2F' if delimiter else ''}&maxresults={tuning.LIST_PAGE}"
            if marker:
                query += f"&marker={quote(marker, safe='')}"
            body = bytearray()
            await self._thin_get(self._blob_base.rstrip("/"), what, query, body.extend, whole=True)
            try:
                page = parse_listing(bytes(body))
            except ListingError as exc:
                raise StorageError(f"{what}: {exc}") from None
            yield page.blobs
            if not page.next_marker:
                return
            marker = page.next_marker

    async def _thin_get(
        self,
        path_url: str,
        what: str,
        query: str,
        sink: Callable[[bytes], Any],
        *,
        whole: bool = False,
        awaited: bool = False,
    ) -> Answer:
        """One GET (Get Blob or a List Blobs page) with the run's read SAS, its body handed to ``sink``
        (awaited when ``awaited``): a body up to DOWNLOAD_WHOLE (or ``whole``) in one call, a bigger one in
        chunks of at most STREAM_CHUNK (and DOWNLOAD_CHUNK). Retried like every request (``http.retrying``).

        A body cut off part-way (a reset, a timeout, fewer bytes than Content-Length: the blob SDK does not
        retry a ServiceRequestError raised mid-body) is tried again from the first byte not yet handed on,
        with ``Range`` and ``If-Match`` on the first answer's ETag: the bytes put together are all of one
        version of the blob, and a blob replaced in between is a Conflict, never a mix. Until a byte is
        handed on, a try starts afresh (``whole``: always)."""
        got = 0
        first: Answer | None = None

        async def once() -> tuple[int, str]:
            nonlocal got, first
            if not got:
                first = None  # nothing handed on yet: start afresh (the blob may have been replaced)
            sas = await self._read_sas() or ""
            url = URL(f"{path_url}?{query + '&' if query else ''}{sas}", encoded=True)
            headers = {"x-ms-version": tuning.API_VERSION}
            if first is not None:
                headers["Range"] = f"bytes={got}-"
                headers["If-Match"] = first.etag
            self.stats.thin_requests += 1
            async with self.session.get(url, headers=headers, timeout=self.request_timeout) as resp:
                if resp.status >= 300:
                    await resp.read()  # drained: the connection goes back to the pool
                    return resp.status, resp.headers.get("x-ms-error-code") or ""
                if first is None:
                    first = Answer.of(resp.headers)
                expected = resp.content_length if whole else first.size - got
                if whole or (expected is not None and expected <= tuning.DOWNLOAD_WHOLE):
                    data = await resp.read()  # one read, one call: a photo costs the sink once
                    if expected is not None and len(data) != expected:
                        raise aiohttp.ClientPayloadError(f"{len(data)} of {expected} bytes arrived")
                    if whole:
                        sink(data)
                        return resp.status, ""
                    if data:
                        got += len(data)
                        await sink(data) if awaited else sink(data)
                else:
                    # whole chunks of STREAM_CHUNK (the last one shorter), not each socket read: a 1 GiB
                    # blob is ~4,000 hand-offs to the sink (a thread), not ~16,000
                    step = min(tuning.DOWNLOAD_CHUNK, tuning.STREAM_CHUNK)
                    while got < first.size:
                        try:
                            chunk = await resp.content.readexactly(min(step, first.size - got))
                        except asyncio.IncompleteReadError as exc:
                            raise aiohttp.ClientPayloadError(f"the body ended after {got} bytes") from exc
                        got += len(chunk)
                        await sink(chunk) if awaited else sink(chunk)
                if got != first.size:
                    raise aiohttp.ClientPayloadError(f"{got} of {first.size} bytes arrived")
                return resp.status, ""

        with self.translate(what):  # for its "storage is down" bookkeeping: errors are mapped here
            status, code = await retrying(
                self, self.info.blob_endpoint, what, once, status=lambda a: a[0], secrets=(self._rsas or "",)
            )
        if status == 412:
            raise Conflict(f"{what}: the blob changed during the download; not written")
        if status == 416 and first is not None and got == first.size:
            return first  # everything had arrived (the rest asked for was empty)
        if status >= 300:
            raise http_error(what, status, code)
        if first is None:  # a listing: nothing about a blob to return
            return Answer(0, None, None, "")
        return first

    async def _read_sas(self) -> str | None:
        """The run's SAS to read and list with (see the module docstring), or None: use the SDK."""
        now = time.time()
        if not self.fast_path and not self.info.use_identity:
            return None  # the SDK for every request (CORPUS_STORAGE_SDK=1, or fast_path=False)
        if self._rsas is not None and self._rsas_expiry - tuning.SAS_RENEW >= now:
            return self._rsas or None
        self._rsas_expiry = now + tuning.SAS_LIFETIME
        if self.info.account_key:
            key = self.info.account_key
            self._rsas = container_sas(self.info.account_name, key, self.corpus, "rl", self._rsas_expiry)
        elif not self.info.use_identity:
            self._rsas, self._rsas_expiry = self.info.sas_token or "", float("inf")
        else:
            self._rsas = await self._delegation_sas(self._rsas_expiry)
        return self._rsas or None

    async def _delegation_sas(self, expiry: float) -> str:
        """A user delegation SAS to read and list the container, or "" when the identity may not get a user
        delegation key (that needs a data-plane role such as Storage Blob Data Reader): the SDK then serves
        the reads. Not testable against Azurite, which has no Azure AD."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)  # clock skew
        end = datetime.datetime.fromtimestamp(int(expiry), datetime.UTC)
        try:
            _ = self.container  # the blob service client, made on first use
            assert self._blob_service is not None
            key = await self._blob_service.get_user_delegation_key(start, end)
            return generate_container_sas(
                self.info.account_name,
                self.corpus,
                user_delegation_key=key,
                permission=ContainerSasPermissions(read=True, list=True),
                expiry=end,
                start=start,
            )
        except (AzureError, ValueError):
            return ""
