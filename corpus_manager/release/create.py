"""``corpus release create``: select sets, list each once, label and split them, store manifest then row.

Only complete sets (``query_sets``). Each selected set is listed once (its blobs directly under its
prefix, with their sizes and Content-MD5s), or its whole prefix family (``original/``,
``transform/NAME/TV/``) is listed flat once and its blobs grouped by set (``flat_families`` says when),
never one request per image; a transform output's row is read once for its ``SourceSet``.
A set whose listing disagrees with its row (blobs lost, or no Content-MD5) stops the create with
nothing written, either way: a release must never pin a partial set.
The manifest blob is written first, then the row, so a row never points at a missing manifest.
Two runs creating one NAME at once: the row is inserted, never overwritten, so one wins and the other
gets its release back (same definition) or exit 2; if their selections differed (sets added between
them), the loser's manifest may have replaced the winner's blob, and every reader (``read_manifest``)
then refuses it for not matching the row's sha256 (exit 1) rather than using another selection.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .. import storage as tuning
from ..errors import ConfigError, Conflict, CorpusError, CorruptRow
from ..models import SetIdentity
from ..query import QueryFilter, SetRow, open_for_reading, parse_transform, query_sets
from ..results import NullProgress, ProgressSink
from ..storage import BlobInfo, Storage
from ..throttle import ThrottleWork
from ..transform import list_transforms
from .definition import ReleaseDefinition, check_release_name
from .manifest import (
    MANIFEST_CONTENT_TYPE,
    Release,
    get_release_row,
    manifest_blob_name,
    manifest_bytes,
)

LIST_PARALLEL = 16  # set listings in flight at once
# When a family is listed flat, once, instead of once per set (``flat_families``): at least this many of
# its sets selected. Below it, LIST_PARALLEL listings in flight take one round trip, as one flat page does.
FLAT_MIN_SETS = 16
Listing = Literal["auto", "flat", "set"]  # "flat" / "set" force one mode (tests: the same manifest either way)


@dataclass
class ReleaseReport:
    """What ``create`` did: the release (new or the existing one), whether it wrote it, the sets left out."""

    release: Release
    written: bool
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> sets

    @property
    def exit_code(self) -> int:
        return 0

    def to_json(self) -> dict[str, Any]:
        return {**self.release.to_json(), "written": self.written, "left_out": self.left_out}


def _transform_json(identity: SetIdentity) -> dict[str, str] | None:
    if identity.is_original:
        return None
    return {"name": identity.transform_name, "version": identity.transform_version}


async def _check_transform(storage: Storage, filters: QueryFilter) -> None:
    if not filters.transform:
        return
    name, tversion = parse_transform(filters.transform)
    known = await list_transforms(storage)
    if not any(t.name == name and (not tversion or t.version == tversion) for t in known):
        raise ConfigError(f"--transform {filters.transform}: no such transform is registered (see `corpus transforms`)")


async def _check_labels(storage: Storage, definition: ReleaseDefinition, sets: list[SetRow]) -> None:
    """A label tag no set of the corpus carries is a typo: refused before anything is written."""
    carried = {t.casefold() for s in sets for t in s.tags}
    for tag in definition.label_tags:
        if tag not in carried and not (await query_sets(storage, QueryFilter((tag,)))).sets:
            raise ConfigError(f"--label: no set in corpus {storage.corpus!r} has the tag {tag!r}")


async def _source_of(storage: Storage, identity: SetIdentity) -> dict[str, Any] | None:
    if identity.is_original:
        return None
    entity = await storage.get_entity(storage.sets, identity.partition_key, identity.row_key)
    key = str((entity or {}).get("SourceSet") or "")
    if not key:
        return None
    try:
        src = SetIdentity.from_key(key)
    except (CorpusError, ValueError) as exc:
        raise CorruptRow(f"set {identity}: its SourceSet {key!r} cannot be read: {exc}") from None
    return {"path": src.path, "version": src.version, "transform": _transform_json(src)}


def _check_listing(row: SetRow, blobs: dict[str, BlobInfo]) -> None:
    """A set's listing must be its row's: the same count, every blob with a Content-MD5 to pin."""
    if len(blobs) != row.images:
        raise CorpusError(
            f"set {row.identity} lists {len(blobs)} blobs under {row.blob_prefix} but its row says "
            f"{row.images} images (run `corpus status --verify`); no release written"
        )
    unsigned = sorted(n for n, b in blobs.items() if not b.md5_hex)
    if unsigned:
        raise CorpusError(f"blob {unsigned[0]} has no Content-MD5 to pin; no release written")


Listed = dict[str, tuple[dict[str, BlobInfo], dict[str, Any] | None]]  # set prefix -> (blobs, source set)


async def _list_set(storage: Storage, row: SetRow) -> Listed:
    blobs = await storage.list_prefix(row.blob_prefix)
    _check_listing(row, blobs)
    return {row.blob_prefix: (blobs, await _source_of(storage, row.identity))}


def family_prefix(identity: SetIdentity) -> str:
    """The prefix every set of the identity's lineage family lies under: ``original/`` or
    ``transform/NAME/TV/``."""
    if identity.is_original:
        return "original/"
    return f"transform/{identity.transform_name}/{identity.transform_version}/"


async def _list_family(storage: Storage, family: str, rows: list[SetRow]) -> Listed:
    """One flat listing of ``family``, its blobs grouped by set: a set's blobs are exactly the names
    ``prefix + file`` with no further '/' in ``file`` (the SPEC's blob layout), so a nested set's, a pending
    set's or an unselected set's blobs fall into no selected set and are dropped as the pages arrive."""
    found: dict[str, dict[str, BlobInfo]] = {row.blob_prefix: {} for row in rows}
    async for page in storage.list_flat(family):
        for blob in page:
            bucket = found.get(blob.name[: blob.name.rfind("/") + 1])
            if bucket is not None:
                bucket[blob.name] = blob
    for row in rows:  # in the selection's order: the same set is named first on every run
        _check_listing(row, found[row.blob_prefix])
    listed: Listed = {}
    async for o in ThrottleWork(LIST_PARALLEL).map(lambda row: _source_of(storage, row.identity), rows):
        if o.error is not None:
            raise o.error
        listed[o.item.blob_prefix] = (found[o.item.blob_prefix], o.result)
    return listed


def flat_families(filters: QueryFilter, rows: list[SetRow], listing: Listing = "auto") -> set[str]:
    """The families to list flat, once, rather than set by set.

    A flat listing reads every blob of the family (pending, nested, unselected sets' too), one page of
    LIST_PAGE after another; per set, it is one request per set, LIST_PARALLEL at once. On Azurite every
    listing (each page) tests every blob it holds, so 1,000 per-set listings cost it ~3x rclone's whole
    walk (bench/README.md, "Releases"); on Azure a page is one round trip. So a family is listed flat when
    (1) the selection is the family's complete sets (no tag or version filter: query_sets then read every
    complete row of it, so the listing reads little the manifest does not use), (2) at least FLAT_MIN_SETS
    of its sets are selected, and (3) its pages, one after another, are no more than the rounds of per-set
    listings (big sets: parallel per-set listings finish sooner)."""
    if listing == "set":
        return set()
    by_family: dict[str, list[SetRow]] = {}
    for row in rows:
        by_family.setdefault(family_prefix(row.identity), []).append(row)
    if listing == "flat":
        return set(by_family)
    if filters.tags or filters.version is not None:
        return set()  # the selection may be a small share of its family: the listing would read the rest
    flat = set()
    for family, members in by_family.items():
        pages = -(-sum(r.images for r in members) // tuning.LIST_PAGE)  # read at call time, as storage's tunables
        rounds = -(-len(members) // LIST_PARALLEL)
        if len(members) >= FLAT_MIN_SETS and pages <= rounds:
            flat.add(family)
    return flat


async def build_records(
    storage: Storage,
    definition: ReleaseDefinition,
    sets: list[SetRow],
    progress: ProgressSink,
    *,
    listing: Listing = "auto",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The manifest records of ``sets`` (sorted already) and the sets left out, by reason."""
    left_out: Counter[str] = Counter()
    labelled: list[tuple[SetRow, str]] = []
    for row in sets:
        label, why = definition.label_of(row)
        if label is None:
            left_out[why] += 1
        else:
            labelled.append((row, label))
    progress.grow(files=len(labelled))
    rows = [row for row, _ in labelled]
    flat = flat_families(definition.filters, rows, listing)
    families: dict[str, list[SetRow]] = {}
    work: list[Any] = []  # a family prefix (listed flat) or a SetRow (listed alone)
    for row in rows:
        family = family_prefix(row.identity)
        if family not in flat:
            work.append(row)
        elif family not in families:
            families[family] = [row]
            work.append(family)
        else:
            families[family].append(row)

    async def list_one(item: Any) -> Listed:
        if isinstance(item, str):
            return await _list_family(storage, item, families[item])
        return await _list_set(storage, item)

    listed: Listed = {}
    async for o in ThrottleWork(LIST_PARALLEL).map(list_one, work):
        if o.error is not None:
            raise o.error  # nothing written yet: the release is all or nothing
        assert o.result is not None
        listed.update(o.result)
        progress.advance(files=len(o.result))
    records: list[dict[str, Any]] = []
    for row, label in labelled:
        blobs, source = listed[row.blob_prefix]
        identity = row.identity
        set_split = definition.assign(identity.key)
        for name in sorted(blobs):
            blob = blobs[name]
            record: dict[str, Any] = {
                "blob_name": name,
                "md5": blob.md5_hex,
                "bytes": blob.size,
                "label": label,
                "split": definition.assign(identity.key, name[len(row.blob_prefix) :])
                if definition.split_by == "image"
                else set_split,
                "tags": list(row.tags),
                "set_path": identity.path,
                "version": identity.version,
                "transform": _transform_json(identity),
            }
            if source is not None:
                record["source_set"] = source
            records.append(record)
    return records, dict(sorted(left_out.items()))


def _same_or_refuse(existing: Release, definition: ReleaseDefinition) -> None:
    if existing.definition_digest != definition.digest:
        raise ConfigError(
            f"release {existing.name!r} exists with another definition ({existing.parsed_definition.describe()}); "
            "a release never changes: choose a new name"
        )


async def create_release(
    storage: Storage,
    name: str,
    definition: ReleaseDefinition,
    *,
    progress: ProgressSink | None = None,
    listing: Listing = "auto",
) -> ReleaseReport:
    """Create release ``name`` from ``definition``; see the module docstring. Same name and definition:
    the existing release, nothing written; another definition, or no image selected: ConfigError."""
    check_release_name(name)
    progress = progress or NullProgress()
    await open_for_reading(storage)
    existing = await get_release_row(storage, name)
    if existing is not None:
        _same_or_refuse(existing, definition)
        return ReleaseReport(existing, written=False, left_out=existing.left_out)
    await _check_transform(storage, definition.filters)
    result = await query_sets(storage, definition.filters)
    if result.problems:
        raise CorpusError(f"{result.problems[0]}; the selection is uncertain, no release written")
    await _check_labels(storage, definition, result.sets)
    records, left_out = await build_records(storage, definition, result.sets, progress, listing=listing)
    if not records:
        why = "; ".join(f"{n} sets left out: {r}" for r, n in left_out.items())
        raise ConfigError(f"release {name!r}: the selection has no images" + (f" ({why})" if why else ""))
    data = manifest_bytes(records)
    split_names = definition.split_names
    splits = Counter(r["split"] for r in records)
    release = Release(
        name=name,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        definition=definition.to_json(),
        definition_digest=definition.digest,
        images=len(records),
        bytes=sum(r["bytes"] for r in records),
        sets=len({r["blob_name"].rpartition("/")[0] for r in records}),
        splits={s: splits.get(s, 0) for s in split_names},
        labels=dict(sorted(Counter(r["label"] for r in records).items())),
        left_out=left_out,
        manifest_blob=manifest_blob_name(name),
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        records=records,
    )
    # the manifest first (the service checks its Content-MD5), then the row that points at it
    await storage.put_blob(
        release.manifest_blob,
        data,
        content_type=MANIFEST_CONTENT_TYPE,
        md5=hashlib.md5(data, usedforsecurity=False).digest(),
    )
    # (the Releases table is made by its first write: storage's on-demand table)
    try:
        await storage.create_entity(storage.releases, release.to_entity())
    except Conflict:
        # another run created NAME meanwhile: the same definition is that release
        other = await get_release_row(storage, name)
        if other is None:
            raise
        _same_or_refuse(other, definition)
        return ReleaseReport(other, written=False, left_out=other.left_out)
    return ReleaseReport(release, written=True, left_out=left_out)
