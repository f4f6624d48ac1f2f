"""Security: no secret in any output or log of any command, success or failure; the container is never
public; ImageMagick never reads what a blob's name or content asks for.

Covered elsewhere (not repeated): download never writes outside --out
(test_download.py::test_hostile_blob_names_are_refused_and_nothing_is_written_outside,
::test_a_symlink_under_out_is_not_followed, ::test_a_tampered_index_row_cannot_point_elsewhere); CSV
output and manifests neutralise cells starting with = + - @ (test_query.py::test_csv_output_neutralises_formula_cells,
test_download.py::test_csv_manifest_neutralises_formula_cells); the ImageMagick policy itself
(test_transforms.py::test_vector_and_script_payloads_are_refused, ::test_blob_names_never_reach_imagemagick,
::test_policy_file_blocks_dangerous_coders_even_when_called_directly).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas
from click.testing import CliRunner

from corpus_manager import Corpus, storage
from corpus_manager.cli import cli
from corpus_manager.imagetypes import CONTENT_TYPES
from corpus_manager.models import ImageSet, SetIdentity, content_digest

from .conftest import ACCOUNT, KEY, Azurite, free_port, image_bytes, write_image
from .helpers import blobs, container_exists, rows

WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="


def _sas(read_only: bool) -> str:
    permission = (
        AccountSasPermissions(read=True, list=True)
        if read_only
        else AccountSasPermissions(
            read=True, write=True, delete=True, list=True, add=True, create=True, update=True, process=True
        )
    )
    return generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        permission,
        datetime.now(UTC) + timedelta(hours=1),
        services="bt",
    )


@dataclass
class Scenario:
    name: str
    conn: str
    corpus: str
    codes: dict[str, int]  # command -> the exit code it must end with, in the order they run
    message: str  # what the error line says (failing scenarios)


COMMANDS = {
    "upload": ["upload", "ROOT", "--version", "v1"],
    "query": ["query", "--json"],
    "download": ["download", "--out", "OUT", "--manifest", "OUT/m.csv"],
    "status": ["status"],
    "transform": ["transform", "small", "--version", "1", "--op", "resize=8x8", "--workers", "1"],
    "transforms": ["transforms"],
}
ALL_OK = dict.fromkeys(COMMANDS, 0)
ALL_2 = dict.fromkeys(COMMANDS, 2)


def _scenarios(azurite: Azurite) -> tuple[list[Scenario], list[str]]:
    """Every way a run can go, and every secret they involve."""
    endpoints = f"BlobEndpoint={azurite.blob_endpoint};TableEndpoint=http://127.0.0.1:{azurite.table_port}/{ACCOUNT};"
    full_sas, read_only_sas = _sas(False), _sas(True)
    forged_sas = full_sas.split("sig=")[0] + "sig=Zm9yZ2VkLXNpZ25hdHVyZS1mb3JnZWQtc2lnbmF0dXJlPQ%3D%3D"
    dead = free_port()
    unreachable = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{dead}/{ACCOUNT};TableEndpoint=http://127.0.0.1:{dead}/{ACCOUNT};"
    )
    corpus = "s" + uuid.uuid4().hex[:12]
    refused = "storage refused the credentials"
    scenarios = [
        Scenario("key", azurite.connection_string, corpus, ALL_OK, ""),
        Scenario("sas", endpoints + "SharedAccessSignature=" + full_sas, corpus, ALL_OK, ""),
        # the transform has nothing left to do (the "key" scenario did it) and so writes nothing: no 403
        Scenario(
            "read-only-sas-403",
            endpoints + "SharedAccessSignature=" + read_only_sas,
            corpus,
            {**ALL_OK, "upload": 2},
            refused,
        ),
        Scenario("forged-sas-403", endpoints + "SharedAccessSignature=" + forged_sas, corpus, ALL_2, refused),
        Scenario("wrong-key", azurite.connection_string.replace(KEY, WRONG_KEY), corpus, ALL_2, refused),
        # reading (and transforming) never creates a corpus; upload does (so it runs before transform)
        Scenario(
            "missing-container",
            azurite.connection_string,
            "m" + uuid.uuid4().hex[:12],
            {"query": 2, "download": 2, "status": 2, "transforms": 2, "upload": 0, "transform": 0},
            "does not exist",
        ),
        Scenario("unreachable", unreachable, corpus, ALL_2, "cannot reach storage"),
    ]
    secrets = [KEY, WRONG_KEY]
    for sas in (full_sas, read_only_sas, forged_sas):
        sig = sas.split("sig=")[1]
        secrets += [sig, unquote(sig), "SharedAccessSignature=" + sas]
    secrets += [s.conn for s in scenarios]
    return scenarios, secrets


def _leaks(text: str, secrets: list[str]) -> list[str]:
    found = [s[:12] + "..." for s in secrets if s in text]
    # any signature that is not masked, in whatever URL it sits
    found += re.findall(r"sig=(?!\*\*\*|REDACTED)[A-Za-z0-9%+/=]{8,}", text)
    if "AccountKey=" in text and not re.search(r"AccountKey=\*\*\*", text):
        found.append("AccountKey=")
    return found


def _args(command: str, tmp: Path) -> list[str]:
    return [str(tmp / "root") if a == "ROOT" else a.replace("OUT", str(tmp / "out")) for a in COMMANDS[command]]


def _tree(tmp: Path) -> None:
    write_image(tmp / "root" / "birds" / "robin.png", size="24x24")
    write_image(tmp / "root" / "=cmd" / "x.png", color="blue")  # a name a spreadsheet would run


def test_no_secret_in_any_output_or_debug_log_of_any_command(
    azurite: Azurite, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command in every scenario through CliRunner, with every logger (the SDK's too) at DEBUG
    and CORPUS_DEBUG=1 (tracebacks printed): stdout, stderr and the log records hold no secret."""
    monkeypatch.setenv("CORPUS_DEBUG", "1")
    monkeypatch.setattr(storage, "RETRY_TOTAL", 1)  # one quick retry: the unreachable scenario takes seconds
    monkeypatch.setattr(storage, "RETRY_BACKOFF", 0.1)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("CORPUS_NAME", raising=False)
    _tree(tmp_path)
    scenarios, secrets = _scenarios(azurite)
    caplog.set_level(logging.DEBUG)
    for name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity", "aiohttp"):
        caplog.set_level(logging.DEBUG, logger=name)  # louder than the tool ever sets them
    sdk_lines = 0
    for sc in scenarios:
        for command in sc.codes:
            caplog.clear()
            res = CliRunner().invoke(
                cli, [*_args(command, tmp_path), "--connection-string", sc.conn, "--corpus", sc.corpus]
            )
            where = f"{sc.name}/{command}"
            assert res.exit_code == sc.codes[command], f"{where}: {res.output}"
            if sc.codes[command] == 2:
                assert res.stderr.startswith("Error: ") and sc.message in res.stderr, f"{where}: {res.stderr}"
            logged = caplog.text + "\n".join(str(r.args) + str(r.exc_info) for r in caplog.records)
            sdk_lines += sum(r.name.startswith("azure") for r in caplog.records)
            assert not _leaks(res.output + logged, secrets), f"{where}: {_leaks(res.output + logged, secrets)}"
            assert "Traceback" not in res.output, f"{where}: {res.output}"
    assert sdk_lines > 100  # the SDK's own request log (URLs, headers) was captured and searched


