"""Contender (b) of the transform suite: the compute limit, a Wand process pool on local files.

The same pool and worker as `corpus transform` (``transforms.create_pool`` and ``apply_spec``: spawn
context, the safety policy, one ImageMagick thread per process), the same bounded number of images in
flight, and no storage at all: read each file, transform it in the pool, write the result under OUT.
Prints the number of images written.

Usage: ``python bench/wandpool.py SRC OUT --workers N --op resize=256x256 --op charcoal=1``
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

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--op", action="append", required=True)
    args = p.parse_args()
    spec = transforms.spec_from_args(args.op, None)
    spec_json = spec.canonical_json()
    files = sorted(f for f in args.src.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
    window = max(2, args.workers * 3)  # what `corpus transform` keeps in flight
    written = 0
    with transforms.create_pool(args.workers) as pool:
        pending: deque[tuple[Path, Future[transforms.TransformResult]]] = deque()

        def drain_one() -> None:
            nonlocal written
            rel, fut = pending.popleft()
            result = fut.result()
            target = args.out / transforms.output_name(str(rel), spec)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(result.data)
            written += 1

        for f in files:
            rel = f.relative_to(args.src)
            pending.append((rel, pool.submit(transforms.apply_spec, spec_json, f.read_bytes(), str(rel))))
            if len(pending) >= window:
                drain_one()
        while pending:
            drain_one()
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
