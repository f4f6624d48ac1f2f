"""Settings: connection strings, corpus names, redaction; unreachable storage and secrets in output."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager.cli import cli
from corpus_manager.config import (
    AZURITE_KEY,
    connection_from_settings,
    corpus_from_settings,
    parse_connection_string,
    redact,
    table_endpoint_for,
)
from corpus_manager.errors import ConfigError, StorageUnavailable
from corpus_manager.storage import Storage

from .conftest import KEY, free_port


def test_default_is_local_azurite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("CORPUS_ACCOUNT_URL", raising=False)
    info = connection_from_settings()
    assert info.blob_endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    assert info.table_endpoint == "http://127.0.0.1:10002/devstoreaccount1"
    assert info.is_local_emulator


def test_option_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=envacct;AccountKey=YWJj")
    assert connection_from_settings().account_name == "envacct"
    assert connection_from_settings("AccountName=optacct;AccountKey=YWJj").account_name == "optacct"


def test_account_url_uses_identity_and_derives_the_table_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    info = connection_from_settings(account_url="https://acct.blob.core.windows.net/")
    assert info.use_identity and info.table_endpoint == "https://acct.table.core.windows.net"
    assert table_endpoint_for("http://127.0.0.1:10000/devstoreaccount1") == "http://127.0.0.1:10002/devstoreaccount1"


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("garbage", "malformed"),
        ("AccountName=a", "neither AccountKey nor SharedAccessSignature"),
        ("AccountName=a;AccountKey=not base64!!", "not valid base64"),
        ("", "empty"),
    ],
)
def test_malformed_connection_strings_are_config_errors(bad: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_connection_string(bad)


def test_config_errors_never_echo_the_key() -> None:
    secret = "c2VjcmV0c2VjcmV0c2VjcmV0"
    with pytest.raises(ConfigError) as info:
        parse_connection_string(f"AccountKey={secret};junk")
    assert secret not in str(info.value)
    assert secret not in repr(parse_connection_string(f"AccountName=a;AccountKey={secret}"))


@pytest.mark.parametrize("name", ["ab", "Images", "1abc", "a-b", "a" * 41])
def test_bad_corpus_names(name: str) -> None:
    with pytest.raises(ConfigError, match="corpus name"):
        corpus_from_settings(name)


def test_redact_masks_keys_signatures_and_connection_strings() -> None:
    text = (
        f"AccountKey={KEY}; url=https://a.blob.core.windows.net/c/b?sv=2021&sig=abc%2Fdef&se=1 "
        "SharedAccessSignature=sv=1&sig=zzz"
    )
    out = redact(text)
    assert KEY not in out and "abc%2Fdef" not in out and "zzz" not in out
    assert AZURITE_KEY not in redact(AZURITE_KEY)


def test_unreachable_storage_exits_2_quickly_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    port = free_port()  # nothing listens there
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    # the timeout only guards against a hang; "quickly" is checked below as "not retried"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "corpus_manager.cli",
            "upload",
            str(tmp_path),
            "--version",
            "v1",
            "--connection-string",
            conn,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"Error: cannot reach storage at http://127.0.0.1:{port}/devstoreaccount1")
    assert "make azurite-start" in lines[0]
    assert KEY not in proc.stderr + proc.stdout

    # Quickly: a refused connection is final at the reachability check, not retried (the SDK's
    # retries would take a minute). Counted, not timed, so a loaded machine cannot fail it.
    async def probe() -> int:
        async with Storage(parse_connection_string(conn), "quick") as storage:
            with pytest.raises(StorageUnavailable, match="cannot reach storage"):
                await storage.ensure()
            return storage.stats.retries

    assert asyncio.run(probe()) == 0


def test_wrong_key_is_refused_without_printing_it(azurite, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.png").write_bytes(b"x")
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    conn = azurite.connection_string.replace(KEY, wrong)
    result = CliRunner().invoke(
        cli, ["upload", str(tmp_path), "--version", "v1", "--connection-string", conn, "--corpus", "wrongkey"]
    )
    assert result.exit_code == 2
    # upload reaches the tables first (the container is made before the first blob)
    assert result.stderr.startswith("Error: storage refused the credentials for table wrongkeyImageSets")
    assert "check the account key, SAS token or identity" in result.stderr
    assert wrong not in result.output and KEY not in result.output


def test_account_key_never_printed_in_a_normal_run(conn: str, corpus_name: str, sample_tree: Path) -> None:
    for args in (
        ["upload", str(sample_tree), "--version", "v1"],
        ["upload", str(sample_tree), "--version", "v1", "--json"],
        ["upload", str(sample_tree), "--version", "v2", "--dry-run"],
        ["upload", "--help"],
    ):
        result = CliRunner().invoke(cli, args)
        assert KEY not in result.output
        assert "AccountKey" not in result.output


# ----- an option given beats the environment; nothing given falls back; nothing empty is accepted --------
CONN_A = "AccountName=envacct;AccountKey=YWJj"
SAS = "sv=2024-11-04&ss=bt&srt=sco&sp=rwdlacu&se=2030-01-01T00%3A00%3A00Z&sig=c2lnbmF0dXJl"


def test_account_url_option_beats_the_connection_string_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN_A)
    info = connection_from_settings(account_url="https://optacct.blob.core.windows.net")
    assert (info.account_name, info.use_identity) == ("optacct", True)


def test_connection_string_option_beats_the_account_url_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("CORPUS_ACCOUNT_URL", "https://envacct.blob.core.windows.net")
    assert connection_from_settings().account_name == "envacct"
    info = connection_from_settings("AccountName=optacct;AccountKey=YWJj")
    assert (info.account_name, info.use_identity) == ("optacct", False)


def test_from_the_environment_alone_the_connection_string_wins_and_empty_means_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN_A)
    monkeypatch.setenv("CORPUS_ACCOUNT_URL", "https://urlacct.blob.core.windows.net")
    assert connection_from_settings().account_name == "envacct"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "")
    assert connection_from_settings().account_name == "urlacct"
    monkeypatch.setenv("CORPUS_ACCOUNT_URL", "")
    assert connection_from_settings().blob_endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    monkeypatch.setenv("CORPUS_NAME", "")
    assert corpus_from_settings() == "images"


def test_both_options_given_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match=r"^--connection-string and --account-url exclude each other"):
        connection_from_settings(CONN_A, "https://acct.blob.core.windows.net")


def test_a_sas_in_the_account_url_is_used_never_dropped_nor_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    info = connection_from_settings(account_url=f"https://acct.blob.core.windows.net/?{SAS}")
    assert (info.blob_endpoint, info.table_endpoint) == (
        "https://acct.blob.core.windows.net",
        "https://acct.table.core.windows.net",
    )
    assert info.sas_token == SAS and not info.use_identity and info.account_name == "acct"
    assert "c2lnbmF0dXJl" not in repr(info)
    # Azurite's path-style URL: the account is the path, the table endpoint the port + 2
    local = connection_from_settings(account_url=f"http://127.0.0.1:20000/devstoreaccount1?{SAS}")
    assert (local.account_name, local.table_endpoint) == ("devstoreaccount1", "http://127.0.0.1:20002/devstoreaccount1")


@pytest.mark.parametrize(
    "url,message",
    [
        (
            "https://acct.blob.core.windows.net/?sv=1&ss=b&sig=abc",
            "the SAS token in --account-url must be an account SAS for the Blob and Table services (ss=bt)",
        ),
        (
            "https://acct.blob.core.windows.net/?sv=1&sr=c&sig=abc",
            "the SAS token in --account-url must be an account SAS for the Blob and Table services (ss=bt)",
        ),
        (
            "https://acct.blob.core.windows.net/?comp=list",
            "--account-url has a query string but no SAS signature (sig=)",
        ),
        ("", "--account-url is empty"),
        ("acct.blob.core.windows.net", "--account-url must be an http(s) URL"),
        (
            "https://acct.blob.core.windows.net:99999",
            "--account-url 'https://acct.blob.core.windows.net:99999' has an invalid port: use 1-65535",
        ),
    ],
)
def test_unusable_account_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        connection_from_settings(account_url=url)
    assert str(info.value).startswith(message)
    assert "sig=abc" not in str(info.value)


@pytest.mark.parametrize(
    "blob,message",
    [
        ("notaurl", "the connection string's BlobEndpoint must be an http(s) URL with a host, got 'notaurl'"),
        (
            "http://127.0.0.1:99999/acct",
            "the connection string's BlobEndpoint 'http://127.0.0.1:99999/acct' has an invalid port: use 1-65535",
        ),
        (
            "http://127.0.0.1:0/acct",
            "the connection string's BlobEndpoint 'http://127.0.0.1:0/acct' has an invalid port",
        ),
        ("ftp://host/acct", "the connection string's BlobEndpoint must be an http(s) URL with a host"),
    ],
)
def test_unusable_endpoints_in_a_connection_string_are_config_errors(blob: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_connection_string(
            f"AccountName=a;AccountKey=YWJj;BlobEndpoint={blob};TableEndpoint=http://127.0.0.1:10002/a"
        )
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_given_values_are_refused_not_replaced_by_a_default(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN_A)
    monkeypatch.setenv("CORPUS_NAME", "envcorpus")
    with pytest.raises(ConfigError, match=r"^--connection-string is empty"):
        connection_from_settings(value)
    with pytest.raises(ConfigError, match=r"^--corpus is empty"):
        corpus_from_settings(value)
