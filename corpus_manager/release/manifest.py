"""A stored release: its row in NAME`Releases` and its manifest blob ``releases/NAME/manifest.jsonl``.

Row: PartitionKey ``release`` (one partition: releases are few, ``release list`` reads it whole),
RowKey the release NAME (its pattern has no character Table Storage forbids in a key). Properties:
``Definition`` (canonical JSON), ``DefinitionDigest``, ``ManifestBlob``, ``ManifestDigest`` (sha256 of
the manifest's bytes), ``ImageCount``, ``TotalBytes``, ``SetCount`` (Int64), ``Splits``, ``Labels``,
``LeftOut`` (JSON counts), ``CreatedAt`` (ISO 8601, UTC).

Manifest: one JSON object per image, in the order (set path, version, transform, file name), with
``blob_name``, ``md5`` (hex), ``bytes``, ``label``, ``split``, ``tags``, ``set_path``, ``version``,
``transform`` (``{"name","version"}`` or null) and, for a transform output, ``source_set``: the set it
was made from (``{"path","version","transform"}``), so the originals behind a release are in its
manifest. ``load_release`` and ``read_manifest`` are the public way to read both (export, report and
training build on them); the manifest is checked against the row's sha256 before use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, CorpusError, CorruptRow, NotFound
from ..storage import Storage
from .definition import ReleaseDefinition, check_release_name

PARTITION = "release"
MANIFEST_CONTENT_TYPE = "application/x-ndjson"


def manifest_blob_name(name: str) -> str:
    return f"releases/{name}/manifest.jsonl"


def manifest_bytes(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()


def set_label(record: dict[str, Any]) -> str:
    """A record's set, as ``status`` and ``query`` name sets: ``path@version [name@tv]``."""
    t = record.get("transform")
    where = record.get("set_path") or "(root)"
    return f"{where}@{record.get('version')}" + (f" [{t['name']}@{t['version']}]" if t else "")


def blob_prefix_of(blob_name: str) -> str:
    return blob_name.rpartition("/")[0] + "/"


@dataclass
class Release:
    """A release's row, and its manifest records once read (``records``; iterate the release for them)."""

    name: str
    created: str
    definition: dict[str, Any]
    definition_digest: str
    images: int
    bytes: int
    sets: int
    splits: dict[str, int]
    labels: dict[str, int]
    left_out: dict[str, int]
    manifest_blob: str
    manifest_sha256: str
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    @property
    def parsed_definition(self) -> ReleaseDefinition:
        return ReleaseDefinition.from_json(self.definition)

    def set_labels(self) -> list[str]:
        """The sets the release uses, in manifest order (needs ``records``)."""
        return list(dict.fromkeys(set_label(r) for r in self.records))

    def transforms(self) -> list[str]:
        return sorted({f"{t['name']}@{t['version']}" for r in self.records if (t := r.get("transform"))})

    def source_sets(self) -> list[str]:
        """The sets the release's transform outputs were made from (its originals, for one-step transforms)."""
        out = {set_label({"set_path": s.get("path"), **s}) for r in self.records if (s := r.get("source_set"))}
        return sorted(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created": self.created,
            "definition": self.definition,
            "images": self.images,
            "bytes": self.bytes,
            "splits": self.splits,
            "labels": self.labels,
            "manifest_blob": self.manifest_blob,
            "manifest_sha256": self.manifest_sha256,
        }

    def to_entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": PARTITION,
            "RowKey": self.name,
            "Definition": json.dumps(self.definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            "DefinitionDigest": self.definition_digest,
            "ManifestBlob": self.manifest_blob,
            "ManifestDigest": self.manifest_sha256,
            "ImageCount": self.images,
            "TotalBytes": self.bytes,
            "SetCount": self.sets,
            "Splits": json.dumps(self.splits, ensure_ascii=False),
            "Labels": json.dumps(self.labels, ensure_ascii=False),
            "LeftOut": json.dumps(self.left_out, ensure_ascii=False),
            "CreatedAt": self.created,
        }

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> Release:
        name = str(entity.get("RowKey", ""))
        try:
            return cls(
                name=name,
                created=str(entity["CreatedAt"]),
                definition=json.loads(entity["Definition"]),
                definition_digest=str(entity["DefinitionDigest"]),
                images=int(entity["ImageCount"]),
                bytes=int(entity["TotalBytes"]),
                sets=int(entity.get("SetCount") or 0),
                splits=json.loads(entity["Splits"]),
                labels=json.loads(entity["Labels"]),
                left_out=json.loads(entity.get("LeftOut") or "{}"),
                manifest_blob=str(entity["ManifestBlob"]),
                manifest_sha256=str(entity["ManifestDigest"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptRow(f"Releases row {name!r} is corrupt: {exc.__class__.__name__}: {exc}") from None


async def get_release_row(storage: Storage, name: str) -> Release | None:
    entity = await storage.get_entity(storage.releases, PARTITION, name)  # None too when no table yet
    return Release.from_entity(entity) if entity is not None else None


async def read_manifest(storage: Storage, release: Release) -> list[dict[str, Any]]:
    """The manifest's records, checked against the row's sha256; fills ``release.records``."""
    try:
        data, _ = await storage.get_blob(release.manifest_blob)
    except NotFound:
        raise CorpusError(
            f"release {release.name}: its manifest blob {release.manifest_blob} is missing "
            "(deleted outside the tool); the release cannot be read"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != release.manifest_sha256:
        raise CorpusError(
            f"release {release.name}: its manifest blob {release.manifest_blob} has sha256 {digest}, "
            f"not the {release.manifest_sha256} its row records (changed outside the tool)"
        )
    release.records = [json.loads(line) for line in data.decode().splitlines() if line]
    return release.records


async def load_release(storage: Storage, name: str, *, records: bool = True) -> Release:
    """The release NAME (ConfigError, exit 2, if there is none), with its manifest records unless
    ``records=False``."""
    check_release_name(name)
    release = await get_release_row(storage, name)
    if release is None:
        raise ConfigError(f"release {name!r} does not exist in corpus {storage.corpus!r} (see `corpus release list`)")
    if records:
        await read_manifest(storage, release)
    return release


async def list_release_rows(storage: Storage) -> list[Release]:
    """Every release row, sorted by name; none when no release was ever made (no table yet)."""
    out: list[Release] = []
    try:
        async for entity in storage.query(storage.releases):
            out.append(Release.from_entity(entity))
    except NotFound:
        return []
    return sorted(out, key=lambda r: r.name)
