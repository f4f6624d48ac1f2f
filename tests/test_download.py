"""`corpus download` on a real Azurite: layout, manifests, reruns, tampering, hostile names, checksums."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContentSettings
from click.testing import CliRunner, Result

from corpus_manager.cli import cli
from corpus_manager.dlcache import CACHE_NAME
from corpus_manager.download import UnsafeBlobName, local_target
from corpus_manager.storage import Storage, eq

from .conftest import Azurite, image_bytes, write_image
from .helpers import blobs, run, with_storage
from .known_corpus import KnownCorpus, build_known_corpus


@pytest.fixture(scope="module")
def known(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> KnownCorpus:
    return build_known_corpus(azurite.connection_string, tmp_path_factory.mktemp("known"))


def invoke(env: dict[str, str | None] | None, *args: str) -> Result:
    return CliRunner().invoke(cli, ["download", *args], env=env)


def files_under(root: Path) -> list[str]:
    """The files download wrote under ``root``, without its MD5 cache (dlcache.CACHE_NAME)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != CACHE_NAME
    )


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


ROBIN_V1 = ["original/red/angry/robin/v1/a.png", "original/red/angry/robin/v1/b.png"]
CALM_V1 = ["original/red/calm/robin/v1/e.png"]


def test_layout_and_jsonl_manifest(known: KnownCorpus, tmp_path: Path) -> None:
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    res = invoke(
        known.env, "--tag", "robin", "--originals", "--version", "v1", "--out", str(out), "--manifest", str(manifest)
    )
    assert res.exit_code == 0, res.output
    assert files_under(out) == ROBIN_V1 + CALM_V1
    for name in ROBIN_V1 + CALM_V1:
        assert (out / name).read_bytes() == known.local(name)
    lines = manifest.read_text().splitlines()
    tags = {"red/angry/robin": ["red", "angry", "robin"], "red/calm/robin": ["red", "calm", "robin"]}
    assert [json.loads(line) for line in lines] == [
        {
            "local_path": str((out / name).resolve()),
            "blob_name": name,
            "set_path": name.split("/v1/")[0][9:],
            "tags": tags[name.split("/v1/")[0][9:]],
            "version": "v1",
            "transform_name": "",
            "transform_version": "",
            "bytes": len(known.local(name)),
            "md5": md5(known.local(name)),
        }
        for name in ROBIN_V1 + CALM_V1
    ]
    assert res.stdout.splitlines()[1:2] == ["  files       3 downloaded, 0 already present, 0 failed, 0 refused"]
    assert res.stdout.splitlines()[3] == f"  manifest    {manifest.resolve()} (3 records)"


