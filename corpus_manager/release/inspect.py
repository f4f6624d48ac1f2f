"""``release list``, ``diff`` and ``verify``; and what other commands read of a release (its sets, its
files for ``download --release``).

``verify`` lists each set prefix of the manifest once and compares every entry with the listing
(exists, size, stored Content-MD5). A stored Content-MD5 is whatever the writer claimed, so
``--deep`` also re-reads every byte (``--max-parallel-downloads`` at once, streamed, never a whole blob
in memory) and recomputes the MD5.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, NotFound
from ..models import NAME_RE, SetIdentity
from ..query import QueryFilter, QueryResult, SetRow
from ..results import Failure, NullProgress, ProgressSink
from ..storage import BlobInfo, Storage
from ..throttle import ThrottleWork
from .manifest import Release, blob_prefix_of, list_release_rows, load_release, read_manifest

LIST_PARALLEL = 16


def parse_containing(value: str) -> tuple[str, str | None]:
    """``PATH[@VERSION]`` -> (path, version or None); a path may itself hold '@'."""
    path, sep, version = value.rpartition("@")
    if sep and NAME_RE.match(version):
        return path, version
    return value, None


def _uses(record: dict[str, Any], path: str, version: str | None) -> bool:
    src = record.get("source_set") or {}
    sets = [(record.get("set_path"), record.get("version")), (src.get("path"), src.get("version"))]
    return any(p == path and (version is None or v == version) for p, v in sets)


async def list_releases(storage: Storage, containing: str | None = None) -> list[Release]:
    """Every release, by name; with ``containing`` (``PATH[@VERSION]``) only those using that set,
    directly or through a transform output made from it (each such release's manifest is read)."""
    releases = await list_release_rows(storage)
    if containing is None:
        return releases
    path, version = parse_containing(containing)
    out = []
    for rel in releases:
        if any(_uses(r, path, version) for r in await read_manifest(storage, rel)):
            out.append(rel)
    return out


def _counts(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {
        "labels": dict(sorted(Counter(r["label"] for r in records).items())),
        "splits": dict(sorted(Counter(r["split"] for r in records).items())),
    }


@dataclass
class ReleaseDiff:
    a: str
    b: str
    only_a: list[dict[str, Any]] = field(default_factory=list)
    only_b: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)  # B's records whose MD5 differs from A's
    same: int = 0

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        return {"only_a": _counts(self.only_a), "only_b": _counts(self.only_b), "changed": _counts(self.changed)}

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "only_a": [r["blob_name"] for r in self.only_a],
            "only_b": [r["blob_name"] for r in self.only_b],
            "changed": [r["blob_name"] for r in self.changed],
            "same": self.same,
            "counts": self.counts(),
        }


async def diff_releases(storage: Storage, a: str, b: str) -> ReleaseDiff:
    """Images only in ``a``, only in ``b``, and in both with another MD5 (by blob name)."""
    rel_a, rel_b = await load_release(storage, a), await load_release(storage, b)
    in_a = {r["blob_name"]: r for r in rel_a.records}
    in_b = {r["blob_name"]: r for r in rel_b.records}
    diff = ReleaseDiff(a, b)
    diff.only_a = [r for n, r in in_a.items() if n not in in_b]
    diff.only_b = [r for n, r in in_b.items() if n not in in_a]
    diff.changed = [r for n, r in in_b.items() if n in in_a and in_a[n]["md5"] != r["md5"]]
    diff.same = sum(1 for n, r in in_b.items() if n in in_a and in_a[n]["md5"] == r["md5"])
    return diff


@dataclass
class VerifyReleaseReport:
    release: str
    deep: bool
    images: int = 0
    checked: int = 0
    bytes_read: int = 0
    elapsed: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "deep": self.deep,
            "images": self.images,
            "checked": self.checked,
            "bad": len(self.failures),
            "bytes_read": self.bytes_read,
            "elapsed_seconds": round(self.elapsed, 3),
            "failures": [f.to_json() for f in self.failures],
        }


