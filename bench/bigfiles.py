"""The big-files suite (issue 11.2): `python -m bench --suite bigfiles`.

1. The threshold probe: one Put Blob against blocks (``Storage.put_blocks``: 8 MiB Put Blocks, 4 in
   flight per file, then Put Block List), in this process, for files of 2 to 64 MiB, 8 files at once,
   alternating, ``--rounds`` rounds: MB/s and client CPU per way and size. It is what
   ``storage.BLOCK_THRESHOLD`` was chosen from (see the comment there).
2. Three 800 MB images (valid PNGs: a real 16x16 image and a private chunk of seeded random bytes), one
   per directory: `corpus upload` beside `rclone copy` (``--transfers N --checkers N``, rclone's own
   multipart defaults), the same files, the same Azurite, a fresh container each, the order alternated
   each round. Measured through bench/launch.py: wall, client CPU, peak RSS. A run counts only if it
   exits 0 and the container then holds the 3 blobs at their sizes.

Targets: `corpus upload` peak RSS <= 1 GB, and MB/s >= rclone's (ratio of medians, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import random
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from . import azurite, tools
from .common import Context, Sample, summarize
from .corpora import PAD_CHUNK, base_png, split_iend
from .harness import corpus_argv, header, result_table, rotate, step, storage_context, table

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20
FILES, SIZE = 3, 800 * MiB
QUICK_SIZE = 64 * MiB
PROBE_SIZES = (2, 4, 8, 16, 32, 64)
QUICK_PROBE_SIZES = (4, 16)
PROBE_FILES = 8
RSS_TARGET_MB = 1024


# ----- the corpus ----------------------------------------------------------------------------------
def _write_big_png(path: Path, size: int, seed: int) -> None:
    """A valid PNG of exactly ``size`` bytes, written a MiB at a time (never held whole)."""
    head, iend = split_iend(base_png())
    pad = size - len(head) - len(iend) - 12
    rng = random.Random(seed)
    crc = zlib.crc32(PAD_CHUNK)
    with open(path, "wb") as fh:
        fh.write(head + struct.pack(">I", pad) + PAD_CHUNK)
        left = pad
        while left:
            piece = rng.randbytes(min(MiB, left))
            crc = zlib.crc32(piece, crc)
            fh.write(piece)
            left -= len(piece)
        fh.write(struct.pack(">I", crc) + iend)


def make_big_corpus(parent: Path, size: int, files: int = FILES, seed: int = 1) -> Path:
    """``files`` big PNGs, each in a directory of its own, made once and reused while the stamp matches."""
    slug = f"big-f{files}-s{size}-seed{seed}"
    root, stamp = parent / slug, parent / f"{slug}.json"
    want = {"format": 2, "files": files, "size": size, "seed": seed}
    if stamp.exists() and root.is_dir():
        try:
            if json.loads(stamp.read_text()) == want:
                return root
        except (OSError, ValueError):
            pass
    stamp.unlink(missing_ok=True)
    print(f"bench: making {files} images of {size // MiB} MB in {root}", flush=True)
    for i in range(files):
        # one set each, as the scans of three slides
        group = root / "scans" / f"slide{i}"
        group.mkdir(parents=True, exist_ok=True)
        _write_big_png(group / f"scan{i}.png", size, seed * 1000 + i)
    stamp.write_text(json.dumps(want))
    return root


# ----- 1. the threshold probe ----------------------------------------------------------------------
async def _probe_put(storage: Any, way: str, name: str, path: Path, md5: bytes, blocks: list[bytes]) -> None:
    from corpus_manager import storage as st

    if way == "put blob":  # as upload does for a file it holds: read, then one request
        body = await asyncio.to_thread(path.read_bytes)
        await storage.put_blob(name, body, content_type="image/png", md5=md5)
    else:
        await storage.put_blocks(
            name,
            str(path),
            size=path.stat().st_size,
            block_size=st.BLOCK_SIZE,
            content_type="image/png",
            md5=md5,
            block_md5s=blocks,
            token="probe",
        )


async def _probe(conn: str, container: str, sizes: tuple[int, ...], rounds: int, where: Path) -> list[dict[str, Any]]:
    from corpus_manager import storage as st
    from corpus_manager.config import parse_connection_string

    out: list[dict[str, Any]] = []
    async with st.Storage(parse_connection_string(conn), container) as storage:
        await storage.ensure_container()
        for size_mb in sizes:
            size = size_mb * MiB
            path = where / f"probe-{size_mb}.bin"
            data = random.Random(size_mb).randbytes(size)
            path.write_bytes(data)
            md5 = hashlib.md5(data).digest()
            blocks = [hashlib.md5(data[i : i + st.BLOCK_SIZE]).digest() for i in range(0, size, st.BLOCK_SIZE)]
            del data
            measured: dict[str, list[tuple[float, float]]] = {"put blob": [], "blocks": []}
            for rnd in range(rounds):
                for way in rotate(list(measured), rnd):
                    cpu, wall = time.process_time(), time.perf_counter()
                    await asyncio.gather(
                        *(
                            _probe_put(storage, way, f"probe/{way.replace(' ', '')}-{size_mb}-{k}", path, md5, blocks)
                            for k in range(PROBE_FILES)
                        )
                    )
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    measured[way].append((PROBE_FILES * size_mb / wall, cpu))
            path.unlink()
            for way, values in measured.items():
                out.append(
                    {
                        "size_mb": size_mb,
                        "way": way,
                        "mb_per_s": round(statistics.median(v[0] for v in values), 1),
                        "mb_per_s_all": [round(v[0], 1) for v in values],
                        "cpu_s": round(statistics.median(v[1] for v in values), 3),
                    }
                )
                print(
                    f"  probe {size_mb:3} MiB x {PROBE_FILES} {way:9} {out[-1]['mb_per_s']:7.1f} MB/s "
                    f"CPU {out[-1]['cpu_s']:.2f} s",
                    flush=True,
                )
    return out


def render_probe(probe: list[dict[str, Any]]) -> str:
    sizes = sorted({p["size_mb"] for p in probe})
    cell = {(p["size_mb"], p["way"]): p for p in probe}
    lines = [
        [
            f"{s} MiB",
            f"{cell[s, 'put blob']['mb_per_s']:.0f} ({cell[s, 'put blob']['cpu_s']:.2f})",
            f"{cell[s, 'blocks']['mb_per_s']:.0f} ({cell[s, 'blocks']['cpu_s']:.2f})",
            f"{cell[s, 'blocks']['mb_per_s'] / cell[s, 'put blob']['mb_per_s']:.2f}x",
        ]
        for s in sizes
    ]
    title = f"Threshold probe: MB/s (client CPU s) of {PROBE_FILES} files at once, one Put Blob vs 8 MiB blocks"
    return title + "\n" + table(["size", "put blob", "blocks", "blocks/put blob"], lines, left=1)


# ----- 2. three big images: corpus vs rclone -------------------------------------------------------
def _check_sizes(ctx: Context, container: str, size: int, files: int) -> str:
    blobs = list(ctx.endpoint.blob_service.get_container_client(container).list_blobs())
    sizes = sorted(b.size for b in blobs)
    return "" if sizes == [size] * files else f"container holds blobs of sizes {sizes}, expected {files} of {size}"


def _upload_round(ctx: Context, samples: list[Sample], rnd: int, src: Path, size: int, record: bool = True) -> None:
    nbytes = FILES * size
    for who in rotate(["corpus", "rclone"], rnd):
        container = ctx.fresh_name("big")
        if who == "corpus":
            argv = corpus_argv(
                "upload", str(src), "--version", "v1", "--corpus", container, "--max-parallel-uploads",
                str(ctx.parallel), "--json",
            )  # fmt: skip
            # this tree's corpus_manager, first on the path (the venv's editable install may be another tree's)
            env = ctx.child_env({"AZURE_STORAGE_CONNECTION_STRING": ctx.endpoint.connection_string}, str(azurite.ROOT))
            tables = tuple(container + t for t in ("ImageSets", "ImageTransforms", "TagIndex"))
        else:
            config = ctx.work / f"rclone-{container}.conf"
            tools.write_rclone_config(config, ctx.endpoint.container_sas_url(container))
            n = str(ctx.parallel)
            argv = [tools.rclone(), "--config", str(config), "copy", str(src), f"dst:{container}", "--transfers", n,
                    "--checkers", n, "-q"]  # fmt: skip
            env, tables = ctx.child_env(), ()
        step(
            ctx, samples if record else None, "3x800MB" if size == SIZE else f"3x{size // MiB}MB", who, rnd, argv,
            env, files=FILES, nbytes=nbytes, check=lambda _m, c=container: _check_sizes(ctx, c, size, FILES),
        )  # fmt: skip
        ctx.endpoint.drop(container, tables)


def main(args: argparse.Namespace) -> int:
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    # --scenario probe / upload runs one part; the shared default (a,b,c,d: the upload suite's) runs both
    wanted = {x.strip() for x in args.scenario.split(",")} & {"probe", "upload"} or {"probe", "upload"}
    size = QUICK_SIZE if args.quick else SIZE
    versions = {"python": sys.version.split()[0], "rclone": tools.rclone_version(), "azurite": azurite.version()}
    src = make_big_corpus(tools.BENCH_DIR / "corpora", size) if "upload" in wanted else Path()
    started = time.time()
    samples: list[Sample] = []
    with storage_context(
        "bigfiles",
        parallel=args.parallel,
        rounds=rounds,
        quick=args.quick,
        in_memory=args.in_memory,
        keep_work=args.keep_work,
    ) as ctx:
        probe: list[dict[str, Any]] = []
        if "probe" in wanted:
            print("bench: threshold probe (Put Blob vs blocks, in this process)", flush=True)
            probe_container = ctx.fresh_name("probe")
            probe = asyncio.run(
                _probe(
                    ctx.endpoint.connection_string,
                    probe_container,
                    QUICK_PROBE_SIZES if args.quick else PROBE_SIZES,
                    rounds,
                    ctx.work,
                )
            )
            ctx.endpoint.drop(probe_container)
        if "upload" in wanted:
            print(
                f"bench: warm-up, then {rounds} round(s) of {FILES} x {size // MiB} MB, corpus and rclone", flush=True
            )
            _upload_round(ctx, samples, 0, src, size, record=False)
            for rnd in range(1, rounds + 1):
                _upload_round(ctx, samples, rnd, src, size)
    scenario = samples[0].scenario if samples else "3x800MB"
    rows = summarize(samples, {scenario: "rclone"}, {})
    by = {r.contender: r for r in rows}
    corpus = by.get("corpus")
    ratio = corpus.speed_vs_anchor if corpus is not None else None
    verdicts = [
        {
            "target": f"corpus upload peak RSS <= {RSS_TARGET_MB} MB",
            "measured": "n/a" if corpus is None else f"{corpus.maxrss_mb:.0f} MB",
            "passed": None if corpus is None else corpus.maxrss_mb <= RSS_TARGET_MB,
        },
        {
            "target": "corpus upload MB/s vs rclone >= 1.0x",
            "measured": "n/a" if ratio is None else f"{ratio:.2f}x",
            "passed": None if ratio is None else ratio >= 1.0,
        },
    ]
    print()
    print(header("Big-files benchmark", versions))
    print(f"N = {args.parallel}; medians of {rounds} round(s); the machine's other load is not controlled")
    print()
    if probe:
        print(render_probe(probe))
    print()
    print(
        result_table(
            rows, ["scenario", "contender", "wall s", "(min-max)", "CPU s", "RSS MB", "MB/s", "vs rclone", "CPU vs rc"]
        )
    )
    print()
    print("Targets (issue 11.2):")
    print(
        table(
            ["target", "measured", "result"],
            [
                [v["target"], v["measured"], "n/a" if v["passed"] is None else ("PASS" if v["passed"] else "MISS")]
                for v in verdicts
            ],
        )
    )
    if args.quick:
        print(f"(--quick: {FILES} x {size // MiB} MB, a smoke run; the targets are defined for 800 MB)")
    out = args.json_out or RESULTS / "bigfiles.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "suite": "bigfiles",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "parallel": args.parallel,
        "rounds": rounds,
        "quick": args.quick,
        "elapsed_seconds": round(time.time() - started, 1),
        "probe": probe,
        "summary": [r.to_json() for r in rows],
        "targets": verdicts,
        "samples": [s.__dict__ for s in samples],
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nbench: wrote {out}")
    failed = sum(1 for s in samples if not s.ok)
    if failed:
        print(f"bench: {failed} run(s) failed; see the notes in the JSON", file=sys.stderr)
    return 1 if failed else 0
