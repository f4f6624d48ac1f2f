"""The read ceiling: the least a client can do to fetch a container's blobs, as a child process of its own.

``python -m bench.bareget DEST --parallel N`` lists the container (List Blobs, pages of 5,000, the names,
sizes and Content-MD5s pulled out of the XML with a regular expression) and GETs every blob with one
hand-built request on a shared aiohttp session, N in flight, hashing the body (every download must be
checked against its Content-MD5, so the floor includes it) and writing it to DEST/<name> with one
open/write/close. No SDK, no retries, no temporary files, no tables: what is left is the HTTP work
Azurite must do anyway, so each contender's fraction of this rate says how much its own overhead costs.

The container URL with its SAS comes in the environment (``BENCH_CONTAINER_URL``), not argv, so it
does not show in ``ps``. This module imports nothing from the rest of the bench (it is timed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import os
import re
import sys
from urllib.parse import quote

SAS_ENV = "BENCH_CONTAINER_URL"
_BLOB = re.compile(rb"<Blob>.*?<Name>(.*?)</Name>.*?<Content-Length>(\d+)</Content-Length>.*?</Blob>", re.S)
_MD5 = re.compile(rb"<Content-MD5>(.*?)</Content-MD5>")
_MARKER = re.compile(rb"<NextMarker>(.*?)</NextMarker>")


async def get_all(dest: str, parallel: int, container_url: str) -> int:
    import aiohttp
    from yarl import URL

    base, _, sas = container_url.partition("?")
    connector = aiohttp.TCPConnector(limit=parallel)
    fetched = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        names: list[tuple[str, str]] = []
        marker = ""
        while True:
            query = f"restype=container&comp=list&maxresults=5000&{sas}"
            if marker:
                query += f"&marker={quote(marker, safe='')}"
            async with session.get(URL(f"{base}?{query}", encoded=True)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"list: HTTP {resp.status}")
            for m in _BLOB.finditer(body):
                md5 = _MD5.search(m.group(0))
                names.append((html.unescape(m.group(1).decode()), md5.group(1).decode() if md5 else ""))
            found = _MARKER.search(body)
            marker = html.unescape(found.group(1).decode()) if found else ""
            if not marker:
                break
        todo = iter(names)
        made: set[str] = set()

        async def worker() -> None:
            nonlocal fetched
            for name, md5 in todo:
                url = URL(f"{base}/{quote(name)}?{sas}", encoded=True)
                h = hashlib.md5(usedforsecurity=False)
                path = os.path.join(dest, name)
                parent = os.path.dirname(path)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                async with session.get(url) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"GET {name}: HTTP {resp.status}")
                    with open(path, "wb") as fh:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            h.update(chunk)
                            fh.write(chunk)
                if md5 and base64.b64encode(h.digest()).decode() != md5:
                    raise RuntimeError(f"GET {name}: MD5 mismatch")
                fetched += 1

        await asyncio.gather(*(worker() for _ in range(parallel)))
    return fetched


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bareget")
    parser.add_argument("dest")
    parser.add_argument("--parallel", type=int, default=32)
    args = parser.parse_args()
    url = os.environ.get(SAS_ENV)
    if not url:
        sys.exit(f"bareget: {SAS_ENV} is not set")
    print(asyncio.run(get_all(args.dest, args.parallel, url)))


if __name__ == "__main__":
    main()
