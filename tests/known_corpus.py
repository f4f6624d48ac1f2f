"""A small corpus with known contents for the query, download and status tests.

Originals uploaded through the library (v1 and v2), one transform output and a pending set written
directly through Storage (transform jobs are built elsewhere; the rows follow the same lifecycle:
blobs, then the complete row, then tag rows), a registered transform.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from corpus_manager import Corpus
from corpus_manager.models import COMPLETE, PENDING, ImageSet, ImageTransform, SetIdentity, content_digest
from corpus_manager.storage import Storage
from corpus_manager.tagindex import TagIndexWriter
from corpus_manager.throttle import ThrottleWork

from .conftest import image_bytes, write_image
from .helpers import run

T = TypeVar("T")

V1_FILES = {
    "red/angry/robin/a.png": "red",
    "red/angry/robin/b.png": "orange",
    "red/angry/c.png": "maroon",
    "red/calm/robin/e.png": "pink",
    "Blue/sky/d.png": "blue",
    "top.png": "green",
}
V2_FILES = {"red/angry/robin/a.png": "purple"}
CHARCOAL_FILES = {"a.png": "gray", "b.png": "silver"}


async def add_set(
    storage: Storage,
    identity: SetIdentity,
    tags: list[str],
    files: dict[str, bytes],
    *,
    status: str = COMPLETE,
    source_set: str = "",
    index: bool = True,
) -> ImageSet:
    """A set written the way the pipeline writes one: blobs first, then its row, then its tag rows."""
    for fname, data in files.items():
        await storage.put_blob(
            identity.blob_name(fname), data, content_type="image/png", md5=hashlib.md5(data).digest()
        )
    pairs = [(f, hashlib.md5(d).hexdigest()) for f, d in files.items()]
    image_set = ImageSet(
        identity,
        tags=tags,
        status=status,
        image_count=len(files) if status == COMPLETE else 0,
        total_bytes=sum(len(d) for d in files.values()) if status == COMPLETE else 0,
        content_digest=content_digest(pairs) if status == COMPLETE else "",
        source_set=source_set,
    )
    image_set.etag = await storage.create_entity(storage.sets, image_set.to_entity())
    if index and status == COMPLETE:
        writer = TagIndexWriter(storage, ThrottleWork(4))
        await writer.add(image_set)
        await writer.flush()
        assert writer.failures == [], writer.failures
    return image_set


@dataclass
class KnownCorpus:
    conn: str
    name: str
    v1: Path
    v2: Path
    sizes: dict[str, int]  # blob name -> bytes

    @property
    def env(self) -> dict[str, str | None]:
        """For CliRunner.invoke: this corpus on this Azurite, whatever the outer environment says."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.conn, "CORPUS_NAME": self.name, "CORPUS_ACCOUNT_URL": None}

    def local(self, blob_name: str) -> bytes:
        """The bytes a blob was made from."""
        parts = blob_name.split("/")
        if parts[0] == "original":
            version, rel = parts[-2], "/".join(parts[1:-2] + parts[-1:])
            return ((self.v1 if version == "v1" else self.v2) / rel).read_bytes()
        return image_bytes(color=CHARCOAL_FILES[parts[-1]])


def build_known_corpus(conn: str, tmp: Path, name: str | None = None) -> KnownCorpus:
    name = name or "k" + uuid.uuid4().hex[:12]
    v1, v2 = tmp / "v1", tmp / "v2"
    for rel, color in V1_FILES.items():
        write_image(v1 / rel, color=color)
    for rel, color in V2_FILES.items():
        write_image(v2 / rel, color=color)

    async def fill(c: Corpus) -> None:
        for root, version in ((v1, "v1"), (v2, "v2")):
            report = await c.upload(str(root), version)
            assert report.ok, report.failures
        storage = c.storage
        source = SetIdentity("red/angry/robin", "v1")
        await add_set(
            storage,
            source.derived("charcoal", "1"),
            ["red", "angry", "robin"],
            {f: image_bytes(color=col) for f, col in CHARCOAL_FILES.items()},
            source_set=source.key,
        )
        transform = ImageTransform("charcoal", "1", '[{"op":"charcoal","arg":"2"}]', "d" * 64, "charcoal=2")
        await storage.create_entity(storage.transforms, transform.to_entity())
        await add_set(
            storage, SetIdentity("red/wip", "v1"), ["red", "wip"], {"w.png": image_bytes(color="white")}, status=PENDING
        )

    run(conn, name, fill)
    sizes = {}
    for root, version in ((v1, "v1"), (v2, "v2")):
        for p in root.rglob("*.png"):
            rel = p.relative_to(root)
            parent = "/".join(rel.parts[:-1])
            sizes["/".join(filter(None, ("original", parent, version, rel.name)))] = p.stat().st_size
    for f, col in CHARCOAL_FILES.items():
        sizes[f"transform/charcoal/1/red/angry/robin/v1/{f}"] = len(image_bytes(color=col))
    return KnownCorpus(conn, name, v1, v2, sizes)


def set_bytes(known: KnownCorpus, prefix: str) -> int:
    """Bytes of the blobs directly under a set prefix."""
    return sum(n for b, n in known.sizes.items() if b.startswith(prefix) and "/" not in b[len(prefix) :])
