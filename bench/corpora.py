"""Deterministic benchmark corpora: N directories x M valid, unique images of an exact size.

One real image is made once with ImageMagick (through Wand); every file is that image with a private
ancillary PNG chunk of seeded random bytes inserted before IEND. Decoders skip such a chunk, `corpus
upload`'s sniffing sees a PNG that ends in IEND, every file has its own MD5 (no accidental dedup in
any contender), and 100,000 files take seconds to write instead of 100,000 ImageMagick runs.

A corpus is written once under its spec's directory and reused while its stamp matches, so the rounds
of a run, and later runs, time the upload and not the corpus maker.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Lower-case 1st letter: ancillary (decoders may ignore it); lower-case 2nd: private; upper-case 3rd:
# the reserved bit PNG requires clear; lower-case 4th: safe to copy. ImageMagick and libpng skip it.
PAD_CHUNK = b"beNc"
CHUNK_OVERHEAD = 12  # length + type + CRC
FORMAT_VERSION = 1  # bump when the bytes a spec produces change, so old corpora are rebuilt


@dataclass(frozen=True)
class CorpusSpec:
    """What to make: ``dirs`` directories of ``files_per_dir`` PNGs of exactly ``size`` bytes each."""

    dirs: int
    files_per_dir: int
    size: int
    seed: int = 1

    @property
    def files(self) -> int:
        return self.dirs * self.files_per_dir

    @property
    def total_bytes(self) -> int:
        return self.files * self.size

    @property
    def slug(self) -> str:
        return f"d{self.dirs}-f{self.files_per_dir}-s{self.size}-seed{self.seed}"

    def describe(self) -> str:
        return f"{self.files:,} files of {_human(self.size)} in {self.dirs:,} dirs"


def _human(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KB"
    return f"{n} B"


def base_png() -> bytes:
    """One small real image: a 16x16 gradient written by ImageMagick, metadata stripped.

    Stripping drops ImageMagick's date chunks, which would otherwise make the bytes differ per run.
    """
    from wand.image import Image

    with Image(width=16, height=16, pseudo="gradient:red-blue") as img:
        img.strip()
        img.format = "png"
        return bytes(img.make_blob())


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def split_iend(png: bytes) -> tuple[bytes, bytes]:
    """(everything before the IEND chunk, the IEND chunk); raises if the PNG does not end in IEND."""
    if not png.startswith(PNG_SIGNATURE) or png[-8:-4] != b"IEND":
        raise ValueError("the base image is not a PNG ending in IEND")
    return png[:-CHUNK_OVERHEAD], png[-CHUNK_OVERHEAD:]


def padded_png(head: bytes, iend: bytes, size: int, rng: random.Random) -> bytes:
    """The base image grown to exactly ``size`` bytes by a pad chunk of random bytes before IEND."""
    pad = size - len(head) - len(iend) - CHUNK_OVERHEAD
    if pad < 0:
        raise ValueError(
            f"{size} bytes is smaller than the base image ({len(head) + len(iend)} bytes) plus a pad chunk"
        )
    return head + _chunk(PAD_CHUNK, rng.randbytes(pad)) + iend


def make_corpus(spec: CorpusSpec, parent: Path, *, log: bool = True) -> Path:
    """Write (or reuse) the corpus for ``spec`` under ``parent``; returns its root directory."""
    root = parent / spec.slug
    want = {"format": FORMAT_VERSION, **asdict(spec)}
    # The stamp lies beside the tree, not in it: rclone and AzCopy would upload a file inside it.
    stamp = parent / f"{spec.slug}.json"
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()) == want:
                return root
        except (OSError, ValueError):
            pass
    stamp.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    if log:
        print(f"bench: making corpus {spec.describe()} in {root}", flush=True)
    head, iend = split_iend(base_png())
    rng = random.Random(spec.seed)  # one stream in a fixed order: the same spec gives the same bytes
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    width = len(str(max(spec.dirs, spec.files_per_dir) - 1))
    for d in range(spec.dirs):
        # Two path levels, so the crawl sees nesting and the tags come from more than one component.
        group = tmp / f"g{d % 10}" / f"set{d:0{width}d}"
        group.mkdir(parents=True)
        for f in range(spec.files_per_dir):
            (group / f"img{f:0{width}d}.png").write_bytes(padded_png(head, iend, spec.size, rng))
    # The stamp is written only after the tree is in place, so an interrupted build is never mistaken
    # for a finished one.
    os.replace(tmp, root)
    stamp.write_text(json.dumps(want))
    return root


def check_sample(root: Path) -> None:
    """Decode one file with ImageMagick: the pad chunk must not make the image invalid."""
    from wand.image import Image

    sample = next(root.rglob("*.png"))
    with Image(filename=str(sample)) as img:
        if (img.width, img.height) != (16, 16):
            raise RuntimeError(f"{sample}: decoded as {img.width}x{img.height}, expected 16x16")


# ----- photo-like corpora (the transform suite) --------------------------------------------------
@dataclass(frozen=True)
class PhotoSpec:
    """``dirs`` x ``files_per_dir`` images of ``side`` x ``side`` pixels, photo-like (ImageMagick's
    fractal plasma: smooth regions, edges and fine detail, so decoders, filters and encoders do real
    work), alternately JPEG (quality 90) and 8-bit PNG."""

    dirs: int
    files_per_dir: int
    side: int = 512
    seed: int = 1

    @property
    def files(self) -> int:
        return self.dirs * self.files_per_dir

    @property
    def slug(self) -> str:
        return f"photo-d{self.dirs}-f{self.files_per_dir}-x{self.side}-seed{self.seed}"

    def describe(self) -> str:
        return f"{self.files:,} {self.side}x{self.side} plasma images (JPEG/PNG) in {self.dirs:,} dirs"


def make_photo_corpus(spec: PhotoSpec, parent: Path, convert: str, *, workers: int | None = None) -> Path:
    """Write (or reuse) the photo-like corpus for ``spec`` under ``parent``; returns its root.

    ``convert -seed N plasma:fractal`` is deterministic for a given ImageMagick (Wand cannot seed
    ImageMagick 6's generator), so one fork per image, once; the corpus is then reused while its stamp
    matches."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    root = parent / spec.slug
    want = {"format": FORMAT_VERSION, "kind": "photo", **asdict(spec)}
    stamp = parent / f"{spec.slug}.json"
    if stamp.exists() and root.is_dir():
        try:
            if json.loads(stamp.read_text()) == want:
                return root
        except (OSError, ValueError):
            pass
    stamp.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    print(f"bench: making corpus {spec.describe()} in {root}", flush=True)
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    jobs: list[list[str]] = []
    for d in range(spec.dirs):
        group = tmp / f"g{d % 4}" / f"set{d:03d}"
        group.mkdir(parents=True)
        for f in range(spec.files_per_dir):
            n = spec.seed * 1_000_003 + d * spec.files_per_dir + f
            ext, opts = (".jpg", ["-quality", "90"]) if f % 2 == 0 else (".png", ["-depth", "8"])
            out = group / f"img{f:03d}{ext}"
            jobs.append(
                [
                    convert,
                    "-seed",
                    str(n),
                    "-size",
                    f"{spec.side}x{spec.side}",
                    "plasma:fractal",
                    "-strip",
                    *opts,
                    str(out),
                ]
            )
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for argv, done in zip(jobs, pool.map(lambda a: subprocess.run(a, capture_output=True), jobs), strict=True):
            if done.returncode != 0:
                raise RuntimeError(f"{argv[-1]}: convert failed: {done.stderr.decode(errors='replace')[:300]}")
    os.replace(tmp, root)
    stamp.write_text(json.dumps(want))
    return root
