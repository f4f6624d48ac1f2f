"""One endpoint dead or silent while the other is healthy (the fault proxy in ``proxy.py``), and the
connection pool the runs get: the run ends, with the right exit code, naming the endpoint that failed.

The tool's timeouts are shortened here (READ_TIMEOUT, STALL_LIMIT, PROBE_TIMEOUT: seconds in real
runs) so the tests take seconds; what they assert is the behaviour (ends, exit code, which endpoint
is named, how many requests went into a silent endpoint), never a duration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager import Corpus
from corpus_manager import storage as storage_module
from corpus_manager.cli import cli

from ..conftest import ACCOUNT, KEY, Azurite, unique_png
from ..helpers import run
from .proxy import FaultPlan, FaultyStorage, faulty_storage


@pytest.fixture
def quiet(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyStorage]:
    """The proxy in front of the session's Azurite, no random faults, and short timeouts."""
    monkeypatch.setattr(storage_module, "READ_TIMEOUT", 0.5)
    monkeypatch.setattr(storage_module, "STALL_LIMIT", 1.0)
    monkeypatch.setattr(storage_module, "RETRY_BACKOFF", 0.1)
    monkeypatch.setattr(storage_module, "PROBE_TIMEOUT", 1.0)
    monkeypatch.delenv("CORPUS_ACCOUNT_URL", raising=False)
    with faulty_storage(azurite.blob_port, azurite.table_port, FaultPlan(0), ACCOUNT, KEY) as p:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", p.connection_string)
        yield p


def _endpoint(port: int) -> str:
    return f"http://127.0.0.1:{port}/{ACCOUNT}"


def _stored_corpus(conn: str, corpus: str, root: Path, files: int, sets: int = 1) -> Path:
    for i in range(files):
        unique_png(root / f"set{i % sets}" / f"{i:03}.png", i)
    report = run(conn, corpus, lambda c: c.upload(str(root), "v1"))
    assert report.ok and report.files_uploaded == files
    return root


@pytest.mark.parametrize("fault", ["refused", "silent"])
def test_a_dead_table_endpoint_fails_query_at_the_check_naming_the_table_endpoint(
    fault: str, quiet: FaultyStorage, azurite: Azurite, corpus_name: str, tmp_path: Path
) -> None:
    _stored_corpus(azurite.connection_string, corpus_name, tmp_path / "photos", files=2)
    if fault == "refused":
        quiet._call(quiet.table.refuse())
    else:
        quiet.table.freeze_after = 0  # accepts connections, reads requests, never answers
    res = CliRunner().invoke(cli, ["query"])
    assert res.exit_code == 2, res.output
    table, blob = _endpoint(quiet.table.port), _endpoint(quiet.blob.port)
    hint = "; start the local emulator with `make azurite-start` (or `npx azurite --location .azurite`)\n"
    if fault == "refused":
        assert res.stderr == (
            f"Error: cannot reach storage at {table} for table {corpus_name}ImageSets (connection refused){hint}"
        )
    else:  # the check's own limit or the request's, whichever comes first: both name the table endpoint
        assert res.stderr.startswith(f"Error: cannot reach storage at {table} "), res.stderr
        assert "no answer within" in res.stderr and res.stderr.endswith(hint) and res.stderr.count("\n") == 1
    assert blob not in res.output and res.stdout == ""


def test_a_blob_endpoint_going_silent_mid_download_ends_the_run_without_retrying_into_it(
    quiet: FaultyStorage, azurite: Azurite, corpus_name: str, tmp_path: Path
) -> None:
    _stored_corpus(azurite.connection_string, corpus_name, tmp_path / "photos", files=6)
    # blob requests: the container check, the listing, then one GET per file: 3 files come down
    quiet.blob.freeze_after = 2 + 3
    res = CliRunner().invoke(
        cli, ["download", "--out", str(tmp_path / "out"), "--max-parallel-downloads", "1", "--json"]
    )
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert report["files"] == {"downloaded": 3, "already_present": 0, "failed": 3, "refused": 0}
    blob = _endpoint(quiet.blob.port)
    reasons = {f["item"]: f["reason"] for f in report["failures"]}
    assert sorted(reasons) == [f"original/set0/v1/{i:03}.png" for i in (3, 4, 5)]
    assert reasons["original/set0/v1/003.png"].startswith(
        f"cannot reach storage at {blob} for download of original/set0/v1/003.png (no answer within 0.5 s)"
    )
    for name in ("004", "005"):
        assert reasons[f"original/set0/v1/{name}.png"].startswith(
            f"download of original/set0/v1/{name}.png: not tried, storage stopped answering earlier in this run "
            f"(cannot reach storage at {blob} "
        )
    # Silent for STALL_LIMIT: the timed-out request is not sent again and again (it got RETRY_TOTAL = 5
    # retries each, three minutes at the real timeouts), and the files after it are not tried at all.
    assert quiet.blob.frozen <= 2, quiet.blob.frozen
    assert sorted(p.name for p in (tmp_path / "out" / "original" / "set0" / "v1").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]


def test_a_table_endpoint_going_silent_mid_upload_is_the_endpoint_named(
    quiet: FaultyStorage, azurite: Azurite, corpus_name: str, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    for i in range(4):
        unique_png(root / f"set{i}" / "a.png", i)
    # table requests: three tables made, the version's rows read; then the first set row hangs
    quiet.table.freeze_after = 4
    res = CliRunner().invoke(cli, ["upload", str(root), "--version", "v1", "--max-parallel-uploads", "1"])
    assert res.exit_code == 1, res.output
    table, blob = _endpoint(quiet.table.port), _endpoint(quiet.blob.port)
    assert res.stderr and f"cannot reach storage at {table} " in res.stderr
    assert blob not in res.stderr
    assert quiet.table.frozen <= 2 * 2, quiet.table.frozen  # at most two sets in flight, each tried <= twice


def test_the_pool_follows_the_parallelism_asked_for_after_the_corpus_is_open(
    quiet: FaultyStorage, azurite: Azurite, corpus_name: str, tmp_path: Path
) -> None:
    _stored_corpus(azurite.connection_string, corpus_name, tmp_path / "photos", files=24, sets=3)
    quiet.blob.hold, quiet.blob.hold_seconds = 24, 5.0  # each download waits until 24 wait at once

    async def go() -> tuple[int, int]:
        async with Corpus(corpus_name, connection_string=quiet.connection_string, pool_size=1) as c:
            report = await c.download(str(tmp_path / "out"), max_parallel_downloads=24)
            return report.files_downloaded, c.pool_size

    # the pool of 1 (+8 spare) was sized at open; the download asks for 24 in flight, and gets them
    assert asyncio.run(go()) == (24, 24)
    assert quiet.blob.peak_held == 24
