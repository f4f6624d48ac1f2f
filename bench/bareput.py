"""The physical limit: the least a client can do to store the same files, as a child process of its own.

``python -m bench.bareput SRC --parallel N`` walks SRC, and for each file reads it, computes its
MD5 (every blob the product stores must carry Content-MD5, so the floor includes it) and PUTs it
with one hand-built request on a shared aiohttp session, N in flight. No SDK, no retries, no table
rows: what is left is the HTTP work Azurite must do anyway, so each contender's fraction of this
rate says how much of the machine its own overhead costs. ``--crawl-only`` walks and stats the tree
and nothing else: the floor of a dry-run plan.

The container URL with its SAS comes in the environment (``BENCH_CONTAINER_URL``), not argv, so it
does not show in ``ps``. This module imports nothing from the rest of the bench (it is timed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import sys
from collections.abc import Iterator
from urllib.parse import quote

SAS_ENV = "BENCH_CONTAINER_URL"


def walk(root: str) -> Iterator[tuple[str, str, int]]:
    """(blob name, path, size) of every file under root, '/'-separated names relative to it."""
    stack = [(root, "")]
    while stack:
        path, rel = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                name = f"{rel}{entry.name}"
                if entry.is_dir():
                    stack.append((entry.path, name + "/"))
                else:
                    yield name, entry.path, entry.stat().st_size


async def put_all(root: str, parallel: int, container_url: str) -> int:
    import aiohttp
    from yarl import URL

    base, _, sas = container_url.partition("?")
    files = walk(root)
    stored = 0
    connector = aiohttp.TCPConnector(limit=parallel)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal stored
            # The workers share one iterator: N requests in flight without a task per file.
            for name, path, _size in files:
                with open(path, "rb") as fh:
                    data = fh.read()
                headers = {
                    "x-ms-blob-type": "BlockBlob",
                    "x-ms-blob-content-type": "image/png",
                    "Content-MD5": base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
                }
                url = URL(f"{base}/{quote(name)}?{sas}", encoded=True)
                async with session.put(url, data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 201:
                        raise RuntimeError(f"PUT {name}: HTTP {resp.status}")
                stored += 1

        await asyncio.gather(*(worker() for _ in range(parallel)))
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bareput")
    parser.add_argument("src")
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--crawl-only", action="store_true")
    args = parser.parse_args()
    if args.crawl_only:
        files = sum(1 for _ in walk(args.src))
        print(files)
        return
    url = os.environ.get(SAS_ENV)
    if not url:
        sys.exit(f"{SAS_ENV} is not set")
    print(asyncio.run(put_all(args.src, args.parallel, url)))


if __name__ == "__main__":
    main()
