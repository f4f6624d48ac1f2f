"""Training straight from the corpus on a real Azurite: iter_release, iter_shards, shard URLs, and
ReleaseDataset in a real torch DataLoader with fork and spawn workers."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings

from corpus_manager import StorageError, iter_release, iter_shards, shard_urls
from corpus_manager.storage import Storage

from .conftest import ROOT
from .training_corpus import SHARD_SIZE, TrainingCorpus, build_training_corpus, trained  # noqa: F401


def names(samples: Any) -> list[str]:
    return [record["blob_name"] for _data, record in samples]


def read(t: TrainingCorpus, **kwargs: Any) -> list[tuple[bytes, dict[str, Any]]]:
    return list(iter_release(t.release, corpus=t.corpus, connection_string=t.conn, **kwargs))


def test_iter_release_reads_every_image_as_stored_in_manifest_order(trained: TrainingCorpus) -> None:  # noqa: F811
    samples = read(trained)
    assert [r for _d, r in samples] == trained.records  # the manifest's order and records
    for data, record in samples:
        assert data == trained.data[record["blob_name"]]
    val = read(trained, split="val")
    assert [r for _d, r in val] == [r for r in trained.records if r["split"] == "val"]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_cover_the_release_exactly_once(trained: TrainingCorpus, world: int, shuffle: bool) -> None:  # noqa: F811
    parts = [names(read(trained, rank=r, world_size=world, shuffle=shuffle, seed=5)) for r in range(world)]
    flat = [n for part in parts for n in part]
    assert len(flat) == len(set(flat)) == len(trained.records)
    assert set(flat) == set(trained.data)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced


def test_shuffle_is_reproducible_and_differs_by_epoch_and_seed(trained: TrainingCorpus) -> None:  # noqa: F811
    e0 = names(read(trained, shuffle=True, seed=1, epoch=0))
    assert e0 == names(read(trained, shuffle=True, seed=1, epoch=0))
    e1 = names(read(trained, shuffle=True, seed=1, epoch=1))
    other_seed = names(read(trained, shuffle=True, seed=2, epoch=0))
    manifest = [r["blob_name"] for r in trained.records]
    assert len({tuple(e0), tuple(e1), tuple(other_seed), tuple(manifest)}) == 4
    assert sorted(e0) == sorted(e1) == sorted(manifest)


def test_at_most_prefetch_requests_in_flight(trained: TrainingCorpus, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # counts around the real Storage.get_blob: every request still goes to Azurite
    real = Storage.get_blob
    state = {"now": 0, "peak": 0}

    async def counted(self: Storage, name: str) -> Any:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            return await real(self, name)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(Storage, "get_blob", counted)
    assert len(read(trained, prefetch=4)) == len(trained.records)
    # the manifest is one GET before the images; then a full window of 4 from the start
    assert state["peak"] == 4


def test_stopping_early_closes_the_loop_thread(trained: TrainingCorpus) -> None:  # noqa: F811
    import threading

    before = {t.ident for t in threading.enumerate()}
    it = iter_release(trained.release, corpus=trained.corpus, connection_string=trained.conn, prefetch=8)
    assert {t.ident for t in threading.enumerate()} == before  # nothing runs before iteration starts
    next(it)
    assert any(t.name == "corpus-manager-sync" for t in threading.enumerate())
    it.close()
    assert {t.ident for t in threading.enumerate()} == before


def test_md5_mismatch_raises_naming_the_blob(azurite: Any, tmp_path: Path) -> None:
    t = build_training_corpus(azurite.connection_string, tmp_path, big=False, release="bad-2")
    victim = trained_victim = sorted(t.data)[7]
    client = BlobServiceClient.from_connection_string(t.conn).get_container_client(t.corpus)
    # silent corruption faked in the test only: the stored Content-MD5 no longer matches the bytes
    client.get_blob_client(victim).set_http_headers(
        ContentSettings(content_type="image/png", content_md5=bytearray(hashlib.md5(b"other").digest()))
    )
    with pytest.raises(StorageError, match="MD5 mismatch") as caught:
        read(t)
    assert trained_victim in str(caught.value)
    # a blob replaced by other (valid, consistent) bytes: the manifest's MD5 catches it
    other = sorted(t.data)[2]
    data = t.data[sorted(t.data)[3]]
    client.upload_blob(
        other,
        data,
        overwrite=True,
        content_settings=ContentSettings(content_type="image/png", content_md5=bytearray(hashlib.md5(data).digest())),
    )
    with pytest.raises(StorageError, match="MD5 mismatch") as caught:
        read(t, split="train" if t.by_blob()[other]["split"] == "train" else "val")
    assert other in str(caught.value)


def _read_part(args: tuple[str, str, str, int, int]) -> list[str]:
    conn, corpus, release, rank, world = args
    return names(iter_release(release, corpus=corpus, connection_string=conn, rank=rank, world_size=world))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_iter_release_in_a_process_pool(trained: TrainingCorpus, method: str) -> None:  # noqa: F811
    # this process is iterating (its loop thread and connections live) while the pool forks or spawns
    live = iter_release(trained.release, corpus=trained.corpus, connection_string=trained.conn, prefetch=4)
    first = [next(live)]
    with multiprocessing.get_context(method).Pool(3) as pool:
        parts = pool.map(_read_part, [(trained.conn, trained.corpus, trained.release, r, 3) for r in range(3)])
    flat = [n for part in parts for n in part]
    assert sorted(flat) == sorted(trained.data)
    assert names(first + list(live)) == [r["blob_name"] for r in trained.records]  # the parent's goes on


def test_an_iterator_started_before_a_fork_refuses_in_the_child(trained: TrainingCorpus) -> None:  # noqa: F811
    live = iter_release(trained.release, corpus=trained.corpus, connection_string=trained.conn, prefetch=4)
    first = next(live)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child() -> None:
        try:
            next(live)
            out.put("no error")
        except RuntimeError as exc:
            out.put(str(exc))
        del live_ref[:]  # dropping it in the child must not touch the parent's loop

    live_ref = [live]
    proc = ctx.Process(target=child)
    proc.start()
    message = out.get(timeout=60)
    proc.join(timeout=60)
    assert "started in another process" in message and proc.exitcode == 0
    assert names([first, *live]) == [r["blob_name"] for r in trained.records]


def test_an_iterator_left_open_does_not_hang_the_interpreter_exit(trained: TrainingCorpus) -> None:  # noqa: F811
    # a global iterator, part-read and never closed: it is finalised after the daemon loop thread stopped
    code = (
        "import sys\nfrom corpus_manager import iter_release\n"
        "IT = iter_release(sys.argv[1], corpus=sys.argv[2], connection_string=sys.argv[3], prefetch=4)\n"
        "next(IT)\nprint('read one')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, trained.release, trained.corpus, trained.conn],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,  # the old clean-up waited forever for the stopped loop
    )
    assert out.returncode == 0 and out.stdout.strip() == "read one", out.stderr


def test_iter_shards_and_shard_urls_read_the_export(trained: TrainingCorpus) -> None:  # noqa: F811
    import webdataset as wds

    from corpus_manager.cli import cli  # noqa: F401  (the export goes through the CLI: trained.cli)

    res = trained.cli("export", "--release", trained.release, "--shard-size", str(SHARD_SIZE), "--json")
    assert res.exit_code == 0, res.output
    samples = list(iter_shards(trained.release, corpus=trained.corpus, connection_string=trained.conn))
    assert sorted(names(samples)) == sorted(trained.data)
    for data, record in samples:
        assert data == trained.data[record["blob_name"]] and record == trained.by_blob()[record["blob_name"]]
    parts = [
        names(iter_shards(trained.release, corpus=trained.corpus, connection_string=trained.conn, rank=r, world_size=2))
        for r in range(2)
    ]
    assert sorted(parts[0] + parts[1]) == sorted(trained.data) and not set(parts[0]) & set(parts[1])
    train = names(iter_shards(trained.release, split="train", corpus=trained.corpus, connection_string=trained.conn))
    assert sorted(train) == sorted(r["blob_name"] for r in trained.records if r["split"] == "train")

    urls = shard_urls(trained.release, corpus=trained.corpus, connection_string=trained.conn)
    assert all("sig=" in u and "sp=r" in u for u in urls)
    over_http = list(wds.WebDataset(urls, shardshuffle=False))  # fetched by webdataset itself (curl)
    assert sorted(json.loads(s["json"])["blob_name"] for s in over_http) == sorted(trained.data)
    for s in over_http:
        assert s["png"] == trained.data[json.loads(s["json"])["blob_name"]]


def decode_png(data: bytes, record: dict[str, Any]) -> tuple[Any, str]:
    """A decode to a uint8 tensor (16x16 RGB, HWC) with Wand; module-level so spawned workers import it."""
    import torch
    from wand.image import Image

    with Image(blob=data) as img:
        img.resize(16, 16)
        pixels = img.export_pixels(channel_map="RGB", storage="char")
    return torch.tensor(pixels, dtype=torch.uint8).reshape(16, 16, 3), record["blob_name"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_release_dataset_in_a_dataloader(trained: TrainingCorpus, method: str) -> None:  # noqa: F811
    import torch
    from torch.utils.data import DataLoader

    from corpus_manager.torch import ReleaseDataset

    ds = ReleaseDataset(
        trained.release,
        corpus=trained.corpus,
        connection_string=trained.conn,
        decode=decode_png,
        shuffle=True,
        seed=11,
    )
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=method)
    orders = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen: list[str] = []
        for images, blobs in loader:
            assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (16, 16, 3)
            assert images.shape[0] == len(blobs) <= 4
            for image, blob in zip(images, blobs, strict=True):
                assert torch.equal(image, decode_png(trained.data[blob], {"blob_name": blob})[0])
            seen += blobs
        assert sorted(seen) == sorted(trained.data), f"epoch {epoch} did not read every image exactly once"
        orders.append(seen)
    assert orders[0] != orders[1]  # set_epoch: another order


def _distributed_rank(rank: int, store: str, conn: str, corpus: str, release: str, out: Any) -> None:
    """One rank of a real two-rank gloo process group, reading its part through a DataLoader with two
    (forked) workers of its own."""
    import torch.distributed
    from torch.utils.data import DataLoader

    from corpus_manager.torch import ReleaseDataset

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ds = ReleaseDataset(release, corpus=corpus, connection_string=conn, shuffle=True, seed=4)
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
        out.put((rank, [record["blob_name"] for _data, record in loader]))
    finally:
        torch.distributed.destroy_process_group()


def test_release_dataset_splits_by_rank_and_worker(trained: TrainingCorpus, tmp_path: Path) -> None:  # noqa: F811
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    args = (str(tmp_path / "store"), trained.conn, trained.corpus, trained.release, out)
    procs = [ctx.Process(target=_distributed_rank, args=(rank, *args)) for rank in range(2)]
    for p in procs:
        p.start()
    parts = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])  # each rank its own images
    assert sorted(parts[0] + parts[1]) == sorted(trained.data)  # together, every image exactly once


def test_importing_corpus_manager_imports_neither_torch_nor_webdataset() -> None:
    code = "import sys, corpus_manager; print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_iter_shards_refuses_a_shard_that_is_not_the_indexed_one(trained: TrainingCorpus) -> None:  # noqa: F811
    res = trained.cli("export", "--release", trained.release, "--shard-size", str(SHARD_SIZE), "--json")
    assert res.exit_code == 0, res.output
    container = BlobServiceClient.from_connection_string(trained.conn).get_container_client(trained.corpus)
    name = f"exports/{trained.release}/webdataset/val-000000.tar"
    data = bytearray(container.download_blob(name).readall())
    data[-1] = 1  # a byte of the end-of-archive blocks: every sample still reads, the shard is not the indexed one
    container.upload_blob(name, bytes(data), overwrite=True)
    try:
        with pytest.raises(StorageError, match=r"val-000000\.tar: SHA-256"):
            list(iter_shards(trained.release, split="val", corpus=trained.corpus, connection_string=trained.conn))
    finally:  # the export puts the indexed shard back (its listing's MD5 differs from the index's)
        again = trained.cli("export", "--release", trained.release, "--shard-size", str(SHARD_SIZE), "--json")
        assert again.exit_code == 0 and json.loads(again.stdout)["shards_written"] == 1, again.output
