"""Releases on a real Azurite: create (definition, labels, splits, manifest, row), show, immutability."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import EdmType, EntityProperty
from click.testing import CliRunner, Result

from corpus_manager import SyncCorpus
from corpus_manager.cli import cli
from corpus_manager.models import SetIdentity
from corpus_manager.release import ReleaseDefinition
from corpus_manager.storage import Storage

from .conftest import Azurite, image_bytes
from .helpers import blobs, rows, with_storage
from .known_corpus import KnownCorpus, add_set, build_known_corpus


@pytest.fixture(scope="module")
def known(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> KnownCorpus:
    return build_known_corpus(azurite.connection_string, tmp_path_factory.mktemp("known"))


@pytest.fixture
def fresh(azurite: Azurite, tmp_path: Path) -> KnownCorpus:
    """A corpus of its own, for tests that change it."""
    return build_known_corpus(azurite.connection_string, tmp_path / "fresh")


def invoke(known: KnownCorpus, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=known.env)


def create(known: KnownCorpus, name: str, *args: str) -> Result:
    return invoke(known, "release", "create", name, *args)


def new_name() -> str:
    return "r" + uuid.uuid4().hex[:8]


def manifest_of(known: KnownCorpus, name: str) -> list[dict[str, Any]]:
    async def go(storage: Storage) -> bytes:
        data, _ = await storage.get_blob(f"releases/{name}/manifest.jsonl")
        return data

    return [json.loads(line) for line in with_storage(known.conn, known.name, go).decode().splitlines()]


def release_rows(known: KnownCorpus) -> list[dict[str, Any]]:
    try:
        return rows(known.conn, known.name, "releases")
    except Exception:  # no Releases table yet: no rows
        return []


def snapshot(known: KnownCorpus) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything a release could write: the blobs and the release rows."""
    return blobs(known.conn, known.name), [{k: v for k, v in r.items() if k != "metadata"} for r in release_rows(known)]


def transform(name: str, version: str) -> dict[str, str]:
    return {"name": name, "version": version}


def rec(blob: str, known: KnownCorpus, label: str, split: str, tags: list[str], path: str, version: str, **kw: Any):
    data = known.local(blob)
    return {
        "blob_name": blob,
        "md5": hashlib.md5(data).hexdigest(),
        "bytes": len(data),
        "label": label,
        "split": split,
        "tags": tags,
        "set_path": path,
        "version": version,
        "transform": kw.get("transform"),
        **({"source_set": kw["source_set"]} if "source_set" in kw else {}),
    }


RAR = ["red", "angry", "robin"]


