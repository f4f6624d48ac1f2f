"""Tables: entity reads and writes, entity group transactions, queries (``Where``).

Every row comes back as a ``Row``: integers as plain ints (an Edm.Int64 property reads back from the
SDK as an EntityProperty) and its ETag as ``row.etag``: callers never see an SDK type.

Writes store every int as Edm.Int64 (the SDK would store it as Edm.Int32 and refuse one of 2**31 or
more: a set of 2 GiB). With the fast path (an account key or a SAS) they are thin requests on the shared
session (``_table_request``), not the SDK's: its entity group transaction builds and parses multipart MIME
with the stdlib ``email`` package, ~5 ms of CPU a transaction plus ~0.6 ms a row, and a single write runs
its ~10-policy pipeline, ~1.5 ms; the thin path costs a fraction of that (bench/README.md, "Many small
sets"). With --account-url (a bearer token), or the fast path off, they go through the SDK.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar, cast

from azure.core import MatchConditions
from azure.core.async_paging import AsyncPageIterator
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from yarl import URL

from .. import storage as tuning
from ..errors import Conflict, NotFound, StorageError
from .clients import Connection, Table
from .entities import (
    BatchOp,
    Row,
    Where,
    batch_body,
    batch_results,
    entity_body,
    entity_path,
    json_code,
    plain_entity,
    sdk_entity,
)
from .errors import code_of, http_error
from .http import Answer, retrying, send, table_shared_key

T = TypeVar("T")


class _Missing(Exception):
    """An on-demand table that does not exist yet: reads find no row."""


class Tables(Connection):
    """The table operations of Storage."""

    async def _sdk(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One SDK table call, retried like a thin request (the SDK's own retries are off)."""
        return await retrying(self, self.info.table_endpoint, what, call, secrets=(self.info.sas_token or "",))

    async def _read(self, table: Table, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """An SDK read; of an on-demand table not made yet: _Missing (read as no row)."""
        try:
            return await self._sdk(what, call)
        except ResourceNotFoundError as exc:
            if table.on_demand and code_of(exc) == "TableNotFound":
                raise _Missing from None
            raise

    async def _made(self, table: Table) -> None:
        """Before a write: an on-demand table is made by its first write."""
        if table.on_demand and not table.exists:
            await self.ensure_table(table)

    async def get_entity(self, table: Table, pk: str, rk: str) -> dict[str, Any] | None:
        """The row (a ``Row``: ``etag_of`` gives its ETag), or None when there is none."""
        what = f"{table.table_name} row ({pk}, {rk})"
        with self._table_op(what):
            self.stats.entity_reads += 1
            try:
                return plain_entity(await self._read(table, what, partial(table.sdk.get_entity, pk, rk)))
            except (ResourceNotFoundError, _Missing):
                return None

    async def query(
        self, table: Table, where: Where | None = None, select: list[str] | None = None
    ) -> AsyncIterator[Row]:
        """Stream the rows matching ``where`` (every row without it), 1,000 per page."""
        async for rows, _ in self.query_pages(table, where, select=select):
            for row in rows:
                yield row

    async def query_pages(
        self, table: Table, where: Where | None = None, select: list[str] | None = None, page_size: int = 1000
    ) -> AsyncGenerator[tuple[list[Row], bool]]:
        """The rows matching ``where``, one server page at a time, each with whether more follow, so a
        caller can stop between pages (the tag query reads partitions in lockstep, stopping at the smallest)."""
        what = f"query of {table.table_name}"
        with self._table_op(what), contextlib.suppress(_Missing):
            self.stats.table_queries += 1
            token: Any = None
            while True:
                # a pager from the last page's continuation token, so a retried page is read again alone
                if where:
                    items = table.sdk.query_entities(where.odata(), results_per_page=page_size, select=select)
                else:
                    items = table.sdk.list_entities(results_per_page=page_size, select=select)
                pager = cast(AsyncPageIterator[TableEntity], items.by_page(continuation_token=token))
                page = await self._read(table, what, partial(anext, pager, None))
                if page is None:
                    return
                rows = [plain_entity(entity) async for entity in page]
                self.stats.entity_reads += len(rows)
                token = pager.continuation_token
                yield rows, token is not None
                if token is None:
                    return

    async def create_entity(self, table: Table, entity: Mapping[str, Any]) -> str | None:
        """Insert; Conflict if the row exists. Returns the new ETag."""
        what = f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"
        await self._made(table)
        with self._table_op(what):
            self.stats.entity_writes += 1
            if self.fast_path:
                return await self._entity_write("POST", table.table_name, what, entity)
            meta = await self._sdk(what, lambda: table.sdk.create_entity(sdk_entity(entity)))
            return meta.get("etag")

    async def upsert_entity(self, table: Table, entity: Mapping[str, Any], *, merge: bool = True) -> str | None:
        what = f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"
        await self._made(table)
        with self._table_op(what):
            self.stats.entity_writes += 1
            if self.fast_path:  # MERGE or PUT without If-Match: insert-or-merge, insert-or-replace
                path = entity_path(table.table_name, entity)
                return await self._entity_write("MERGE" if merge else "PUT", path, what, entity)
            mode = UpdateMode.MERGE if merge else UpdateMode.REPLACE
            meta = await self._sdk(what, lambda: table.sdk.upsert_entity(sdk_entity(entity), mode=mode))
            return meta.get("etag")

    async def update_entity(
        self, table: Table, entity: Mapping[str, Any], *, etag: str | None, merge: bool = True
    ) -> str | None:
        """Conditional update: Conflict when the row changed since ``etag`` was read."""
        what = f"{table.table_name} row ({entity['PartitionKey']}, {entity['RowKey']})"
        await self._made(table)
        with self._table_op(what):
            self.stats.entity_writes += 1
            if self.fast_path:  # If-Match "*": the row must exist, whatever its ETag
                path = entity_path(table.table_name, entity)
                return await self._entity_write("MERGE" if merge else "PUT", path, what, entity, if_match=etag or "*")
            kwargs: dict[str, Any] = {}
            if etag:
                kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
            mode = UpdateMode.MERGE if merge else UpdateMode.REPLACE
            meta = await self._sdk(what, lambda: table.sdk.update_entity(sdk_entity(entity), mode=mode, **kwargs))
            return meta.get("etag")

    async def delete_entity(self, table: Table, pk: str, rk: str) -> None:
        what = f"{table.table_name} row ({pk}, {rk})"
        with self._table_op(what):
            self.stats.entity_writes += 1
            await self._sdk(what, lambda: table.sdk.delete_entity(pk, rk))

    async def write_rows(
        self, table: Table, writes: Sequence[tuple[str, Mapping[str, Any], str | None]]
    ) -> list[str | None]:
        """One entity group transaction of ("create" | "update" | "upsert", row, etag) writes to rows of one
        partition (at most TAG_BATCH, each row once); returns each row's new ETag. An update merges,
        conditional on its ETag when given (else on the row existing); an upsert inserts or replaces.
        When any write is refused the transaction writes nothing and raises what that write alone would
        have (Conflict for an existing row or a changed ETag, NotFound, StorageError)."""
        what = f"{table.table_name} batch in partition {writes[0][1]['PartitionKey']}"
        await self._made(table)
        with self._table_op(what):
            self.stats.entity_writes += len(writes)
            if self.fast_path:
                ops: list[BatchOp] = [
                    ("POST", table.table_name, entity, None)
                    if kind == "create"
                    else ("PUT", entity_path(table.table_name, entity), entity, None)
                    if kind == "upsert"
                    else ("MERGE", entity_path(table.table_name, entity), entity, etag or "*")
                    for kind, entity, etag in writes
                ]
                return await self._batch_write(what, ops)
            sdk_ops: list[Any] = []
            for kind, entity, etag in writes:
                if kind == "create":
                    sdk_ops.append(("create", sdk_entity(entity)))
                elif kind == "upsert":
                    sdk_ops.append(("upsert", sdk_entity(entity), {"mode": UpdateMode.REPLACE}))
                elif etag:
                    conditional = {
                        "mode": UpdateMode.MERGE,
                        "etag": etag,
                        "match_condition": MatchConditions.IfNotModified,
                    }
                    sdk_ops.append(("update", sdk_entity(entity), conditional))
                else:
                    sdk_ops.append(("update", sdk_entity(entity), {"mode": UpdateMode.MERGE}))
            try:
                metas = await self._sdk(what, lambda: table.sdk.submit_transaction(sdk_ops))
            except TableTransactionError as exc:
                raise Conflict(f"{what}: {code_of(exc)}") from None
            return [meta.get("etag") for meta in metas]

    async def upsert_batch(self, table: Table, entities: Sequence[Mapping[str, Any]]) -> None:
        """Upsert (insert-or-merge) rows of one partition, 100 per entity group transaction."""
        await self._made(table)
        for start in range(0, len(entities), tuning.TAG_BATCH):
            chunk = entities[start : start + tuning.TAG_BATCH]
            what = f"{table.table_name} batch in partition {chunk[0]['PartitionKey']}"
            with self._table_op(what):
                self.stats.entity_writes += len(chunk)
                if self.fast_path:
                    try:
                        await self._batch_write(
                            what, [("MERGE", entity_path(table.table_name, e), e, None) for e in chunk]
                        )
                    except (Conflict, NotFound) as exc:  # what an upsert batch has always raised
                        raise StorageError(str(exc)) from None
                    continue
                try:
                    await self._sdk(
                        what, partial(table.sdk.submit_transaction, [("upsert", sdk_entity(e)) for e in chunk])
                    )
                except TableTransactionError as exc:
                    raise StorageError(f"{what}: {code_of(exc)}") from None

    async def _entity_write(
        self, method: str, path: str, what: str, entity: Mapping[str, Any], *, if_match: str | None = None
    ) -> str | None:
        """One thin single-entity write; its new ETag, or the error its status means."""
        headers = {"Prefer": "return-no-content"}
        if if_match:
            headers["If-Match"] = if_match
        answer = await self._table_request(method, path, what, entity_body(entity, what), "application/json", headers)
        if answer.status >= 300:
            raise http_error(what, answer.status, answer.code)
        return answer.etag

    async def _batch_write(self, what: str, ops: list[BatchOp]) -> list[str | None]:
        """One thin entity group transaction of (method, path, entity, If-Match) operations; each one's
        new ETag, or the error of the operation that made the service refuse them all."""
        body, content_type = batch_body(self.info.table_endpoint.rstrip("/"), ops, what)
        answer = await self._table_request("POST", "$batch", what, body, content_type, {})
        if answer.status >= 300:
            raise http_error(what, answer.status, answer.code)
        results = batch_results(answer.body)
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
    ) -> Answer:
        """One thin table-service request, retried (``http.send``); its answer, the error code taken from
        the JSON body when the header has none. Signed with the account key (the service's Shared Key
        scheme for tables) or authorised by the connection string's SAS."""
        base = self.info.table_endpoint.rstrip("/")
        sas, key = self.info.sas_token or "", self.info.account_key
        headers = {
            **headers,
            "Content-Type": content_type,
            "Accept": "application/json;odata=nometadata",
            "x-ms-version": tuning.TABLE_API_VERSION,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
        }

        def url() -> URL:
            if key:
                signed = URL(f"{base}/{path}", encoded=True)
                headers.update(table_shared_key(self.info.account_name, key, method, signed, content_type))
                return signed
            return URL(f"{base}/{path}?{sas}", encoded=True)

        answer = await send(
            self, self.info.table_endpoint, what, method, url, headers=headers, data=body, read=True, secrets=(sas,)
        )
        if answer.status >= 300 and not answer.code:
            return answer._replace(code=json_code(answer.body))
        return answer
