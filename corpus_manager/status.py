"""``corpus status``: what the corpus holds, what is unfinished, and ``--repair`` for the tag index.

One scan of ImageSets and one of ImageTransforms (status is a whole-corpus view; a query is the
cheap path). Reported: sets by status, naming the pending ones (the same upload, rerun, finishes
them; they need the local files) and the complete ones missing their tag rows; images and bytes of
the complete sets; per transform how many of its source sets have a complete output and how many do
not; and every tag with the number of complete sets it finds.

``--repair`` is the explicit, corpus-wide way to index complete sets whose tag rows are missing (a
run killed between completing a set and indexing it, or sets written before the tag index existed).
An upload rerun does the same for the sets of the tree and version it uploads, as a side effect;
``--repair`` needs no local files and also covers transform outputs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptRow
from .models import SOURCE_ORIGINALS, ImageSet, ImageTransform, SetIdentity
from .results import Failure, NullProgress, ProgressSink
from .storage import Storage
from .tagindex import TagIndexWriter
from .throttle import ThrottleWork
from .verify import verify_complete_sets

FAMILY_ORIGINALS = "originals"  # the family of original sets, as the status report names it
Registered = dict[tuple[str, str], tuple[ImageTransform, dict[str, Any]]]  # (name, version) -> row


@dataclass
class TransformStatus:
    name: str
    version: str
    source: str  # "originals" or NAME@TV
    registered: bool = True
    command_line: str = ""
    done: int = 0  # source sets with a complete output
    missing: int = 0  # complete source sets without one
    pending: int = 0  # outputs started and not finished

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "registered": self.registered,
            "command_line": self.command_line,
            "done": self.done,
            "missing": self.missing,
            "pending": self.pending,
        }


@dataclass
class StatusReport:
    corpus: str
    complete: int = 0
    pending: list[str] = field(default_factory=list)  # set labels
    unindexed: list[str] = field(default_factory=list)  # complete sets without tag rows (after any repair)
    images: int = 0
    bytes: int = 0
    originals: int = 0
    outputs: int = 0
    transforms: list[TransformStatus] = field(default_factory=list)
    tags: list[tuple[str, int]] = field(default_factory=list)  # most sets first
    repaired: list[str] = field(default_factory=list)
    problems: list[Failure] = field(default_factory=list)
    verified: int | None = None  # --verify: complete sets whose listing was checked
    demoted: list[str] = field(default_factory=list)  # --verify: complete sets that did not match, now pending
    releases: list[dict[str, Any]] = field(default_factory=list)  # name, images, created (Corpus.status fills it)

    @property
    def exit_code(self) -> int:
        return 1 if self.problems or self.demoted else 0  # a demoted set needs its rerun

    def to_json(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "sets": {
                "complete": self.complete,
                "pending": len(self.pending),
                "unindexed": len(self.unindexed),
                "originals": self.originals,
                "transform_outputs": self.outputs,
            },
            "pending": self.pending,
            "unindexed": self.unindexed,
            "images": self.images,
            "bytes": self.bytes,
            "transforms": [t.to_json() for t in self.transforms],
            "tags": [{"tag": t, "sets": n} for t, n in self.tags],
            "repaired": self.repaired,
            "releases": self.releases,
            "problems": [p.to_json() for p in self.problems],
            # with --verify only: complete sets listed, and those set back to pending ("label: why")
            **({"verified": self.verified, "demoted": self.demoted} if self.verified is not None else {}),
        }


def _family(identity: SetIdentity) -> str:
    return FAMILY_ORIGINALS if identity.is_original else identity.transform_label or ""


def _source_of(registered: dict[str, Any] | None, outputs: list[ImageSet]) -> str:
    """Which family a transform reads: its row's ``Source`` when it records one, else what its outputs
    were made from, else the default (originals)."""
    if registered is not None and registered.get("Source"):
        src = str(registered["Source"])
        return FAMILY_ORIGINALS if src == SOURCE_ORIGINALS else src
    families: Counter[str] = Counter()
    for out in outputs:
        if out.source_set:
            try:
                families[_family(SetIdentity.from_key(out.source_set))] += 1
            except CorruptRow:
                continue
    return families.most_common(1)[0][0] if families else FAMILY_ORIGINALS


async def corpus_status(
    storage: Storage,
    *,
    repair: bool = False,
    verify: bool = False,
    max_parallel_upserts: int = 5,
    progress: ProgressSink | None = None,
) -> StatusReport:
    """``verify``: list every complete set and set back to pending those whose blobs do not match
    their row (see ``verify.py``); the report is of the corpus after that."""
    progress = progress or NullProgress()
    report = StatusReport(storage.corpus)
    sets = await _load_sets(storage, report, progress)
    if verify:
        checked = await verify_complete_sets(storage, sets, progress=progress)
        report.verified, report.demoted = checked.checked, sorted(checked.demoted)
        if checked.demoted:
            report.problems.clear()  # the second read names any corrupt row again
            sets = await _load_sets(storage, report, progress)  # rare: read again what --verify changed
        report.problems.extend(checked.problems)
    registered: Registered = {}
    async for entity in storage.query(storage.transforms):
        try:
            t = ImageTransform.from_entity(entity)
        except CorruptRow as exc:
            report.problems.append(
                Failure(
                    f"{storage.transforms.table_name} ({entity.get('PartitionKey')!r}, {entity.get('RowKey')!r})",
                    str(exc),
                    "corrupt",
                )
            )
            progress.note(str(exc))
            continue
        registered[(t.name, t.version)] = (t, dict(entity))

    complete = [s for s in sets if s.is_complete]
    report.complete = len(complete)
    report.pending = sorted(str(s.identity) for s in sets if not s.is_complete)
    report.images = sum(s.image_count for s in complete)
    report.bytes = sum(s.total_bytes for s in complete)
    report.originals = sum(1 for s in complete if s.identity.is_original)
    report.outputs = report.complete - report.originals

    unindexed = [s for s in complete if not s.indexed]
    if repair and unindexed:
        writer = TagIndexWriter(storage, ThrottleWork(max_parallel_upserts))
        progress.grow(files=len(unindexed))
        for image_set in sorted(unindexed, key=lambda s: s.identity):
            await writer.add(image_set)
            progress.advance(files=1)
        await writer.flush()
        report.repaired = sorted(str(s.identity) for s in writer.indexed)
        for f in writer.failures:
            report.problems.append(Failure(f.item, f.reason, "failed"))
    report.unindexed = sorted(str(s.identity) for s in unindexed if not s.indexed)

    report.transforms = _transform_status(sets, registered)
    report.tags = _tag_counts(complete)
    return report


async def _load_sets(storage: Storage, report: StatusReport, progress: ProgressSink) -> list[ImageSet]:
    sets: list[ImageSet] = []
    async for entity in storage.query(storage.sets):
        try:
            sets.append(ImageSet.from_entity(entity))
        except CorruptRow as exc:
            report.problems.append(
                Failure(
                    f"{storage.sets.table_name} ({entity.get('PartitionKey')!r}, {entity.get('RowKey')!r})",
                    str(exc),
                    "corrupt",
                )
            )
            progress.note(str(exc))
    return sets


def _transform_status(sets: list[ImageSet], registered: Registered) -> list[TransformStatus]:
    by_family: dict[str, list[ImageSet]] = defaultdict(list)
    for s in sets:
        by_family[_family(s.identity)].append(s)
    labels = {(s.identity.transform_name, s.identity.transform_version) for s in sets if not s.identity.is_original}
    out: list[TransformStatus] = []
    for name, version in sorted(labels | set(registered)):
        outputs = by_family.get(f"{name}@{version}", [])
        row = registered.get((name, version))
        source = _source_of(row[1] if row else None, outputs)
        sources = [s for s in by_family.get(source, []) if s.is_complete]
        done_keys = {o.source_set for o in outputs if o.is_complete and o.source_set}
        # outputs without SourceSet (hand-made rows) still match their source by path and version
        done_paths = {(o.path, o.version) for o in outputs if o.is_complete and not o.source_set}
        done = sum(1 for s in sources if s.identity.key in done_keys or (s.path, s.version) in done_paths)
        out.append(
            TransformStatus(
                name,
                version,
                source,
                registered=row is not None,
                command_line=row[0].command_line if row else "",
                done=done,
                missing=len(sources) - done,
                pending=sum(1 for o in outputs if not o.is_complete),
            )
        )
    return out


def _tag_counts(complete: list[ImageSet]) -> list[tuple[str, int]]:
    """Sets per tag, case-insensitively (as queries match), shown in the spelling most sets use."""
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for s in complete:
        for tag in {t.casefold(): t for t in s.tags}.values():
            counts[tag.casefold()] += 1
            spellings[tag.casefold()][tag] += 1
    shown = {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for k, c in spellings.items()}
    return sorted(((shown[k], n) for k, n in counts.items()), key=lambda tn: (-tn[1], tn[0].casefold(), tn[0]))
