"""Blob and Table access: the only module that imports ``azure.*``.

One shared aiohttp session (its pool sized to the run's parallelism) serves one container client
and the three table clients of a corpus for a whole run. Retries are explicit and short (the SDK's
defaults wait 15 s and more between tries). Every ``azure.core`` error is translated here into a
``corpus_manager.errors`` exception whose message holds no secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, LinearRetry

from .config import ConnectionInfo, redact
from .errors import (
    AuthenticationFailed,
    Conflict,
    CorpusError,
    NotFound,
    StorageError,
    StorageUnavailable,
)

# The SDK logs request URLs and headers at DEBUG; keep them quiet so no signature can leak.
for _name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Short, bounded retries: a blip of a few seconds is survived, a dead endpoint fails a request
# after about RETRY_WINDOW seconds instead of minutes.
RETRY_TOTAL = 5
RETRY_BACKOFF = 1.0
RETRY_WINDOW = RETRY_TOTAL * (RETRY_BACKOFF + 0.5) + 5
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 60
PROBE_TIMEOUT = 5.0
TAG_BATCH = 100  # entity group transactions: at most 100 rows of one partition


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


class Storage:
    """Access to one corpus: a container and its ImageSets, ImageTransforms and TagIndex tables."""

    def __init__(self, info: ConnectionInfo, corpus: str, *, pool_size: int = 64) -> None:
        self.info = info
        self.corpus = corpus
        self.pool_size = pool_size
        self.stats = StorageStats()
        self._session: aiohttp.ClientSession | None = None
        self._credential: Any = None
        self._blob_service: BlobServiceClient | None = None
        self._table_service: TableServiceClient | None = None
        self.container: ContainerClient
        self.sets: TableClient
        self.transforms: TableClient
        self.tags: TableClient

    # ----- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.pool_size + 8, limit_per_host=self.pool_size + 8,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector)
        common: dict[str, Any] = {"logging_enable": False, "connection_timeout": CONNECT_TIMEOUT,
                                  "read_timeout": READ_TIMEOUT}
        info = self.info
        if info.use_identity:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            blob_cred: Any = self._credential
            table_cred: Any = self._credential
        elif info.account_key:
            from azure.core.credentials import AzureNamedKeyCredential

            blob_cred = {"account_name": info.account_name, "account_key": info.account_key}
            table_cred = AzureNamedKeyCredential(info.account_name, info.account_key)
        else:
            from azure.core.credentials import AzureSasCredential

            blob_cred = info.sas_token
            table_cred = AzureSasCredential(info.sas_token or "")
        try:
            self._blob_service = BlobServiceClient(
                info.blob_endpoint, credential=blob_cred,
                transport=AioHttpTransport(session=self._session, session_owner=False),
                retry_policy=LinearRetry(backoff=RETRY_BACKOFF, random_jitter_range=0.5, retry_total=RETRY_TOTAL),
                **common)
            self._table_service = TableServiceClient(
                info.table_endpoint, credential=table_cred,
                transport=AioHttpTransport(session=self._session, session_owner=False),
                retry_policy=AsyncRetryPolicy(retry_total=RETRY_TOTAL, retry_backoff_factor=0.5,
                                              retry_backoff_max=2.0),
                **common)
        except (ValueError, AzureError) as exc:
            await self.close()
            raise StorageUnavailable(f"cannot use the storage settings: {redact(str(exc))}") from None
        self.container = self._blob_service.get_container_client(self.corpus)
        self.sets = self._table_service.get_table_client(f"{self.corpus}ImageSets")
        self.transforms = self._table_service.get_table_client(f"{self.corpus}ImageTransforms")
        self.tags = self._table_service.get_table_client(f"{self.corpus}TagIndex")

    async def close(self) -> None:
        for client in (self._blob_service, self._table_service, self._credential):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ensure(self, create: bool = True) -> None:
        """Reach the account quickly (one try, short timeout) and create the container and tables."""
        try:
            await asyncio.wait_for(self._ensure(create), timeout=PROBE_TIMEOUT * 2)
        except TimeoutError:
            raise StorageUnavailable(
                f"cannot reach storage at {self.info.blob_endpoint} (no answer within "
                f"{PROBE_TIMEOUT * 2:.0f} s); {_emulator_hint(self.info)}") from None

    async def _ensure(self, create: bool) -> None:
        with self.translate(f"container {self.corpus}", endpoint=self.info.blob_endpoint):
            if create:
                # no public_access argument: the container is private, always
                with contextlib.suppress(ResourceExistsError):
                    await self.container.create_container(retry_total=0, timeout=int(PROBE_TIMEOUT))
            else:
                await self.container.get_container_properties(retry_total=0, timeout=int(PROBE_TIMEOUT))
        assert self._table_service is not None
        for table in (self.sets, self.transforms, self.tags):
            with self.translate(f"table {table.table_name}", endpoint=self.info.table_endpoint):
                if create:
                    with contextlib.suppress(ResourceExistsError):
                        await self._table_service.create_table(table.table_name, retry_total=0)

    # ----- error translation -----------------------------------------------------------------
    @contextlib.contextmanager
    def translate(self, what: str, endpoint: str | None = None) -> Iterator[None]:
        """Map azure.core errors to ours, naming the thing and never echoing a secret."""
        try:
            yield
        except CorpusError:
            raise
        except ClientAuthenticationError as exc:
            raise AuthenticationFailed(
                f"storage refused the credentials for {what} ({_code(exc)}): check the account key, "
                "SAS token or identity") from None
        except ResourceNotFoundError as exc:
            raise NotFound(f"{what}: not found ({_code(exc)})") from None
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise Conflict(f"{what}: changed by someone else or already exists ({_code(exc)})") from None
        except (ServiceRequestError, ServiceResponseError, aiohttp.ClientError, ConnectionError) as exc:
            where = endpoint or self.info.blob_endpoint
            raise StorageUnavailable(f"cannot reach storage at {where} for {what} ({_short(exc)}); "
                                     f"{_emulator_hint(self.info)}") from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise AuthenticationFailed(
                    f"storage refused the credentials for {what} (403 {_code(exc)}): check the account key, "
                    "SAS token or identity") from None
            raise StorageError(f"{what}: storage error {exc.status_code} {_code(exc)}") from None
        except AzureError as exc:
            raise StorageError(f"{what}: {redact(_short(exc))}") from None

    # ----- blobs -----------------------------------------------------------------------------
    async def list_prefix(self, prefix: str) -> dict[str, BlobInfo]:
        """The blobs directly under a prefix (delimiter '/'), so nested sets never mix."""
        out: dict[str, BlobInfo] = {}
        with self.translate(f"listing {prefix}"):
            self.stats.blob_lists += 1
            async for item in self.container.walk_blobs(name_starts_with=prefix, delimiter="/"):
                if getattr(item, "prefix", None) is not None and not hasattr(item, "size"):
                    continue  # a nested prefix (another set), not a blob
                md5 = item.content_settings.content_md5 if item.content_settings else None
                out[item.name] = BlobInfo(item.name, item.size, md5.hex() if md5 else None,
                                          item.content_settings.content_type if item.content_settings else None)
        return out

    async def put_blob(self, name: str, data: bytes, *, content_type: str, md5: bytes,
                       metadata: Mapping[str, str] | None = None) -> None:
        with self.translate(f"upload of {name}"):
            self.stats.blob_puts += 1
            await self.container.upload_blob(
                name, data, overwrite=True, metadata=dict(metadata) if metadata else None,
                content_settings=ContentSettings(content_type=content_type, content_md5=bytearray(md5)))

    async def get_blob(self, name: str) -> tuple[bytes, BlobInfo]:
        with self.translate(f"download of {name}"):
            self.stats.blob_gets += 1
            downloader = await self.container.download_blob(name)
            data = await downloader.readall()
            props = downloader.properties
            md5 = props.content_settings.content_md5 if props.content_settings else None
            return data, BlobInfo(name, props.size, bytes(md5).hex() if md5 else None,
                                  props.content_settings.content_type if props.content_settings else None)

    async def download_to(self, name: str, write: Callable[[bytes], Awaitable[object]]) -> BlobInfo:
        """Stream a blob chunk by chunk into ``write`` (no whole-blob buffer); returns its properties."""
        with self.translate(f"download of {name}"):
            self.stats.blob_gets += 1
            downloader = await self.container.download_blob(name)
            async for chunk in downloader.chunks():
                await write(chunk)
            props = downloader.properties
            md5 = props.content_settings.content_md5 if props.content_settings else None
            return BlobInfo(name, props.size, bytes(md5).hex() if md5 else None,
                            props.content_settings.content_type if props.content_settings else None)

    async def delete_blob(self, name: str) -> None:
        with self.translate(f"delete of {name}"), contextlib.suppress(ResourceNotFoundError):
            await self.container.delete_blob(name)

    async def container_public_access(self) -> str | None:
        with self.translate(f"container {self.corpus}"):
            props = await self.container.get_container_properties()
            return props.public_access

    # ----- tables ----------------------------------------------------------------------------
    async def get_entity(self, table: TableClient, pk: str, rk: str) -> dict[str, Any] | None:
        with self.translate(f"{table.table_name} row ({pk}, {rk})"):
            self.stats.entity_reads += 1
            try:
                return await table.get_entity(pk, rk)
            except ResourceNotFoundError:
                return None

    async def query(self, table: TableClient, query_filter: str | None = None,
                    parameters: dict[str, Any] | None = None,
                    select: list[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Stream the rows matching a filter (1,000 per page)."""
        with self.translate(f"query of {table.table_name}"):
            self.stats.table_queries += 1
            if query_filter:
                pages = table.query_entities(query_filter, parameters=parameters, results_per_page=1000,
                                             select=select)
            else:
                pages = table.list_entities(results_per_page=1000, select=select)
            async for entity in pages:
                self.stats.entity_reads += 1
                yield entity

    async def query_pages(self, table: TableClient, query_filter: str, parameters: dict[str, Any] | None = None,
                          select: list[str] | None = None,
                          page_size: int = 1000) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """The rows matching a filter, one server page at a time, each with whether more follow, so a
        caller can stop between pages (the tag query reads partitions in lockstep, stopping at the smallest)."""
        with self.translate(f"query of {table.table_name}"):
            self.stats.table_queries += 1
            pager = table.query_entities(query_filter, parameters=parameters, results_per_page=page_size,
                                         select=select).by_page()
            async for page in pager:
                rows = [entity async for entity in page]
                self.stats.entity_reads += len(rows)
                yield rows, pager.continuation_token is not None

    async def create_entity(self, table: TableClient, entity: Mapping[str, Any]) -> str | None:
        """Insert; Conflict if the row exists. Returns the new ETag."""
        with self.translate(f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"):
            self.stats.entity_writes += 1
            meta = await table.create_entity(entity)
            return meta.get("etag")

    async def upsert_entity(self, table: TableClient, entity: Mapping[str, Any], *, merge: bool = True) -> str | None:
        with self.translate(f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"):
            self.stats.entity_writes += 1
            meta = await table.upsert_entity(entity, mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE)
            return meta.get("etag")

    async def update_entity(self, table: TableClient, entity: Mapping[str, Any], *, etag: str | None,
                            merge: bool = True) -> str | None:
        """Conditional update: Conflict when the row changed since ``etag`` was read."""
        with self.translate(f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"):
            self.stats.entity_writes += 1
            kwargs: dict[str, Any] = {}
            if etag:
                kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
            meta = await table.update_entity(entity, mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE,
                                             **kwargs)
            return meta.get("etag")

    async def delete_entity(self, table: TableClient, pk: str, rk: str) -> None:
        with self.translate(f"{table.table_name} row ({pk}, {rk})"):
            self.stats.entity_writes += 1
            await table.delete_entity(pk, rk)

    async def upsert_batch(self, table: TableClient, entities: list[Mapping[str, Any]]) -> None:
        """Upsert rows of one partition, 100 per entity group transaction."""
        for start in range(0, len(entities), TAG_BATCH):
            chunk = entities[start:start + TAG_BATCH]
            what = f"{table.table_name} batch in partition {chunk[0]['PartitionKey']}"
            with self.translate(what):
                self.stats.entity_writes += len(chunk)
                try:
                    await table.submit_transaction([("upsert", e) for e in chunk])
                except TableTransactionError as exc:
                    raise StorageError(f"{what}: {_code(exc)}") from None

    async def delete_batch(self, table: TableClient, keys: list[tuple[str, str]]) -> None:
        for start in range(0, len(keys), TAG_BATCH):
            chunk = keys[start:start + TAG_BATCH]
            with self.translate(f"{table.table_name} delete batch"):
                self.stats.entity_writes += len(chunk)
                await table.submit_transaction([("delete", {"PartitionKey": pk, "RowKey": rk})
                                                for pk, rk in chunk])


def etag_of(entity: Any) -> str | None:
    meta = getattr(entity, "metadata", None)
    return meta.get("etag") if isinstance(meta, Mapping) else None


def md5_from_b64(value: str) -> bytes:
    return base64.b64decode(value)


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
