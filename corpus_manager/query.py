"""Finding complete sets again: tag index reads (AND / OR, case-insensitive) and the ImageSets scan.

A tag query reads only the TagIndex partitions of the tags asked for. AND reads them a page at a
time in lockstep until the smallest is exhausted (Table Storage keeps no partition sizes, so this is
how "the smallest first" is found without reading the others whole); its rows are the candidates, and
each other tag only has to confirm them: by the rows it already read, then by point reads, or by
reading on when too many are still open. Version and transform filters travel in the server-side
filter. Every index row carries what a result line needs, so no set row is read per result. Without
tags the ImageSets table is scanned (narrowed to one partition range when a transform is named).
A row that cannot be read is skipped and named, never fatal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, CorpusError, CorruptRow, NotFound
from .keys import FIELD_SEP, escape
from .models import COMPLETE, ORIGINAL_PARTITION, ImageSet, OfIdentity, SetIdentity, check_name, tag_partition
from .results import Failure
from .storage import Row, Storage, Where, eq, ge, lt
from .throttle import ThrottleWork

PAGE_SIZE = 1000  # Table Storage's largest page
# Past this many unconfirmed candidates, reading the rest of a partition beats one point read each.
POINT_READ_LIMIT = 200
POINT_READ_PARALLEL = 16


def parse_transform(value: str) -> tuple[str, str]:
    """``NAME`` or ``NAME@TV`` -> (name, tversion or "")."""
    name, sep, tversion = value.partition("@")
    check_name(name, "transform name")
    if sep:
        check_name(tversion, "transform version")
    return name, tversion


@dataclass(frozen=True)
class QueryFilter:
    """What `corpus query` and `corpus download` select. Empty = every complete set."""

    tags: tuple[str, ...] = ()
    any_tag: bool = False
    version: str | None = None
    transform: str | None = None  # NAME or NAME@TV
    originals: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))
        for tag in self.tags:
            if not tag.strip():
                raise ConfigError("--tag needs a non-empty value")
            tag_partition(tag)  # too long for a key: a usage error now, not a storage error later
        if self.version is not None:
            check_name(self.version, "version")
        if self.transform is not None:
            if self.originals:
                raise ConfigError("--transform and --originals exclude each other")
            parse_transform(self.transform)

    @property
    def transform_name(self) -> str:
        return parse_transform(self.transform)[0] if self.transform else ""

    @property
    def transform_version(self) -> str:
        return parse_transform(self.transform)[1] if self.transform else ""

    @property
    def partitions(self) -> list[str]:
        """The distinct TagIndex partitions asked for (``Robin`` and ``robin`` are one)."""
        return list(dict.fromkeys(tag_partition(t.strip()) for t in self.tags))

    def property_filter(self) -> Where:
        """Version and transform conditions, for the server-side filter of either table."""
        where = Where()
        if self.version is not None:
            where &= eq("Version", self.version)
        if self.originals:
            where &= eq("TransformName", "")
        elif self.transform:
            where &= eq("TransformName", self.transform_name)
            if self.transform_version:
                where &= eq("TransformVersion", self.transform_version)
        return where

    def matches(self, row: SetRow) -> bool:
        """The same conditions on the client side (a guard against a lax server-side filter)."""
        if self.version is not None and row.version != self.version:
            return False
        if self.originals and row.transform_name:
            return False
        if self.transform:
            if row.transform_name != self.transform_name:
                return False
            if self.transform_version and row.transform_version != self.transform_version:
                return False
        return True


@dataclass(frozen=True)
class SetRow(OfIdentity):
    """One result line: a complete set and what a user or a download needs of it."""

    identity: SetIdentity
    tags: tuple[str, ...]
    images: int
    bytes: int
    content_digest: str = ""

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.path, self.version, self.transform_name, self.transform_version)

    def to_json(self) -> dict[str, Any]:
        transform = {"name": self.transform_name, "version": self.transform_version} if self.transform_name else None
        return {
            "path": self.path,
            "version": self.version,
            "tags": list(self.tags),
            "transform": transform,
            "images": self.images,
            "bytes": self.bytes,
            "blob_prefix": self.blob_prefix,
        }

    @classmethod
    def from_image_set(cls, image_set: ImageSet) -> SetRow:
        return cls(
            image_set.identity,
            tuple(image_set.tags),
            image_set.image_count,
            image_set.total_bytes,
            image_set.content_digest,
        )

    @classmethod
    def from_index(cls, entity: Mapping[str, Any]) -> SetRow:
        """A TagIndex row, checked against itself: its identity must give its RowKey, BlobPrefix and
        partition, so a tampered row can never point a download at another prefix."""
        pk, rk = entity.get("PartitionKey", ""), entity.get("RowKey", "")
        try:
            identity = SetIdentity(
                str(entity.get("Path", "")),
                str(entity.get("Version", "")),
                str(entity.get("TransformName") or ""),
                str(entity.get("TransformVersion") or ""),
            )
            try:
                tags = json.loads(entity.get("Tags") or "[]")
            except ValueError:
                raise ValueError(f"Tags {str(entity.get('Tags'))[:40]!r} is not JSON") from None
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ValueError("Tags is not a JSON list of strings")
            if rk != escape(identity.key):
                raise ValueError("its RowKey does not match its Path, Version and transform")
            if entity.get("BlobPrefix") != identity.blob_prefix:
                raise ValueError(f"its BlobPrefix {entity.get('BlobPrefix')!r} is not {identity.blob_prefix!r}")
            if pk not in {tag_partition(t) for t in tags}:
                raise ValueError("its partition is not one of its tags")
            images, nbytes = int(entity.get("ImageCount") or 0), int(entity.get("TotalBytes") or 0)
            if images < 0 or nbytes < 0:
                raise ValueError("negative ImageCount or TotalBytes")
            return cls(identity, tuple(tags), images, nbytes, str(entity.get("ContentDigest") or ""))
        except (CorpusError, ValueError, TypeError) as exc:
            raise CorruptRow(f"TagIndex row ({pk!r}, {rk!r}) is corrupt: {exc}") from None


@dataclass
class QueryResult:
    filters: QueryFilter
    sets: list[SetRow] = field(default_factory=list)
    problems: list[Failure] = field(default_factory=list)  # corrupt rows skipped, each named
    partitions_read: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.sets)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.sets)

    @property
    def exit_code(self) -> int:
        # a skipped corrupt row is an item that failed: the listing may be short of it
        return 1 if self.problems else 0

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.sets]


def _corrupt(result: QueryResult, table: str, entity: Mapping[str, Any], exc: Exception) -> None:
    item = f"{table} ({entity.get('PartitionKey')!r}, {entity.get('RowKey')!r})"
    if not any(p.item == item for p in result.problems):
        result.problems.append(Failure(item, str(exc), "corrupt"))


class _PartitionReader:
    """One TagIndex partition, read a page at a time; remembers what it has seen by RowKey."""

    def __init__(self, storage: Storage, partition: str, where: Where) -> None:
        self.partition = partition
        self.rows: dict[str, Mapping[str, Any]] = {}
        self.done = False
        self._pages: AsyncGenerator[tuple[list[Row], bool]] = storage.query_pages(
            storage.tags, eq("PartitionKey", partition) & where, page_size=PAGE_SIZE
        )

    async def next_page(self) -> None:
        page = await anext(self._pages, None)
        if page is None:
            self.done = True
            return
        rows, more = page
        for entity in rows:
            self.rows[entity["RowKey"]] = entity
        self.done = not more

    async def read_all(self) -> None:
        while not self.done:
            await self.next_page()

    async def close(self) -> None:
        await self._pages.aclose()


async def _tags_or(readers: list[_PartitionReader]) -> dict[str, Mapping[str, Any]]:
    await asyncio.gather(*(r.read_all() for r in readers))
    union: dict[str, Mapping[str, Any]] = {}
    for r in readers:
        for rk, entity in r.rows.items():
            union.setdefault(rk, entity)
    return union


async def _tags_and(storage: Storage, readers: list[_PartitionReader]) -> dict[str, Mapping[str, Any]]:
    while not any(r.done for r in readers):
        await asyncio.gather(*(r.next_page() for r in readers if not r.done))
    smallest = min((r for r in readers if r.done), key=lambda r: len(r.rows))
    candidates = dict(smallest.rows)
    # finished partitions first: they cut the candidates for free
    for other in sorted((r for r in readers if r is not smallest), key=lambda r: (not r.done, len(r.rows))):
        if not candidates:
            break
        open_keys = [rk for rk in candidates if rk not in other.rows]
        while open_keys and not other.done and len(open_keys) > POINT_READ_LIMIT:
            await other.next_page()
            open_keys = [rk for rk in open_keys if rk not in other.rows]
        if other.done:
            candidates = {rk: e for rk, e in candidates.items() if rk in other.rows}
            continue
        if open_keys:
            # point reads: the cheapest request Table Storage has, one per unconfirmed candidate
            # (an OR of RowKeys in one filter would be served by a partition scan)
            async def present(rk: str, pk: str = other.partition) -> bool:
                return await storage.get_entity(storage.tags, pk, rk) is not None

            throttle = ThrottleWork(POINT_READ_PARALLEL)
            missing: set[str] = set()
            async for o in throttle.map(present, open_keys):
                if o.error is not None:
                    raise o.error
                if not o.result:
                    missing.add(o.item)
            candidates = {rk: e for rk, e in candidates.items() if rk not in missing}
    return candidates


async def _by_tags(storage: Storage, filters: QueryFilter, result: QueryResult) -> None:
    where = filters.property_filter()
    partitions = filters.partitions
    readers = [_PartitionReader(storage, pk, where) for pk in partitions]
    result.partitions_read = partitions
    try:
        if len(readers) == 1 or filters.any_tag:
            found = await _tags_or(readers)
        else:
            found = await _tags_and(storage, readers)
    finally:
        for r in readers:
            await r.close()
    for entity in found.values():
        try:
            row = SetRow.from_index(entity)
        except CorruptRow as exc:
            _corrupt(result, storage.tags.table_name, entity, exc)
            continue
        if filters.matches(row):
            result.sets.append(row)


async def _scan_sets(storage: Storage, filters: QueryFilter, result: QueryResult) -> None:
    where = eq("Status", COMPLETE) & filters.property_filter()
    # ImageSets partitions are lineage families: a transform filter reads one partition (range)
    if filters.originals:
        where = eq("PartitionKey", ORIGINAL_PARTITION) & where
    elif filters.transform:
        name, tversion = parse_transform(filters.transform)
        base = FIELD_SEP.join(("transform", name, ""))
        if tversion:
            where = eq("PartitionKey", base + tversion) & where
        else:
            # every version of NAME: keys 'transform|NAME|...' sort between 'transform|NAME|' and the next char
            where = ge("PartitionKey", base) & lt("PartitionKey", base[:-1] + chr(ord(FIELD_SEP) + 1)) & where
    async for entity in storage.query(storage.sets, where):
        try:
            image_set = ImageSet.from_entity(entity)
        except CorruptRow as exc:
            _corrupt(result, storage.sets.table_name, entity, exc)
            continue
        row = SetRow.from_image_set(image_set)
        if image_set.is_complete and filters.matches(row):
            result.sets.append(row)


async def query_sets(storage: Storage, filters: QueryFilter | None = None) -> QueryResult:
    """The complete sets matching ``filters``, sorted by (path, version, transform)."""
    filters = filters or QueryFilter()
    result = QueryResult(filters)
    if filters.tags:
        await _by_tags(storage, filters, result)
    else:
        await _scan_sets(storage, filters, result)
    result.sets.sort(key=lambda s: s.sort_key)
    return result


async def open_for_reading(storage: Storage) -> None:
    """Reach storage quickly and make sure the corpus exists; reading never creates it."""
    try:
        await storage.ensure(create=False)
    except NotFound:
        raise ConfigError(
            f"corpus {storage.corpus!r} does not exist (no container {storage.corpus!r}); "
            "check --corpus, or upload to create it"
        ) from None
