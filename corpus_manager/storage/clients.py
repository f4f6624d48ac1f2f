"""The connection to one corpus: credentials, the shared aiohttp session (its pool sized to the run's
parallelism), the SDK clients on it, and the lifecycle (open, close, ensure, a pool resize)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Self, cast
from urllib.parse import quote

import aiohttp
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables.aio import TableClient, TableServiceClient
from yarl import URL

from .. import storage as tuning
from ..config import ConnectionInfo, redact
from ..errors import ConfigError, StorageUnavailable
from .errors import Health, emulator_hint, http_error
from .http import blob_shared_key, container_sas, no_silent_resend, retrying, send

if TYPE_CHECKING:  # azure.storage.blob costs ~0.15-0.3 s of start-up CPU: imported on first use only
    from azure.storage.blob.aio import BlobServiceClient, ContainerClient


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
    thin_requests: int = 0  # tries sent by the thin path (none with fast_path=False)


class Table:
    """A handle on one table of the corpus: its name, for messages and requests. Storage's table methods
    take one; the SDK client behind it (``sdk``) is the package's own business (and tests').

    An ``on_demand`` table is not made by ``Storage.ensure`` but by its first write (``ensure_table``),
    and reads as empty until then: a corpus that never uses it never has it."""

    def __init__(self, name: str, *, on_demand: bool = False) -> None:
        self.table_name = name
        self.on_demand = on_demand
        self.exists = False  # known to exist (made or seen by this run)
        self._sdk: TableClient | None = None

    @property
    def sdk(self) -> TableClient:
        assert self._sdk is not None, "Storage.open() first"
        return self._sdk

    @sdk.setter
    def sdk(self, client: TableClient) -> None:
        self._sdk = client

    def __repr__(self) -> str:
        return f"Table({self.table_name!r})"


def _blob_retry(on_retry: Callable[[], None], retry_allowed: Callable[[Any], bool]) -> Any:
    """The blob SDK's LinearRetry (imported here, lazily), counting its retries like ``http.retrying`` does.

    Public mechanisms only: the blob clients take a ``retry_policy=`` (the tables SDK ignores it, hence
    ``retry_total=0`` and our own loop there), and ``increment`` is the policy's public hook. The blob SDK
    keeps its own retries because a download's later chunks are fetched inside ``chunks()``, where no loop
    of ours could retry one chunk alone."""
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
        backoff=int(tuning.RETRY_BACKOFF),
        random_jitter_range=cast(int, 0.5),
        retry_total=tuning.RETRY_TOTAL,
        retry_connect=tuning.RETRY_TOTAL,
        retry_read=tuning.RETRY_TOTAL,
        retry_status=tuning.RETRY_TOTAL,
    )


def _check_pool_size(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"pool_size must be a whole number of at least 1, got {value!r}")
    return value


def _sdk_switch() -> bool:
    return os.environ.get(tuning.SDK_ENV, "").strip().lower() in ("1", "true", "yes")


class Connection:
    """One corpus's connection: a container and its ImageSets, ImageTransforms, TagIndex and Releases tables.

    ``fast_path`` (default: on, unless CORPUS_STORAGE_SDK=1) sends blob and table writes as thin requests;
    off, every request goes through the SDK. With a bearer token (``--account-url``) it is always off."""

    def __init__(
        self, info: ConnectionInfo, corpus: str, *, pool_size: int = 64, fast_path: bool | None = None
    ) -> None:
        self.info = info
        self.corpus = corpus
        self._pool_size = _check_pool_size(pool_size)
        self.fast_path = (not _sdk_switch() if fast_path is None else fast_path) and not info.use_identity
        self.stats = StorageStats()
        self.health = Health(info)
        self._probe_endpoint = info.blob_endpoint  # the endpoint ensure() is waiting on, for its message
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
        self.request_timeout: aiohttp.ClientTimeout | None = None
        self._table_service: TableServiceClient | None = None
        self.sets = Table(f"{corpus}ImageSets")
        self.transforms = Table(f"{corpus}ImageTransforms")
        self.tags = Table(f"{corpus}TagIndex")
        self.releases = Table(f"{corpus}Releases", on_demand=True)

    @property
    def tables(self) -> tuple[Table, ...]:
        """Every table of the corpus (``ensure`` creates those not ``on_demand``)."""
        return (self.sets, self.transforms, self.tags, self.releases)

    @property
    def down(self) -> str | None:
        """Why storage counts as down for the rest of this run, once it does (see ``Health``)."""
        return self.health.down

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session every request of the run goes on (thin and SDK)."""
        assert self._session is not None, "Storage.open() first"
        return self._session

    # ----- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _transport(self) -> AioHttpTransport:
        # The timeouts must be the transport's: given a transport, the clients ignore their own
        # connection_timeout/read_timeout options and the transport's default is 300 s.
        return AioHttpTransport(
            session=self.session,
            session_owner=False,
            connection_timeout=tuning.CONNECT_TIMEOUT,
            read_timeout=tuning.READ_TIMEOUT,
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

    def _trace(self) -> aiohttp.TraceConfig:
        """Every answer's headers and body chunks, on every client sharing the session, are progress."""
        trace = aiohttp.TraceConfig()

        async def heard(session: Any, context: Any, params: Any) -> None:
            url: URL | None = getattr(params, "url", None) or getattr(getattr(params, "response", None), "url", None)
            if url is not None:
                self.health.heard(url)

        trace.on_request_end.append(heard)
        trace.on_response_chunk_received.append(heard)
        return trace

    async def open(self) -> None:
        self.health.reset()
        self.request_timeout = aiohttp.ClientTimeout(sock_connect=tuning.CONNECT_TIMEOUT, sock_read=tuning.READ_TIMEOUT)
        self._common = {
            "logging_enable": False,
            "connection_timeout": tuning.CONNECT_TIMEOUT,
            "read_timeout": tuning.READ_TIMEOUT,
        }
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
        self._session = aiohttp.ClientSession(
            connector=connector, trace_configs=[self._trace()], middlewares=(no_silent_resend,)
        )
        self._blob_service, self._container = None, None
        try:
            self._table_service = TableServiceClient(
                info.table_endpoint,
                credential=self._table_credential,
                transport=self._transport(),
                # no retries of the SDK's own: each table call goes through http.retrying (Tables._sdk),
                # which retries every method (the SDK never retries a POST after a lost connection)
                # and counts every retry, as for the thin requests
                retry_total=0,
                **self._common,
            )
        except (ValueError, AzureError) as exc:
            raise StorageUnavailable(f"cannot use the storage settings: {redact(str(exc))}") from None
        for table in self.tables:
            table.sdk = self._table_service.get_table_client(table.table_name)

    @property
    def container(self) -> ContainerClient:
        """The SDK's ContainerClient, made (and the blob SDK imported) on first use."""
        if self._container is None:
            from azure.storage.blob.aio import BlobServiceClient

            try:
                self._blob_service = BlobServiceClient(
                    self.info.blob_endpoint,
                    credential=self._blob_credential,
                    transport=self._transport(),
                    retry_policy=_blob_retry(
                        self._count_retry, lambda error: self.health.retry_allowed(error, self.info.blob_endpoint)
                    ),
                    max_single_get_size=tuning.DOWNLOAD_FIRST,
                    max_chunk_get_size=tuning.DOWNLOAD_CHUNK,
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
        self.health.probing = True
        try:
            await asyncio.wait_for(self._ensure(create, container), timeout=tuning.PROBE_TIMEOUT * 2)
        except TimeoutError:
            raise StorageUnavailable(
                f"cannot reach storage at {self._probe_endpoint} (no answer within "
                f"{tuning.PROBE_TIMEOUT * 2:.0f} s); {emulator_hint(self.info)}"
            ) from None
        finally:
            self.health.probing = False

    async def _ensure(self, create: bool, container: bool) -> None:
        probe = int(tuning.PROBE_TIMEOUT)
        if container or not create:
            self._probe_endpoint = self.info.blob_endpoint
            with self.translate(f"container {self.corpus}", endpoint=self.info.blob_endpoint):
                if create:
                    # no public_access argument: the container is private, always
                    with contextlib.suppress(ResourceExistsError):
                        await self.container.create_container(timeout=probe)
                    self._container_ready = asyncio.get_running_loop().create_future()
                    self._container_ready.set_result(None)
                else:
                    await self._probe_container(probe)
        assert self._table_service is not None
        self._probe_endpoint = self.info.table_endpoint
        if not create:
            # reading never creates: one row of the sets table at most (not counted in stats: a probe)
            what = f"table {self.sets.table_name}"
            with self.translate(what, endpoint=self.info.table_endpoint):
                await retrying(self, self.info.table_endpoint, what, self._first_page)
            return
        for table in self.tables:
            if not table.on_demand:
                await self.ensure_table(table)

    async def ensure_table(self, table: Table) -> None:
        """Create ``table`` unless this run knows it exists (concurrent first writers both ask: one 409)."""
        if table.exists:
            return
        assert self._table_service is not None, "Storage.open() first"
        what = f"table {table.table_name}"
        with self.translate(what, endpoint=self.info.table_endpoint), contextlib.suppress(ResourceExistsError):
            make = partial(self._table_service.create_table, table.table_name)
            await retrying(self, self.info.table_endpoint, what, make)
        table.exists = True

    async def _first_page(self) -> object:
        return await anext(self.sets.sdk.list_entities(results_per_page=1, select=["PartitionKey"]).by_page(), None)

    async def _probe_container(self, probe: int) -> None:
        """Does the container exist? (``reads.Reads`` answers with a thin listing, no blob SDK.)"""
        await self.container.get_container_properties(timeout=probe)

    async def ensure_container(self) -> None:
        """Create the container once per run (concurrent callers wait for the one request)."""
        if self._container_ready is None:
            ready = self._container_ready = asyncio.get_running_loop().create_future()
            try:
                what = f"container {self.corpus}"
                # no public_access header or argument: the container is private, always
                with self.translate(what, endpoint=self.info.blob_endpoint):
                    if not self.fast_path:
                        with contextlib.suppress(ResourceExistsError):
                            await self.container.create_container(timeout=int(tuning.PROBE_TIMEOUT))
                    else:
                        status, code = await self._blob_request(
                            "PUT", self._blob_base.rstrip("/"), what, query="restype=container", keyed=True
                        )
                        if status >= 300 and status != 409:  # 409 ContainerAlreadyExists: what we want
                            raise http_error(what, status, code)
                ready.set_result(None)
            except BaseException as exc:
                self._container_ready = None  # the next caller tries again
                ready.set_exception(exc)
                ready.exception()  # retrieved: each waiter re-raises it
                raise
        elif not self._container_ready.done():
            await asyncio.shield(self._container_ready)

    def translate(self, what: str, endpoint: str | None = None) -> contextlib.AbstractContextManager[None]:
        """Map every failure inside to ours (``Health.translate``); a failure to reach storage names
        ``endpoint`` (the blob endpoint by default)."""
        return self.health.translate(what, endpoint)

    def _table_op(self, what: str) -> contextlib.AbstractContextManager[None]:
        """translate() for a table request: a failure to reach storage names the table endpoint."""
        return self.translate(what, endpoint=self.info.table_endpoint)

    # ----- thin blob requests ----------------------------------------------------------------
    async def _blob_request(
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
        """One thin blob-service request, retried; returns (status, x-ms-error-code). Authorised by the run's
        container SAS, except a container-level request (``keyed``) with an account key, which is signed
        with the key (a container SAS cannot create one). Inside ``translate`` for its bookkeeping."""
        # explicit, so a Shared Key signature covers it: aiohttp sends it on a body-less PUT anyway
        headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        key = self.info.account_key

        sas = self._put_sas()

        def url() -> URL:
            if keyed and key:
                signed = URL(f"{path_url}?{query}", encoded=True)
                headers.update(blob_shared_key(self.info.account_name, key, method, signed, headers, len(data)))
                return signed
            return URL(f"{path_url}?{query + '&' if query else ''}{self._put_sas()}", encoded=True)

        with self.translate(what):
            answer = await send(
                self, self.info.blob_endpoint, what, method, url, headers=headers, data=data, secrets=(sas,)
            )
        return answer.status, answer.code

    def _put_sas(self) -> str:
        """A container SAS for creating and writing blobs: minted from the account key once per run
        (again when less than SAS_RENEW of it is left), or the connection string's own SAS as is."""
        now = time.time()
        if self._sas is None or self._sas_expiry - tuning.SAS_RENEW < now:
            if self.info.account_key:
                self._sas_expiry = now + tuning.SAS_LIFETIME
                self._sas = container_sas(
                    self.info.account_name, self.info.account_key, self.corpus, "cw", self._sas_expiry
                )
            else:
                self._sas, self._sas_expiry = self.info.sas_token or "", float("inf")
        return self._sas
