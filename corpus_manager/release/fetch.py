"""``corpus download --release NAME [--split S] [--layout blob|imagefolder]``.

The release's manifest gives every file's blob name, MD5 and size, so nothing is listed: the items go
straight to ``download.download_items`` (the same rerun semantics, MD5 checks against the MD5 the
release pinned, ``--out`` confinement and ``--manifest`` as any download).

``imagefolder`` lays files out as ``{split}/{label}/{file}`` (torchvision's ImageFolder, Keras'
``image_dataset_from_directory``). Two sets with the same label can both hold ``img001.jpg``: within
one ``{split}/{label}`` folder, every file whose name (case-folded, for case-insensitive file systems)
is shared by another gets the prefix ``{h}_``, ``h`` the first 10 hex digits of the sha256 of its blob
name (which holds its set's identity), so even ``A.png`` and ``a.png`` of one set stay apart. The
names depend only on the release's records (immutable), never on ``--split``: identical on every run.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..download import DownloadItem, DownloadReport, FileRecord, check_download_args, download_items
from ..errors import ConfigError
from ..results import NullProgress, ProgressSink
from ..storage import Storage
from .manifest import Release, blob_prefix_of, load_release

LAYOUTS = ("blob", "imagefolder")


@dataclass
class ReleaseFileRecord(FileRecord):
    """A downloaded file of a release: the download record plus its label and split."""

    label: str = ""
    split: str = ""


def imagefolder_targets(records: list[dict[str, Any]]) -> dict[str, str]:
    """blob name -> ``{split}/{label}/{file}`` for every record of the release (see the module docstring)."""
    leaf = {r["blob_name"]: r["blob_name"].rpartition("/")[2] for r in records}
    shared = Counter((r["split"], r["label"], leaf[r["blob_name"]].casefold()) for r in records)
    out = {}
    for r in records:
        name = leaf[r["blob_name"]]
        if shared[(r["split"], r["label"], name.casefold())] > 1:
            name = hashlib.sha256(r["blob_name"].encode()).hexdigest()[:10] + "_" + name
        out[r["blob_name"]] = f"{r['split']}/{r['label']}/{name}"
    return out


def release_items(rel: Release, split: str | None = None, layout: str = "blob") -> list[DownloadItem]:
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: use 'blob' or 'imagefolder'")
    if split is not None and split not in rel.splits:
        raise ConfigError(f"--split {split!r}: release {rel.name} has the splits {', '.join(rel.splits)}")
    targets = imagefolder_targets(rel.records) if layout == "imagefolder" else {}
    items = []
    for r in rel.records:
        if split is not None and r["split"] != split:
            continue
        t = r.get("transform") or {}
        record = ReleaseFileRecord(
            local_path="",
            blob_name=r["blob_name"],
            set_path=r["set_path"],
            tags=list(r["tags"]),
            version=r["version"],
            transform_name=t.get("name", ""),
            transform_version=t.get("version", ""),
            bytes=r["bytes"],
            md5=r["md5"],
            label=r["label"],
            split=r["split"],
        )
        target = targets.get(r["blob_name"], r["blob_name"])
        items.append(DownloadItem(r["blob_name"], r["md5"], r["bytes"], target, record, pinned=True))
    return items


async def download_release(
    storage: Storage,
    name: str,
    out: str,
    *,
    split: str | None = None,
    layout: str = "blob",
    manifest: str | None = None,
    max_parallel_downloads: int = 20,
    progress: ProgressSink | None = None,
    report: DownloadReport | None = None,
) -> DownloadReport:
    """Download release ``name`` (or its ``split``) into ``out`` in ``layout``."""
    check_download_args(out, manifest, max_parallel_downloads)
    progress = progress or NullProgress()
    rel = await load_release(storage, name)
    items = release_items(rel, split, layout)
    report = report if report is not None else DownloadReport(out=out)
    report.sets = len({blob_prefix_of(i.blob_name) for i in items})
    report.files_selected = len(items)
    progress.grow(files=len(items), nbytes=sum(i.size for i in items))
    return await download_items(
        storage,
        items,
        out,
        manifest=manifest,
        max_parallel_downloads=max_parallel_downloads,
        progress=progress,
        report=report,
    )
