"""`corpus upload` end to end on a real Azurite: layout, rows, reruns, interruptions, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import pytest
from click.testing import CliRunner

from corpus_manager import Corpus
from corpus_manager import hashing as hashing_module
from corpus_manager.cli import cli
from corpus_manager.config import parse_connection_string
from corpus_manager.errors import AuthenticationFailed, Conflict, CorpusError, NotFound, StorageError
from corpus_manager.models import content_digest
from corpus_manager.results import NullProgress
from corpus_manager.storage import Storage, container_sas

from .conftest import ACCOUNT, KEY, Azurite, image_bytes, unique_png, write_image
from .helpers import blobs, container_exists, md5_of, rows, with_storage


def upload(conn: str, corpus: str, root: Path, version: str = "v1", **kw):  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with Corpus(corpus, connection_string=conn) as c:
            report = await c.upload(str(root), version, **kw)
            return report, c.storage.stats

    return asyncio.run(run())


def test_layout_rows_and_blob_properties(conn: str, corpus_name: str, sample_tree: Path) -> None:
    report, _ = upload(conn, corpus_name, sample_tree)
    assert report.ok and report.files_uploaded == 5 and report.sets_uploaded == 4
    stored = blobs(conn, corpus_name)
    assert sorted(stored) == [
        "original/blue/sky/v1/D.JPG",
        "original/red/angry/robin/v1/a.png",
        "original/red/angry/robin/v1/b.jpg",
        "original/red/angry/v1/c.png",
        "original/v1/top.gif",  # root images: no empty segment
    ]
    assert stored["original/blue/sky/v1/D.JPG"]["content_type"] == "image/jpeg"
    assert stored["original/v1/top.gif"]["content_type"] == "image/gif"
    for name, props in stored.items():
        local = sample_tree / name.removeprefix("original/").replace("v1/", "")
        assert props["md5"] == md5_of(local), name
    sets = {r["Path"]: r for r in rows(conn, corpus_name)}
    robin = sets["red/angry/robin"]
    assert robin["Status"] == "complete" and robin["ImageCount"] == 2
    assert json.loads(robin["Tags"]) == ["red", "angry", "robin"]
    assert robin["BlobPrefix"] == "original/red/angry/robin/v1/"
    assert robin["TotalBytes"] == sum(p.stat().st_size for p in (sample_tree / "red/angry/robin").iterdir())
    assert robin["ContentDigest"] == content_digest(
        [(p.name, md5_of(p)) for p in (sample_tree / "red/angry/robin").iterdir()]
    )
    # nested sets never mix: red/angry holds only c.png
    assert sets["red/angry"]["ImageCount"] == 1
    assert sets[""]["Tags"] == "[]" and sets[""]["BlobPrefix"] == "original/v1/"
    assert robin["TransformName"] == "" and robin["SourceSet"] == ""
    tag_rows = rows(conn, corpus_name, "tags")
    assert {(r["Tag"], r["Path"]) for r in tag_rows} == {
        ("red", "red/angry/robin"),
        ("angry", "red/angry/robin"),
        ("robin", "red/angry/robin"),
        ("red", "red/angry"),
        ("angry", "red/angry"),
        ("blue", "blue/sky"),
        ("sky", "blue/sky"),
    }


@pytest.mark.parametrize("dirname", ["été 2024", "a#b", "what?", "100%", "a_b", "~home", "日本/東京", " x "])
def test_awkward_directory_names(conn: str, corpus_name: str, tmp_path: Path, dirname: str) -> None:
    write_image(tmp_path / dirname / "img.png")
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.ok, report.failures
    rel = "/".join(dirname.split("/"))
    assert list(blobs(conn, corpus_name)) == [f"original/{rel}/v1/img.png"]
    (row,) = rows(conn, corpus_name)
    assert row["Path"] == rel and row["Status"] == "complete"


def test_a_b_and_a_slash_b_stay_two_sets(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "a_b" / "x.png", color="red")
    write_image(tmp_path / "a" / "b" / "x.png", color="blue")
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.sets_uploaded == 2
    assert sorted(r["Path"] for r in rows(conn, corpus_name)) == ["a/b", "a_b"]


def test_rerun_uploads_nothing_and_reads_no_blob_listing(conn: str, corpus_name: str, sample_tree: Path) -> None:
    upload(conn, corpus_name, sample_tree)
    report, stats = upload(conn, corpus_name, sample_tree)
    assert report.ok and report.files_uploaded == 0 and report.sets_skipped == 4
    assert stats.blob_puts == 0 and stats.blob_lists == 0  # verified from local MD5s and the rows


def test_corrupt_files_are_reported_and_not_uploaded(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "cats" / "good.png")
    (tmp_path / "cats" / "text.png").write_text("just text, not a png")
    (tmp_path / "cats" / "empty.jpg").write_bytes(b"")
    whole = image_bytes("jpeg", "64x64", "plasma:")
    (tmp_path / "cats" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    report, _ = upload(conn, corpus_name, tmp_path)
    assert not report.ok and report.exit_code == 1
    reasons = {Path(f.item).name: f.reason for f in report.failures if f.kind == "corrupt"}
    assert set(reasons) == {"text.png", "empty.jpg", "truncated.jpg"}
    assert "empty" in reasons["empty.jpg"] and "truncated JPEG" in reasons["truncated.jpg"]
    assert list(blobs(conn, corpus_name)) == ["original/cats/v1/good.png"]
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "complete" and row["ImageCount"] == 1


def test_set_of_only_corrupt_files_gets_no_row(conn: str, corpus_name: str, tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("nope")
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.files_corrupt == 1 and rows(conn, corpus_name) == []


def test_interrupted_run_leaves_pending_set_that_rerun_finishes(conn: str, corpus_name: str, tmp_path: Path) -> None:
    for i in range(40):
        unique_png(tmp_path / "big" / f"{i:03}.png", i)

    class StopAfter(NullProgress):
        def __init__(self, task: asyncio.Task[object]) -> None:
            self.task, self.files = task, 0

        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            self.files += files
            if self.files == 15:
                self.task.cancel()  # an interruption half way (as Ctrl-C would do)

    async def interrupted() -> None:
        async with Corpus(corpus_name, connection_string=conn) as c:
            task = asyncio.current_task()
            assert task is not None
            await c.upload(str(tmp_path), "v1", max_parallel_uploads=4, progress=StopAfter(task))

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(interrupted())
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "pending"  # the row came first, and is not complete
    assert rows(conn, corpus_name, "tags") == []  # never indexed while pending
    partial = blobs(conn, corpus_name)
    assert 10 <= len(partial) < 40

    report, stats = upload(conn, corpus_name, tmp_path)
    assert report.ok and report.sets_uploaded == 1
    assert stats.blob_lists == 1  # one listing for the pending set, not one request per file
    assert stats.blob_puts == 40 - len(partial) == report.files_uploaded
    assert report.files_already_stored == len(partial)
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "complete" and row["ImageCount"] == 40
    assert len(rows(conn, corpus_name, "tags")) == 1


def test_changed_content_of_a_complete_set_is_refused(conn: str, corpus_name: str, sample_tree: Path) -> None:
    upload(conn, corpus_name, sample_tree)
    before = blobs(conn, corpus_name)
    write_image(sample_tree / "red" / "angry" / "robin" / "a.png", color="purple")
    write_image(sample_tree / "red" / "angry" / "robin" / "new.png", color="pink")
    report, stats = upload(conn, corpus_name, sample_tree)
    assert report.sets_refused == 1 and report.exit_code == 1
    (failure,) = report.failures
    assert failure.kind == "refused" and failure.item.endswith("red/angry/robin")
    assert "1 added (e.g. new.png), 1 changed (e.g. a.png)" in failure.reason
    assert "new --version" in failure.reason
    assert blobs(conn, corpus_name) == before and stats.blob_puts == 0
    # the same content as a new version is fine
    report, _ = upload(conn, corpus_name, sample_tree, version="v2")
    assert report.ok and report.sets_uploaded == 4


def test_pending_set_drops_blobs_of_files_gone_locally(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "s" / "keep.png")
    write_image(tmp_path / "s" / "gone.png", color="blue")

    async def leave_pending() -> None:
        # the state an interrupted run leaves: a pending row and some blobs
        from corpus_manager.imagetypes import CONTENT_TYPES
        from corpus_manager.models import ImageSet, SetIdentity

        async with Corpus(corpus_name, connection_string=conn) as c:
            await c.storage.ensure()
            ident = SetIdentity("s", "v1")
            await c.storage.create_entity(c.storage.sets, ImageSet(ident, tags=["s"]).to_entity())
            data = (tmp_path / "s" / "gone.png").read_bytes()
            import hashlib

            await c.storage.put_blob(
                ident.blob_name("gone.png"), data, content_type=CONTENT_TYPES["png"], md5=hashlib.md5(data).digest()
            )

    asyncio.run(leave_pending())
    (tmp_path / "s" / "gone.png").unlink()
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.ok
    assert list(blobs(conn, corpus_name)) == ["original/s/v1/keep.png"]
    (row,) = rows(conn, corpus_name)
    assert row["ImageCount"] == 1 and row["Status"] == "complete"


def test_duplicates_inside_a_set_are_counted_and_named(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "d" / "one.png")
    shutil.copy(tmp_path / "d" / "one.png", tmp_path / "d" / "two.png")
    write_image(tmp_path / "d" / "other.png", color="blue")
    result = CliRunner().invoke(cli, ["upload", str(tmp_path), "--version", "v1"])
    assert result.exit_code == 0, result.output
    assert "duplicates  1 groups of byte-identical files: d/one.png = d/two.png" in result.stdout


def test_dry_run_writes_nothing(conn: str, corpus_name: str, sample_tree: Path) -> None:
    result = CliRunner().invoke(cli, ["upload", str(sample_tree), "--version", "v1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("Dry run: would upload 5 files (")
    assert "in 4 sets as version v1; 0 sets already complete." in result.stdout
    assert not container_exists(conn, corpus_name)


def test_cli_summary_first_run_and_rerun(conn: str, corpus_name: str, sample_tree: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["upload", str(sample_tree), "--version", "v1"])
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert lines[0] == f"Uploaded version v1 from {sample_tree}"
    assert lines[1] == "  sets        4 total: 4 uploaded, 0 already complete, 0 refused, 0 failed"
    assert lines[2] == "  files       5 uploaded, 0 already stored, 0 corrupt, 0 failed, 1 ignored (not images)"
    second = runner.invoke(cli, ["upload", str(sample_tree), "--version", "v1"])
    assert second.exit_code == 0
    assert second.stdout.splitlines()[0] == "Nothing to upload: all 4 sets of version v1 are already stored."
    data = json.loads(runner.invoke(cli, ["upload", str(sample_tree), "--version", "v1", "--json"]).stdout)
    assert data["files"]["uploaded"] == 0 and data["sets"] == {
        "total": 4,
        "uploaded": 0,
        "skipped": 4,
        "refused": 0,
        "failed": 0,
    }


def test_bad_version_is_a_usage_error_and_writes_nothing(conn: str, corpus_name: str, sample_tree: Path) -> None:
    result = CliRunner().invoke(cli, ["upload", str(sample_tree), "--version", "v/1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: version 'v/1' is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )
    assert not container_exists(conn, corpus_name)


def test_missing_root_is_a_usage_error(conn: str, corpus_name: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["upload", str(tmp_path / "nope"), "--version", "v1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {tmp_path / 'nope'}: no such directory"


def test_container_is_never_public(conn: str, corpus_name: str, sample_tree: Path) -> None:
    upload(conn, corpus_name, sample_tree)

    async def access() -> str | None:
        async with Corpus(corpus_name, connection_string=conn) as c:
            return await c.storage.container_public_access()

    assert asyncio.run(access()) is None


def test_two_concurrent_uploads_of_one_root_make_one_consistent_set(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    for d in range(4):
        for i in range(15):
            unique_png(tmp_path / f"d{d}" / f"{i:02}.png", d * 100 + i)

    async def both():  # type: ignore[no-untyped-def]
        async def one():  # type: ignore[no-untyped-def]
            async with Corpus(corpus_name, connection_string=conn) as c:
                return await c.upload(str(tmp_path), "v1", max_parallel_uploads=4)

        return await asyncio.gather(one(), one())

    first, second = asyncio.run(both())
    assert first.ok and second.ok, (first.failures, second.failures)
    sets = rows(conn, corpus_name)
    assert len(sets) == 4 and all(r["Status"] == "complete" and r["ImageCount"] == 15 for r in sets)
    assert len(blobs(conn, corpus_name)) == 60
    assert len(rows(conn, corpus_name, "tags")) == 4
    report, _ = upload(conn, corpus_name, tmp_path)
    assert report.sets_skipped == 4 and report.files_uploaded == 0


# ----- the thin Put Blob path: the guarantees the SDK used to give -------------------------------
def _account_sas_connection(azurite: Azurite, resource_types: str, permission: str) -> str:
    """A connection string carrying an account SAS (blob and table) instead of the key."""
    from azure.storage.blob import generate_account_sas

    sas = generate_account_sas(
        ACCOUNT,
        KEY,
        resource_types=resource_types,
        permission=permission,
        expiry=datetime.now(UTC) + timedelta(hours=1),
        services="bt",
    )
    return (
        f"BlobEndpoint={azurite.blob_endpoint};TableEndpoint=http://127.0.0.1:{azurite.table_port}/{ACCOUNT};"
        f"SharedAccessSignature={sas}"
    )


def _signature(sas: str) -> str:
    return parse_qs(sas)["sig"][0]


def test_put_blob_stores_type_and_md5_and_a_wrong_md5_is_an_error(conn: str, corpus_name: str) -> None:
    data, other = image_bytes("png", color="red"), image_bytes("png", color="blue")

    async def run() -> tuple[str, int]:
        async with Storage(parse_connection_string(conn), corpus_name) as storage:
            await storage.ensure()
            await storage.put_blob(
                "original/v1/good.png", data, content_type="image/png", md5=hashlib.md5(data).digest()
            )
            # the service checks Content-MD5 against the bytes it got: what a corruption in transit looks like
            with pytest.raises(StorageError) as info:
                await storage.put_blob(
                    "original/v1/bad.png", data, content_type="image/png", md5=hashlib.md5(other).digest()
                )
            return str(info.value), storage.stats.retries

    message, retries = asyncio.run(run())
    assert message.startswith("upload of original/v1/bad.png: storage error 400 Md5Mismatch"), message
    assert retries == 0  # a 400 is final: never retried
    stored = blobs(conn, corpus_name)
    assert list(stored) == ["original/v1/good.png"]  # the mismatched blob was not stored
    assert stored["original/v1/good.png"] == {
        "size": len(data),
        "md5": hashlib.md5(data).hexdigest(),
        "content_type": "image/png",
    }


def test_upload_of_a_file_whose_md5_does_not_match_fails_it_and_keeps_the_set_pending(
    conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        unique_png(tmp_path / "s" / f"{i}.png", i)
    real = hashing_module._read_and_check

    def changed_after_hashing(path: str):  # type: ignore[no-untyped-def]
        data, md5, kind, bad = real(path)
        return (data + b"!" if path.endswith("1.png") else data), md5, kind, bad

    monkeypatch.setattr(hashing_module, "_read_and_check", changed_after_hashing)
    report, _ = upload(conn, corpus_name, tmp_path)
    assert not report.ok and report.files_failed == 1 and report.files_uploaded == 2
    (failure,) = report.failures
    assert failure.item.endswith("1.png") and "Md5Mismatch" in failure.reason
    assert sorted(blobs(conn, corpus_name)) == ["original/s/v1/0.png", "original/s/v1/2.png"]
    (row,) = rows(conn, corpus_name)
    assert row["Status"] == "pending"  # never complete with a blob missing
    monkeypatch.setattr(hashing_module, "_read_and_check", real)
    report, stats = upload(conn, corpus_name, tmp_path)
    assert report.ok and report.files_uploaded == 1 and stats.blob_puts == 1
    assert rows(conn, corpus_name)[0]["Status"] == "complete"


def test_a_put_into_a_deleted_container_fails_without_the_sas(conn: str, corpus_name: str) -> None:
    data = image_bytes("png")

    async def run() -> tuple[CorpusError, str]:
        async with Storage(parse_connection_string(conn), corpus_name) as storage:
            await storage.ensure()
            await storage.put_blob("original/v1/a.png", data, content_type="image/png", md5=hashlib.md5(data).digest())
            await storage.container.delete_container()  # e.g. someone dropped the corpus mid-run
            with pytest.raises(CorpusError) as info:
                await storage.put_blob(
                    "original/v1/b.png", data, content_type="image/png", md5=hashlib.md5(data).digest()
                )
            return info.value, storage._put_sas()

    error, sas = asyncio.run(run())
    text = str(error)
    assert isinstance(error, NotFound | Conflict), text  # 404 ContainerNotFound (409 while being deleted)
    assert text.startswith("upload of original/v1/b.png: "), text
    assert _signature(sas) not in text and "sig=" not in text and KEY not in text


def test_a_refused_put_with_a_sas_connection_string_names_the_blob_not_the_signature(
    azurite: Azurite, conn: str, corpus_name: str
) -> None:
    data = image_bytes("png")
    with_storage(conn, corpus_name, lambda s: s.ensure())
    # container operations allowed, blob writes not: the PUT itself is refused with 403
    limited = _account_sas_connection(azurite, "sc", "rwdlac")

    async def run() -> CorpusError:
        async with Storage(parse_connection_string(limited), corpus_name) as storage:
            with pytest.raises(CorpusError) as info:
                await storage.put_blob(
                    "original/v1/a.png", data, content_type="image/png", md5=hashlib.md5(data).digest()
                )
            return info.value

    error = asyncio.run(run())
    assert isinstance(error, AuthenticationFailed), error
    assert str(error).startswith("storage refused the credentials for upload of original/v1/a.png (403 ")
    assert "check the account key, SAS token or identity" in str(error)
    assert _signature(limited.split("SharedAccessSignature=")[1]) not in str(error)
    assert blobs(conn, corpus_name) == {}


def test_upload_with_a_sas_connection_string(
    azurite: Azurite, corpus_name: str, sample_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sas_conn = _account_sas_connection(azurite, "sco", "rwdlacu")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", sas_conn)
    result = CliRunner().invoke(cli, ["upload", str(sample_tree), "--version", "v1"])
    assert result.exit_code == 0, result.output
    stored = blobs(azurite.connection_string, corpus_name)
    assert len(stored) == 5 and stored["original/v1/top.gif"]["content_type"] == "image/gif"
    assert stored["original/v1/top.gif"]["md5"] == md5_of(sample_tree / "top.gif")
    assert _signature(sas_conn.split("SharedAccessSignature=")[1]) not in result.output


def test_start_up_and_a_no_op_rerun_import_neither_wand_rich_nor_the_blob_sdk(
    conn: str, corpus_name: str, sample_tree: Path
) -> None:
    probe = (
        "import json, sys\n"
        "from corpus_manager.cli import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = ('wand', 'rich', 'azure.storage.blob')\n"
        "    print(json.dumps({m: m in sys.modules for m in heavy}), file=sys.stderr)\n"
    )

    def loaded(*args: str) -> dict[str, bool]:
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stderr.strip().splitlines()[-1])

    none = {"wand": False, "rich": False, "azure.storage.blob": False}
    assert loaded("--help") == none
    # blobs are written by the thin PUT (the container made with a Shared Key request, the SAS minted here)
    assert loaded("upload", str(sample_tree), "--version", "v1", "--corpus", corpus_name) == none
    assert len(blobs(conn, corpus_name)) == 5
    # the rerun only reads rows and hashes local files
    assert loaded("upload", str(sample_tree), "--version", "v1", "--corpus", corpus_name) == none


def test_the_minted_container_sas_is_the_sdks_and_can_only_create_and_write(conn: str, corpus_name: str) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    from azure.storage.blob._shared.constants import X_MS_VERSION

    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    ours = container_sas(ACCOUNT, KEY, corpus_name, "cw", expiry.timestamp(), version=X_MS_VERSION)
    sdk = generate_container_sas(
        ACCOUNT,
        corpus_name,
        account_key=KEY,
        expiry=expiry,
        permission=ContainerSasPermissions(create=True, write=True),
    )
    assert parse_qs(ours) == parse_qs(sdk)
    data = image_bytes("png")

    async def run() -> tuple[int, int]:
        async with Storage(parse_connection_string(conn), corpus_name) as storage:
            await storage.ensure(container=False)
            await storage.put_blob("original/v1/a.png", data, content_type="image/png", md5=hashlib.md5(data).digest())
            url = f"{azurite_blob(conn)}/{corpus_name}/original/v1/a.png?{storage._put_sas()}"
            async with aiohttp.ClientSession() as session:
                got = await session.get(url)
                deleted = await session.delete(url)
                got.release()
                deleted.release()
                return got.status, deleted.status

    assert asyncio.run(run()) == (403, 403)  # the run's SAS reads and deletes nothing
    assert list(blobs(conn, corpus_name)) == ["original/v1/a.png"]


def azurite_blob(conn: str) -> str:
    return parse_connection_string(conn).blob_endpoint


def test_set_rows_of_many_sets_share_requests(
    conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for d in range(12):
        unique_png(tmp_path / f"d{d:02}" / "x.png", d)
    sizes: list[int] = []
    real = Storage.write_rows

    async def counted(self: Storage, table, writes):  # type: ignore[no-untyped-def]
        sizes.append(len(writes))
        return await real(self, table, writes)

    monkeypatch.setattr(Storage, "write_rows", counted)
    report, _ = upload(conn, corpus_name, tmp_path, max_parallel_uploads=12)
    assert report.ok and report.sets_uploaded == 12
    assert max(sizes) > 1  # pending (and complete) rows of several sets went in one transaction
    sets = rows(conn, corpus_name)
    assert len(sets) == 12 and all(r["Status"] == "complete" and r["ImageCount"] == 1 for r in sets)
    assert len(rows(conn, corpus_name, "tags")) == 12


def test_a_refused_row_transaction_is_replayed_one_write_at_a_time(
    conn: str, corpus_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corpus_manager.models import ImageSet, SetIdentity
    from corpus_manager.rowcommit import GroupCommit
    from corpus_manager.throttle import ThrottleWork

    refused: list[str] = []
    real = Storage.write_rows

    async def watched(self: Storage, table, writes):  # type: ignore[no-untyped-def]
        try:
            return await real(self, table, writes)
        except Conflict as exc:
            refused.append(str(exc))
            raise

    monkeypatch.setattr(Storage, "write_rows", watched)

    def pending(path: str) -> dict[str, object]:
        return ImageSet(SetIdentity(path, "v1"), tags=[path]).to_entity()

    async def run() -> list[object]:
        async with Storage(parse_connection_string(conn), corpus_name) as storage:
            await storage.ensure(container=False)
            await storage.create_entity(storage.sets, pending("b"))  # as another run would have
            writer = GroupCommit(storage, ThrottleWork(2))
            # queued together: one transaction, refused as a whole for "b"
            return await asyncio.gather(*(writer.create(pending(p)) for p in ("a", "b", "c")), return_exceptions=True)

    a, b, c = asyncio.run(run())
    assert isinstance(a, str) and isinstance(c, str)  # the others' ETags, stored by the replay
    assert isinstance(b, Conflict)  # what a single create of an existing row says
    assert len(refused) == 1 and "batch in partition original" in refused[0]  # the transaction was tried
    assert sorted(r["Path"] for r in rows(conn, corpus_name)) == ["a", "b", "c"]
