"""What a report shows, as plain data: ``build_model`` reads the selection and makes the thumbnails; the
templates (``render``) only lay it out, and ``--json`` prints ``ReportModel.to_json()``.

A report is made of *groups*: the sets sharing a path and version, the source first (the original when
selected) and its transform outputs beside it, so each output image sits next to the image it was made
from. Groups are sorted by (path, version), each has an anchor named by a digest (never by user text).
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorpusError
from ..query import QueryFilter, SetRow, query_sets
from ..results import Failure, NullProgress, ProgressSink
from ..storage import BlobInfo, Storage
from ..throttle import ThrottleWork
from .thumbs import ThumbCache, ThumbOutcome

PAGE_SETS = 200  # groups per page: the page stays fast to open however large the corpus
LISTING_PARALLEL = 16


@dataclass
class Cell:
    """One image of a contact sheet: its thumbnail file (relative to the report folder) or a placeholder."""

    blob_name: str
    file_name: str
    thumb: str | None = None  # "thumbs/<md5>.jpg"; None: a placeholder with ``reason``
    width: int = 0
    height: int = 0
    reason: str | None = None
    source_size: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "blob_name": self.blob_name,
            "file_name": self.file_name,
            "thumbnail": self.thumb,
            "placeholder": self.reason,
            "size": list(self.source_size) if self.source_size else None,
        }


@dataclass
class SetSummary:
    row: SetRow
    label: str  # "original" or the transform "NAME@TV"

    def to_json(self) -> dict[str, Any]:
        return self.row.to_json()


@dataclass
class Group:
    """A source set and its transform outputs (same path and version); ``rows``: one per source image
    shown, a cell per column (None: the output has no image for it)."""

    path: str
    version: str
    anchor: str
    sets: list[SetSummary]
    rows: list[list[Cell | None]] = field(default_factory=list)
    page: int = 1

    @property
    def source(self) -> SetSummary:
        return self.sets[0]

    @property
    def columns(self) -> list[str]:
        return [s.label for s in self.sets]

    @property
    def href(self) -> str:
        return f"{page_file(self.page)}#{self.anchor}"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": self.version,
            "anchor": self.anchor,
            "page": page_file(self.page),
            "sets": [s.to_json() for s in self.sets],
            "columns": self.columns,
            "rows": [[c.to_json() if c else None for c in row] for row in self.rows],
        }


@dataclass
class Bar:
    label: str
    value: int
    total: int = 0  # coverage: out of how many; 0: a plain count

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, **({"total": self.total} if self.total else {})}


@dataclass
class ReleaseTable:
    """A release's images per (split, label)."""

    name: str
    splits: list[str]
    labels: list[str]
    counts: dict[tuple[str, str], int]

    @classmethod
    def of(cls, name: str, records: Iterable[Mapping[str, Any]], splits: Sequence[str] = ()) -> ReleaseTable:
        """From a release's manifest records (``split``, ``label``); splits in the definition's order."""
        counts: Counter[tuple[str, str]] = Counter((str(r["split"]), str(r["label"])) for r in records)
        order = list(dict.fromkeys([*splits, *sorted({s for s, _ in counts})]))
        return cls(name, order, sorted({lb for _, lb in counts}), dict(counts))

    def count(self, split: str, label: str) -> int:
        return self.counts.get((split, label), 0)

    def label_total(self, label: str) -> int:
        return sum(self.count(s, label) for s in self.splits)

    def split_total(self, split: str) -> int:
        return sum(self.count(split, lb) for lb in self.labels)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def largest_label(self) -> int:
        return max((self.label_total(lb) for lb in self.labels), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "splits": self.splits,
            "labels": self.labels,
            "counts": {s: {lb: self.count(s, lb) for lb in self.labels} for s in self.splits},
        }


