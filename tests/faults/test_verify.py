"""Storage that forgets acknowledged blobs (what a SIGKILLed Azurite does, see test_kill.py): the lie is
invisible to a normal rerun, `corpus status --verify` finds it and sets the set back to pending, and the
same upload or transform, rerun, repairs it. The loss is made here by deleting a blob with the SDK."""

from __future__ import annotations

import json
from pathlib import Path

from azure.storage.blob import BlobServiceClient
from click.testing import CliRunner

from corpus_manager.cli import cli

from ..conftest import unique_png
from .invariants import local_images, read_corpus, summary, violations


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _lose(conn: str, corpus: str, name: str) -> None:
    BlobServiceClient.from_connection_string(conn).get_container_client(corpus).delete_blob(name)


def test_status_verify_demotes_a_lying_set_and_the_rerun_repairs_it(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for d in range(3):
        for i in range(4):
            unique_png(root / "birds" / f"set{d}" / f"{i}.png", d * 10 + i)
    assert _run("upload", str(root), "--version", "v1")[0] == 0
    _lose(conn, corpus_name, "original/birds/set1/v1/2.png")

    code, out, _ = _run("upload", str(root), "--version", "v1")  # a rerun never lists a complete set
    assert code == 0 and out.startswith("Nothing to upload")
    assert any(
        v.startswith("complete set 'birds/set1'")
        for v in violations(read_corpus(conn, corpus_name), local_images(root, "v1"))
    )

    code, out, err = _run("status", "--verify", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["verified"] == 3
    assert report["demoted"] == ["birds/set1@v1: 3 blobs stored under original/birds/set1/v1/, its row counts 4"]
    assert report["pending"] == ["birds/set1@v1"]
    code, out, _ = _run("query", "--tag", "birds", "--format", "json")
    assert [s["path"] for s in json.loads(out)] == ["birds/set0", "birds/set2"]  # no tag row for a pending set

    code, out, err = _run("upload", str(root), "--version", "v1")
    assert code == 0, err
    assert "1 uploaded, 11 already stored" in out
    state = read_corpus(conn, corpus_name)
    assert violations(state, local_images(root, "v1")) == [], summary(state)
    assert _run("status", "--verify")[1].count("0 did not match") == 1


def test_transform_refuses_a_lying_source_and_verify_repairs_a_lying_output(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for d in range(2):
        for i in range(3):
            unique_png(root / f"set{d}" / f"{i}.png", d * 10 + i)
    assert _run("upload", str(root), "--version", "v1")[0] == 0
    assert _run("transform", "tiny", "--version", "1", "--op", "resize=4x4", "--workers", "1")[0] == 0
    _lose(conn, corpus_name, "transform/tiny/1/set0/v1/1.png")
    _lose(conn, corpus_name, "original/set1/v1/0.png")

    # a source whose blobs do not match its row is not transformed into an output that would lie
    code, out, err = _run("transform", "tiny", "--version", "2", "--op", "resize=4x4", "--workers", "1")
    assert code == 1
    assert "set set1@v1: its row counts 3 images but 2 blobs are stored under original/set1/v1/" in err

    code, out, _ = _run("status", "--verify", "--json")
    assert code == 1
    report = json.loads(out)
    assert sorted(report["pending"]) == ["set0@v1 [tiny@1]", "set1@v1"], report
    assert [d.split(":")[0] for d in report["demoted"]] == ["set0@v1 [tiny@1]", "set1@v1"]
    assert _run("upload", str(root), "--version", "v1")[0] == 0
    code, out, err = _run("transform", "tiny", "--version", "1", "--op", "resize=4x4", "--workers", "1")
    assert code == 0, err
    assert _run("transform", "tiny", "--version", "2", "--op", "resize=4x4", "--workers", "1")[0] == 0
    state = read_corpus(conn, corpus_name)
    assert violations(state, local_images(root, "v1"), transform_prefix="transform/tiny/") == [], summary(state)
    assert [r["Status"] for r in state["sets"]] == ["complete"] * 6
