"""Where a run writes and when it refuses: an option given beats the environment, a bad or empty value
is a usage error (exit 2) that writes nothing, and a transform never creates a corpus."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager.cli import cli

from .conftest import ACCOUNT, KEY, Azurite, free_port, write_image
from .faults.proxy import FaultPlan, FaultyStorage
from .helpers import blobs, container_exists, run


def corpus_tables(conn: str, corpus: str) -> list[str]:
    """The tables of ``corpus`` that exist, read straight from Azurite."""
    from azure.data.tables import TableServiceClient

    with TableServiceClient.from_connection_string(conn) as service:
        return sorted(t.name for t in service.list_tables() if t.name.startswith(corpus))


def _dead_connection_string() -> str:
    port = free_port()  # nothing listens there
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def _ports_two_apart() -> int:
    """A free port P with P + 2 free too (Azurite's layout, from which --account-url derives the tables)."""
    for _ in range(200):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 2))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports two apart")


@pytest.fixture
def azurite_at_p_and_p_plus_2(azurite: Azurite) -> Iterator[FaultyStorage]:
    """The session's Azurite behind plain forwarding proxies on ports P (blob) and P + 2 (table)."""
    proxy = FaultyStorage(azurite.blob_port, azurite.table_port, FaultPlan(0), ACCOUNT, KEY)
    proxy.blob.port = _ports_two_apart()
    proxy.table.port = proxy.blob.port + 2
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _account_sas() -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, list=True, create=True, add=True, update=True, delete=True),
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        services="bt",
    )


