"""What reaches the terminal: names, tags and messages print as text (never as rich markup, never as raw
control characters), and a summary's first line says what happened."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager.cli import cli, format_status, format_upload
from corpus_manager.models import SetIdentity
from corpus_manager.progress import BarProgress
from corpus_manager.status import StatusReport
from corpus_manager.storage import Storage
from corpus_manager.upload import UploadReport

from .conftest import image_bytes, write_image
from .helpers import run, with_storage
from .known_corpus import add_set


def test_a_progress_note_is_text_not_markup(capsys: pytest.CaptureFixture[str]) -> None:
    with BarProgress("download", enabled=True) as bar:
        bar.note("set a/[/]b [draft] lists 2 blobs \x1b[31mred")
    err = capsys.readouterr().err
    # "[/]" used to raise rich's MarkupError and "[draft]" to vanish as an unknown style
    assert "warning: set a/[/]b [draft] lists 2 blobs \\x1b[31mred\n" in err
    assert "\x1b[31m" not in err


def test_duplicates_with_markup_like_names_are_listed_as_they_are(conn: str, corpus_name: str, tmp_path: Path) -> None:
    # Control characters in names are refused at upload (tests/test_names.py), so the escaping of the
    # duplicates line is shown on the formatter below; here: names that look like markup stay literal.
    same = image_bytes(color="red")
    for name in ("[red]a.png", "c [b] d.png"):
        (tmp_path / "photos" / "birds").mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / "birds" / name).write_bytes(same)
    res = CliRunner().invoke(cli, ["upload", str(tmp_path / "photos"), "--version", "v1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[-1] == (
        "  duplicates  1 groups of byte-identical files: birds/[red]a.png = birds/c [b] d.png"
    )


def test_summaries_escape_control_characters_from_names_and_tags() -> None:
    report = UploadReport(root="/photos", version="v1", duplicates=[["x/\x1b[2Ja.png", "x/\x9b2Jb.png"]])
    assert format_upload(report).splitlines()[-1] == (
        "  duplicates  1 groups of byte-identical files: x/\\x1b[2Ja.png = x/\\u009b2Jb.png"
    )
    status = format_status(StatusReport("c", pending=["evil\x1b]0;title\x07@v1"], tags=[("t\x1b[31m", 1)]))
    assert "\x1b" not in status and "\x07" not in status
    assert "    evil\\x1b]0;title\\x07@v1" in status.splitlines()
    assert "    t\\x1b[31m  1" in status.splitlines()


def test_status_lists_a_tag_with_an_escape_sequence_escaped(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "photos" / "plain" / "a.png")
    assert run(conn, corpus_name, lambda c: c.upload(str(tmp_path / "photos"), "v1")).ok

    async def tagged(storage: Storage) -> None:  # tags as rows hold them: whatever a writer put there
        await add_set(storage, SetIdentity("odd", "v1"), ["odd", "x\x1b[31my"], {"o.png": image_bytes(color="blue")})

    with_storage(conn, corpus_name, tagged)
    res = CliRunner().invoke(cli, ["status"])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.stdout
    assert "    x\\x1b[31my  1" in res.stdout.splitlines()


def test_a_download_where_no_file_arrived_does_not_say_downloaded(conn: str, corpus_name: str, tmp_path: Path) -> None:
    for i, color in enumerate(("red", "blue")):
        write_image(tmp_path / "photos" / "birds" / f"{i}.png", color=color)
    assert run(conn, corpus_name, lambda c: c.upload(str(tmp_path / "photos"), "v1")).ok

    async def wrong_md5s(storage: Storage) -> None:  # storage's Content-MD5 no longer matches the bytes
        from azure.storage.blob import ContentSettings

        for i in range(2):
            blob = storage.container.get_blob_client(f"original/birds/v1/{i}.png")
            await blob.set_http_headers(
                ContentSettings(content_type="image/png", content_md5=bytearray(hashlib.md5(b"x").digest()))
            )

    with_storage(conn, corpus_name, wrong_md5s)
    res = CliRunner().invoke(cli, ["download", "--out", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert res.stdout.splitlines()[:2] == [
        "Nothing downloaded: all 2 files of 1 sets failed (listed above on stderr)",
        "  files       0 downloaded, 0 already present, 2 failed, 0 refused",
    ]


def test_an_unusable_scheduler_address_is_one_line_and_no_warning(conn: str, corpus_name: str, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    write_image(tmp_path / "photos" / "birds" / "a.png")
    assert run(conn, corpus_name, lambda c: c.upload(str(tmp_path / "photos"), "v1")).ok
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "default",
            "-m",
            "corpus_manager.cli",
            "transform",
            "small",
            "--version",
            "1",
            "--op",
            "resize=8x8",
            "--scheduler",
            "garbage",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    # was followed by "RuntimeWarning: coroutine 'wait_for' was never awaited" and its source lines
    assert proc.stderr.startswith("Error: cannot reach the Dask scheduler at garbage (")
    assert proc.stderr.count("\n") == 1, proc.stderr