def test_csv_manifest_and_transform_layout(known: KnownCorpus, tmp_path: Path) -> None:
    out, manifest = tmp_path / "out", tmp_path / "sub" / "m.csv"
    res = invoke(known.env, "--transform", "charcoal@1", "--out", str(out), "--manifest", str(manifest))
    assert res.exit_code == 0, res.output
    names = ["transform/charcoal/1/red/angry/robin/v1/a.png", "transform/charcoal/1/red/angry/robin/v1/b.png"]
    assert files_under(out) == names
    with open(manifest, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [
        "local_path",
        "blob_name",
        "set_path",
        "tags",
        "version",
        "transform_name",
        "transform_version",
        "bytes",
        "md5",
    ]
    assert rows[1:] == [
        [
            str((out / n).resolve()),
            n,
            "red/angry/robin",
            '["red", "angry", "robin"]',
            "v1",
            "charcoal",
            "1",
            str(len(known.local(n))),
            md5(known.local(n)),
        ]
        for n in names
    ]
    for n in names:
        assert (out / n).read_bytes() == known.local(n)


def test_everything_complete_and_nothing_pending(known: KnownCorpus, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = invoke(known.env, "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert files_under(out) == sorted(known.sizes)  # every complete set's blob, and no red/wip (pending)
    assert "original/red/wip/v1/w.png" not in files_under(out)
    report = json.loads(res.stdout)
    assert report["sets"] == 7 and report["files"] == {"downloaded": 9, "already_present": 0, "failed": 0, "refused": 0}


def test_rerun_downloads_nothing_and_a_tampered_file_again(known: KnownCorpus, tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def dl(c: Any) -> tuple[Any, int]:
        report = await c.download(str(out), ["robin"], originals=True)
        return report, c.storage.stats.blob_gets

    first, gets = run(known.conn, known.name, dl)
    assert (first.files_downloaded, first.files_present, gets) == (4, 0, 4)
    again, gets = run(known.conn, known.name, dl)
    assert (again.files_downloaded, again.files_present, gets) == (0, 4, 0)
    res = invoke(known.env, "--tag", "robin", "--originals", "--out", str(out))
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0] == f"Nothing to download: all 4 files of 3 sets are already in {out.resolve()}."

    tampered = out / ROBIN_V1[0]
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    tampered.write_bytes(bytes(data))
    (out / CALM_V1[0]).unlink()
    third, gets = run(known.conn, known.name, dl)
    assert (third.files_downloaded, third.files_present, gets) == (2, 2, 2)
    assert tampered.read_bytes() == known.local(ROBIN_V1[0])
    assert (out / CALM_V1[0]).read_bytes() == known.local(CALM_V1[0])


def test_downloads_stay_within_the_parallel_bound(known: KnownCorpus, tmp_path: Path) -> None:
    async def dl(c: Any) -> tuple[Any, int]:
        storage: Storage = c.storage
        state = {"now": 0, "peak": 0}
        two_at_once = asyncio.Event()

        def counting(inner: Any) -> Any:
            # a photo comes through get_blob, a big file through download_to: both are counted
            async def counted(*args: Any) -> Any:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
                if state["now"] >= 2:
                    two_at_once.set()
                try:
                    # The first downloads hold their slot until a second one is in flight, so the overlap
                    # shows however slow the machine; were the bound 1, they go on after 60 s and peak is 1.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(two_at_once.wait(), 60)
                    return await inner(*args)
                finally:
                    state["now"] -= 1

            return counted

        storage.download_to = counting(storage.download_to)  # type: ignore[method-assign]
        storage.get_blob = counting(storage.get_blob)  # type: ignore[method-assign]
        report = await c.download(str(tmp_path / "out"), max_parallel_downloads=2)
        return report, state["peak"]

    report, peak = run(known.conn, known.name, dl)
    assert report.files_downloaded == 9 and peak == 2


def _put_raw(conn: str, corpus: str, name: str, data: bytes, md5_of: bytes | None = None) -> None:
    """A blob put there directly with the SDK (not through the tool), with the Content-MD5 of ``md5_of``
    (set afterwards as a property, which the service does not check against the content) or none."""

    async def put(storage: Storage) -> None:
        blob = await storage.container.upload_blob(
            name, data, overwrite=True, content_settings=ContentSettings(content_type="image/png")
        )
        md5_value = bytearray(hashlib.md5(md5_of).digest()) if md5_of is not None else None
        await blob.set_http_headers(ContentSettings(content_type="image/png", content_md5=md5_value))

    with_storage(conn, corpus, put)


def _small_corpus(conn: str, corpus: str, tmp_path: Path) -> Path:
    write_image(tmp_path / "photos" / "red" / "angry" / "c.png", color="maroon")
    report = run(conn, corpus, lambda c: c.upload(str(tmp_path / "photos"), "v1"))
    assert report.ok
    return tmp_path / "photos" / "red" / "angry" / "c.png"


def test_hostile_blob_names_are_refused_and_nothing_is_written_outside(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    _small_corpus(conn, corpus_name, tmp_path)
    evil = image_bytes(color="black")
    _put_raw(conn, corpus_name, "original/red/angry/v1/C:evil.png", evil, evil)
    # Azurite (like Azure) turns '\' into '/': this one is stored as original/red/angry/v1/../../../../../../evil.png
    _put_raw(conn, corpus_name, "original/red/angry/v1/..\\..\\..\\..\\..\\..\\evil.png", evil, evil)
    work = tmp_path / "work"
    out = work / "out"
    res = CliRunner().invoke(cli, ["download", "--tag", "angry", "--out", str(out)])
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        "warning: set red/angry@v1 lists 2 blobs under original/red/angry/v1/ but its row says 1 images",
        "refused: original/red/angry/v1/C:evil.png: a drive letter in the path segment 'C:evil.png'; not written",
    ]
    assert "original/red/angry/v1/../../../../../../evil.png" in blobs(conn, corpus_name)  # the hazard is real
    assert files_under(out) == ["original/red/angry/v1/c.png"]
    assert not [p for p in tmp_path.parent.rglob("*evil*")]  # nowhere under (or beside) the test's directory
    assert res.stdout.splitlines()[1] == "  files       1 downloaded, 0 already present, 0 failed, 1 refused"


def test_a_tampered_index_row_cannot_point_elsewhere(conn: str, corpus_name: str, tmp_path: Path) -> None:
    _small_corpus(conn, corpus_name, tmp_path)
    secret = image_bytes(color="black")
    _put_raw(conn, corpus_name, "secret/v1/x.png", secret, secret)

    async def tamper(storage: Storage) -> None:
        rows = [dict(e) async for e in storage.query(storage.tags, eq("PartitionKey", "angry"))]
        (row,) = rows
        row["BlobPrefix"] = "secret/v1/"
        await storage.upsert_entity(storage.tags, row, merge=False)

    with_storage(conn, corpus_name, tamper)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["download", "--tag", "angry", "--out", str(out), "--json"])
    assert res.exit_code == 1
    (failure,) = json.loads(res.stdout)["failures"]
    assert failure["kind"] == "corrupt" and "BlobPrefix 'secret/v1/'" in failure["reason"]
    assert files_under(out) == []


def test_a_symlink_under_out_is_not_followed(conn: str, corpus_name: str, tmp_path: Path) -> None:
    _small_corpus(conn, corpus_name, tmp_path)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "original").symlink_to(elsewhere)
    res = CliRunner().invoke(cli, ["download", "--out", str(out)])
    assert res.exit_code == 1
    assert "refused: original/red/angry/v1/c.png: the path leaves the output directory" in res.stderr
    assert list(elsewhere.iterdir()) == []


def test_content_md5_mismatch_is_an_error_and_nothing_is_kept(conn: str, corpus_name: str, tmp_path: Path) -> None:
    local = _small_corpus(conn, corpus_name, tmp_path)
    # the stored Content-MD5 says "the original bytes", the content is something else
    _put_raw(conn, corpus_name, "original/red/angry/v1/c.png", image_bytes(color="black"), local.read_bytes())
    _put_raw(conn, corpus_name, "original/red/angry/v1/nomd5.png", image_bytes(color="white"))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["download", "--out", str(out), "--json"])
    assert res.exit_code == 1
    failures = {f["item"]: f["reason"] for f in json.loads(res.stdout)["failures"]}
    assert failures == {
        "original/red/angry/v1/c.png": f"downloaded content has MD5 {md5(image_bytes(color='black'))} but the "
        f"blob's Content-MD5 is {md5(local.read_bytes())}; not written",
        "original/red/angry/v1/nomd5.png": "the blob has no Content-MD5 to check against; not downloaded",
    }
    assert files_under(out) == []  # no target, no temporary file left behind


