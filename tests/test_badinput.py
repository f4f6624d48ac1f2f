"""The bad-input catalogue: each strange input gets a clear message naming it, and the rest of the work is done.

Cases covered elsewhere (not repeated here): zero-byte, truncated JPEG and text-named-.png files
(test_upload.py::test_corrupt_files_are_reported_and_not_uploaded), a missing root
(test_crawler.py, test_upload.py::test_missing_root_is_a_usage_error), a symlink loop
(test_crawler.py::test_symlink_loop_is_reported_not_followed_forever), non-UTF-8 names in the crawl
(test_crawler.py), a bad --version (test_upload.py, test_query.py), malformed connection strings
(test_config.py), a wrong key for upload (test_config.py), an unknown op or bad argument
(test_transform.py::test_bad_spec_is_a_usage_error_before_any_work, test_transforms.py), corrupt rows
for query and status (test_query.py, test_status.py), corrupt and bomb images in a transform
(test_transform.py::test_corrupt_and_bomb_images_fail_only_their_sets).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager.cli import cli
from corpus_manager.crawler import Crawler
from corpus_manager.storage import Storage

from .conftest import KEY, write_image
from .helpers import blobs, container_exists, md5_of, png_bomb, rows, run, with_storage


def upload(conn: str, corpus: str, root: Path, version: str = "v1"):  # type: ignore[no-untyped-def]
    return run(conn, corpus, lambda c: c.upload(str(root), version))


# ----- the root ------------------------------------------------------------------------------
def test_empty_root_says_there_is_nothing_to_upload(conn: str, corpus_name: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    for root, ignored in ((tmp_path / "empty", 0), (tmp_path / "notes", 1)):
        res = CliRunner().invoke(cli, ["upload", str(root), "--version", "v1"])
        assert res.exit_code == 0, res.output
        assert res.stdout.splitlines()[0] == f"Nothing to upload: no images under {root}."
        assert f"0 failed, {ignored} ignored (not images)" in res.stdout
    assert rows(conn, corpus_name) == [] and blobs(conn, corpus_name) == {}


def test_root_that_is_a_file_is_a_usage_error_and_writes_nothing(conn: str, corpus_name: str, tmp_path: Path) -> None:
    file_root = write_image(tmp_path / "a.png")
    res = CliRunner().invoke(cli, ["upload", str(file_root), "--version", "v1"])
    assert res.exit_code == 2
    assert res.stderr == f"Error: {file_root}: not a directory\n"
    assert not container_exists(conn, corpus_name)


def test_a_directory_replaced_by_a_file_mid_walk_is_named_and_the_walk_goes_on(tmp_path: Path) -> None:
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.png").write_bytes(b"x")
    crawler = Crawler(str(tmp_path))
    walk = iter(crawler)
    assert next(walk).rel_dir == "a"
    # between two directories of the walk, b becomes a file (another program at work)
    shutil.rmtree(tmp_path / "b")
    (tmp_path / "b").write_bytes(b"now a file")
    assert [g.rel_dir for g in walk] == ["c"]
    assert [(p.path, p.reason) for p in crawler.problems] == [
        (str(tmp_path / "b"), "is no longer a directory (changed during the walk)")
    ]


# ----- files ---------------------------------------------------------------------------------
def test_png_bomb_is_uploaded_and_transform_fails_only_its_set(conn: str, corpus_name: str, tmp_path: Path) -> None:
    """A 20000x20000 PNG is a valid PNG of a few KB: upload stores it (upload never decodes; limits belong
    to the stage that decodes), and the transform refuses it before decoding, failing only its set."""
    bomb = tmp_path / "huge" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(png_bomb(20000, 20000))
    write_image(tmp_path / "fine" / "ok.png", size="32x32")
    report = upload(conn, corpus_name, tmp_path)
    assert report.ok and report.files_uploaded == 2
    assert blobs(conn, corpus_name)["original/huge/v1/bomb.png"]["md5"] == md5_of(bomb)
    res = CliRunner().invoke(cli, ["transform", "small", "--version", "1", "--op", "resize=8x8", "--workers", "1"])
    assert res.exit_code == 1, res.output
    (line,) = res.stderr.splitlines()
    assert line.startswith("failed: original/huge/v1/bomb.png: ")
    assert "20000x20000" in line and "limit" in line
    assert "  sets        2 total: 1 transformed, 0 already done, 1 failed" in res.stdout
    outputs = {r["Path"]: r["Status"] for r in rows(conn, corpus_name) if r["TransformName"]}
    assert outputs == {"fine": "complete", "huge": "pending"}


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="corpus-perm-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in path.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(path)


def _unprivileged(cmd: list[str], probe: Path) -> list[str]:
    """``cmd`` run as a user whom permissions bind. As root (this machine) that means dropping to
    'nobody' with setpriv, which also clears every capability; skipped if that cannot be done."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot bind, so they cannot be tested")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    check = subprocess.run([*prefix, "cat", str(probe)], capture_output=True)
    if check.returncode == 0:
        pytest.skip("the unprivileged user can still read a mode-000 file")
    return [*prefix, *cmd]


