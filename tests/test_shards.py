"""The pure part of WebDataset export: shard plan, sample keys and the deterministic tar writer."""

from __future__ import annotations

import hashlib
import io
import itertools
import tarfile
from pathlib import Path
from typing import Any

import pytest

from corpus_manager.shards import (
    BLOCK,
    USTAR_MAX_SIZE,
    HashingWriter,
    member_header,
    parse_size,
    plan_shards,
    read_tar,
    record_json,
    sample_of,
    shuffled,
)
from corpus_manager.stream import part_of


def records(n: int, size: int = 1000, labels: tuple[str, ...] = ("cat", "dog", "owl")) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        blob = f"original/{label}/v1/img{i:04d}.PNG"
        out.append(
            {
                "blob_name": blob,
                "md5": hashlib.md5(blob.encode()).hexdigest(),
                "bytes": size,
                "label": label,
                "split": "train" if i % 5 else "val",
                "tags": [label],
                "set_path": label,
                "version": "v1",
                "transform": None,
            }
        )
    return out


def build(plan: Any) -> bytes:
    buf = io.BytesIO()
    w = HashingWriter(buf, 4096)
    for s in plan.samples:
        w.add_sample(s, bytes([int(s.key[:8]) % 251]) * s.size)
    w.end()
    assert w.size == plan.size  # the plan's size is the bytes written, exactly
    assert w.sha256.hexdigest() == hashlib.sha256(buf.getvalue()).hexdigest()
    assert w.md5.digest() == hashlib.md5(buf.getvalue()).digest()
    blocks = [buf.getvalue()[i : i + 4096] for i in range(0, len(buf.getvalue()), 4096)]
    assert w.block_md5s == [hashlib.md5(b).digest() for b in blocks]
    return buf.getvalue()


def test_parse_size() -> None:
    assert parse_size("256MB") == 256_000_000
    assert parse_size("256MiB") == parse_size("256M") == 256 * 2**20
    assert parse_size("1GiB") == 2**30
    assert parse_size("4096") == 4096
    for bad in ("", "MB", "-1MB", "0", "1.5GB", "12XB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_plan_respects_shard_size_and_names() -> None:
    plans = plan_shards(records(200), seed=7, shard_size=40_000)
    names = [p.name for p in plans]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {p.split for p in plans} == {"train", "val"}
    for split in ("train", "val"):
        mine = [p.name for p in plans if p.split == split]
        assert mine == [f"{split}-{i:06d}.tar" for i in range(len(mine))]
    for p in plans:
        assert p.size <= 40_000
    # the shards are full: the next sample would not have fit in its predecessor
    by_split: dict[str, list[Any]] = {}
    for p in plans:
        by_split.setdefault(p.split, []).append(p)
    for group in by_split.values():
        for a, b in itertools.pairwise(group):
            assert a.size + b.samples[0].tar_bytes > 40_000
    assert sum(len(p.samples) for p in plans) == 200


def test_big_sample_gets_its_own_shard() -> None:
    recs = records(10)
    recs[3]["bytes"] = 100_000  # bigger than a shard
    plans = plan_shards(recs, seed=0, shard_size=20_000)
    alone = [p for p in plans if any(s.blob_name == recs[3]["blob_name"] for s in p.samples)]
    assert len(alone) == 1 and len(alone[0].samples) == 1
    assert all(p.size <= 20_000 for p in plans if p is not alone[0])


def test_keys_unique_dot_free_and_shards_mix_labels() -> None:
    plans = plan_shards(records(300), seed=1, shard_size=60_000)
    keys = [s.key for p in plans for s in p.samples]
    assert len(set(keys)) == len(keys)
    assert all("." not in k for k in keys)
    assert all(s.ext == "png" for p in plans for s in p.samples)  # the blob's own, lower-cased
    for p in plans:
        if len(p.samples) >= 10:
            assert len({s.record["label"] for s in p.samples}) > 1, f"{p.name} holds one label only"
    # shuffled, not the manifest order
    train = [s.blob_name for p in plans if p.split == "train" for s in p.samples]
    in_manifest = [r["blob_name"] for r in records(300) if r["split"] == "train"]
    assert train != in_manifest and sorted(train) == sorted(in_manifest)


def test_order_is_seeded_and_stable() -> None:
    recs = records(50)
    a = [r["blob_name"] for r in shuffled(recs, 3)]
    assert a == [r["blob_name"] for r in shuffled(list(reversed(recs)), 3)]  # by content, not input order
    assert a != [r["blob_name"] for r in shuffled(recs, 4)]
    e1 = [r["blob_name"] for r in shuffled(recs, 3, epoch=1)]
    assert e1 != [r["blob_name"] for r in shuffled(recs, 3, epoch=2)]
    assert e1 == [r["blob_name"] for r in shuffled(recs, 3, epoch=1)]
    # the same on every machine: pinned, not recomputed from the code under test
    first = shuffled(records(5), 0)[0]["blob_name"]
    assert (
        first
        == sorted((hashlib.sha256(f"0\x00{r['blob_name']}".encode()).hexdigest(), r["blob_name"]) for r in records(5))[
            0
        ][1]
    )


def test_tar_is_deterministic_and_readable_by_tarfile() -> None:
    plan = plan_shards(records(20), seed=0, shard_size=10**9)[0]
    one, two = build(plan), build(plan)
    assert one == two
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{s.key}.{e}" for s in plan.samples for e in (s.ext, "json")]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            assert m.isfile()
        for s in plan.samples:
            meta = tar.extractfile(f"{s.key}.json")
            assert meta is not None and meta.read() == record_json(s.record)
    # our streaming reader gives the same samples, whatever the chunking
    chunks = [one[i : i + 777] for i in range(0, len(one), 777)]
    got = list(sample_of(read_tar(chunks)))
    assert [r for _, r in got] == [s.record for s in plan.samples]


def test_pax_header_for_a_huge_member() -> None:
    # an 8 GiB member cannot be written here; its header is what differs, so read one back with tarfile
    header = member_header("00000000_abc.png", USTAR_MAX_SIZE + 1)
    assert len(header) == 3 * BLOCK
    with tarfile.open(fileobj=io.BytesIO(header + b"\0" * 2 * BLOCK), mode="r|") as tar:
        member = tar.next()
        assert member is not None and member.name == "00000000_abc.png" and member.size == USTAR_MAX_SIZE + 1


def test_webdataset_reads_a_shard(tmp_path: Path) -> None:
    import webdataset as wds

    plan = plan_shards(records(12), seed=0, shard_size=10**9)[0]
    path = tmp_path / plan.name
    path.write_bytes(build(plan))
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [g["__key__"] for g in got] == [s.key for s in plan.samples]
    for g, s in zip(got, plan.samples, strict=True):
        assert g["json"] == record_json(s.record)
        assert len(g[s.ext]) == s.size


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_parts_cover_once(world: int) -> None:
    items = list(range(20))
    parts = [part_of(items, r, world) for r in range(world)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == items