def test_csv_manifest_neutralises_formula_cells(conn: str, corpus_name: str, tmp_path: Path) -> None:
    for d in ("=SUM(A1)", "-x", "plain"):
        write_image(tmp_path / "photos" / d / "i.png")
    run(conn, corpus_name, lambda c: c.upload(str(tmp_path / "photos"), "v1"))
    manifest = tmp_path / "m.csv"
    res = CliRunner().invoke(cli, ["download", "--out", str(tmp_path / "out"), "--manifest", str(manifest)])
    assert res.exit_code == 0, res.output
    with open(manifest, newline="") as fh:
        rows = {r["set_path"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["'-x", "'=SUM(A1)", "plain"]
    assert rows["'=SUM(A1)"]["tags"] == '["=SUM(A1)"]'
    assert rows["'=SUM(A1)"]["blob_name"] == "original/=SUM(A1)/v1/i.png"
    for r in rows.values():
        assert not any(str(v).startswith(("=", "+", "-", "@")) for v in r.values())


@pytest.mark.parametrize(
    "args",
    [
        ["--manifest", "m.txt"],
        ["--max-parallel-downloads", "0"],
        ["--transform", "x", "--originals"],
    ],
)
def test_usage_errors_exit_2_and_write_nothing(conn: str, corpus_name: str, tmp_path: Path, args: list[str]) -> None:
    _small_corpus(conn, corpus_name, tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["download", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "name",
    [
        "../x.png",
        "a/../../x.png",
        "a/./x.png",
        "/etc/x.png",
        "a//x.png",
        "a\\..\\x.png",
        "C:x.png",
        "a/c:/x.png",
        "a/x\x00.png",
        "",
        "a/..",
    ],
)
def test_local_target_refuses_names_that_could_leave_out(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeBlobName):
        local_target(tmp_path.resolve(), name)


def test_local_target_keeps_ordinary_names_under_out(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    assert local_target(root, "original/red/v1/a.png") == root / "original" / "red" / "v1" / "a.png"
    assert local_target(root, "original/été/v1/..a.png") == root / "original" / "été" / "v1" / "..a.png"
    # a POSIX file name may hold a newline or a tab: it comes back under the name it was uploaded with
    assert local_target(root, "original/v1/a\nb\t.png") == root / "original" / "v1" / "a\nb\t.png"
