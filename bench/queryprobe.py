"""A child of the query suite: run one library query and report what it read, as JSON on stdout.

``corpus query`` prints sets, not its costs, so this runs the same library call
(``Corpus.query``) and reads the Storage's request counters: the entities the query read
(``stats.entity_reads``), its table queries and the partitions it asked for. The query is run
``--repeat`` times in one process after one unrecorded warm-up: the latencies are the table read
itself, without the interpreter start-up a CLI run pays (the suite times that separately).

Usage: ``python bench/queryprobe.py CORPUS [--tag T ...] [--repeat N]``; the storage comes from
AZURE_STORAGE_CONNECTION_STRING, as for `corpus`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run by path: the repo's package

from corpus_manager import Corpus


async def probe(corpus: str, tags: list[str], repeat: int) -> dict[str, object]:
    async with Corpus(corpus) as c:
        await c.query(tags)  # warm-up: connections, the SDK's first-request costs
        runs = []
        for _ in range(repeat):
            stats = c.storage.stats
            before = (stats.entity_reads, stats.table_queries)
            started = time.perf_counter()
            result = await c.query(tags)
            seconds = time.perf_counter() - started
            runs.append(
                {
                    "seconds": seconds,
                    "sets": len(result.sets),
                    "images": result.images,
                    "entity_reads": stats.entity_reads - before[0],
                    "table_queries": stats.table_queries - before[1],
                    "partitions": list(result.partitions_read),
                }
            )
    return {
        "tags": tags,
        "runs": runs,
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "sets": runs[-1]["sets"],
        "images": runs[-1]["images"],
        "entity_reads": runs[-1]["entity_reads"],
        "table_queries": runs[-1]["table_queries"],
        "partitions": runs[-1]["partitions"],
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("corpus")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(json.dumps(asyncio.run(probe(args.corpus, args.tag, args.repeat))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
