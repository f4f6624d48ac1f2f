"""`corpus export --format webdataset` on a real Azurite, read back by the real webdataset library."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings

from corpus_manager.shards import BLOCK, shuffled

from .conftest import ROOT
from .training_corpus import SHARD_SIZE, TrainingCorpus, build_training_corpus, read_json, trained  # noqa: F401

PREFIX = "exports/{}/webdataset/"


def container_files(t: TrainingCorpus) -> dict[str, tuple[bytes, str, str | None]]:
    """The export's blobs: name (under the prefix) -> (bytes, ETag, Content-MD5 hex)."""
    container = BlobServiceClient.from_connection_string(t.conn).get_container_client(t.corpus)
    prefix = PREFIX.format(t.release)
    out = {}
    for b in container.list_blobs(name_starts_with=prefix):
        md5 = b.content_settings.content_md5
        data = container.download_blob(b.name).readall()
        out[b.name[len(prefix) :]] = (data, b.etag, bytes(md5).hex() if md5 else None)
    return out


def delete_export(t: TrainingCorpus) -> None:
    container = BlobServiceClient.from_connection_string(t.conn).get_container_client(t.corpus)
    for b in list(container.list_blobs(name_starts_with=PREFIX.format(t.release))):
        container.delete_blob(b.name)


def export(t: TrainingCorpus, *args: str) -> dict[str, Any]:
    res = t.cli(
        "export", "--release", t.release, "--format", "webdataset", "--shard-size", str(SHARD_SIZE), "--json", *args
    )
    assert res.exit_code == 0, res.output
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def local_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_container_export_is_byte_identical_and_a_rerun_writes_nothing(trained: TrainingCorpus, tmp_path: Path) -> None:  # noqa: F811
    delete_export(trained)
    first = export(trained)
    assert first["shards_written"] == len(first["shards"]) > 4 and first["index_written"]
    stored = container_files(trained)
    index = json.loads(stored["index.json"][0])
    assert sorted(stored) == sorted([s["name"] for s in index["shards"]] + ["index.json"])
    for entry in index["shards"]:
        data, _etag, md5 = stored[entry["name"]]
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert md5 == hashlib.md5(data).hexdigest()  # each shard blob carries its Content-MD5
    assert sum(s["samples"] for s in index["shards"]) == len(trained.records)

    again = export(trained)  # a rerun: every shard is there with its SHA-256
    assert (again["shards_written"], again["index_written"], again["shards_present"]) == (
        0,
        False,
        len(index["shards"]),
    )
    assert container_files(trained) == stored  # same bytes, and the same ETags: nothing was rewritten

    delete_export(trained)  # a fresh export gives the very same bytes
    export(trained)
    assert {k: v[0] for k, v in container_files(trained).items()} == {k: v[0] for k, v in stored.items()}

    out = tmp_path / "local"  # and so does --out, file for file, index.json included
    local = export(trained, "--out", str(out))
    assert local["shards_written"] == len(index["shards"])
    assert local_files(out) == {k: v[0] for k, v in stored.items()}
    assert export(trained, "--out", str(out))["shards_written"] == 0
    assert local_files(out) == {k: v[0] for k, v in stored.items()}


