"""Blob and Table access: the only module that imports ``azure.*``.

One shared aiohttp session (its pool sized to the run's parallelism) serves one container client
and the three table clients of a corpus for a whole run. Retries are explicit and short (the SDK's
defaults wait 15 s and more between tries), and every retry is counted in ``stats.retries``. Every
``azure.core`` error is translated here into a ``corpus_manager.errors`` exception whose message
holds no secret.

Blob uploads do not go through the SDK: ``put_blob`` is one Put Blob request on the shared session,
authorised by a container SAS minted once per run (see its docstring for why). The blob SDK is
imported only when another blob operation needs it: a no-op rerun never pays for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import aiohttp
from azure.core import MatchConditions
from azure.core.async_paging import AsyncPageIterator
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables import EdmType, EntityProperty, TableEntity, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient
from yarl import URL

from .config import ConnectionInfo, redact
from .errors import (
    AuthenticationFailed,
    ConfigError,
    Conflict,
    CorpusError,
    NotFound,
    StorageError,
    StorageUnavailable,
)
from .throttle import ByteBudget

if TYPE_CHECKING:  # azure.storage.blob costs ~0.15-0.3 s of start-up CPU: imported on first use only
    from azure.storage.blob.aio import BlobServiceClient, ContainerClient

# The SDK logs request URLs and headers at DEBUG; keep them quiet so no signature can leak.
for _name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Short, bounded retries: a blip of a few seconds is survived, a dead endpoint fails a request
# after about RETRY_TOTAL * RETRY_BACKOFF seconds instead of minutes. Every kind of failure (refused or reset
# connection, no answer within READ_TIMEOUT, 408/429/5xx) gets the same RETRY_TOTAL retries; the SDK
# defaults give connection errors only 3 and never retry a table POST (insert, batch) at all.
RETRY_TOTAL = 5
RETRY_BACKOFF = 1.0
CONNECT_TIMEOUT = 5
# No byte of an answer for this long: the request is abandoned and retried (a stalled connection
# is never waited on forever). Read at Storage.open(), so tests can shorten it.
READ_TIMEOUT = 10
# A request that got no answer (a timeout) is retried only while its endpoint (blob or table) has
# answered something, to this run, within the last STALL_LIMIT seconds: one stalled connection is
# retried, an endpoint that went silent fails the run about STALL_LIMIT s after its last answer
# instead of after every request's whole retry budget of timeouts (minutes). Read at each retry.
STALL_LIMIT = 30.0
PROBE_TIMEOUT = 5.0
TAG_BATCH = 100  # entity group transactions: at most 100 rows of one partition
API_VERSION = "2023-11-03"  # the Put Blob the thin path speaks; any version the service knows would do
SAS_LIFETIME = 6 * 3600  # a run's container SAS; minted again when less than SAS_RENEW is left
SAS_RENEW = 3600
# Big files: above BLOCK_THRESHOLD a file goes up as blocks of BLOCK_SIZE (Put Block, then one Put Block
# List), read from disk as each block's turn comes, at most BLOCKS_IN_FLIGHT of them per file; below it,
# as one Put Blob from memory. Read at call time, so tests can lower them.
# 32 MiB, measured (`python -m bench --suite bigfiles`, its threshold probe, 3 runs; bench/README.md,
# "Big files"): on Azurite, 8 files at once, one Put Blob is faster up to 8 MiB (one request instead of
# two; blocks at 0.75-0.91x, medians), the two are even at 16 and 32 MiB (1.07x, 1.01x), and from 64 MiB
# blocks win in every run (1.24-1.32x) at a third of the client CPU (aiohttp sends one big body slower
# than several smaller ones). 32 MiB, the top of the even range: no file that is faster as blocks goes
# as one Put Blob, whose memory (its whole file) is no more than a big file's 4 blocks in flight. Every
# photo stays one request; Azure's own single-request limit (5,000 MiB) is far above.
BLOCK_THRESHOLD = 32 * 1024 * 1024
# 8 MiB blocks: 50,000 blocks (the service's limit per blob) make 390 GiB, and with them the big files
# of the bench go up at 2.6x rclone's rate, so bigger blocks (more memory) were not needed; 4 in flight
# per file keep its upload from waiting on one block's round trip, and hold at most 32 MiB of it.
BLOCK_SIZE = 8 * 1024 * 1024
BLOCKS_IN_FLIGHT = 4
# Downloads: the first request reads at most this much, then chunks of DOWNLOAD_CHUNK, one at a time,
# so a download holds about 12 MiB whatever the blob's size (the SDK's defaults: 32 MiB, then 4 MiB).
DOWNLOAD_FIRST = 8 * 1024 * 1024
DOWNLOAD_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    md5_hex: str | None
    content_type: str | None


@dataclass
class StorageStats:
    """Requests counted by kind; the benchmarks read them, and they make the tests' claims checkable."""

    blob_puts: int = 0
    block_puts: int = 0  # Put Block requests (big files)
    block_lists: int = 0  # Put Block List requests: one per big file stored
    blob_gets: int = 0
    blob_lists: int = 0
    entity_reads: int = 0
    entity_writes: int = 0
    table_queries: int = 0
    retries: int = 0


def _emulator_hint(info: ConnectionInfo) -> str:
    if info.is_local_emulator:
        return "start the local emulator with `make azurite-start` (or `npx azurite --location .azurite`)"
    return "check the account URL, the network and the firewall"


def _is_retriable(status: int) -> bool:
    # the blob SDK's rule (storage policies.is_retry): timeouts, throttling and 5xx but 501/505
    return status in (408, 429) or (status >= 500 and status not in (501, 505))


def _tune_table_retry(client: Any, on_retry: Callable[[], None], retry_allowed: Callable[[Any], bool]) -> None:
    """The tables SDK builds its retry policy itself from the client's retry_* options (it ignores
    ``retry_policy=``), so that instance is adjusted in place, for every pipeline built from it:

    - each retry is counted (its class gains a counting ``increment``);
    - POST, PATCH and MERGE are retried after a connection error or timeout too (azure.core never
      does): ours are inserts (one that had landed comes back as Conflict, which every caller
      handles), upsert batches and merges (idempotent) and conditional updates (one that had landed
      comes back as a 412 Conflict, handled the same way)."""
    for policy in getattr(client, "_policies", ()):
        if isinstance(policy, AsyncRetryPolicy):
            policy._method_whitelist = frozenset(policy._method_whitelist | {"POST", "PATCH", "MERGE"})
            base = type(policy)

            class Counting(base):  # type: ignore[valid-type, misc]  # a base class known only at run time
                def increment(self, settings: Any, response: Any = None, error: Any = None) -> bool:
                    if not retry_allowed(error):
                        return False
                    more = super().increment(settings, response=response, error=error)
                    if more:
                        on_retry()
                    return bool(more)

            policy.__class__ = Counting


