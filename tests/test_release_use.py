"""Using releases on a real Azurite: list, diff, verify (--deep), download --release, lineage."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from azure.storage.blob import ContentSettings

from corpus_manager import SyncCorpus
from corpus_manager.dlcache import CACHE_NAME
from corpus_manager.progress import human_bytes
from corpus_manager.storage import Storage

from .conftest import Azurite, image_bytes
from .helpers import blobs, with_storage
from .known_corpus import KnownCorpus, build_known_corpus
from .test_release import create, invoke, manifest_of, snapshot


@pytest.fixture(scope="module")
def known(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> KnownCorpus:
    k = build_known_corpus(azurite.connection_string, tmp_path_factory.mktemp("known"))
    assert create(k, "all").exit_code == 0
    assert create(k, "robins", "--tag", "robin", "--split", "train=50,val=50", "--seed", "1").exit_code == 0
    assert create(k, "charcoal", "--transform", "charcoal@1").exit_code == 0
    return k


@pytest.fixture
def fresh(azurite: Azurite, tmp_path: Path) -> KnownCorpus:
    return build_known_corpus(azurite.connection_string, tmp_path / "fresh")


def files_under(root: Path) -> list[str]:
    """The files download wrote under ``root``, without its MD5 cache."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != CACHE_NAME)


def h(blob: str) -> str:
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def test_list_and_containing(known: KnownCorpus) -> None:
    res = invoke(known, "release", "list", "--json")
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert [r["name"] for r in listed] == ["all", "charcoal", "robins"]
    assert listed[2] == json.loads(invoke(known, "release", "show", "robins", "--json").stdout)
    res = invoke(known, "release", "list")
    robins = listed[2]["splits"]
    assert robins["train"] + robins["val"] == 6 and robins["train"] > 0 and robins["val"] > 0  # seed 1: both used
    kb = [human_bytes(r["bytes"]).rjust(6) for r in listed]
    c = [r["created"] for r in listed]
    assert res.stdout == (
        f"NAME      IMAGES   BYTES  CREATED{' ' * (len(c[0]) - 7)}  SPLITS\n"
        f"all            8  {kb[0]}  {c[0]}  all 8\n"
        f"charcoal       2  {kb[1]}  {c[1]}  all 2\n"
        f"robins         6  {kb[2]}  {c[2]}  train {robins['train']}, val {robins['val']}\n"
    )

    def containing(value: str) -> list[str]:
        res = invoke(known, "release", "list", "--containing", value, "--json")
        assert res.exit_code == 0, res.output
        return [r["name"] for r in json.loads(res.stdout)]

    # the charcoal release holds no original, but its outputs were made from red/angry/robin@v1
    assert containing("red/angry/robin@v1") == ["all", "charcoal", "robins"]
    assert containing("red/angry/robin@v2") == ["all", "robins"]
    assert containing("red/angry/robin") == ["all", "charcoal", "robins"]
    assert containing("Blue/sky@v1") == ["all"]
    assert containing("no/such@v1") == []


def test_show_names_the_originals_behind_a_transform_release(known: KnownCorpus) -> None:
    res = invoke(known, "release", "show", "charcoal")
    assert res.exit_code == 0, res.output
    tail = res.stdout.split("  sets        ")[1]
    assert tail == (
        "1:\n"
        "    red/angry/robin@v1 [charcoal@1]\n"
        "  transforms  charcoal@1\n"
        "  sources     1 sets the transform outputs were made from:\n"
        "    red/angry/robin@v1\n"
    )
    assert {json.dumps(r["source_set"]) for r in manifest_of(known, "charcoal")} == {
        json.dumps({"path": "red/angry/robin", "version": "v1", "transform": None})
    }


def test_query_release_lists_its_sets(known: KnownCorpus) -> None:
    res = invoke(known, "query", "--release", "robins", "--json")
    assert res.exit_code == 0, res.output
    got = [(s["path"], s["version"], s["transform"], s["images"]) for s in json.loads(res.stdout)]
    assert got == [
        ("red/angry/robin", "v1", None, 2),
        ("red/angry/robin", "v1", {"name": "charcoal", "version": "1"}, 2),
        ("red/angry/robin", "v2", None, 1),
        ("red/calm/robin", "v1", None, 1),
    ]
    res = invoke(known, "query", "--release", "robins", "--tag", "sky")
    assert res.exit_code == 2 and "--release and the query filters" in res.output


