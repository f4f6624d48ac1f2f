"""Table rows <-> the service's types: Int64 encoding, the JSON and batch bodies of thin writes, the
answers of a batch, and the OData filter of a query (``Where``), composed and escaped here only."""

from __future__ import annotations

import datetime
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from azure.data.tables import EdmType, EntityProperty

from ..errors import StorageError

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_PART_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3})", re.M)
_PART_ETAG = re.compile(rb"^ETag: *([^\r\n]+)", re.M | re.I)
_JSON_CODE = re.compile(rb'"code" *: *"([^"]+)"')
_JSON_INDEX = re.compile(rb'"value" *: *"(\d+):')
_PROPERTY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Row(dict[str, Any]):
    """A row as read: its properties (integers as plain ints, whatever their Edm type) and its ``etag``,
    which is not a property (``dict(row)`` drops it)."""

    etag: str | None = None


def etag_of(row: Mapping[str, Any] | None) -> str | None:
    """The ETag a row was read with (None for a row not read from a table)."""
    return getattr(row, "etag", None)


# ----- the OData filter ----------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    """Conditions on row properties that must all hold: ``eq("PartitionKey", pk) & eq("Version", v)``.
    A value is a str, bool or int; it is escaped here, never pasted into a filter by a caller."""

    terms: tuple[tuple[str, str, str | bool | int], ...] = ()

    def __and__(self, other: Where) -> Where:
        return Where(self.terms + other.terms)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def odata(self) -> str:
        """The $filter text of these conditions."""
        return " and ".join(f"{name} {op} {_literal(value)}" for name, op, value in self.terms)


def _term(name: str, op: str, value: str | bool | int) -> Where:
    if not _PROPERTY.match(name):
        raise ValueError(f"{name!r} is not a table property name")
    if not isinstance(value, str | bool | int):
        raise TypeError(f"a filter compares a str, bool or int, not a {type(value).__name__}")
    return Where(((name, op, value),))


def eq(name: str, value: str | bool | int) -> Where:
    return _term(name, "eq", value)


def ge(name: str, value: str | bool | int) -> Where:
    return _term(name, "ge", value)


def lt(name: str, value: str | bool | int) -> Where:
    return _term(name, "lt", value)


def and_(*conditions: Where) -> Where:
    out = Where()
    for condition in conditions:
        out = out & condition
    return out


def _literal(value: str | bool | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 31 else f"{value}L"  # as the SDK writes them
    return "'" + value.replace("'", "''") + "'"


# ----- entities --------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sdk_entity(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The entity for an SDK write: every int (not bool) as Edm.Int64, never the SDK's Edm.Int32."""
    return {
        k: EntityProperty(v, EdmType.INT64) if _is_int(v) and k not in ("PartitionKey", "RowKey") else v
        for k, v in entity.items()
    }


def plain_entity(entity: Mapping[str, Any]) -> Row:
    """An entity as the SDK read it, as a Row: Edm.Int64 properties as plain ints (rows written before
    Int64, as Edm.Int32, read as ints already), and its ETag from the SDK's metadata."""
    row = Row(
        (k, v.value if isinstance(v, EntityProperty) and v.edm_type == EdmType.INT64 else v) for k, v in entity.items()
    )
    meta = getattr(entity, "metadata", None)
    row.etag = meta.get("etag") if isinstance(meta, Mapping) else None
    return row


def entity_body(entity: Mapping[str, Any], what: str) -> bytes:
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


def entity_path(table_name: str, entity: Mapping[str, Any]) -> str:
    """``Table(PartitionKey='..',RowKey='..')``, each key with its quotes doubled, then percent-encoded."""
    pk = quote(str(entity["PartitionKey"]).replace("'", "''"), safe="")
    rk = quote(str(entity["RowKey"]).replace("'", "''"), safe="")
    return f"{table_name}(PartitionKey='{pk}',RowKey='{rk}')"


# ----- entity group transactions ------------------------------------------------------------------
# One operation of a thin batch: (method, path, entity, If-Match).
BatchOp = tuple[str, str, Mapping[str, Any], str | None]


def batch_body(base: str, ops: Sequence[BatchOp], what: str) -> tuple[bytes, str]:
    """The multipart body of one entity group transaction, and its Content-Type."""
    boundary, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    parts = [f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
    for i, (method, path, entity, if_match) in enumerate(ops):
        body = entity_body(entity, what)
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
    return "".join(parts).encode(), f"multipart/mixed; boundary={boundary}"


def batch_results(data: bytes) -> list[tuple[int, str | None, str, int | None]]:
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


def json_code(data: bytes) -> str:
    """The error code in a table error's JSON body (odata.error.code), if any."""
    found = _JSON_CODE.search(data)
    return found.group(1).decode(errors="replace") if found else ""
