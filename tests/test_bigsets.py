"""Counts and sizes beyond 32 bits, on a real Azurite: every int a table row holds is stored as
Edm.Int64 and read back as a plain int (rows written as Edm.Int32 by older runs still read), so a set
of 2 GiB or more completes, is indexed and is found. One end-to-end upload of a 2.2 GiB set (sparse
files) proves it through the CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import EdmType, EntityProperty
from click.testing import CliRunner

from corpus_manager.cli import cli
from corpus_manager.errors import StorageError
from corpus_manager.models import COMPLETE, PENDING, ImageSet, SetIdentity, tag_rows
from corpus_manager.rowcommit import GroupCommit
from corpus_manager.storage import Storage
from corpus_manager.storage.entities import sdk_entity
from corpus_manager.tagindex import TagIndexWriter
from corpus_manager.throttle import ThrottleWork

from .conftest import Azurite, free_port
from .helpers import run, with_storage

GIB = 1 << 30
BIG_BYTES = 3 * GIB  # 3221225472: what the SDK's Edm.Int32 refused ("too large to be cast")
BIG_COUNT = (1 << 31) + 7


def big_set(path: str, status: str = COMPLETE) -> ImageSet:
    return ImageSet(
        SetIdentity(path, "v1"),
        tags=["huge", path],
        status=status,
        image_count=BIG_COUNT,
        total_bytes=BIG_BYTES,
        content_digest="d" * 64,
    )


async def raw_types(storage: Storage, table: Any, pk: str, rk: str) -> dict[str, Any]:
    """The row as the SDK itself reads it (no conversion of ours): Edm.Int64 comes back as an EntityProperty."""
    entity = await table.sdk.get_entity(pk, rk)
    return {
        k: (v.edm_type if isinstance(v, EntityProperty) else type(v).__name__)
        for k, v in entity.items()
        if k in ("ImageCount", "TotalBytes", "Indexed")
    }


def test_counts_and_sizes_beyond_int32_round_trip(conn: str, corpus_name: str) -> None:
    async def go(storage: Storage) -> None:
        await storage.ensure()  # container too: queries read only a corpus that exists
        upserts = ThrottleWork(4)
        rows = GroupCommit(storage, upserts)
        # the lifecycle's own writes: a pending row created, then completed (both group-committed)
        pending = big_set("giant", PENDING)
        etag = await rows.create(pending.to_entity())
        done = big_set("giant")
        done.etag = await rows.update({**done.to_entity(), "Indexed": False}, etag)
        writer = TagIndexWriter(storage, upserts, update_set=rows.update)
        await writer.add(done)
        await writer.flush()
        assert writer.failures == []
        ident = done.identity
        back = ImageSet.from_entity(await storage.get_entity(storage.sets, ident.partition_key, ident.row_key))
        assert (back.image_count, back.total_bytes, back.indexed) == (BIG_COUNT, BIG_BYTES, True)
        assert back.etag  # the metadata (ETag) survives the conversion of the values
        assert await raw_types(storage, storage.sets, ident.partition_key, ident.row_key) == {
            "ImageCount": EdmType.INT64,
            "TotalBytes": EdmType.INT64,
            "Indexed": "bool",
        }
        tag_pk, tag_rk = tag_rows(done)[0]["PartitionKey"], tag_rows(done)[0]["RowKey"]
        assert await raw_types(storage, storage.tags, tag_pk, tag_rk) == {
            "ImageCount": EdmType.INT64,
            "TotalBytes": EdmType.INT64,
        }
        rows.close()

    with_storage(conn, corpus_name, go)
    for tags in (["huge"], []):  # through the TagIndex, and through the ImageSets scan
        (found,) = run(conn, corpus_name, lambda c, t=tags: c.query(t)).sets  # type: ignore[misc]
        assert (found.path, found.images, found.bytes) == ("giant", BIG_COUNT, BIG_BYTES)
    res = CliRunner().invoke(cli, ["query", "--json", "--tag", "huge"])
    assert res.exit_code == 0, res.output
    assert [(r["images"], r["bytes"]) for r in json.loads(res.stdout)] == [(BIG_COUNT, BIG_BYTES)]


def test_sdk_writes_store_int64_and_old_int32_rows_still_read(conn: str, corpus_name: str) -> None:
    """The SDK write path (used with --account-url) converts every int too; a row an older version
    wrote with the SDK's default Edm.Int32 reads as before."""

    async def go(storage: Storage) -> None:
        await storage.ensure(container=False)
        new, old = (
            big_set("through-sdk"),
            ImageSet(
                SetIdentity("old", "v1"),
                tags=["old"],
                status=COMPLETE,
                image_count=3,
                total_bytes=12345,
                content_digest="e" * 64,
            ),
        )
        await storage.sets.sdk.create_entity(sdk_entity(new.to_entity()))  # the SDK itself, as with a bearer token
        await storage.sets.sdk.create_entity(old.to_entity())  # plain ints: the SDK writes Edm.Int32
        pk = new.identity.partition_key
        assert await raw_types(storage, storage.sets, pk, new.identity.row_key) == {
            "ImageCount": EdmType.INT64,
            "TotalBytes": EdmType.INT64,
            "Indexed": "bool",
        }
        assert await raw_types(storage, storage.sets, pk, old.identity.row_key) == {
            "ImageCount": "int",
            "TotalBytes": "int",
            "Indexed": "bool",
        }
        got = {s.path: (s.image_count, s.total_bytes) async for s in _sets(storage)}
        assert got == {"through-sdk": (BIG_COUNT, BIG_BYTES), "old": (3, 12345)}

    with_storage(conn, corpus_name, go)


