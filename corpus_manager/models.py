"""ImageSet and ImageTransform: identities, Table keys, blob prefixes, and rows in both directions."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptRow, InvalidName
from .keys import FIELD_SEP, SET_SEP, check_key, escape, unescape

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_BLOB_NAME = 1024
# os.fsdecode turns each byte of a name that is not UTF-8 into a lone surrogate
_NOT_UTF8 = re.compile("[\ud800-\udfff]")
# backslash, C0 controls, DEL, C1 controls, and the 66 Unicode noncharacters (see name_problem)
_BAD_NAME_CHAR = re.compile(
    "[\\\\\x00-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(f"{chr(p + 0xFFFE)}{chr(p + 0xFFFF)}" for p in range(0, 0x110000, 0x10000))
    + "]"
)
PENDING = "pending"
COMPLETE = "complete"
ORIGINAL_PARTITION = "original"  # the ImageSets partition (and blob prefix) of original sets
SOURCE_ORIGINALS = "original"  # a transform's Source (ImageTransform row) when it reads original sets


def check_name(value: str, what: str) -> str:
    """Versions, transform names and transform versions: `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidName(
            f"{what} {value!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def name_problem(name: str) -> str | None:
    """Why one local file or directory name cannot be part of a blob name, or None when it round-trips.

    Decided once for every blob name (keys.py escapes table keys instead): such names are refused at
    upload, never escaped, so a blob name always reads back as the local path it came from. Refused:
    bytes that are not UTF-8 (lone surrogates after os.fsdecode); ``\\``, which Azure and Azurite
    store as ``/``; control characters (C0, DEL, C1), which Azure refuses in blob names and most of
    which Azurite stores but cannot list (HTTP 500 for the whole prefix; tab, newline and CR list on
    Azurite, but not being portable they are refused too); and Unicode noncharacters (U+FFFE and
    U+FFFF break Azurite's listings like controls do).
    """
    if _NOT_UTF8.search(name):
        return "name is not valid UTF-8 (rename it)"
    bad = _BAD_NAME_CHAR.search(name)
    if bad is None:
        return None
    ch = bad.group()
    if ch == "\\":
        return "name contains a backslash, which Azure Blob Storage stores as '/' (rename it)"
    if ord(ch) <= 0x9F:
        return (
            f"name contains the control character U+{ord(ch):04X}, which Azure Blob Storage refuses in "
            "blob names (rename it)"
        )
    return f"name contains the Unicode noncharacter U+{ord(ch):04X}, which is not for interchange (rename it)"


def tags_for(rel_dir: str) -> list[str]:
    """Tags are the path's components: trimmed, empties dropped, repeats (case-insensitive) dropped, order kept."""
    seen: set[str] = set()
    tags: list[str] = []
    for part in rel_dir.split("/"):
        tag = part.strip()
        if tag and tag.casefold() not in seen:
            seen.add(tag.casefold())
            tags.append(tag)
    return tags


def set_partition(transform_name: str = "", transform_version: str = "") -> str:
    """The ImageSets partition of a family of sets: the originals (no transform), or one transform
    version's outputs. Planning a transform reads two partitions instead of the whole table."""
    if not transform_name:
        return ORIGINAL_PARTITION
    return FIELD_SEP.join(("transform", transform_name, transform_version))


@dataclass(frozen=True, order=True)
class SetIdentity:
    """(dir, version, transform name, transform version); the transform is empty for originals."""

    path: str
    version: str
    transform_name: str = ""
    transform_version: str = ""

    def __post_init__(self) -> None:
        check_name(self.version, "version")
        if self.transform_name or self.transform_version:
            check_name(self.transform_name, "transform name")
            check_name(self.transform_version, "transform version")
        if self.path.startswith("/") or self.path.endswith("/") or "//" in self.path:
            raise InvalidName(f"set path {self.path!r} must be relative, '/'-separated, without empty segments")
        if any(seg in (".", "..") for seg in self.path.split("/")):
            raise InvalidName(f"set path {self.path!r} has a '.' or '..' segment")
        # the longest key the set will need (its TagIndex RowKey), checked now: a set too long for Table
        # Storage fails before its first blob, not when its row or tag rows are written
        check_key(escape(self.key), f"set path {self.path!r}")

    @property
    def is_original(self) -> bool:
        return not self.transform_name

    @property
    def partition_key(self) -> str:
        return set_partition(self.transform_name, self.transform_version)

    @property
    def row_key(self) -> str:
        # version has no '|', so the last '|' splits the key unambiguously
        return check_key(escape(self.path) + FIELD_SEP + self.version, f"set path {self.path!r}")

    @property
    def key(self) -> str:
        """One string naming the set (used for SourceSet and the TagIndex RowKey)."""
        return self.partition_key + SET_SEP + self.row_key

    @property
    def blob_prefix(self) -> str:
        parts = [] if self.is_original else ["transform", self.transform_name, self.transform_version]
        if self.is_original:
            parts.append("original")
        if self.path:
            parts.append(self.path)
        parts.append(self.version)
        return "/".join(parts) + "/"

    def blob_name(self, file_name: str) -> str:
        problem = name_problem(file_name)
        if problem is not None:
            raise InvalidName(f"file {file_name!r}: {problem}")
        name = self.blob_prefix + file_name
        if len(name) > MAX_BLOB_NAME:
            raise InvalidName(
                f"blob name for {self.path}/{file_name} is {len(name)} characters; the limit is {MAX_BLOB_NAME}"
            )
        return name

    def derived(self, transform_name: str, transform_version: str) -> SetIdentity:
        return SetIdentity(self.path, self.version, transform_name, transform_version)

    @property
    def transform_label(self) -> str | None:
        return f"{self.transform_name}@{self.transform_version}" if self.transform_name else None

    def __str__(self) -> str:
        where = self.path or "(root)"
        label = f" [{self.transform_label}]" if self.transform_name else ""
        return f"{where}@{self.version}{label}"

    @classmethod
    def from_keys(cls, partition_key: str, row_key: str) -> SetIdentity:
        esc_path, sep, version = row_key.rpartition(FIELD_SEP)
        if not sep:
            raise CorruptRow(f"ImageSets row key {row_key!r} has no version part")
        if partition_key == ORIGINAL_PARTITION:
            return cls(unescape(esc_path), version)
        kind, _, rest = partition_key.partition(FIELD_SEP)
        name, _, tversion = rest.partition(FIELD_SEP)
        if kind != "transform" or not name or not tversion:
            raise CorruptRow(f"ImageSets partition key {partition_key!r} is neither 'original' nor a transform")
        return cls(unescape(esc_path), version, name, tversion)

    @classmethod
    def from_key(cls, key: str) -> SetIdentity:
        pk, sep, rk = key.partition(SET_SEP)
        if not sep:
            raise CorruptRow(f"set key {key!r} is malformed")
        return cls.from_keys(pk, rk)


def content_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 over the sorted (file name, MD5 hex) pairs: equal exactly when the set's content is equal."""
    h = hashlib.sha256()
    for name, md5_hex in sorted(pairs):
        h.update(name.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        h.update(md5_hex.encode())
        h.update(b"\n")
    return h.hexdigest()


class OfIdentity:
    """A row about one set (an ImageSets row, a query result line): its identity's parts, read through."""

    identity: SetIdentity

    @property
    def path(self) -> str:
        return self.identity.path

    @property
    def version(self) -> str:
        return self.identity.version

    @property
    def transform_name(self) -> str:
        return self.identity.transform_name

    @property
    def transform_version(self) -> str:
        return self.identity.transform_version

    @property
    def blob_prefix(self) -> str:
        return self.identity.blob_prefix


@dataclass
class ImageSet(OfIdentity):
    """One row of the ImageSets table."""

    identity: SetIdentity
    tags: list[str] = field(default_factory=list)
    status: str = PENDING
    image_count: int = 0
    total_bytes: int = 0
    content_digest: str = ""
    source_set: str = ""
    indexed: bool = False
    etag: str | None = None

    @property
    def is_complete(self) -> bool:
        return self.status == COMPLETE

    def to_entity(self) -> dict[str, Any]:
        ident = self.identity
        return {
            "PartitionKey": ident.partition_key,
            "RowKey": ident.row_key,
            "Path": ident.path,
            "Version": ident.version,
            "Tags": json.dumps(self.tags, ensure_ascii=False),
            "BlobPrefix": ident.blob_prefix,
            "TransformName": ident.transform_name,
            "TransformVersion": ident.transform_version,
            "SourceSet": self.source_set,
            "ImageCount": int(self.image_count),
            "TotalBytes": int(self.total_bytes),
            "ContentDigest": self.content_digest,
            "Status": self.status,
            "Indexed": bool(self.indexed),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> ImageSet:
        pk, rk = entity.get("PartitionKey", ""), entity.get("RowKey", "")
        try:
            identity = SetIdentity.from_keys(pk, rk)
            tags = json.loads(entity.get("Tags") or "[]")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ValueError("Tags is not a JSON list of strings")
            status = entity.get("Status")
            if status not in (PENDING, COMPLETE):
                raise ValueError(f"Status {status!r} is neither pending nor complete")
            return cls(
                identity=identity,
                tags=tags,
                status=status,
                image_count=int(entity.get("ImageCount") or 0),
                total_bytes=int(entity.get("TotalBytes") or 0),
                content_digest=str(entity.get("ContentDigest") or ""),
                source_set=str(entity.get("SourceSet") or ""),
                indexed=bool(entity.get("Indexed", False)),
                etag=_etag_of(entity),
            )
        except (InvalidName, ValueError, TypeError) as exc:
            raise CorruptRow(f"ImageSets row ({pk!r}, {rk!r}) is corrupt: {exc}") from None
        except CorruptRow as exc:
            raise CorruptRow(f"ImageSets row ({pk!r}, {rk!r}) is corrupt: {exc}") from None


def _etag_of(entity: Mapping[str, Any]) -> str | None:
    return getattr(entity, "etag", None)  # a row as storage read it (storage.Row) carries its ETag


@dataclass
class ImageTransform:
    """One row of the ImageTransforms table: a named, versioned, immutable recipe."""

    name: str
    version: str
    spec: str  # canonical JSON
    spec_digest: str
    command_line: str
    created_at: str = ""
    imagemagick_version: str = ""
    source: str = SOURCE_ORIGINALS  # 'original' or the NAME@TV whose outputs it reads: part of the recipe

    def __post_init__(self) -> None:
        check_name(self.name, "transform name")
        check_name(self.version, "transform version")

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def to_entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": self.name,
            "RowKey": self.version,
            "Spec": self.spec,
            "SpecDigest": self.spec_digest,
            "CommandLine": self.command_line,
            "CreatedAt": self.created_at,
            "ImageMagickVersion": self.imagemagick_version,
            "Source": self.source,
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> ImageTransform:
        try:
            return cls(
                name=entity["PartitionKey"],
                version=entity["RowKey"],
                spec=entity["Spec"],
                spec_digest=entity["SpecDigest"],
                command_line=entity.get("CommandLine", ""),
                created_at=str(entity.get("CreatedAt", "")),
                imagemagick_version=entity.get("ImageMagickVersion", ""),
                source=entity.get("Source") or SOURCE_ORIGINALS,
            )
        except (KeyError, InvalidName) as exc:
            raise CorruptRow(
                f"ImageTransforms row ({entity.get('PartitionKey')!r}, {entity.get('RowKey')!r}) is corrupt: {exc}"
            ) from None


def tag_partition(tag: str) -> str:
    return check_key(escape(tag.casefold()), f"tag {tag!r}")


def tag_rows(image_set: ImageSet) -> list[dict[str, Any]]:
    """TagIndex rows: one per (tag, set), carrying what a query result line needs."""
    ident = image_set.identity
    rows = []
    for tag in image_set.tags:
        rows.append(
            {
                "PartitionKey": tag_partition(tag),
                "RowKey": check_key(escape(ident.key), f"set {ident}"),
                "Tag": tag,
                "Path": ident.path,
                "Version": ident.version,
                "Tags": json.dumps(image_set.tags, ensure_ascii=False),
                "TransformName": ident.transform_name,
                "TransformVersion": ident.transform_version,
                "BlobPrefix": ident.blob_prefix,
                "ImageCount": image_set.image_count,
                "TotalBytes": image_set.total_bytes,
                "ContentDigest": image_set.content_digest,
            }
        )
    return rows