@dataclass
class ReportModel:
    out: str
    per_set: int
    corpus: str = ""
    page_sets: int = PAGE_SETS  # source sets (groups) per page
    groups: list[Group] = field(default_factory=list)
    tag_images: list[Bar] = field(default_factory=list)
    coverage: list[Bar] = field(default_factory=list)
    sizes: list[Bar] = field(default_factory=list)
    release: ReleaseTable | None = None
    thumbs_made: int = 0
    thumbs_cached: int = 0
    placeholders: list[Failure] = field(default_factory=list)  # corrupt or unreadable images, shown as such
    failures: list[Failure] = field(default_factory=list)  # what could not be read at all (a set's listing)
    pages: list[str] = field(default_factory=list)  # written, relative to ``out``; the first is index.html

    @property
    def sets(self) -> int:
        return sum(len(g.sets) for g in self.groups)

    @property
    def images(self) -> int:
        return sum(s.row.images for g in self.groups for s in g.sets)

    @property
    def bytes(self) -> int:
        return sum(s.row.bytes for g in self.groups for s in g.sets)

    @property
    def shown(self) -> int:
        return sum(1 for g in self.groups for row in g.rows for c in row if c is not None)

    @property
    def index(self) -> str:
        return posixpath.join(self.out, "index.html")

    @property
    def page_count(self) -> int:
        return max(1, (len(self.groups) + self.page_sets - 1) // self.page_sets)

    def page_groups(self, page: int) -> list[Group]:
        return self.groups[(page - 1) * self.page_sets : page * self.page_sets]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0  # a placeholder is shown, not failed: the report is whole

    def to_json(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "out": self.out,
            "index": self.index,
            "pages": self.pages,
            "per_set": self.per_set,
            "sets": self.sets,
            "images": self.images,
            "bytes": self.bytes,
            "images_shown": self.shown,
            "thumbnails": {"made": self.thumbs_made, "cached": self.thumbs_cached},
            "tags": [b.to_json() for b in self.tag_images],
            "coverage": [b.to_json() for b in self.coverage],
            "sizes": [b.to_json() for b in self.sizes],
            "release": self.release.to_json() if self.release else None,
            "placeholders": [p.to_json() for p in self.placeholders],
            "failures": [f.to_json() for f in self.failures],
            "groups": [g.to_json() for g in self.groups],
        }


def page_file(page: int) -> str:
    return "index.html" if page == 1 else f"page-{page}.html"


def _anchor(path: str, version: str) -> str:
    # a digest, not the path: '#', '?', '%' or '<' in a set's path never reach an id or href
    return "set-" + hashlib.sha256(f"{path}\0{version}".encode()).hexdigest()[:16]


def group_sets(rows: Sequence[SetRow], page_sets: int = PAGE_SETS) -> list[Group]:
    """Sets grouped by (path, version), the original first then outputs by transform; groups sorted."""
    by_key: dict[tuple[str, str], list[SetRow]] = {}
    for row in rows:
        by_key.setdefault((row.path, row.version), []).append(row)
    groups = []
    for index, ((path, version), members) in enumerate(sorted(by_key.items(), key=lambda kv: kv[0])):
        members.sort(key=lambda r: r.sort_key)  # "" (the original) sorts first
        sets = [SetSummary(r, r.identity.transform_label or "original") for r in members]
        groups.append(Group(path, version, _anchor(path, version), sets, page=index // page_sets + 1))
    return groups


def _image_files(listing: dict[str, BlobInfo], prefix: str) -> dict[str, BlobInfo]:
    return {name[len(prefix) :]: info for name, info in listing.items()}


def _match(file_name: str, files: dict[str, BlobInfo], stems: dict[str, str]) -> str | None:
    """The output file made from source ``file_name``: the same name, or the same stem when a format
    op changed the extension."""
    if file_name in files:
        return file_name
    return stems.get(posixpath.splitext(file_name)[0])


async def _list_sets(storage: Storage, groups: list[Group], failures: list[Failure]) -> dict[str, dict[str, BlobInfo]]:
    """Each set's files (one listing per set), at most LISTING_PARALLEL at once; a set that cannot be
    listed is named in ``failures`` and shown without images."""
    out: dict[str, dict[str, BlobInfo]] = {}

    async def one(row: SetRow) -> dict[str, BlobInfo]:
        return _image_files(await storage.list_prefix(row.blob_prefix), row.blob_prefix)

    async for o in ThrottleWork(LISTING_PARALLEL).map(one, [s.row for g in groups for s in g.sets]):
        if isinstance(o.error, CorpusError):
            failures.append(Failure(str(o.item.identity), f"could not list its images: {o.error}"))
        elif o.error is not None:
            raise o.error
        out[o.item.blob_prefix] = o.result or {}
    return out


async def build_model(
    storage: Storage,
    out: str,
    filters: QueryFilter,
    *,
    per_set: int,
    pool: Executor,
    progress: ProgressSink | None = None,
    rows: Sequence[SetRow] | None = None,
    page_sets: int = PAGE_SETS,
) -> ReportModel:
    """Select the sets (``filters``, or the given ``rows``), list them, make or fetch the thumbnails of
    up to ``per_set`` images per source set and of their outputs, and count what the charts show."""
    progress = progress or NullProgress()
    model = ReportModel(out=out, per_set=per_set, corpus=storage.corpus, page_sets=page_sets)
    if rows is None:
        result = await query_sets(storage, filters)
        model.failures.extend(result.problems)
        rows = result.sets
    model.groups = group_sets(rows, page_sets)
    listings = await _list_sets(storage, model.groups, model.failures)

    cache = ThumbCache(storage, out, pool)
    try:
        await cache.load()  # one listing of the cache prefix, not a request per image
        await _fill(model, listings, cache, per_set, progress)
    finally:
        await cache.close()
    for note in cache.unsaved:
        progress.note(f"thumbnail not cached: {note}")
    model.thumbs_made, model.thumbs_cached = cache.made, cache.cached
    return model


async def _fill(
    model: ReportModel,
    listings: dict[str, dict[str, BlobInfo]],
    cache: ThumbCache,
    per_set: int,
    progress: ProgressSink,
) -> None:
    jobs: list[tuple[Cell, asyncio.Task[ThumbOutcome]]] = []

    def cell(blob: BlobInfo, file_name: str) -> Cell:
        c = Cell(blob.name, file_name)
        jobs.append((c, cache.thumbnail(blob)))
        return c

    for group in model.groups:
        source_files = listings[group.source.row.blob_prefix]
        outputs = [listings[s.row.blob_prefix] for s in group.sets[1:]]
        stems = [{posixpath.splitext(n)[0]: n for n in sorted(files, reverse=True)} for files in outputs]
        for name in sorted(source_files)[:per_set]:
            row: list[Cell | None] = [cell(source_files[name], name)]
            for files, stem_map in zip(outputs, stems, strict=True):
                match = _match(name, files, stem_map)
                row.append(cell(files[match], match) if match is not None else None)
            group.rows.append(row)
    progress.grow(files=len(jobs))

    sizes: Counter[tuple[int, int]] = Counter()
    for c, task in jobs:
        outcome = await task
        progress.advance(files=1)
        c.thumb, c.width, c.height, c.reason = outcome.thumb, outcome.width, outcome.height, outcome.reason
        c.source_size = outcome.source_size
        if outcome.reason is not None:
            model.placeholders.append(Failure(c.blob_name, outcome.reason, kind="corrupt"))
            if outcome.failed:
                model.failures.append(Failure(c.blob_name, outcome.reason))
    for group in model.groups:
        for row in group.rows:
            first = row[0]
            if first is not None and first.source_size is not None:
                sizes[first.source_size] += 1
    model.placeholders.sort(key=lambda f: f.item)
    _charts(model, sizes)


def _charts(model: ReportModel, sizes: Counter[tuple[int, int]]) -> None:
    """Images per tag (over each group's source set, so an output does not count its images twice),
    transform coverage (source sets with an output of each transform) and the shown images' sizes."""
    tags: dict[str, tuple[str, int]] = {}
    for group in model.groups:
        row = group.source.row
        for tag in dict.fromkeys(t.casefold() for t in row.tags):
            shown, count = tags.get(tag, (next(t for t in row.tags if t.casefold() == tag), 0))
            tags[tag] = (shown, count + row.images)
    model.tag_images = [Bar(label, n) for label, n in sorted(tags.values(), key=lambda t: (-t[1], t[0]))]

    sources = [g for g in model.groups if g.source.label == "original"]
    done: Counter[str] = Counter(label for g in sources for label in g.columns[1:])
    labels = sorted({label for g in model.groups for label in g.columns if label != "original"})
    model.coverage = [Bar(label, done[label], len(sources)) for label in labels] if sources else []

    top = sizes.most_common(15)
    model.sizes = [Bar(f"{w}×{h}", n) for (w, h), n in top]
    rest = sum(sizes.values()) - sum(n for _s, n in top)
    if rest:
        model.sizes.append(Bar("other sizes", rest))
