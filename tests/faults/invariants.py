"""An independent check of what a corpus holds, read straight from storage with the Azure SDK (not the
library's Storage), after faults: the corpus must never lie.

- every local image is stored at its blob name, and the stored bytes (downloaded, not just the listed
  Content-MD5) have the local file's MD5;
- every ``complete`` set has exactly its ImageCount blobs directly under its prefix, each readable with
  the MD5 its listing states, and its ContentDigest is the digest of that listing;
- every tag row belongs to a complete set, and every complete set has its tag rows;
- nothing was stored twice or stray: the blob names are exactly the expected ones.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from azure.data.tables import EntityProperty, TableServiceClient
from azure.storage.blob import BlobServiceClient

from corpus_manager.models import content_digest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif"}


def local_images(root: Path, version: str) -> dict[str, str]:
    """Expected original blob name -> MD5 hex of the local file."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            rel = path.parent.relative_to(root).as_posix()
            prefix = f"original/{rel}/{version}/" if rel != "." else f"original/{version}/"
            out[prefix + path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def read_corpus(conn: str, corpus: str) -> dict[str, Any]:
    """Blobs (name -> listed MD5, size, downloaded MD5 or the read error), set rows and tag rows."""
    blob_service = BlobServiceClient.from_connection_string(conn)
    table_service = TableServiceClient.from_connection_string(conn)
    container = blob_service.get_container_client(corpus)
    blobs: dict[str, dict[str, Any]] = {}
    if container.exists():
        for b in container.list_blobs():
            md5 = b.content_settings.content_md5
            try:
                got = hashlib.md5(container.download_blob(b.name, retry_total=0).readall()).hexdigest()
            except Exception as exc:  # the checker reports it; an unreadable blob is a finding
                got = f"unreadable: {exc.__class__.__name__}"
            blobs[b.name] = {"md5": bytes(md5).hex() if md5 else None, "size": b.size, "read_md5": got}
    names = {t.name for t in table_service.list_tables()}

    def entities(table: str) -> list[dict[str, Any]]:
        if table not in names:
            return []
        # counts and sizes are Edm.Int64, which the SDK reads back as EntityProperty(value, type)
        return [
            {k: v.value if isinstance(v, EntityProperty) else v for k, v in e.items()}
            for e in table_service.get_table_client(table).list_entities()
        ]

    return {"blobs": blobs, "sets": entities(f"{corpus}ImageSets"), "tags": entities(f"{corpus}TagIndex")}


def violations(state: dict[str, Any], expected: dict[str, str], *, transform_prefix: str | None = None) -> list[str]:
    """What is wrong with ``state`` (from ``read_corpus``) given the expected original blobs; [] if nothing.

    ``transform_prefix`` (e.g. ``transform/thumbs/1/``): blobs under it are allowed, as outputs."""
    blobs, sets, tags = state["blobs"], state["sets"], state["tags"]
    out: list[str] = []
    for name, md5 in sorted(expected.items()):
        b = blobs.get(name)
        if b is None:
            out.append(f"local image not stored: {name}")
        elif b["md5"] != md5 or b["read_md5"] != md5:
            out.append(f"stored with the wrong MD5: {name} (local {md5}, listed {b['md5']}, read {b['read_md5']})")
    for name in sorted(blobs):
        if name not in expected and not (transform_prefix and name.startswith(transform_prefix)):
            out.append(f"blob not expected (stray or stored twice): {name}")
        elif blobs[name]["read_md5"] != blobs[name]["md5"]:
            out.append(f"blob unreadable or not its Content-MD5: {name} ({blobs[name]['read_md5']})")
    by_prefix: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for name, b in blobs.items():
        prefix, _, file = name.rpartition("/")
        by_prefix[prefix + "/"][file] = b
    complete = {}
    for row in sets:
        label = f"set {row.get('Path')!r}@{row.get('Version')} ({row.get('PartitionKey')})"
        if row.get("Status") != "complete":
            continue
        complete[row["BlobPrefix"]] = row
        listed = by_prefix.get(row["BlobPrefix"], {})
        if len(listed) != row.get("ImageCount"):
            out.append(f"complete {label} has {len(listed)} blobs, its row says {row.get('ImageCount')}")
        if content_digest((f, b["md5"] or "") for f, b in listed.items()) != row.get("ContentDigest"):
            out.append(f"complete {label}: its blobs do not match its ContentDigest")
        # (tag rows stored but the Indexed flag not yet: a run stopped in between; a rerun or
        # `status --repair` sets it, and queries already find the set)
        if not any(t.get("BlobPrefix") == row["BlobPrefix"] for t in tags):
            out.append(f"complete {label} has no tag rows")
        want = {t.casefold() for t in json.loads(row.get("Tags") or "[]")}
        have = {t["PartitionKey"] for t in tags if t.get("BlobPrefix") == row["BlobPrefix"]}
        if len(have) != len(want):
            out.append(f"complete {label} has {len(have)} tag rows for {len(want)} tags")
    for t in tags:
        if t.get("BlobPrefix") not in complete:
            out.append(f"tag row {t['PartitionKey']!r} for a set that is not complete: {t.get('BlobPrefix')}")
    return out


def summary(state: dict[str, Any]) -> str:
    statuses: dict[str, int] = defaultdict(int)
    for row in state["sets"]:
        statuses[str(row.get("Status"))] += 1
    return f"{len(state['blobs'])} blobs, sets {dict(statuses)}, {len(state['tags'])} tag rows"