async def _sets(storage: Storage) -> Any:
    async for entity in storage.query(storage.sets):
        assert not any(isinstance(v, EntityProperty) for v in entity.values())
        yield ImageSet.from_entity(entity)


def test_one_bad_write_in_a_group_commit_fails_only_itself(conn: str, corpus_name: str) -> None:
    """A write the table refuses for a reason other than Conflict (a value no column type holds, one
    the service finds too large) fails alone: the other sets queued in its transaction are stored."""

    def row(path: str, **extra: Any) -> dict[str, Any]:
        return {**big_set(path, PENDING).to_entity(), **extra}

    async def go(storage: Storage) -> list[Any]:
        await storage.ensure(container=False)
        writer = GroupCommit(storage, ThrottleWork(2))
        try:
            # queued together: one transaction, which the two bad rows refuse as a whole
            return await asyncio.gather(
                writer.create(row("a")),
                writer.create(row("b", Huge=1 << 64)),
                writer.create(row("c", Note="x" * 70_000)),
                writer.create(row("d")),
                return_exceptions=True,
            )
        finally:
            writer.close()

    a, b, c, d = with_storage(conn, corpus_name, go)
    assert isinstance(a, str) and isinstance(d, str)  # their ETags: stored
    assert isinstance(b, StorageError) and "Huge" in str(b) and "64-bit" in str(b)
    assert isinstance(c, StorageError) and "PropertyValueTooLarge" in str(c) and "(original, c|v1)" in str(c)
    stored = with_storage(conn, corpus_name, lambda s: _collect(s))
    assert stored == {"a": BIG_BYTES, "d": BIG_BYTES}


async def _collect(storage: Storage) -> dict[str, int]:
    return {s.path: s.total_bytes async for s in _sets(storage)}


# ----- end to end: a set of more than 2 GiB -----------------------------------------------------
PART = 750 * (1 << 20)  # three of them: 2.2 GiB, above 2**31 bytes


def sparse_png(path: Path, size: int) -> None:
    """A file the upload's sniffing takes for a whole PNG (signature, IHDR ... IEND) of ``size`` bytes,
    all zeros in between and sparse on disk: it costs no disk space, only time to read."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    tail = chunk(b"IEND", b"")
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size - len(tail))
        fh.seek(size - len(tail))
        fh.write(tail)


@pytest.mark.bigdata
def test_a_set_of_more_than_2_gib_uploads_completes_and_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow-ish (tens of seconds, 2.2 GiB through a real Azurite): marked ``bigdata``. Its own Azurite
    lives in tmp_path, so the 2.2 GiB it stores are deleted with it, not left in the session's."""
    free = shutil.disk_usage(tmp_path).free
    if free < 3 * PART + GIB:
        pytest.skip(f"needs {(3 * PART + GIB) / GIB:.1f} GiB free under {tmp_path} (has {free / GIB:.1f} GiB)")
    azurite = Azurite(tmp_path / "azurite", free_port(), free_port(), free_port())
    azurite.start()
    try:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
        monkeypatch.delenv("CORPUS_ACCOUNT_URL", raising=False)
        monkeypatch.setenv("CORPUS_NAME", "bigsets")
        root = tmp_path / "scans"
        (root / "pathology" / "slide1").mkdir(parents=True)
        for i in range(3):
            sparse_png(root / "pathology" / "slide1" / f"part{i}.png", PART)
        (root / "pathology" / "small").mkdir()
        sparse_png(root / "pathology" / "small" / "thumb.png", 4096)  # a small set in the same run
        up = CliRunner().invoke(
            cli, ["upload", str(root), "--version", "v1", "--json", "--max-parallel-uploads", "1"]
        )  # one big file in memory at a time
        assert up.exit_code == 0, up.output
        report = json.loads(up.stdout)
        assert report["sets"]["uploaded"] == 2 and report["bytes_uploaded"] == 3 * PART + 4096
        res = CliRunner().invoke(cli, ["query", "--json", "--tag", "pathology"])
        assert res.exit_code == 0, res.output
        found = {r["path"]: (r["images"], r["bytes"]) for r in json.loads(res.stdout)}
        assert found == {"pathology/slide1": (3, 3 * PART), "pathology/small": (1, 4096)}
        assert 3 * PART > 1 << 31
    finally:
        azurite.stop()
        shutil.rmtree(azurite.location, ignore_errors=True)