# One process per scenario runs its commands one after the other through click's real entry point, with
# Python's logging at DEBUG for every logger (the SDK's too) and CORPUS_DEBUG=1. Retries are cut to one
# quick retry so the unreachable scenario takes seconds (retries still happen, and are searched too).
DRIVER = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
import corpus_manager.storage as storage
storage.RETRY_TOTAL, storage.RETRY_BACKOFF = 1, 0.1
logging.getLogger("azure").setLevel(logging.DEBUG)
from corpus_manager.cli import cli
for args in json.loads(sys.argv[1]):
    for stream in (sys.stdout, sys.stderr):
        print("@@start", args[0], file=stream, flush=True)
    try:
        cli.main(args=args, prog_name="corpus")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    for stream in (sys.stdout, sys.stderr):
        print("@@exit", code, file=stream, flush=True)
"""


def _split(text: str) -> list[tuple[str, int]]:
    """The driver's output, per command: (text, exit code)."""
    parts = []
    for chunk in text.split("@@start ")[1:]:
        body, _, code = chunk.rpartition("@@exit ")
        parts.append((body, int(code.strip())))
    return parts


def test_no_secret_in_any_output_of_any_command_run_as_a_process(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same scenarios in real processes: everything a process writes to stdout and stderr,
    its DEBUG log included, is searched."""
    _tree(tmp_path)
    scenarios, secrets = _scenarios(azurite)
    env = {k: v for k, v in os.environ.items() if k not in ("AZURE_STORAGE_CONNECTION_STRING", "CORPUS_NAME")}
    env["CORPUS_DEBUG"] = "1"
    for sc in scenarios:
        commands = [[*_args(c, tmp_path), "--connection-string", sc.conn, "--corpus", sc.corpus] for c in sc.codes]
        res = subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(commands)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        outs, errs = _split(res.stdout), _split(res.stderr)
        assert len(outs) == len(errs) == len(sc.codes), res.stderr[-3000:]
        for command, (out, code), (err, _) in zip(sc.codes, outs, errs, strict=True):
            where = f"{sc.name}/{command}"
            assert code == sc.codes[command], f"{where}: {err[-3000:]}"
            assert not _leaks(out + err, secrets), f"{where}: {_leaks(out + err, secrets)}"
            assert "Traceback" not in err, f"{where}: {err[-3000:]}"
            if code == 2:
                assert "Error: " in err and sc.message in err, f"{where}: {err[-2000:]}"
            assert "DEBUG:" in err  # the log really was at DEBUG


def test_the_container_is_private_whichever_command_creates_it(conn: str, corpus_name: str, tmp_path: Path) -> None:
    async def access(corpus: str) -> tuple[str | None, dict[str, object]]:
        async with Corpus(corpus, connection_string=conn) as c:
            policy = await c.storage.container.get_container_access_policy()
            return await c.storage.container_public_access(), policy

    write_image(tmp_path / "root" / "a.png")
    # a transform never creates a corpus (it used to, privately): only upload does
    first = CliRunner().invoke(cli, ["transform", "t", "--version", "1", "--op", "resize=8x8"])
    assert first.exit_code == 2 and "does not exist" in first.stderr, first.output
    assert not container_exists(conn, corpus_name)
    other = "u" + uuid.uuid4().hex[:12]
    made = CliRunner().invoke(cli, ["upload", str(tmp_path / "root"), "--version", "v1", "--corpus", other])
    assert made.exit_code == 0, made.output
    public, policy = asyncio.run(access(other))
    assert public is None and policy["public_access"] is None and policy["signed_identifiers"] == []
    # and anonymous reads are refused: nothing of the corpus is reachable without a credential
    import urllib.error
    import urllib.request

    blob_url = f"{conn.split('BlobEndpoint=')[1].split(';')[0]}/{other}/original/v1/a.png"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(blob_url, timeout=10)
    assert refused.value.code in (401, 403, 404)


HOSTILE = {
    # name: content. Names and contents that would make ImageMagick run a script, read a file or
    # render text if either ever reached it as a file name or a coder prefix.
    "msl:evil.png": b'<?xml version="1.0"?><image><read filename="/etc/passwd"/><write filename="PWNED"/></image>',
    "text:passwd.png": b"text:/etc/passwd",
    "@etc-passwd.png": b"@/etc/passwd",
    "label:@etc-passwd.png": b"label:@/etc/passwd",
    "ephemeral:x.png": b"ephemeral:/etc/passwd",
}


def test_transform_never_lets_a_blob_name_or_content_steer_imagemagick(
    conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs whose names and bytes try `msl:`, `text:`, `@file` and `ephemeral:` go through `corpus
    transform`: each fails as not an image, nothing is read from or written to disk, and a real image
    under such a name is transformed as the image it is."""
    real = image_bytes("png", "16x16", "red")
    files = {**HOSTILE, "msl:real.png": real, "text:real.png": real}

    async def put_set() -> None:  # bytes the upload's sniff would refuse, so put there as a hostile writer would
        async with Corpus(corpus_name, connection_string=conn) as c:
            await c.storage.ensure()
            ident = SetIdentity("evil", "v1")
            for name, data in files.items():
                await c.storage.put_blob(
                    ident.blob_name(name), data, content_type=CONTENT_TYPES["png"], md5=hashlib.md5(data).digest()
                )
            pairs = [(n, hashlib.md5(d).hexdigest()) for n, d in files.items()]
            image_set = ImageSet(
                ident,
                tags=["evil"],
                status="complete",
                image_count=len(files),
                total_bytes=sum(map(len, files.values())),
                content_digest=content_digest(pairs),
            )
            await c.storage.upsert_entity(c.storage.sets, image_set.to_entity())

    asyncio.run(put_set())
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # where a relative "PWNED" would land; restored after this test, whatever happens
    res = CliRunner().invoke(
        cli, ["transform", "safe", "--version", "1", "--op", "resize=8x8", "--op", "format=png", "--workers", "1"]
    )
    assert res.exit_code == 1, res.output
    failed = {}
    for line in res.stderr.splitlines():
        assert line.startswith("failed: original/evil/v1/"), line
        name, reason = line.removeprefix("failed: original/evil/v1/").split(": ", 1)
        failed[name] = reason
    assert sorted(failed) == sorted(HOSTILE)
    assert all("not" in r and "image" in r for r in failed.values()), failed
    assert list(work.iterdir()) == [] and not list(tmp_path.rglob("PWNED"))
    stored = blobs(conn, corpus_name)
    made = sorted(n for n in stored if n.startswith("transform/"))
    assert made == ["transform/safe/1/evil/v1/msl:real.png", "transform/safe/1/evil/v1/text:real.png"]
    for name in made:
        data = asyncio.run(_get(conn, corpus_name, name))
        assert data.startswith(b"\x89PNG") and b"root:" not in data
    assert [r["Status"] for r in rows(conn, corpus_name) if r["TransformName"]] == ["pending"]


async def _get(conn: str, corpus: str, name: str) -> bytes:
    async with Corpus(corpus, connection_string=conn) as c:
        return (await c.storage.get_blob(name))[0]
