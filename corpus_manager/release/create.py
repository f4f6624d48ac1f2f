"""``corpus release create``: select sets, list each once, label and split them, store manifest then row.

Only complete sets (``query_sets``). Each selected set is listed once (its blobs directly under its
prefix, with their sizes and Content-MD5s), never one request per image; a transform output's row is
read once for its ``SourceSet``. A set whose listing disagrees with its row (blobs lost, or no
Content-MD5) stops the create with nothing written: a release must never pin a partial set.
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
from typing import Any

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


async def _list_set(storage: Storage, row: SetRow) -> tuple[dict[str, BlobInfo], dict[str, Any] | None]:
    blobs = await storage.list_prefix(row.blob_prefix)
    if len(blobs) != row.images:
        raise CorpusError(
            f"set {row.identity} lists {len(blobs)} blobs under {row.blob_prefix} but its row says "
            f"{row.images} images (run `corpus status --verify`); no release written"
        )
    unsigned = sorted(n for n, b in blobs.items() if not b.md5_hex)
    if unsigned:
        raise CorpusError(f"blob {unsigned[0]} has no Content-MD5 to pin; no release written")
    return blobs, await _source_of(storage, row.identity)


async def build_records(
    storage: Storage, definition: ReleaseDefinition, sets: list[SetRow], progress: ProgressSink
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
    listed: dict[str, tuple[dict[str, BlobInfo], dict[str, Any] | None]] = {}
    async for o in ThrottleWork(LIST_PARALLEL).map(lambda item: _list_set(storage, item[0]), labelled):
        if o.error is not None:
            raise o.error  # nothing written yet: the release is all or nothing
        assert o.result is not None
        listed[o.item[0].blob_prefix] = o.result
        progress.advance(files=1)
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
    storage: Storage, name: str, definition: ReleaseDefinition, *, progress: ProgressSink | None = None
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
    records, left_out = await build_records(storage, definition, result.sets, progress)
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
