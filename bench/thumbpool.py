"""The report suite's anchor: the same thumbnails from local files in a bare Wand process pool.

The pool and recipe of `corpus report` (``transforms.create_pool`` + ``transforms.thumbnail.make_thumbnail``),
the first PER_SET images (by name) of each directory, as many in flight as the report keeps, and no storage:
read each file, thumbnail it, write it under OUT. Prints the number of thumbnails written.

Usage: ``python bench/thumbpool.py SRC OUT --per-set 12 --workers N``
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run by path: the repo's transforms package

import transforms
from transforms.thumbnail import Thumbnail, make_thumbnail

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IN_FLIGHT = 16  # corpus_manager.report.thumbs.PARALLEL


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--per-set", type=int, default=12)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    by_dir: dict[Path, list[Path]] = {}
    for f in sorted(args.src.rglob("*")):
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            by_dir.setdefault(f.parent, []).append(f)
    files = [f for d in sorted(by_dir) for f in sorted(by_dir[d], key=lambda x: x.name)[: args.per_set]]
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    with transforms.create_pool(args.workers) as pool:
        pending: deque[tuple[int, Future[Thumbnail]]] = deque()

        def drain_one() -> None:
            nonlocal written
            n, fut = pending.popleft()
            (args.out / f"{n}.jpg").write_bytes(fut.result().data)
            written += 1

        for n, f in enumerate(files):
            pending.append((n, pool.submit(make_thumbnail, f.read_bytes())))
            if len(pending) >= IN_FLIGHT:
                drain_one()
        while pending:
            drain_one()
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