def test_create_default_definition_manifest_row_and_output(known: KnownCorpus) -> None:
    name = new_name()
    res = create(known, name)
    assert res.exit_code == 0, res.output
    manifest = manifest_of(known, name)
    src = {"path": "red/angry/robin", "version": "v1", "transform": None}
    # every image of every complete set, sorted by (set path, version, transform, file); the pending set
    # (red/wip) is not there; the root set has no tag, so no label: left out
    assert manifest == [
        rec("original/Blue/sky/v1/d.png", known, "sky", "all", ["Blue", "sky"], "Blue/sky", "v1"),
        rec("original/red/angry/v1/c.png", known, "angry", "all", ["red", "angry"], "red/angry", "v1"),
        rec("original/red/angry/robin/v1/a.png", known, "robin", "all", RAR, "red/angry/robin", "v1"),
        rec("original/red/angry/robin/v1/b.png", known, "robin", "all", RAR, "red/angry/robin", "v1"),
        *[
            rec(
                f"transform/charcoal/1/red/angry/robin/v1/{f}",
                known,
                "robin",
                "all",
                RAR,
                "red/angry/robin",
                "v1",
                transform=transform("charcoal", "1"),
                source_set=src,
            )
            for f in ("a.png", "b.png")
        ],
        rec("original/red/angry/robin/v2/a.png", known, "robin", "all", RAR, "red/angry/robin", "v2"),
        rec(
            "original/red/calm/robin/v1/e.png", known, "robin", "all", ["red", "calm", "robin"], "red/calm/robin", "v1"
        ),
    ]
    data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in manifest).encode()
    sha = hashlib.sha256(data).hexdigest()
    stored = blobs(known.conn, known.name)[f"releases/{name}/manifest.jsonl"]
    assert stored["md5"] == hashlib.md5(data).hexdigest()  # stored with its Content-MD5
    total = sum(r["bytes"] for r in manifest)
    (row,) = [r for r in release_rows(known) if r["RowKey"] == name]
    definition = {
        "filters": {"tags": [], "any": False, "version": None, "transform": None, "originals": False},
        "split": {"all": 100},
        "split_by": "set",
        "seed": 0,
        "label": "leaf",
    }
    assert json.loads(row["Definition"]) == definition
    assert (
        row["DefinitionDigest"]
        == hashlib.sha256(json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    )
    assert (row["ManifestDigest"], row["ImageCount"], row["TotalBytes"], row["SetCount"]) == (sha, 8, total, 6)
    assert json.loads(row["Splits"]) == {"all": 8}
    assert json.loads(row["Labels"]) == {"angry": 1, "robin": 6, "sky": 1}
    created = row["CreatedAt"]
    assert res.output == (
        f"Created release {name}\n"
        f"  created     {created}\n"
        "  definition  all sets; split all=100 by set, seed 0; label leaf\n"
        f"  images      8 ({total / 1000:.1f} kB) in 6 sets\n"
        "  splits      all 8\n"
        "  labels      angry 1, robin 6, sky 1\n"
        "  left out    1 set (no tags (images directly in the root))\n"
        f"  manifest    releases/{name}/manifest.jsonl (sha256 {sha})\n"
    )

    # counts are Edm.Int64, whatever their size
    async def raw(storage: Storage) -> dict[str, Any]:
        entity = await storage.releases.sdk.get_entity("release", name)
        return {k: v.edm_type for k, v in entity.items() if isinstance(v, EntityProperty)}

    raw_types = with_storage(known.conn, known.name, raw)
    assert raw_types == {"ImageCount": EdmType.INT64, "TotalBytes": EdmType.INT64, "SetCount": EdmType.INT64}

    # show: the same figures, plus the sets, transforms and the source sets behind the outputs
    res = invoke(known, "release", "show", name)
    assert res.exit_code == 0, res.output
    assert res.output == (
        f"Release {name}\n"
        f"  created     {created}\n"
        "  definition  all sets; split all=100 by set, seed 0; label leaf\n"
        f"  images      8 ({total / 1000:.1f} kB) in 6 sets\n"
        "  splits      all 8\n"
        "  labels      angry 1, robin 6, sky 1\n"
        "  left out    1 set (no tags (images directly in the root))\n"
        f"  manifest    releases/{name}/manifest.jsonl (sha256 {sha})\n"
        "  sets        6:\n"
        "    Blue/sky@v1\n"
        "    red/angry@v1\n"
        "    red/angry/robin@v1\n"
        "    red/angry/robin@v1 [charcoal@1]\n"
        "    red/angry/robin@v2\n"
        "    red/calm/robin@v1\n"
        "  transforms  charcoal@1\n"
        "  sources     1 sets the transform outputs were made from:\n"
        "    red/angry/robin@v1\n"
    )
    res = invoke(known, "release", "show", name, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "name": name,
        "created": created,
        "definition": definition,
        "images": 8,
        "bytes": total,
        "splits": {"all": 8},
        "labels": {"angry": 1, "robin": 6, "sky": 1},
        "manifest_blob": f"releases/{name}/manifest.jsonl",
        "manifest_sha256": sha,
    }


def test_same_definition_again_writes_nothing_and_shows_it(known: KnownCorpus) -> None:
    name = new_name()
    assert create(known, name, "--tag", "Robin", "--split", "train=50,val=50", "--seed", "0").exit_code == 0
    before = snapshot(known)
    # the same definition spelled otherwise: tag case, split order, the default seed left out
    res = create(known, name, "--tag", "robin", "--split", "val=50,train=50", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] is False
    assert snapshot(known) == before
    res = create(known, name, "--tag", "robin", "--split", "val=50,train=50")
    assert res.output.startswith(f"Release {name} exists with this definition: nothing written\n")
    # another definition under the same name: refused, nothing written
    for other in (["--tag", "robin", "--split", "val=50,train=50", "--seed", "1"], ["--tag", "robin"]):
        res = create(known, name, *other)
        assert res.exit_code == 2, res.output
        assert f"release {name!r} exists with another definition" in res.output
        assert len(res.output.strip().splitlines()) == 1
        assert snapshot(known) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad/name"], "release name 'bad/name' is not valid"),
        (["-x"], "No such option"),
        (["ok", "--split", "train=80,val=10"], "the percentages sum to 90, not 100"),
        (["ok", "--split", "train=100,val=0"], "the share of 'val' must be above 0"),
        (["ok", "--split", "train=110,val=-10"], "the share of 'val' must be above 0"),
        (["ok", "--split", "train=8x,val=20"], "'8x' is not a whole percentage"),
        (["ok", "--transform", "charcoal@1", "--originals"], "--transform and --originals exclude each other"),
        (["ok", "--transform", "nosuch@1"], "--transform nosuch@1: no such transform is registered"),
        (["ok", "--label", "robin,nosuchtag"], "no set in corpus"),
        (["ok", "--tag", "nosuchtag"], "the selection has no images"),
        (
            ["ok", "--label", "robin", "--tag", "sky"],
            "no images (1 sets left out: none of the label tags)",
        ),
    ],
)
def test_bad_input_exit_2_nothing_written(known: KnownCorpus, args: list[str], message: str) -> None:
    before = snapshot(known)
    res = create(known, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert snapshot(known) == before


def test_label_tags_and_left_out_counts(known: KnownCorpus) -> None:
    name = new_name()
    res = create(known, name, "--label", "ROBIN,angry", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    # red/angry has only 'angry'; robin sets under red/angry carry both: left out; calm/robin: robin
    assert out["labels"] == {"angry": 1, "robin": 1}
    assert out["left_out"] == {"none of the label tags": 2, "several of the label tags": 3}
    assert out["definition"]["label"] == ["angry", "robin"]
    assert {(r["set_path"], r["label"]) for r in manifest_of(known, name)} == {
        ("red/angry", "angry"),
        ("red/calm/robin", "robin"),
    }
    res = create(known, new_name(), "--label", "ROBIN,angry")
    assert (
        "  left out    2 sets (none of the label tags)\n              3 sets (several of the label tags)\n"
        in res.output
    )


def test_filters_are_query_filters(known: KnownCorpus) -> None:
    name = new_name()
    res = create(known, name, "--transform", "charcoal@1", "--json")
    assert res.exit_code == 0, res.output
    assert [r["blob_name"] for r in manifest_of(known, name)] == [
        "transform/charcoal/1/red/angry/robin/v1/a.png",
        "transform/charcoal/1/red/angry/robin/v1/b.png",
    ]
    name = new_name()
    assert create(known, name, "--originals", "--version", "v2").exit_code == 0
    assert [r["blob_name"] for r in manifest_of(known, name)] == ["original/red/angry/robin/v2/a.png"]
    name = new_name()
    assert create(known, name, "--tag", "sky", "--tag", "calm", "--any").exit_code == 0
    assert [r["set_path"] for r in manifest_of(known, name)] == ["Blue/sky", "red/calm/robin"]


def test_split_by_set_keeps_sets_whole_and_follows_the_hash(known: KnownCorpus) -> None:
    name = new_name()
    res = create(known, name, "--split", "train=50,val=30,test=20", "--seed", "7", "--json")
    assert res.exit_code == 0, res.output
    definition = ReleaseDefinition.make(split="train=50,val=30,test=20", seed=7)
    by_set: dict[str, set[str]] = {}
    for r in manifest_of(known, name):
        t = r["transform"] or {}
        ident = SetIdentity(r["set_path"], r["version"], t.get("name", ""), t.get("version", ""))
        by_set.setdefault(ident.key, set()).add(r["split"])
        assert r["split"] == definition.assign(ident.key)
    assert all(len(s) == 1 for s in by_set.values())
    counts = json.loads(res.stdout)["splits"]
    assert list(counts) == ["test", "train", "val"] and sum(counts.values()) == 8


def test_split_assignment_is_a_stable_hash_on_the_percentages() -> None:
    d = ReleaseDefinition.make(split="train=80,val=10,test=10")
    keys = [f"original|{i}|v1" for i in range(4000)]
    got = [d.assign(k) for k in keys]
    # the same answer in another process would need the same function: sha256 of seed, key
    point = int.from_bytes(hashlib.sha256(b"0\noriginal|0|v1").digest()[:8], "big") / 2**64 * 100
    assert got[0] == ("test" if point < 10 else "train" if point < 90 else "val")
    share = {s: got.count(s) / len(got) for s in ("train", "val", "test")}
    assert 0.76 < share["train"] < 0.84 and 0.07 < share["val"] < 0.13 and 0.07 < share["test"] < 0.13
    assert [ReleaseDefinition.make(split="test=10,val=10,train=80").assign(k) for k in keys] == got
    assert [ReleaseDefinition.make(split="train=80,val=10,test=10", seed=1).assign(k) for k in keys] != got


def test_splits_stable_when_sets_are_added(fresh: KnownCorpus) -> None:
    args = ("--split", "train=60,val=20,test=20", "--seed", "3")
    assert create(fresh, "R1", *args).exit_code == 0
    first = {r["blob_name"]: r["split"] for r in manifest_of(fresh, "R1")}

    async def more(storage: Storage) -> None:
        for i in range(40):
            await add_set(
                storage,
                SetIdentity(f"new/s{i:02d}/bird", "v1"),
                ["new", f"s{i:02d}", "bird"],
                {"x.png": image_bytes(color=f"gray{i + 10}")},
            )

    with_storage(fresh.conn, fresh.name, more)
    assert create(fresh, "R2", *args).exit_code == 0
    second = {r["blob_name"]: r["split"] for r in manifest_of(fresh, "R2")}
    assert len(second) == len(first) + 40
    assert {b: second[b] for b in first} == first
    assert {s for b, s in second.items() if b not in first} == {"train", "val", "test"}  # the new ones spread


def test_split_by_image(fresh: KnownCorpus) -> None:
    async def big(storage: Storage) -> None:
        await add_set(
            storage,
            SetIdentity("one/folder", "v1"),
            ["one", "folder"],
            {f"i{i:03d}.png": image_bytes(color=f"gray{i}") for i in range(60)},
        )

    with_storage(fresh.conn, fresh.name, big)
    assert create(fresh, "R", "--tag", "folder", "--split", "train=50,val=50", "--split-by", "image").exit_code == 0
    manifest = manifest_of(fresh, "R")
    d = ReleaseDefinition.make(("folder",), split="train=50,val=50", split_by="image")
    key = SetIdentity("one/folder", "v1").key
    assert [r["split"] for r in manifest] == [d.assign(key, r["blob_name"].rsplit("/", 1)[1]) for r in manifest]
    assert {r["split"] for r in manifest} == {"train", "val"}  # one set, both splits


def test_show_unknown_and_missing_manifest(fresh: KnownCorpus) -> None:
    res = invoke(fresh, "release", "show", "nosuch")
    assert res.exit_code == 2 and "release 'nosuch' does not exist" in res.output
    assert create(fresh, "R").exit_code == 0

    async def drop(storage: Storage) -> None:
        await storage.delete_blob("releases/R/manifest.jsonl")

    with_storage(fresh.conn, fresh.name, drop)
    res = invoke(fresh, "release", "show", "R")
    assert res.exit_code == 1
    assert res.output == (
        "Error: release R: its manifest blob releases/R/manifest.jsonl is missing (deleted outside the tool); "
        "the release cannot be read\n"
    )


def test_library_create_and_release(fresh: KnownCorpus) -> None:
    with SyncCorpus(fresh.name, connection_string=fresh.conn) as c:
        report = c.create_release("lib", ["robin"], split="train=50,val=50", seed=2)
        assert report.written and report.release.images == 6
        rel = c.release("lib")
        assert (rel.name, rel.images, rel.splits) == ("lib", 6, report.release.splits)
        assert list(rel) == manifest_of(fresh, "lib")