def test_unreadable_file_and_directory_are_named_and_the_rest_uploaded(
    conn: str, corpus_name: str, world_readable_dir: Path
) -> None:
    root = world_readable_dir / "photos"
    write_image(root / "open" / "a.png")
    locked_file = write_image(root / "open" / "locked.png", color="blue")
    locked_dir = root / "closed"
    write_image(locked_dir / "c.png", color="green")
    for p in (root, *root.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    locked_file.chmod(0)
    locked_dir.chmod(0)
    cmd = _unprivileged(
        [sys.executable, "-m", "corpus_manager.cli", "upload", str(root), "--version", "v1"], locked_file
    )
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    assert res.returncode == 1, res.stderr
    assert sorted(res.stderr.splitlines()) == [
        f"skipped: {locked_dir}: permission denied; skipped",
        f"skipped: {locked_file}: permission denied; skipped",
    ]
    assert "  files       1 uploaded," in res.stdout
    assert list(blobs(conn, corpus_name)) == ["original/open/v1/a.png"]
    (row,) = rows(conn, corpus_name)
    assert row["Path"] == "open" and row["Status"] == "complete" and row["ImageCount"] == 1


def test_symlinks_outside_the_root_are_followed_and_broken_ones_named(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """The choice (README): links are followed, also out of ROOT, since image folders often link to a data
    disk; the set takes the link's place in the tree (its path and tags are the link's)."""
    outside = tmp_path / "disk"
    write_image(outside / "birds" / "robin.png", color="red")
    far_file = write_image(outside / "loose.png", color="blue")
    root = tmp_path / "photos"
    write_image(root / "own" / "x.png", color="green")
    (root / "linked").symlink_to(outside / "birds", target_is_directory=True)
    (root / "own" / "far.png").symlink_to(far_file)
    (root / "own" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    report = upload(conn, corpus_name, root)
    assert [(f.item, f.reason) for f in report.failures] == [
        (str(root / "own" / "dangling.png"), "vanished or is a broken symlink; skipped")
    ]
    stored = blobs(conn, corpus_name)
    assert sorted(stored) == ["original/linked/v1/robin.png", "original/own/v1/far.png", "original/own/v1/x.png"]
    assert stored["original/own/v1/far.png"]["md5"] == md5_of(far_file)
    assert {r["Path"]: json.loads(r["Tags"]) for r in rows(conn, corpus_name)} == {"linked": ["linked"], "own": ["own"]}


AWKWARD = ["100%.png", "a#b.png", "what?.png", " lead.png", "trail .png", "%2F.png", "é ü.png"]


def test_awkward_file_names_round_trip_through_upload_query_and_download(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    folder = root / " odd #?% dir "
    local = {n: write_image(folder / n, color=f"rgb({i * 25},0,0)") for i, n in enumerate(AWKWARD)}
    bad_name = os.fsencode(folder) + b"/bad\xff.png"
    with open(bad_name, "wb") as fh:
        fh.write(local["100%.png"].read_bytes())
    for i, name in enumerate(("new\nline.png", "tab\there.png")):  # control characters: not portable blob names
        write_image(folder / name, color=f"rgb(0,{i * 25},0)")
    res = CliRunner().invoke(cli, ["upload", str(root), "--version", "v1"])
    assert res.exit_code == 1  # the refused names are named, one line each, the bytes shown escaped
    control = "name contains the control character U+{:04X}, which Azure Blob Storage refuses in blob names"
    assert sorted(res.stderr.splitlines()) == [
        f"refused: {folder}/bad\\xff.png: name is not valid UTF-8 (rename it); not uploaded",
        f"refused: {folder}/new\\nline.png: {control.format(10)} (rename it); not uploaded",
        f"refused: {folder}/tab\\there.png: {control.format(9)} (rename it); not uploaded",
    ]
    assert f"  files       {len(AWKWARD)} uploaded," in res.stdout

    query = CliRunner().invoke(cli, ["query", "--json", "--tag", "odd #?% dir"])
    assert query.exit_code == 0, query.output
    (found,) = json.loads(query.stdout)
    assert found["path"] == " odd #?% dir " and found["images"] == len(AWKWARD)

    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    res = CliRunner().invoke(cli, ["download", "--tag", "odd #?% dir", "--out", str(out), "--manifest", str(manifest)])
    assert res.exit_code == 0, res.output
    back = out / "original" / " odd #?% dir " / "v1"
    assert sorted(p.name for p in back.iterdir()) == sorted(AWKWARD)  # the original names, byte for byte
    for name, path in local.items():
        assert hashlib.md5((back / name).read_bytes()).hexdigest() == md5_of(path), name
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(Path(r["local_path"]).name for r in records) == sorted(AWKWARD)


def test_too_long_paths_are_named_with_the_limit_and_the_rest_uploaded(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """Table Storage keys hold 1 KiB of UTF-16 (512 units): a set whose keys (after escaping) would not
    fit fails before its first blob, with its path and the limit; the others are uploaded."""
    deep = tmp_path.joinpath(*["ab"] * 150)  # 449 characters, but every '/' escapes to three in a key
    wide = tmp_path.joinpath(*["L" * 200] * 3)
    write_image(deep / "x.png")
    write_image(wide / "y.png")
    write_image(tmp_path / "ok" / "z.png")
    res = CliRunner().invoke(cli, ["upload", str(tmp_path), "--version", "v1", "--json"])
    assert res.exit_code == 1
    failures = {f["item"]: f["reason"] for f in json.loads(res.stdout)["failures"]}
    assert sorted(failures) == sorted([str(deep), str(wide)])
    for item, reason in failures.items():
        rel = Path(item).relative_to(tmp_path).as_posix()
        assert reason.startswith(f"set path {rel!r} is too long for a Table key (")
        assert reason.endswith("UTF-16 units after escaping; Table Storage allows 1 KiB = 512)")
    assert list(blobs(conn, corpus_name)) == ["original/ok/v1/z.png"]
    assert [(r["Path"], r["Status"]) for r in rows(conn, corpus_name)] == [("ok", "complete")]


# ----- options and settings ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["transform", "bad name", "--version", "1", "--op", "resize=8x8"], "transform name 'bad name' is not valid"),
        (["transform", "ok", "--version", "1/2", "--op", "resize=8x8"], "transform version '1/2' is not valid"),
        (
            ["transform", "ok", "--version", "1", "--op", "resize=8x8", "--source-version", "v 1"],
            "--source-version 'v 1' is not valid",
        ),
        (["transform", "ok", "--version", "1", "--op", "resize=8x8", "--from", "nope"], "must be NAME@VERSION"),
        (["transform", "ok", "--version", "1", "--op", "resize=8x8", "--from", "ok@1"], "cannot read its own outputs"),
        (["download", "--out", "OUT", "--version", "-v"], "version '-v' is not valid"),
        (["upload", "ROOT", "--version", "." * 3], "version '...' is not valid"),
        (["upload", "ROOT", "--version", "x" * 65], "is not valid"),
        (["query", "--corpus", "Bad_Name"], "corpus name 'Bad_Name' is not valid"),
    ],
)
def test_invalid_names_are_usage_errors_that_write_nothing(
    conn: str, corpus_name: str, tmp_path: Path, args: list[str], message: str
) -> None:
    write_image(tmp_path / "root" / "s" / "a.png")
    args = [str(tmp_path / "root") if a == "ROOT" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("Error: ") and message in res.stderr and res.stdout == ""
    assert not container_exists(conn, corpus_name) and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["upload", "ROOT", "--version", "v1"],
        ["query"],
        ["download", "--out", "OUT"],
        ["status"],
        ["transform", "t", "--version", "1", "--op", "resize=8x8"],
        ["transforms"],
    ],
)
@pytest.mark.parametrize(
    ("conn_str", "message"),
    [
        (f"AccountName=acct;AccountKey={KEY};garbage", "the connection string is malformed"),
        ("AccountName=acct;AccountKey=not*base64", "AccountKey is not valid base64"),
        (f"AccountKey={KEY}", "names no account"),
    ],
)
def test_malformed_connection_strings_fail_every_command_with_exit_2(
    tmp_path: Path, command: list[str], conn_str: str, message: str
) -> None:
    write_image(tmp_path / "root" / "a.png")
    args = [str(tmp_path / "root") if a == "ROOT" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    res = CliRunner().invoke(cli, [*args, "--connection-string", conn_str])
    assert res.exit_code == 2, res.output
    (line,) = res.stderr.splitlines()
    assert line.startswith("Error: ") and message in line
    assert KEY not in res.output and "not*base64" not in res.output
    assert not (tmp_path / "out").exists()


# ----- corrupt rows --------------------------------------------------------------------------
def test_corrupt_set_row_is_named_and_survived_by_download_and_transform(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    write_image(tmp_path / "photos" / "good" / "a.png", size="32x32")
    assert upload(conn, corpus_name, tmp_path / "photos").ok

    async def spoil(storage: Storage) -> None:  # rows no run of the tool writes, put there with the SDK
        await storage.upsert_entity(
            storage.sets,
            {
                "PartitionKey": "original",
                "RowKey": "zz|v1",
                "Path": "zz",
                "Version": "v1",
                "Tags": "not json",
                "Status": "complete",
            },
        )
        await storage.upsert_entity(
            storage.sets, {"PartitionKey": "original", "RowKey": "no-version", "Status": "complete"}
        )

    with_storage(conn, corpus_name, spoil)
    bad = {f"{corpus_name}ImageSets ('original', 'zz|v1')", f"{corpus_name}ImageSets ('original', 'no-version')"}
    res = CliRunner().invoke(cli, ["download", "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert {f["item"] for f in report["failures"]} == bad
    assert report["files"]["downloaded"] == 1 and (tmp_path / "out" / "original/good/v1/a.png").is_file()

    res = CliRunner().invoke(cli, ["transform", "small", "--version", "1", "--op", "resize=8x8", "--workers", "1"])
    assert res.exit_code == 1
    named = [line for line in res.stderr.splitlines() if "corrupt" in line]
    assert len(named) == 2 and all("zz|v1" in line or "no-version" in line for line in named), res.stderr
    assert "  sets        1 total: 1 transformed" in res.stdout
    assert [r["Status"] for r in rows(conn, corpus_name) if r.get("TransformName")] == ["complete"]