async def _reread(storage: Storage, record: dict[str, Any]) -> tuple[str, int]:
    h = hashlib.md5(usedforsecurity=False)
    size = 0

    async def take(chunk: bytes) -> None:
        nonlocal size
        h.update(chunk)
        size += len(chunk)

    await storage.download_to(record["blob_name"], take)
    return h.hexdigest(), size


async def verify_release(
    storage: Storage,
    name: str,
    *,
    deep: bool = False,
    max_parallel_downloads: int = 20,
    progress: ProgressSink | None = None,
) -> VerifyReleaseReport:
    """Check every manifest entry against storage; see the module docstring."""
    if max_parallel_downloads < 1:
        raise ConfigError("--max-parallel-downloads must be at least 1")
    progress = progress or NullProgress()
    started = time.perf_counter()
    rel = await load_release(storage, name)
    report = VerifyReleaseReport(name, deep, images=len(rel.records))
    by_prefix: dict[str, list[dict[str, Any]]] = {}
    for r in rel.records:
        by_prefix.setdefault(blob_prefix_of(r["blob_name"]), []).append(r)
    progress.grow(files=len(rel.records), nbytes=rel.bytes if deep else 0)
    listed_ok: list[dict[str, Any]] = []
    async for o in ThrottleWork(LIST_PARALLEL).map(storage.list_prefix, list(by_prefix)):
        records = by_prefix[o.item]
        if o.error is not None:
            report.failures += [Failure(r["blob_name"], f"cannot list {o.item}: {o.error}") for r in records]
            continue
        blobs: dict[str, BlobInfo] = o.result or {}
        for r in records:
            blob = blobs.get(r["blob_name"])
            if blob is None:
                report.failures.append(Failure(r["blob_name"], "missing"))
            elif blob.size != r["bytes"]:
                report.failures.append(Failure(r["blob_name"], f"size {blob.size}, the manifest says {r['bytes']}"))
            elif blob.md5_hex != r["md5"]:
                report.failures.append(
                    Failure(r["blob_name"], f"stored Content-MD5 {blob.md5_hex}, the manifest says {r['md5']}")
                )
            elif deep:
                listed_ok.append(r)  # checked once its bytes are read again
            else:
                report.checked += 1
                progress.advance(files=1)
    if deep:
        async for d in ThrottleWork(max_parallel_downloads).map(lambda r: _reread(storage, r), listed_ok):
            r = d.item
            if d.error is not None:
                why = "missing" if isinstance(d.error, NotFound) else f"cannot read: {d.error}"
                report.failures.append(Failure(r["blob_name"], why))
                continue
            assert d.result is not None
            md5_hex, size = d.result
            report.bytes_read += size
            progress.advance(files=1, nbytes=size)
            if (md5_hex, size) != (r["md5"], r["bytes"]):
                report.failures.append(
                    Failure(
                        r["blob_name"],
                        f"content has MD5 {md5_hex} ({size} bytes), the manifest says {r['md5']} ({r['bytes']} bytes)",
                    )
                )
            else:
                report.checked += 1
    report.failures.sort(key=lambda f: f.item)
    report.elapsed = time.perf_counter() - started
    return report


def release_sets(rel: Release) -> QueryResult:
    """The sets a release uses, as ``corpus query`` lists sets (counts: the release's images of each)."""
    result = QueryResult(QueryFilter())
    rows: dict[str, SetRow] = {}
    for r in rel.records:
        t = r.get("transform") or {}
        ident = SetIdentity(r["set_path"], r["version"], t.get("name", ""), t.get("version", ""))
        row = rows.get(ident.key) or SetRow(ident, tuple(r["tags"]), 0, 0)
        rows[ident.key] = SetRow(ident, row.tags, row.images + 1, row.bytes + r["bytes"])
    result.sets = sorted(rows.values(), key=lambda s: s.sort_key)
    return result