def test_a_sas_account_url_on_the_command_line_beats_the_connection_string_in_the_environment(
    conn: str,
    corpus_name: str,
    tmp_path: Path,
    azurite_at_p_and_p_plus_2: FaultyStorage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_image(tmp_path / "photos" / "birds" / "a.png")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", _dead_connection_string())
    sas = _account_sas()
    url = f"http://127.0.0.1:{azurite_at_p_and_p_plus_2.blob.port}/{ACCOUNT}?{sas}"
    res = CliRunner().invoke(cli, ["upload", str(tmp_path / "photos"), "--version", "v1", "--account-url", url])
    assert res.exit_code == 0, res.output
    assert list(blobs(conn, corpus_name)) == ["original/birds/v1/a.png"]  # in the account the option named
    signature = sas.split("sig=")[1].split("&")[0]
    assert signature not in res.output and KEY not in res.output


def test_a_connection_string_on_the_command_line_beats_the_account_url_in_the_environment(
    conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "photos" / "birds" / "a.png")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("CORPUS_ACCOUNT_URL", f"http://127.0.0.1:{free_port()}/{ACCOUNT}")
    res = CliRunner().invoke(cli, ["upload", str(tmp_path / "photos"), "--version", "v1", "--connection-string", conn])
    assert res.exit_code == 0, res.output
    assert list(blobs(conn, corpus_name)) == ["original/birds/v1/a.png"]


def test_both_options_given_is_a_usage_error_that_writes_nothing(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "photos" / "a.png")
    res = CliRunner().invoke(
        cli,
        [
            "upload",
            str(tmp_path / "photos"),
            "--version",
            "v1",
            "--connection-string",
            conn,
            "--account-url",
            "https://acct.blob.core.windows.net",
        ],
    )
    assert res.exit_code == 2
    assert res.stderr == "Error: --connection-string and --account-url exclude each other: give one of them\n"
    assert corpus_tables(conn, corpus_name) == [] and not container_exists(conn, corpus_name)


@pytest.mark.parametrize(
    "blob,message",
    [
        ("notaurl", "the connection string's BlobEndpoint must be an http(s) URL with a host, got 'notaurl'"),
        (
            f"http://127.0.0.1:99999/{ACCOUNT}",
            f"the connection string's BlobEndpoint 'http://127.0.0.1:99999/{ACCOUNT}' has an invalid port: use 1-65535",
        ),
    ],
)
@pytest.mark.parametrize("command", ["upload", "transform"])
def test_an_unusable_endpoint_is_a_usage_error_that_creates_nothing(
    blob: str, message: str, command: str, azurite: Azurite, conn: str, corpus_name: str, tmp_path: Path
) -> None:
    write_image(tmp_path / "photos" / "a.png")
    bad = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={blob};"
        f"TableEndpoint=http://127.0.0.1:{azurite.table_port}/{ACCOUNT};"
    )  # the table endpoint is fine
    args = (
        ["upload", str(tmp_path / "photos"), "--version", "v1"]
        if command == "upload"
        else ["transform", "small", "--version", "1", "--op", "resize=8x8"]
    )
    res = CliRunner().invoke(cli, [*args, "--connection-string", bad])
    assert res.exit_code == 2, res.output
    assert res.stderr == f"Error: {message}\n"
    assert corpus_tables(conn, corpus_name) == []  # not even the tables on the healthy endpoint


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--corpus", ""],
            "--corpus is empty: give a corpus name (3-40 lower-case letters and digits), or leave the "
            "option out to use CORPUS_NAME (default: images)",
        ),
        (
            ["--connection-string", ""],
            "--connection-string is empty: give a connection string, or leave the option out "
            "to use AZURE_STORAGE_CONNECTION_STRING (default: the local Azurite)",
        ),
        (
            ["--ext", ""],
            "--ext '' names no extension: list them separated by commas, e.g. .jpg,.jpeg,.png, or leave "
            "--ext out for the default",
        ),
        (
            ["--ext", ","],
            "--ext ',' names no extension: list them separated by commas, e.g. .jpg,.jpeg,.png, or leave "
            "--ext out for the default",
        ),
        (
            ["--ext", "*"],
            "--ext '*' is not a file extension: list extensions separated by commas, e.g. "
            ".jpg,.jpeg,.png (no wildcards)",
        ),
        (
            ["--ext", ".png,*.jpg"],
            "--ext '*.jpg' is not a file extension: list extensions separated by commas, e.g. "
            ".jpg,.jpeg,.png (no wildcards)",
        ),
    ],
)
def test_empty_values_are_refused_not_replaced_by_a_default(
    args: list[str], message: str, conn: str, corpus_name: str, tmp_path: Path
) -> None:
    write_image(tmp_path / "photos" / "birds" / "a.png")
    res = CliRunner().invoke(cli, ["upload", str(tmp_path / "photos"), "--version", "v1", *args])
    assert res.exit_code == 2, res.output
    assert res.stderr == f"Error: {message}\n"
    # nothing in the corpus of the environment (CORPUS_NAME) nor in the default one
    assert corpus_tables(conn, corpus_name) == [] and not container_exists(conn, corpus_name)
    assert "original/birds/v1/a.png" not in (blobs(conn, "images") if container_exists(conn, "images") else {})


@pytest.mark.parametrize("extra", [[], ["--from", "nope@1"], ["--dry-run"]])
def test_transform_of_a_corpus_that_does_not_exist_is_refused_and_creates_nothing(
    extra: list[str], conn: str, corpus_name: str
) -> None:
    res = CliRunner().invoke(cli, ["transform", "small", "--version", "1", "--op", "resize=8x8", *extra])
    assert res.exit_code == 2, res.output
    assert res.stderr == (
        f"Error: corpus {corpus_name!r} does not exist (no container {corpus_name!r}); check "
        "--corpus, or upload to create it\n"
    )
    assert corpus_tables(conn, corpus_name) == [] and not container_exists(conn, corpus_name)


def test_transform_with_no_matching_set_says_so(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "photos" / "birds" / "a.png")
    assert run(conn, corpus_name, lambda c: c.upload(str(tmp_path / "photos"), "v1")).ok
    res = CliRunner().invoke(
        cli, ["transform", "small", "--version", "1", "--op", "resize=8x8", "--tag", "fish", "--workers", "1"]
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[:2] == [
        "Nothing to transform: no set matches (complete original sets with the tags and source version asked for).",
        "  sets        0 total: 0 transformed, 0 already done, 0 failed",
    ]