def _blob_retry(on_retry: Callable[[], None], retry_allowed: Callable[[Any], bool]) -> Any:
    """The blob SDK's LinearRetry (imported here, lazily), counting its retries like the thin PUT does."""
    from azure.storage.blob.aio import LinearRetry

    class CountingLinearRetry(LinearRetry):
        def increment(self, settings: Any, request: Any, response: Any = None, error: Any = None) -> bool:
            if not retry_allowed(error):
                return False
            more = super().increment(settings, request, response=response, error=error)
            if more:
                on_retry()
            return bool(more)

    # annotated as int, used as seconds (it adds and multiplies them): 1 s apart, +-0.5 s jitter
    return CountingLinearRetry(
        backoff=int(RETRY_BACKOFF),
        random_jitter_range=cast(int, 0.5),
        retry_total=RETRY_TOTAL,
        retry_connect=RETRY_TOTAL,
        retry_read=RETRY_TOTAL,
        retry_status=RETRY_TOTAL,
    )


class Storage:
    """Access to one corpus: a container and its ImageSets, ImageTransforms and TagIndex tables."""

    def __init__(self, info: ConnectionInfo, corpus: str, *, pool_size: int = 64) -> None:
        self.info = info
        self.corpus = corpus
        self._pool_size = _check_pool_size(pool_size)
        self.stats = StorageStats()
        self.down: str | None = None  # why storage counts as down for the rest of this run, once it does
        self._probing = False  # ensure() is checking that storage answers at all
        self._probe_endpoint = info.blob_endpoint  # the endpoint ensure() is waiting on, for its message
        # when each endpoint (by origin) last sent this run any byte of an answer: see STALL_LIMIT
        self._answered: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[Any] = []  # sessions and clients replaced by a pool resize, closed at close()
        self._credential: Any = None
        self._blob_credential: Any = None
        self._table_credential: Any = None
        self._common: dict[str, Any] = {}
        self._blob_service: BlobServiceClient | None = None
        self._container: ContainerClient | None = None
        self._container_ready: asyncio.Future[None] | None = None  # done once the container surely exists
        self._blob_base = f"{info.blob_endpoint}/{quote(corpus)}/"
        self._sas: str | None = None  # never printed: it only ever goes into a request URL
        self._sas_expiry = 0.0
        self._put_timeout: aiohttp.ClientTimeout | None = None
        self._table_service: TableServiceClient | None = None
        self.sets: TableClient
        self.transforms: TableClient
        self.tags: TableClient

    # ----- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _transport(self) -> AioHttpTransport:
        # The timeouts must be the transport's: given a transport, the clients ignore their own
        # connection_timeout/read_timeout options and the transport's default is 300 s.
        assert self._session is not None, "Storage.open() first"
        return AioHttpTransport(
            session=self._session, session_owner=False, connection_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT
        )

    @property
    def pool_size(self) -> int:
        """Connections the shared session may hold open at once (plus a few for table requests)."""
        return self._pool_size

    @pool_size.setter
    def pool_size(self, value: int) -> None:
        # A change after open() takes effect for the requests that start after it: the session and its
        # clients are made again with the new pool (aiohttp cannot resize a pool); requests in flight
        # finish on the old ones, which close() closes.
        value = _check_pool_size(value)
        if value == self._pool_size:
            return
        self._pool_size = value
        if self._session is not None:
            self._retired += [self._blob_service, self._table_service, self._session]
            self._connect()

    def _count_retry(self) -> None:
        self.stats.retries += 1

    def _retry_allowed(self, error: Any, endpoint: str) -> bool:
        if error is None:
            return True
        # During the reachability check a refused connection is final: nothing listens there (the
        # usual cause: the emulator is not started), so the user hears it at once, not after 7 s.
        if self._probing and _refused(error):
            return False
        if self.down is not None:
            return False  # another request already found storage gone: this run is ending
        return not (_timed_out(error) and self._silent_for(endpoint) >= STALL_LIMIT)

    def _silent_for(self, endpoint: str) -> float:
        """Seconds since ``endpoint`` last sent any byte of an answer (or since open())."""
        return time.monotonic() - self._answered.get(_origin(endpoint), 0.0)

    def _heard(self, url: URL) -> None:
        self._answered[str(url.origin())] = time.monotonic()

    def _trace(self) -> aiohttp.TraceConfig:
        """Every answer's headers and body chunks, on every client sharing the session, are progress."""
        trace = aiohttp.TraceConfig()

        async def heard(session: Any, context: Any, params: Any) -> None:
            url = getattr(params, "url", None) or getattr(getattr(params, "response", None), "url", None)
            if url is not None:
                self._heard(url)

        trace.on_request_end.append(heard)
        trace.on_response_chunk_received.append(heard)
        return trace

    async def open(self) -> None:
        self.down = None
        now = time.monotonic()
        self._answered = {_origin(self.info.blob_endpoint): now, _origin(self.info.table_endpoint): now}
        self._put_timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        self._common = {"logging_enable": False, "connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}
        info = self.info
        if info.use_identity:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._blob_credential = self._credential
            table_cred: Any = self._credential
        elif info.account_key:
            from azure.core.credentials import AzureNamedKeyCredential

            self._blob_credential = {"account_name": info.account_name, "account_key": info.account_key}
            table_cred = AzureNamedKeyCredential(info.account_name, info.account_key)
        else:
            from azure.core.credentials import AzureSasCredential

            self._blob_credential = info.sas_token
            table_cred = AzureSasCredential(info.sas_token or "")
        self._table_credential = table_cred
        try:
            self._connect()
        except StorageUnavailable:
            await self.close()
            raise

    def _connect(self) -> None:
        """The shared session, sized to the pool, and the table clients on it (the blob client is made
        on first use). Called by open(), and again when the pool is resized."""
        info = self.info
        connector = aiohttp.TCPConnector(
            limit=self._pool_size + 8, limit_per_host=self._pool_size + 8, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(connector=connector, trace_configs=[self._trace()])
        # aiohttp silently re-sends an idempotent request once when a reused connection drops; every
        # retry goes through the retry policies instead, so each one is counted and the tries bounded.
        self._session._retry_connection = False
        self._blob_service, self._container = None, None
        try:
            self._table_service = TableServiceClient(
                info.table_endpoint,
                credential=self._table_credential,
                transport=self._transport(),
                # backoff 0, 1, 2, 2, 2 s
                retry_total=RETRY_TOTAL,
                retry_connect=RETRY_TOTAL,
                retry_read=RETRY_TOTAL,
                retry_status=RETRY_TOTAL,
                retry_backoff_factor=0.5,
                retry_backoff_max=2.0,
                **self._common,
            )
            _tune_table_retry(
                self._table_service, self._count_retry, lambda error: self._retry_allowed(error, info.table_endpoint)
            )
        except (ValueError, AzureError) as exc:
            raise StorageUnavailable(f"cannot use the storage settings: {redact(str(exc))}") from None
        self.sets = self._table_service.get_table_client(f"{self.corpus}ImageSets")
        self.transforms = self._table_service.get_table_client(f"{self.corpus}ImageTransforms")
        self.tags = self._table_service.get_table_client(f"{self.corpus}TagIndex")

    @property
    def container(self) -> ContainerClient:
        """The SDK's ContainerClient, made (and the blob SDK imported) on first use."""
        if self._container is None:
            from azure.storage.blob.aio import BlobServiceClient

            assert self._session is not None, "Storage.open() first"
            try:
                self._blob_service = BlobServiceClient(
                    self.info.blob_endpoint,
                    credential=self._blob_credential,
                    transport=self._transport(),
                    retry_policy=_blob_retry(
                        self._count_retry, lambda error: self._retry_allowed(error, self.info.blob_endpoint)
                    ),
                    max_single_get_size=DOWNLOAD_FIRST,
                    max_chunk_get_size=DOWNLOAD_CHUNK,
                    **self._common,
                )
            except (ValueError, AzureError) as exc:
                raise StorageUnavailable(f"cannot use the storage settings: {redact(str(exc))}") from None
            self._container = self._blob_service.get_container_client(self.corpus)
        return self._container

    async def close(self) -> None:
        retired, self._retired = self._retired, []
        for client in (self._blob_service, self._table_service, self._credential, *retired):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ensure(self, create: bool = True, *, container: bool = True) -> None:
        """Reach the account and create the container and tables, within PROBE_TIMEOUT * 2 seconds.

        The requests retry like any other (a blip at start-up is survived), but the whole check gives
        up after 10 s: unreachable storage is one line naming the endpoint that did not answer (blob
        or table) and exit 2, not a run that fails item by item. ``create=False`` checks both
        endpoints too: the container exists and the table service answers.

        ``container=False`` leaves the container to ``ensure_container`` (upload creates it before its
        first blob), so a run that writes no blob never imports the blob SDK.
        """
        self._probing = True
        try:
            await asyncio.wait_for(self._ensure(create, container), timeout=PROBE_TIMEOUT * 2)
        except TimeoutError:
            raise StorageUnavailable(
                f"cannot reach storage at {self._probe_endpoint} (no answer within "
                f"{PROBE_TIMEOUT * 2:.0f} s); {_emulator_hint(self.info)}"
            ) from None
        finally:
            self._probing = False

    async def _ensure(self, create: bool, container: bool) -> None:
        if container or not create:
            self._probe_endpoint = self.info.blob_endpoint
            with self.translate(f"container {self.corpus}", endpoint=self.info.blob_endpoint):
                if create:
                    # no public_access argument: the container is private, always
                    with contextlib.suppress(ResourceExistsError):
                        await self.container.create_container(timeout=int(PROBE_TIMEOUT))
                    self._container_ready = asyncio.get_running_loop().create_future()
                    self._container_ready.set_result(None)
                else:
                    await self.container.get_container_properties(timeout=int(PROBE_TIMEOUT))
        assert self._table_service is not None
        self._probe_endpoint = self.info.table_endpoint
        if not create:
            # reading never creates: one row of the sets table at most (not counted in stats: a probe)
            with self.translate(f"table {self.sets.table_name}", endpoint=self.info.table_endpoint):
                async for _ in self.sets.list_entities(results_per_page=1, select=["PartitionKey"]).by_page():
                    break
            return
        for table in (self.sets, self.transforms, self.tags):
            with (
                self.translate(f"table {table.table_name}", endpoint=self.info.table_endpoint),
                contextlib.suppress(ResourceExistsError),
            ):
                await self._table_service.create_table(table.table_name)

    async def ensure_container(self) -> None:
        """Create the container once per run (concurrent callers wait for the one request)."""
        if self._container_ready is None:
            ready = self._container_ready = asyncio.get_running_loop().create_future()
            try:
                what = f"container {self.corpus}"
                # no public_access header or argument: the container is private, always
                if self.info.use_identity:
                    with (
                        self.translate(what, endpoint=self.info.blob_endpoint),
                        contextlib.suppress(ResourceExistsError),
                    ):
                        await self.container.create_container(timeout=int(PROBE_TIMEOUT))
                else:
                    status, code = await self._thin_request(
                        "PUT", self._blob_base.rstrip("/"), what, query="restype=container", keyed=True
                    )
                    if status >= 300 and status != 409:  # 409 ContainerAlreadyExists: what we want
                        raise _http_error(what, status, code)
                ready.set_result(None)
            except BaseException as exc:
                self._container_ready = None  # the next caller tries again
                ready.set_exception(exc)
                ready.exception()  # retrieved: each waiter re-raises it
                raise
        elif not self._container_ready.done():
            await asyncio.shield(self._container_ready)

    # ----- error translation -----------------------------------------------------------------
    @contextlib.contextmanager
    def translate(self, what: str, endpoint: str | None = None) -> Iterator[None]:
        """Map azure.core errors to ours, naming the thing and never echoing a secret.

        Once a request has failed to reach storage through all its retries, the storage counts as
        down for the rest of the run: later requests fail at once with that reason instead of each
        spending its own retry window, so a run against a dead endpoint ends within about one
        request's retries (every item still named) and a rerun finishes the work."""
        if self.down is not None:
            raise StorageUnavailable(
                f"{what}: not tried, storage stopped answering earlier in this run ({self.down}); rerun to finish"
            )
        try:
            yield
        except AuthenticationFailed:
            raise
        except StorageUnavailable as exc:
            self._went_down(str(exc))
            raise
        except CorpusError:
            raise
        except ClientAuthenticationError as exc:
            raise AuthenticationFailed(
                f"storage refused the credentials for {what} ({_code(exc)}): check the account key, "
                "SAS token or identity"
            ) from None
        except ResourceNotFoundError as exc:
            raise NotFound(f"{what}: not found ({_code(exc)})") from None
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise Conflict(f"{what}: changed by someone else or already exists ({_code(exc)})") from None
        except (ServiceRequestError, ServiceResponseError, aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            where = endpoint or self.info.blob_endpoint
            message = f"cannot reach storage at {where} for {what} ({_why(exc)}); {_emulator_hint(self.info)}"
            self._went_down(message)
            raise StorageUnavailable(message) from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise AuthenticationFailed(
                    f"storage refused the credentials for {what} (403 {_code(exc)}): check the account key, "
                    "SAS token or identity"
                ) from None
            raise StorageError(f"{what}: storage error {exc.status_code} {_code(exc)}") from None
        except AzureError as exc:
            raise StorageError(f"{what}: {redact(_short(exc))}") from None

    def _table_op(self, what: str) -> contextlib.AbstractContextManager[None]:
        """translate() for a table request: a failure to reach storage names the table endpoint."""
        return self.translate(what, endpoint=self.info.table_endpoint)

    def _went_down(self, message: str) -> None:
        if self.down is None:
            self.down = message

    # ----- blobs -----------------------------------------------------------------------------
    async def list_prefix(self, prefix: str) -> dict[str, BlobInfo]:
        """The blobs directly under a prefix (delimiter '/'), so nested sets never mix."""
        from azure.storage.blob import BlobProperties  # loaded already: self.container imports the blob SDK

        out: dict[str, BlobInfo] = {}
        with self.translate(f"listing {prefix}"):
            self.stats.blob_lists += 1
            async for item in self.container.walk_blobs(name_starts_with=prefix, delimiter="/"):
                if not isinstance(item, BlobProperties):
                    continue  # a nested prefix (another set), not a blob
                md5 = item.content_settings.content_md5 if item.content_settings else None
                out[item.name] = BlobInfo(
                    item.name,
                    item.size,
                    md5.hex() if md5 else None,
                    item.content_settings.content_type if item.content_settings else None,
                )
        return out

    async def put_blob(
        self, name: str, data: bytes, *, content_type: str, md5: bytes, metadata: Mapping[str, str] | None = None
    ) -> None:
        """Store ``data`` as block blob ``name`` with its Content-Type and Content-MD5 (which the service
        checks against the bytes it received: a mismatch is an error, never a stored blob).

        One Put Blob request on the shared session, not ``ContainerClient.upload_blob``: that builds a
        BlobClient and its pipeline for every call and runs ~10 policies per request, ~1.5-2 ms of CPU
        per small blob against ~0.5 ms for this (bench/README.md). Authorised by a container SAS minted
        once per run from the account key, or the connection string's own SAS; retried like the SDK's
        LinearRetry. With --account-url (a bearer token from azure-identity) it stays on the SDK: that
        path cannot be tested against Azurite here.
        """
        self.stats.blob_puts += 1
        if self._container_ready is None or not self._container_ready.done():
            await self.ensure_container()
        what = f"upload of {name}"
        if self.info.use_identity:
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
            "x-ms-version": API_VERSION,
            "x-ms-blob-content-type": content_type,
            "Content-MD5": base64.b64encode(md5).decode(),
        }
        for key, value in (metadata or {}).items():
            headers[f"x-ms-meta-{key}"] = value
        status, code = await self._thin_request(
            "PUT", f"{self._blob_base}{quote(name, safe='/')}", what, headers=headers, data=data
        )
        if status >= 300:
            raise _http_error(what, status, code)

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

        workers = [asyncio.create_task(worker()) for _ in range(min(BLOCKS_IN_FLIGHT, count))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:  # one failed (or this was cancelled): stop the others, wait for them
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if before_commit is not None:
            await before_commit()
        self.stats.block_lists += 1
        if self.info.use_identity:
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
            "x-ms-version": API_VERSION,
            "x-ms-blob-content-type": content_type,
            # Put Block List stores this as the blob's Content-MD5 as is (no check: the blocks were checked)
            "x-ms-blob-content-md5": base64.b64encode(md5).decode(),
            "Content-Type": "application/xml",
        }
        status, code = await self._thin_request(
            "PUT", f"{self._blob_base}{quote(name, safe='/')}", what, query="comp=blocklist", headers=headers, data=body
        )
        if status >= 300:
            raise _http_error(what, status, code)

    async def _put_block(self, name: str, bid: str, data: bytes, md5: bytes, what: str) -> None:
        self.stats.block_puts += 1
        if self.info.use_identity:
            with self.translate(what):
                # validate_content: the SDK sends the block's Content-MD5 (computed again) for the same check
                await self.container.get_blob_client(name).stage_block(bid, data, validate_content=True)
            return
        headers = {"x-ms-version": API_VERSION, "Content-MD5": base64.b64encode(md5).decode()}
        status, code = await self._thin_request(
            "PUT",
            f"{self._blob_base}{quote(name, safe='/')}",
            what,
            query=f"comp=block&blockid={quote(_b64(bid), safe='')}",
            headers=headers,
            data=data,
        )
        if status >= 300:
            raise _http_error(what, status, code)

    async def _thin_request(
        self,
        method: str,
        path_url: str,
        what: str,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        data: bytes = b"",
        keyed: bool = False,
    ) -> tuple[int, str]:
        """One blob-service request on the shared session, retried like the SDK's LinearRetry; returns
        (status, x-ms-error-code). Authorised by the run's container SAS, except a container-level
        request (``keyed``) with an account key, which is signed with the key (a container SAS cannot
        create one)."""
        assert self._session is not None and self._put_timeout is not None, "Storage.open() first"
        # explicit, so a Shared Key signature covers it: aiohttp sends it on a body-less PUT anyway
        headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        with self.translate(what):  # only for its "storage is down" bookkeeping: errors are mapped here
            for attempt in range(RETRY_TOTAL + 1):
                if keyed and self.info.account_key:
                    url = URL(f"{path_url}?{query}", encoded=True)
                    headers.update(self._shared_key(method, url, headers, len(data)))
                else:
                    url = URL(f"{path_url}?{query + '&' if query else ''}{self._put_sas()}", encoded=True)
                try:
                    async with self._session.request(
                        method, url, data=data, headers=headers, timeout=self._put_timeout
                    ) as resp:
                        status, code = resp.status, resp.headers.get("x-ms-error-code") or ""
                        if status >= 300:
                            await resp.read()  # drain, so the connection goes back to the pool
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    if attempt < RETRY_TOTAL and self._retry_allowed(exc, self.info.blob_endpoint):
                        await self._retry_pause()
                        continue
                    # redacted, and the SAS masked: some aiohttp errors name the URL
                    raise StorageUnavailable(
                        f"cannot reach storage at {self.info.blob_endpoint} for {what} "
                        f"({redact(_why(exc), (self._sas or '',))}); {_emulator_hint(self.info)}"
                    ) from None
                if _is_retriable(status) and attempt < RETRY_TOTAL:
                    await self._retry_pause()
                    continue
                return status, code
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _shared_key(self, method: str, url: URL, headers: dict[str, str], length: int) -> dict[str, str]:
        """x-ms-date, x-ms-version and a Shared Key Authorization for one request (the SDK's signing,
        for the one container-level request the thin path makes)."""
        signed = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": API_VERSION}
        ms = sorted((k.lower(), v) for k, v in {**headers, **signed}.items() if k.lower().startswith("x-ms-"))
        resource = f"/{self.info.account_name}{url.raw_path}" + "".join(
            f"\n{k.lower()}:{v}" for k, v in sorted(url.query.items())
        )
        plain = {k.lower(): v for k, v in headers.items()}
        fields = [
            method,
            plain.get("content-encoding", ""),
            plain.get("content-language", ""),
            str(length) if length else "",
            plain.get("content-md5", ""),
            plain.get("content-type", ""),
            "",
            "",
            "",
            "",
            "",
            "",
        ]  # Date (x-ms-date instead), If-* and Range: unused
        text = "\n".join(fields) + "\n" + "".join(f"{k}:{v}\n" for k, v in ms) + resource
        assert self.info.account_key is not None
        mac = hmac.new(base64.b64decode(self.info.account_key), text.encode(), hashlib.sha256).digest()
        return {**signed, "Authorization": f"SharedKey {self.info.account_name}:{base64.b64encode(mac).decode()}"}

    async def _retry_pause(self) -> None:
        self.stats.retries += 1
        await asyncio.sleep(RETRY_BACKOFF + random.uniform(-0.5, 0.5))  # as LinearRetry(backoff, jitter 0.5)

    def _put_sas(self) -> str:
        """A container SAS for creating and writing blobs: minted from the account key once per run
        (again when less than SAS_RENEW of it is left), or the connection string's own SAS as is."""
        now = time.time()
        if self._sas is None or self._sas_expiry - SAS_RENEW < now:
            if self.info.account_key:
                self._sas_expiry = now + SAS_LIFETIME
                self._sas = container_sas(
                    self.info.account_name, self.info.account_key, self.corpus, "cw", self._sas_expiry
                )
            else:
                self._sas, self._sas_expiry = self.info.sas_token or "", float("inf")
        return self._sas

    async def get_blob(self, name: str) -> tuple[bytes, BlobInfo]:
        with self.translate(f"download of {name}"):
            self.stats.blob_gets += 1
            downloader = await self.container.download_blob(name)
            data = await downloader.readall()
            props = downloader.properties
            md5 = props.content_settings.content_md5 if props.content_settings else None
            return data, BlobInfo(
                name,
                props.size,
                bytes(md5).hex() if md5 else None,
                props.content_settings.content_type if props.content_settings else None,
            )

    async def download_to(self, name: str, write: Callable[[bytes], Awaitable[object]]) -> BlobInfo:
        """Stream a blob chunk by chunk into ``write`` (no whole-blob buffer); returns its properties."""
        with self.translate(f"download of {name}"):
            self.stats.blob_gets += 1
            downloader = await self.container.download_blob(name)
            async for chunk in downloader.chunks():
                await write(chunk)
            props = downloader.properties
            md5 = props.content_settings.content_md5 if props.content_settings else None
            return BlobInfo(
                name,
                props.size,
                bytes(md5).hex() if md5 else None,
                props.content_settings.content_type if props.content_settings else None,
            )

    async def delete_blob(self, name: str) -> None:
        with self.translate(f"delete of {name}"), contextlib.suppress(ResourceNotFoundError):
            await self.container.delete_blob(name)

    async def container_public_access(self) -> str | None:
        with self.translate(f"container {self.corpus}"):
            props = await self.container.get_container_properties()
            return props.public_access

    # ----- tables ----------------------------------------------------------------------------
    # Every entity comes back with its integers as plain ints (an Edm.Int64 property reads back from
    # the SDK as an EntityProperty) and its ``metadata`` (ETag) intact: callers never see an EdmType.
    async def get_entity(self, table: TableClient, pk: str, rk: str) -> dict[str, Any] | None:
        with self._table_op(f"{table.table_name} row ({pk}, {rk})"):
            self.stats.entity_reads += 1
            try:
                return plain_entity(await table.get_entity(pk, rk))
            except ResourceNotFoundError:
                return None

    async def query(
        self,
        table: TableClient,
        query_filter: str | None = None,
        parameters: dict[str, Any] | None = None,
        select: list[str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream the rows matching a filter (1,000 per page)."""
        with self._table_op(f"query of {table.table_name}"):
            self.stats.table_queries += 1
            if query_filter:
                pages = table.query_entities(query_filter, parameters=parameters, results_per_page=1000, select=select)
            else:
                pages = table.list_entities(results_per_page=1000, select=select)
            async for entity in pages:
                self.stats.entity_reads += 1
                yield plain_entity(entity)

    async def query_pages(
        self,
        table: TableClient,
        query_filter: str,
        parameters: dict[str, Any] | None = None,
        select: list[str] | None = None,
        page_size: int = 1000,
    ) -> AsyncGenerator[tuple[list[dict[str, Any]], bool]]:
        """The rows matching a filter, one server page at a time, each with whether more follow, so a
        caller can stop between pages (the tag query reads partitions in lockstep, stopping at the smallest)."""
        with self._table_op(f"query of {table.table_name}"):
            self.stats.table_queries += 1
            pager = cast(
                AsyncPageIterator[TableEntity],
                table.query_entities(
                    query_filter, parameters=parameters, results_per_page=page_size, select=select
                ).by_page(),
            )
            async for page in pager:
                rows = [plain_entity(entity) async for entity in page]
                self.stats.entity_reads += len(rows)
                yield rows, pager.continuation_token is not None

    # Writes: every int is stored as Edm.Int64 (the SDK would store it as Edm.Int32 and refuse one of
    # 2**31 or more: a set of 2 GiB). With an account key or a SAS they are thin requests on the shared
    # session (``_table_request``), not the SDK's: its entity group transaction builds and parses
    # multipart MIME with the stdlib ``email`` package, ~5 ms of CPU a transaction plus ~0.6 ms a row,
    # and a single write runs its ~10-policy pipeline, ~1.5 ms; the thin path costs a fraction of that
    # (bench/README.md, "Many small sets"). With --account-url (a bearer token) they stay on the SDK.
    @property
    def _thin_tables(self) -> bool:
        return not self.info.use_identity

    async def create_entity(self, table: TableClient, entity: Mapping[str, Any]) -> str | None:
        """Insert; Conflict if the row exists. Returns the new ETag."""
        what = f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"
        with self._table_op(what):
            self.stats.entity_writes += 1
            if self._thin_tables:
                return await self._entity_write("POST", table.table_name, what, entity)
            meta = await table.create_entity(sdk_entity(entity))
            return meta.get("etag")

    async def upsert_entity(self, table: TableClient, entity: Mapping[str, Any], *, merge: bool = True) -> str | None:
        what = f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"
        with self._table_op(what):
            self.stats.entity_writes += 1
            if self._thin_tables:  # MERGE or PUT without If-Match: insert-or-merge, insert-or-replace
                return await self._entity_write("MERGE" if merge else "PUT", _entity_path(table, entity), what, entity)
            meta = await table.upsert_entity(sdk_entity(entity), mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE)
            return meta.get("etag")

    async def update_entity(
        self, table: TableClient, entity: Mapping[str, Any], *, etag: str | None, merge: bool = True
    ) -> str | None:
        """Conditional update: Conflict when the row changed since ``etag`` was read."""
        what = f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"
        with self._table_op(what):
            self.stats.entity_writes += 1
            if self._thin_tables:  # If-Match "*": the row must exist, whatever its ETag
                return await self._entity_write(
                    "MERGE" if merge else "PUT", _entity_path(table, entity), what, entity, if_match=etag or "*"
                )
            kwargs: dict[str, Any] = {}
            if etag:
                kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
            meta = await table.update_entity(
                sdk_entity(entity), mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE, **kwargs
            )
            return meta.get("etag")

    async def delete_entity(self, table: TableClient, pk: str, rk: str) -> None:
        with self._table_op(f"{table.table_name} row ({pk}, {rk})"):
            self.stats.entity_writes += 1
            await table.delete_entity(pk, rk)

    async def write_rows(
        self, table: TableClient, writes: Sequence[tuple[str, Mapping[str, Any], str | None]]
    ) -> list[str | None]:
        """One entity group transaction of ("create" | "update" | "upsert", row, etag) writes to rows of one
        partition (at most TAG_BATCH, each row once); returns each row's new ETag. An update merges,
        conditional on its ETag when given (else on the row existing); an upsert inserts or replaces.
        When any write is refused the transaction writes nothing and raises what that write alone would
        have (Conflict for an existing row or a changed ETag, NotFound, StorageError)."""
        what = f"{table.table_name} batch in partition {writes[0][1]['PartitionKey']}"
        with self._table_op(what):
            self.stats.entity_writes += len(writes)
            if self._thin_tables:
                return await self._batch_write(
                    table,
                    what,
                    [
                        ("POST", table.table_name, entity, None)
                        if kind == "create"
                        else ("PUT", _entity_path(table, entity), entity, None)
                        if kind == "upsert"
                        else ("MERGE", _entity_path(table, entity), entity, etag or "*")
                        for kind, entity, etag in writes
                    ],
                )
            ops: list[Any] = []
            for kind, entity, etag in writes:
                if kind == "create":
                    ops.append(("create", sdk_entity(entity)))
                elif kind == "upsert":
                    ops.append(("upsert", sdk_entity(entity), {"mode": UpdateMode.REPLACE}))
                elif etag:
                    ops.append(
                        (
                            "update",
                            sdk_entity(entity),
                            {"mode": UpdateMode.MERGE, "etag": etag, "match_condition": MatchConditions.IfNotModified},
                        )
                    )
                else:
                    ops.append(("update", sdk_entity(entity), {"mode": UpdateMode.MERGE}))
            try:
                metas = await table.submit_transaction(ops)
            except TableTransactionError as exc:
                raise Conflict(f"{what}: {_code(exc)}") from None
            return [meta.get("etag") for meta in metas]

    async def upsert_batch(self, table: TableClient, entities: Sequence[Mapping[str, Any]]) -> None:
        """Upsert (insert-or-merge) rows of one partition, 100 per entity group transaction."""
        for start in range(0, len(entities), TAG_BATCH):
            chunk = entities[start : start + TAG_BATCH]
            what = f"{table.table_name} batch in partition {chunk[0]['PartitionKey']}"
            with self._table_op(what):
                self.stats.entity_writes += len(chunk)
                if self._thin_tables:
                    try:
                        await self._batch_write(
                            table, what, [("MERGE", _entity_path(table, e), e, None) for e in chunk]
                        )
                    except (Conflict, NotFound) as exc:  # what an upsert batch has always raised
                        raise StorageError(str(exc)) from None
                    continue
                try:
                    await table.submit_transaction([("upsert", sdk_entity(e)) for e in chunk])
                except TableTransactionError as exc:
                    raise StorageError(f"{what}: {_code(exc)}") from None

    async def _entity_write(
        self, method: str, path: str, what: str, entity: Mapping[str, Any], *, if_match: str | None = None
    ) -> str | None:
        """One thin single-entity write; its new ETag, or the error its status means."""
        headers = {"Prefer": "return-no-content"}
        if if_match:
            headers["If-Match"] = if_match
        status, code, etag, _ = await self._table_request(
            method, path, what, _entity_body(entity, what), "application/json", headers
        )
        if status >= 300:
            raise _http_error(what, status, code)
        return etag

    async def _batch_write(
        self, table: TableClient, what: str, ops: list[tuple[str, str, Mapping[str, Any], str | None]]
    ) -> list[str | None]:
        """One thin entity group transaction of (method, path, entity, If-Match) operations; each one's
        new ETag, or the error of the operation that made the service refuse them all."""
        base = self.info.table_endpoint.rstrip("/")
        boundary, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
        parts = [f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
        for i, (method, path, entity, if_match) in enumerate(ops):
            body = _entity_body(entity, what)
            parts.append(
                f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                f"Content-ID: {i}\r\n\r\n{method} {base}/{path} HTTP/1.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nAccept: application/json;odata=nometadata\r\n"
                "Prefer: return-no-content\r\nDataServiceVersion: 3.0\r\n"
                + (f"If-Match: {if_match}\r\n" if if_match else "")
                + "\r\n"
            )
            parts.append(body.decode() + "\r\n")
        parts.append(f"--{changeset}--\r\n\r\n--{boundary}--\r\n")
        status, code, _, data = await self._table_request(
            "POST", "$batch", what, "".join(parts).encode(), f"multipart/mixed; boundary={boundary}", {}
        )
        if status >= 300:
            raise _http_error(what, status, code or _json_code(data))
        results = _batch_results(data)
        refused = [r for r in results if r[0] >= 300]
        if refused or len(results) != len(ops):
            status, _, part_code, index = refused[0] if refused else (500, None, "", None)
            row = ops[index][2] if index is not None and index < len(ops) else None
            which = f"{what}: write {index} (row {row['RowKey']})" if row is not None else what
            if status in (409, 412):
                raise Conflict(f"{which}: changed by someone else or already exists ({part_code or status})")
            if status == 404:
                raise NotFound(f"{which}: not found ({part_code or status})")
            raise StorageError(
                f"{which}: storage error {status} {part_code}".rstrip()
                if refused
                else f"{what}: {len(results)} answers for {len(ops)} writes"
            )
        return [etag for _, etag, _, _ in results]

    async def _table_request(
        self, method: str, path: str, what: str, body: bytes, content_type: str, headers: dict[str, str]
    ) -> tuple[int, str, str | None, bytes]:
        """One table-service request on the shared session, retried like the SDK's table retries (every
        retry counted); returns (status, error code, ETag, body). Signed with the account key (the
        service's Shared Key scheme for tables) or authorised by the connection string's SAS."""
        assert self._session is not None and self._put_timeout is not None, "Storage.open() first"
        base = self.info.table_endpoint.rstrip("/")
        sas = self.info.sas_token or ""
        headers = {
            **headers,
            "Content-Type": content_type,
            "Accept": "application/json;odata=nometadata",
            "x-ms-version": TABLE_API_VERSION,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
        }
        for attempt in range(RETRY_TOTAL + 1):
            if self.info.account_key:
                url = URL(f"{base}/{path}", encoded=True)
                headers.update(
                    _table_shared_key(self.info.account_name, self.info.account_key, method, url, content_type)
                )
            else:
                url = URL(f"{base}/{path}?{sas}", encoded=True)
            try:
                async with self._session.request(
                    method, url, data=body, headers=headers, timeout=self._put_timeout
                ) as resp:
                    status, code = resp.status, resp.headers.get("x-ms-error-code") or ""
                    etag = resp.headers.get("ETag")
                    data = await resp.read()  # read whole: the connection goes back to the pool
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt < RETRY_TOTAL and self._retry_allowed(exc, self.info.table_endpoint):
                    await self._retry_pause()
                    continue
                # redacted, and the SAS masked: some aiohttp errors name the URL
                raise StorageUnavailable(
                    f"cannot reach storage at {self.info.table_endpoint} for {what} "
                    f"({redact(_why(exc), (sas,))}); {_emulator_hint(self.info)}"
                ) from None
            if _is_retriable(status) and attempt < RETRY_TOTAL:
                await self._retry_pause()
                continue
            return status, code or (_json_code(data) if status >= 300 else ""), etag, data
        raise AssertionError("unreachable")  # the loop always returns or raises


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


def etag_of(entity: Any) -> str | None:
    meta = getattr(entity, "metadata", None)
    return meta.get("etag") if isinstance(meta, Mapping) else None


# ----- table entities: our rows <-> the service's types --------------------------------------
TABLE_API_VERSION = "2019-02-02"  # the table API version the SDK speaks; the thin writes speak it too
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_PART_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3})", re.M)
_PART_ETAG = re.compile(rb"^ETag: *([^\r\n]+)", re.M | re.I)
_JSON_CODE = re.compile(rb'"code" *: *"([^"]+)"')
_JSON_INDEX = re.compile(rb'"value" *: *"(\d+):')


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sdk_entity(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The entity for an SDK write: every int (not bool) as Edm.Int64, never the SDK's Edm.Int32."""
    return {
        k: EntityProperty(v, EdmType.INT64) if _is_int(v) and k not in ("PartitionKey", "RowKey") else v
        for k, v in entity.items()
    }


def plain_entity(entity: Any) -> Any:
    """An entity as read, with its Edm.Int64 properties as plain ints (in place: the SDK's TableEntity
    keeps its ``metadata``, the ETag). Rows written before Int64 (Edm.Int32) read as ints already."""
    for key, value in entity.items():
        if isinstance(value, EntityProperty) and value.edm_type == EdmType.INT64:
            entity[key] = value.value
    return entity


def _entity_body(entity: Mapping[str, Any], what: str) -> bytes:
    """The JSON of an entity for a thin write: ints as Edm.Int64 (odata strings), as the SDK writes an
    EntityProperty(value, EdmType.INT64); None skipped, as the SDK does."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        if value is None:
            continue
        if isinstance(value, EntityProperty):
            value, edm = value.value, EdmType(value.edm_type)
            if edm not in (EdmType.INT64, EdmType.INT32, EdmType.STRING, EdmType.BOOLEAN, EdmType.DOUBLE):
                raise StorageError(f"{what}: property {name} of type {edm.value} is not supported")
        if isinstance(value, (str, bool)):
            out[name] = value
        elif _is_int(value):
            if not INT64_MIN <= value <= INT64_MAX:
                raise StorageError(f"{what}: property {name} = {value} does not fit in a 64-bit integer")
            out[name + "@odata.type"] = "Edm.Int64"
            out[name] = str(value)
        elif isinstance(value, float):
            out[name + "@odata.type"] = "Edm.Double"
            out[name] = (
                value
                if math.isfinite(value)
                else ("NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity")
            )
        elif isinstance(value, datetime.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(datetime.UTC).replace(tzinfo=None)
            out[name + "@odata.type"] = "Edm.DateTime"
            out[name] = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        else:
            raise StorageError(f"{what}: property {name} is a {type(value).__name__}, which a table cannot store")
    return json.dumps(out).encode()  # ASCII (\u escapes), as the SDK sends it


def _entity_path(table: TableClient, entity: Mapping[str, Any]) -> str:
    """``Table(PartitionKey='..',RowKey='..')``, each key with its quotes doubled, then percent-encoded."""
    pk = quote(str(entity["PartitionKey"]).replace("'", "''"), safe="")
    rk = quote(str(entity["RowKey"]).replace("'", "''"), safe="")
    return f"{table.table_name}(PartitionKey='{pk}',RowKey='{rk}')"


def _table_shared_key(account: str, key: str, method: str, url: URL, content_type: str) -> dict[str, str]:
    """x-ms-date and the Shared Key Authorization of one table request: the table service signs the
    verb, Content-MD5 (none), Content-Type, the date and the resource, no other header (the SDK's
    SharedKeyCredentialPolicy for tables does the same)."""
    date = email.utils.formatdate(usegmt=True)
    text = f"{method}\n\n{content_type}\n{date}\n/{account}{url.raw_path}"
    mac = hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()
    return {"x-ms-date": date, "Authorization": f"SharedKey {account}:{base64.b64encode(mac).decode()}"}


def _batch_results(data: bytes) -> list[tuple[int, str | None, str, int | None]]:
    """The answers in an entity group transaction's response, in order: (status, ETag, error code, index
    of the refused write). A refused transaction has one answer: the write that failed, whose message
    starts with its index ("1:The specified entity already exists...")."""
    found = list(_PART_STATUS.finditer(data))
    out: list[tuple[int, str | None, str, int | None]] = []
    for i, m in enumerate(found):
        part = data[m.end() : found[i + 1].start() if i + 1 < len(found) else len(data)]
        etag, code, index = _PART_ETAG.search(part), _JSON_CODE.search(part), _JSON_INDEX.search(part)
        out.append(
            (
                int(m.group(1)),
                etag.group(1).decode().strip() if etag else None,
                code.group(1).decode() if code else "",
                int(index.group(1)) if index else None,
            )
        )
    return out


def _json_code(data: bytes) -> str:
    """The error code in a table error's JSON body (odata.error.code), if any."""
    found = _JSON_CODE.search(data)
    return found.group(1).decode(errors="replace") if found else ""


def container_sas(
    account: str, key: str, container: str, permission: str, expiry: float, version: str = API_VERSION
) -> str:
    """A service SAS for one container, signed with the account key as the blob SDK's
    generate_container_sas does (minted here so an upload never imports the blob SDK)."""
    se = datetime.datetime.fromtimestamp(int(expiry), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # sp, st, se, resource, si, sip, spr, sv, sr, snapshot time, ses, rscc, rscd, rsce, rscl, rsct
    text = "\n".join(
        [permission, "", se, f"/blob/{account}/{container}", "", "", "", version, "c", "", "", "", "", "", "", ""]
    )
    sig = base64.b64encode(hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()).decode()
    return f"se={quote(se, safe='')}&sp={permission}&sv={version}&sr=c&sig={quote(sig, safe='')}"


def _http_error(what: str, status: int, code: str) -> CorpusError:
    """The error a failed blob request maps to: the same types and words as Storage.translate()."""
    if status in (401, 403):
        return AuthenticationFailed(
            f"storage refused the credentials for {what} ({status} {code or 'HTTP'}): "
            "check the account key, SAS token or identity"
        )
    if status == 404:
        return NotFound(f"{what}: not found ({code or f'HTTP {status}'})")
    if status in (409, 412):
        return Conflict(f"{what}: changed by someone else or already exists ({code or f'HTTP {status}'})")
    return StorageError(f"{what}: storage error {status} {code}".rstrip())


def _refused(exc: BaseException) -> bool:
    """A connection refused (nothing listens at the endpoint), anywhere in the exception's chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return True
        if isinstance(cur, aiohttp.ClientConnectorError) and isinstance(cur.os_error, ConnectionRefusedError):
            return True
        cur = getattr(cur, "inner_exception", None) or cur.__cause__ or cur.__context__
    return False


def _timed_out(exc: BaseException) -> bool:
    """No connection or no answer within its timeout, anywhere in the exception's chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TimeoutError | ServiceRequestTimeoutError | ServiceResponseTimeoutError):
            return True
        cur = getattr(cur, "inner_exception", None) or cur.__cause__ or cur.__context__
    return False


def _why(exc: BaseException) -> str:
    """Why a request could not reach storage, in a few words (a timeout says how long it waited)."""
    if _timed_out(exc):
        if isinstance(exc, ServiceRequestTimeoutError | aiohttp.ConnectionTimeoutError):
            return f"no connection within {CONNECT_TIMEOUT:g} s"
        return f"no answer within {READ_TIMEOUT:g} s"
    return _short(exc)


def _origin(endpoint: str) -> str:
    return str(URL(endpoint).origin())


def _check_pool_size(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"pool_size must be a whole number of at least 1, got {value!r}")
    return value


def _code(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    if code:
        return str(code)
    status = getattr(exc, "status_code", None)
    return f"HTTP {status}" if status else exc.__class__.__name__


def _short(exc: BaseException) -> str:
    # The first line only, redacted: SDK messages embed request URLs (with SAS signatures) and headers.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    if inner is not None and ("Cannot connect" in str(inner) or "refused" in str(inner).lower()):
        return "connection refused"
    if "Connection refused" in text or "Cannot connect" in text:
        return "connection refused"
    return redact(text)[:200]