def test_shards_hold_to_the_size_and_a_big_image_is_alone(trained: TrainingCorpus, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    export(trained, "--out", str(out))
    index = read_json(out / "index.json")
    big = [s for s in index["shards"] if s["bytes"] > SHARD_SIZE]
    assert len(big) == 1 and big[0]["samples"] == 1
    import tarfile

    with tarfile.open(out / big[0]["name"]) as tar:
        (image, _meta) = tar.getmembers()
        assert image.size > SHARD_SIZE
    for s in index["shards"]:
        assert (out / s["name"]).stat().st_size == s["bytes"]
        assert s["bytes"] <= SHARD_SIZE or s is big[0]
    # names per split, numbered from 0
    for split in ("train", "val"):
        names = [s["name"] for s in index["shards"] if s["split"] == split]
        assert names == [f"{split}-{i:06d}.tar" for i in range(len(names))]


def test_webdataset_reads_every_sample_as_stored(trained: TrainingCorpus, tmp_path: Path) -> None:  # noqa: F811
    import webdataset as wds

    out = tmp_path / "out"
    export(trained, "--out", str(out))
    shards = sorted(str(p) for p in out.glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == len(trained.records)
    assert all("." not in k for k in keys)
    by_blob = trained.by_blob()
    seen = set()
    for s in samples:
        record = json.loads(s["json"])
        assert record == by_blob[record["blob_name"]]  # the manifest record, as it is
        assert s["png"] == trained.data[record["blob_name"]]  # the image as stored: no re-encode
        assert s["__url__"].endswith(f"/{record['split']}-{s['__url__'][-10:-4]}.tar")
        seen.add(record["blob_name"])
    assert seen == set(by_blob)
    # samples, not sets, in the release seed's permutation of each split: the shards mix labels and
    # sets, where the manifest lists them set by set
    for split in ("train", "val"):
        in_shards = [json.loads(s["json"]) for s in samples if f"/{split}-" in s["__url__"]]
        in_manifest = [r for r in trained.records if r["split"] == split]
        assert in_shards == shuffled(in_manifest, trained.seed) and in_shards != in_manifest
    mixed = [
        shard
        for shard in shards
        if len({json.loads(s["json"])["label"] for s in wds.WebDataset(shard, shardshuffle=False)}) > 1
    ]
    assert len(mixed) >= len(shards) // 2, "most shards hold more than one label"


def test_one_split_only(trained: TrainingCorpus, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "val"
    report = export(trained, "--out", str(out), "--split", "val")
    assert {s["split"] for s in report["shards"]} == {"val"}
    assert sum(s["samples"] for s in report["shards"]) == sum(r["split"] == "val" for r in trained.records)
    res = trained.cli("export", "--release", trained.release, "--split", "nope", "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and "no split 'nope'" in res.output and "train" in res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard-size", "12XB"], "shard size"),
        (["--format", "parquet"], "parquet"),
        (["--release", "no-such-release"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(
    trained: TrainingCorpus,  # noqa: F811
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    base = {"--release": trained.release, "--format": "webdataset", "--out": str(out)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    res = trained.cli("export", *[x for kv in base.items() for x in kv])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not out.exists()


# The real process, held by a hook at the one moment that matters (its shard's bytes are all written:
# the blocks staged in Azurite, or the temporary file complete) and then stopped by a real SIGTERM. The
# hook is the only stand-in: no signal can be timed to that moment from outside.
HOLD = r"""
import asyncio, os, sys
from pathlib import Path
from corpus_manager import export
from corpus_manager.storage import Storage
from corpus_manager.cli import main

marker = Path(os.environ["HOLD_MARKER"])

async def hold():
    marker.write_text("held")
    await asyncio.sleep(3600)

put_blocks = Storage.put_blocks
async def held_put_blocks(self, *args, **kwargs):
    return await put_blocks(self, *args, **kwargs, before_commit=hold)
Storage.put_blocks = held_put_blocks

publish = export._Local.publish
async def held_publish(self, name, fh, writer, token):
    fh.flush()
    await hold()
    return await publish(self, name, fh, writer, token)
export._Local.publish = held_publish

sys.argv[0] = "corpus"
main()
"""


@pytest.mark.parametrize("where", ["container", "local"])
def test_an_interrupted_export_leaves_no_shard_under_its_name(
    trained: TrainingCorpus,  # noqa: F811
    tmp_path: Path,
    where: str,
) -> None:
    delete_export(trained)
    out = tmp_path / "out"
    marker = tmp_path / "held"
    args = ["export", "--release", trained.release, "--shard-size", str(SHARD_SIZE)]
    args += ["--out", str(out)] if where == "local" else []
    env = {**os.environ, **{k: v for k, v in trained.env.items() if v}, "PYTHONPATH": str(ROOT)}
    env.pop("CORPUS_ACCOUNT_URL", None)
    env["HOLD_MARKER"] = str(marker)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, f"the export ended before its first shard was written: {proc.stderr}"
            assert time.monotonic() < deadline, "the export never reached its first shard's commit"
            time.sleep(0.05)
        container = BlobServiceClient.from_connection_string(trained.conn).get_container_client(trained.corpus)
        first = PREFIX.format(trained.release) + "train-000000.tar"
        if where == "container":  # the shard's bytes are in Azurite, as uncommitted blocks
            _committed, uncommitted = container.get_blob_client(first).get_block_list("uncommitted")
            assert sum(b.size for b in uncommitted) > BLOCK
        else:  # the shard's bytes are on disk, under a temporary name
            temps = list(out.iterdir())  # the next shard is being built meanwhile, under its own
            assert all(p.name.startswith(".") and ".partial-" in p.name for p in temps), temps
            (temp,) = [p for p in temps if p.name.startswith(".train-000000.tar.partial-")]
            assert temp.stat().st_size > BLOCK
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    if where == "container":
        assert list(container.list_blobs(name_starts_with=PREFIX.format(trained.release))) == []
    else:
        assert list(out.iterdir()) == []  # no shard, and no temporary file left behind
    # the rerun finishes the export
    again = export(trained, *(["--out", str(out)] if where == "local" else []))
    assert again["shards_written"] == len(again["shards"]) and again["index_written"]


def test_a_corrupt_image_fails_its_shard_only(azurite: Any, tmp_path: Path) -> None:
    t = build_training_corpus(azurite.connection_string, tmp_path, big=False, release="bad-1")
    victim = sorted(t.data)[4]
    blob = BlobServiceClient.from_connection_string(t.conn).get_container_client(t.corpus).get_blob_client(victim)
    # silent corruption faked in the test only: the stored Content-MD5 no longer matches the bytes
    blob.set_http_headers(ContentSettings(content_type="image/png", content_md5=bytearray(hashlib.md5(b"x").digest())))
    out = tmp_path / "out"
    res = t.cli("export", "--release", t.release, "--shard-size", str(SHARD_SIZE), "--out", str(out), "--json")
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    (failure,) = report["failures"]
    assert victim in failure["reason"] and "MD5 mismatch" in failure["reason"]
    assert not (out / failure["item"]).exists() and not (out / "index.json").exists()
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(s["name"] for s in report["shards"]) and len(written) >= 3  # the others are there
    assert failure["item"] not in written