def test_status_lists_releases(known: KnownCorpus) -> None:
    res = invoke(known, "status", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["releases"]
    assert [(r["name"], r["images"]) for r in got] == [("all", 8), ("charcoal", 2), ("robins", 6)]
    res = invoke(known, "status")
    created = {r["name"]: r["created"] for r in got}
    assert (
        "  releases    3:\n"
        f"    all       8 images, created {created['all']}\n"
        f"    charcoal  2 images, created {created['charcoal']}\n"
        f"    robins    6 images, created {created['robins']}\n"
    ) in res.stdout


def test_diff(fresh: KnownCorpus) -> None:
    assert create(fresh, "A", "--tag", "robin", "--originals").exit_code == 0

    async def change(storage: Storage) -> None:
        # other bytes under the same blob name (what a careless rewrite outside the tool does)
        data = image_bytes(color="yellow")
        name = "original/red/calm/robin/v1/e.png"
        await storage.put_blob(name, data, content_type="image/png", md5=hashlib.md5(data).digest())

    with_storage(fresh.conn, fresh.name, change)
    args = ("--tag", "robin", "--any", "--tag", "sky", "--version", "v1", "--originals")
    assert create(fresh, "B", *args).exit_code == 0
    res = invoke(fresh, "release", "diff", "A", "B", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["only_a"], out["only_b"], out["changed"]) == (
        ["original/red/angry/robin/v2/a.png"],
        ["original/Blue/sky/v1/d.png"],
        ["original/red/calm/robin/v1/e.png"],
    )
    res = invoke(fresh, "release", "diff", "A", "B")
    assert res.stdout == (
        "Releases A and B: 2 images the same\n"
        "  only in A: 1 images (labels: robin 1; splits: all 1)\n"
        "    original/red/angry/robin/v2/a.png\n"
        "  only in B: 1 images (labels: sky 1; splits: all 1)\n"
        "    original/Blue/sky/v1/d.png\n"
        "  MD5 changed: 1 images (labels: robin 1; splits: all 1)\n"
        "    original/red/calm/robin/v1/e.png\n"
    )


def test_verify_and_a_silent_byte_change_only_deep_sees(fresh: KnownCorpus) -> None:
    assert create(fresh, "R").exit_code == 0
    res = invoke(fresh, "release", "verify", "R")
    assert (res.exit_code, res.stdout) == (
        0,
        "Release R: all 8 images match (sizes and stored Content-MD5s from listings)\n",
    )
    res = invoke(fresh, "release", "verify", "R", "--deep", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checked"] == 8
    victim = "original/red/angry/robin/v1/a.png"
    old = fresh.local(victim)

    async def tamper(storage: Storage) -> None:
        # same size, other bytes, then the old Content-MD5 set back: what a buggy or hostile writer can do
        # (Azurite checks Content-MD5 on Put Blob, not on Set Blob Properties)
        data = old[:-1] + bytes([old[-1] ^ 0xFF])
        await storage.put_blob(victim, data, content_type="image/png", md5=hashlib.md5(data).digest())
        await storage.container.get_blob_client(victim).set_http_headers(
            ContentSettings(content_type="image/png", content_md5=bytearray(hashlib.md5(old).digest()))
        )

    with_storage(fresh.conn, fresh.name, tamper)
    assert blobs(fresh.conn, fresh.name)[victim]["md5"] == hashlib.md5(old).hexdigest()
    res = invoke(fresh, "release", "verify", "R")
    assert res.exit_code == 0, res.output  # the listing cannot see it
    res = invoke(fresh, "release", "verify", "R", "--deep")
    assert res.exit_code == 1
    bad = hashlib.md5(old[:-1] + bytes([old[-1] ^ 0xFF])).hexdigest()
    good = hashlib.md5(old).hexdigest()
    assert res.stderr == (
        f"failed: {victim}: content has MD5 {bad} ({len(old)} bytes), the manifest says {good} ({len(old)} bytes)\n"
    )
    assert res.stdout.startswith("Release R: 1 of 8 images do not match (every byte re-read; listed above on stderr)\n")

    async def lose(storage: Storage) -> None:
        await storage.delete_blob("original/Blue/sky/v1/d.png")
        data = image_bytes(color="yellow")  # replaced with a correct Content-MD5 of its own
        await storage.put_blob(
            "original/red/calm/robin/v1/e.png", data, content_type="image/png", md5=hashlib.md5(data).digest()
        )

    with_storage(fresh.conn, fresh.name, lose)
    res = invoke(fresh, "release", "verify", "R", "--json")
    assert res.exit_code == 1
    failures = {f["item"]: f["reason"] for f in json.loads(res.stdout)["failures"]}
    assert failures["original/Blue/sky/v1/d.png"] == "missing"
    assert (
        failures["original/red/calm/robin/v1/e.png"].startswith("size ")
        or "stored Content-MD5" in (failures["original/red/calm/robin/v1/e.png"])
    )
    assert victim not in failures and len(failures) == 2

    async def drop(storage: Storage) -> None:
        await storage.delete_blob("releases/R/manifest.jsonl")

    with_storage(fresh.conn, fresh.name, drop)
    for args in (["release", "verify", "R"], ["download", "--release", "R", "--out", "x"]):
        res = invoke(fresh, *args)
        assert res.exit_code == 1
        assert "its manifest blob releases/R/manifest.jsonl is missing" in res.output


def test_download_imagefolder_unique_and_stable(known: KnownCorpus, tmp_path: Path) -> None:
    out, manifest = tmp_path / "one", tmp_path / "m.csv"
    res = invoke(
        known, "download", "--release", "all", "--layout", "imagefolder", "--out", str(out), "--manifest", str(manifest)
    )
    assert res.exit_code == 0, res.output
    robin = "original/red/angry/robin"
    char = "transform/charcoal/1/red/angry/robin"
    expected = sorted(
        [
            "all/sky/d.png",
            "all/angry/c.png",
            f"all/robin/{h(robin + '/v1/a.png')}_a.png",
            f"all/robin/{h(robin + '/v2/a.png')}_a.png",
            f"all/robin/{h(char + '/v1/a.png')}_a.png",
            f"all/robin/{h(robin + '/v1/b.png')}_b.png",
            f"all/robin/{h(char + '/v1/b.png')}_b.png",
            "all/robin/e.png",
        ]
    )
    assert files_under(out) == expected
    records = {r["blob_name"]: r for r in manifest_of(known, "all")}
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    for row in rows:
        local = Path(row["local_path"])
        assert local.read_bytes() == known.local(row["blob_name"])
        assert (row["label"], row["split"], row["md5"]) == (
            records[row["blob_name"]]["label"],
            records[row["blob_name"]]["split"],
            records[row["blob_name"]]["md5"],
        )
    # another folder, another run: the same names; the same folder again: nothing downloaded
    other = tmp_path / "two"
    assert invoke(known, "download", "--release", "all", "--layout", "imagefolder", "--out", str(other)).exit_code == 0
    assert files_under(other) == expected
    res = invoke(known, "download", "--release", "all", "--layout", "imagefolder", "--out", str(out), "--json")
    assert json.loads(res.stdout)["files"] == {"downloaded": 0, "already_present": 8, "failed": 0, "refused": 0}


def test_download_a_split(known: KnownCorpus, tmp_path: Path) -> None:
    records = manifest_of(known, "robins")
    for split in ("train", "val"):
        out = tmp_path / split
        res = invoke(known, "download", "--release", "robins", "--split", split, "--out", str(out))
        assert res.exit_code == 0, res.output
        assert files_under(out) == sorted(r["blob_name"] for r in records if r["split"] == split)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--release", "robins", "--split", "test"], "--split 'test': release robins has the splits train, val"),
        (["--release", "robins", "--tag", "robin"], "--release and the query filters"),
        (["--release", "nosuch"], "release 'nosuch' does not exist"),
        (["--split", "train"], "--split and --layout need --release"),
        (["--tag", "robin", "--layout", "imagefolder"], "--split and --layout need --release"),
    ],
)
def test_download_release_bad_input(known: KnownCorpus, tmp_path: Path, args: list[str], message: str) -> None:
    before = snapshot(known)
    res = invoke(known, "download", *args, "--out", str(tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "out").exists()
    assert snapshot(known) == before


def test_download_release_checks_the_pinned_md5(fresh: KnownCorpus, tmp_path: Path) -> None:
    assert create(fresh, "R", "--tag", "sky").exit_code == 0
    name = "original/Blue/sky/v1/d.png"

    async def replace(storage: Storage) -> None:
        data = image_bytes(color="yellow")  # a whole new blob, with its own (correct) Content-MD5
        await storage.put_blob(name, data, content_type="image/png", md5=hashlib.md5(data).digest())

    with_storage(fresh.conn, fresh.name, replace)
    res = invoke(fresh, "download", "--release", "R", "--out", str(tmp_path / "o"))
    assert res.exit_code == 1
    assert name in res.stderr and "not written" in res.stderr
    assert files_under(tmp_path / "o") == []


def test_library_list_diff_verify(known: KnownCorpus) -> None:
    with SyncCorpus(known.name, connection_string=known.conn) as c:
        assert [r.name for r in c.releases()] == ["all", "charcoal", "robins"]
        assert [r.name for r in c.releases(containing="Blue/sky")] == ["all"]
        diff = c.diff_releases("robins", "charcoal")
        assert (len(diff.only_a), len(diff.only_b), diff.changed, diff.same) == (4, 0, [], 2)
        report = c.verify_release("charcoal", deep=True, max_parallel_downloads=2)
        assert (report.exit_code, report.checked, report.failures) == (0, 2, [])
        assert report.bytes_read == sum(r["bytes"] for r in c.release("charcoal"))
        found = c.query(release="charcoal")
        assert [(s.path, s.transform_name, s.images) for s in found.sets] == [("red/angry/robin", "charcoal", 2)]
