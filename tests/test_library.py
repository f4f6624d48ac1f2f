"""The library's public surface: ``corpus_manager.__all__`` and ``SyncCorpus``, the facade for scripts.

SyncCorpus runs on a real Azurite with real ImageMagick workers: the same calls as ``Corpus`` without
``await``, from plain code and from inside a running event loop (as in Jupyter), errors typed as the
async API's, and Ctrl-C cancelling the call in flight.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest

import corpus_manager
from corpus_manager import (
    ConfigError,
    Corpus,
    InvalidName,
    StorageUnavailable,
    SyncCorpus,
    TransformSpecError,
)
from corpus_manager.results import NullProgress

from .conftest import free_port, unique_png, write_image
from .helpers import blobs, rows, run

PUBLIC = {
    "Corpus",
    "SyncCorpus",
    "ImageSet",
    "ImageTransform",
    "SetIdentity",
    "UploadReport",
    "TransformReport",
    "DownloadReport",
    "ExportReport",
    "StatusReport",
    "QueryFilter",
    "QueryResult",
    "Failure",
    "ProgressSink",
    "CorpusError",
    "ConfigError",
    "InvalidName",
    "TransformSpecError",
    "StorageUnavailable",
    "AuthenticationFailed",
    "StorageError",
    "Conflict",
    "NotFound",
    "ImmutableSetError",
    "CorruptRow",
    "__version__",
    "iter_release",  # training straight from the corpus (SPEC), and the export's readers
    "iter_shards",
    "shard_urls",
}


def test_the_package_exports_what_a_notebook_needs_and_no_internals() -> None:
    assert set(corpus_manager.__all__) == PUBLIC
    for name in corpus_manager.__all__:
        assert getattr(corpus_manager, name) is not None
    for internal in ("ThrottleWork", "Outcome", "Crawler", "DirGroup", "LocalFile"):
        assert not hasattr(corpus_manager, internal), internal


def test_every_public_async_method_of_corpus_has_a_blocking_twin_with_its_signature() -> None:
    methods = [name for name, fn in inspect.getmembers(Corpus, inspect.iscoroutinefunction) if not name.startswith("_")]
    assert {"upload", "query", "download", "status", "transform", "transforms"} <= set(methods)
    for name in methods:
        twin = getattr(SyncCorpus, name, None)
        assert twin is not None, f"SyncCorpus.{name} is missing"
        assert not inspect.iscoroutinefunction(twin), name
        assert inspect.signature(twin) == inspect.signature(getattr(Corpus, name)), name
        assert twin.__doc__ == getattr(Corpus, name).__doc__, name


def test_upload_query_download_status_and_transform_through_the_facade(
    conn: str, corpus_name: str, sample_tree: Path, tmp_path: Path, pool: Executor
) -> None:
    out = tmp_path / "out"
    with SyncCorpus(corpus_name, connection_string=conn) as c:
        assert c.name == corpus_name and "AccountKey" not in repr(c)
        up = c.upload(str(sample_tree), version="v1")
        assert up.ok and (up.files_uploaded, up.sets_uploaded) == (5, 4), up.failures
        found = c.query(["robin"], version="v1")
        assert [(s.path, s.version, s.images) for s in found.sets] == [("red/angry/robin", "v1", 2)]
        dl = c.download(str(out), ["robin"], originals=True, manifest=str(out / "manifest.jsonl"))
        assert dl.files_downloaded == 2 and (out / "original/red/angry/robin/v1/a.png").exists()
        assert (out / "manifest.jsonl").read_text().count("\n") == 2
        tr = c.transform("thumbs", "1", ops=["resize=8x8!"], tags=["robin"], pool=pool)
        assert tr.ok and tr.sets_transformed == 1 and tr.images_transformed == 2, tr.failures
        assert [(t.name, t.version) for t in c.transforms()] == [("thumbs", "1")]
        st = c.status()
        assert (st.complete, st.pending, st.originals, st.outputs) == (5, [], 4, 1)
        assert any(t.name == "corpus-manager-sync" for t in threading.enumerate())
    assert not any(t.name == "corpus-manager-sync" for t in threading.enumerate())  # closed on exit: no loop left
    # what the facade wrote is what the async API reads
    again = run(conn, corpus_name, lambda a: a.query(["robin"], transform="thumbs@1"))
    assert [s.path for s in again.sets] == ["red/angry/robin"]
    assert sum(n.startswith("transform/thumbs/1/") for n in blobs(conn, corpus_name)) == 2


def test_the_facade_works_inside_a_running_event_loop(conn: str, corpus_name: str, sample_tree: Path) -> None:
    def script() -> tuple[int, list[str], int]:  # plain code a notebook cell calls
        with SyncCorpus(corpus_name, connection_string=conn) as c:
            up = c.upload(str(sample_tree), version="v1")
            found = c.query("robin")
            return up.files_uploaded, [s.path for s in found.sets], c.status().complete

    async def cell() -> tuple[int, list[str], int]:
        asyncio.get_running_loop()  # a loop runs in this thread, as Jupyter's does
        return script()

    assert asyncio.run(cell()) == (5, ["red/angry/robin"], 4)


def test_errors_come_out_typed_as_the_async_api_raises_them(conn: str, corpus_name: str, tmp_path: Path) -> None:
    write_image(tmp_path / "tree" / "cats" / "a.png", color="red")
    calls: list[tuple[str, Any]] = [
        ("upload", lambda c: c.upload(str(tmp_path / "tree"), version="bad/version")),
        ("transform", lambda c: c.transform("x", "1", ops=["no-such-op"])),
        ("upload", lambda c: c.upload(str(tmp_path / "no-such-dir"), version="v1")),
    ]
    expected = [InvalidName, TransformSpecError, ConfigError]

    async def async_errors() -> list[Exception]:
        errors = []
        async with Corpus(corpus_name, connection_string=conn) as c:
            for _name, call in calls:
                try:
                    await call(c)
                except Exception as exc:
                    errors.append(exc)
        return errors

    wanted = asyncio.run(async_errors())
    assert [type(e) for e in wanted] == expected
    with SyncCorpus(corpus_name, connection_string=conn) as c:
        for (_name, call), want in zip(calls, wanted, strict=True):
            with pytest.raises(type(want)) as got:
                call(c)
            assert type(got.value) is type(want) and str(got.value) == str(want)

        # a complete set whose local content changed: refused (an ImmutableSetError in the report)
        assert c.upload(str(tmp_path / "tree"), version="v1").ok
        write_image(tmp_path / "tree" / "cats" / "a.png", color="blue")
        changed = c.upload(str(tmp_path / "tree"), version="v1")
        assert not changed.ok and "immutable" in str(changed.failures).lower()

    # storage that does not answer: the typed error of the first call, the corpus closed cleanly after it
    nowhere = conn.replace(conn.split("BlobEndpoint=")[1].split(";")[0], f"http://127.0.0.1:{free_port()}/x")
    with SyncCorpus(corpus_name, connection_string=nowhere) as c, pytest.raises(StorageUnavailable):
        c.upload(str(tmp_path / "tree"), version="v2")


def test_ctrl_c_while_waiting_cancels_the_call_and_the_corpus_goes_on(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    for i in range(60):
        unique_png(tmp_path / "big" / f"{i:03}.png", i)
    interrupted = threading.Event()

    def on_sigint(_signum: int, _frame: object) -> None:  # Python's default handler, noting that it ran
        interrupted.set()
        raise KeyboardInterrupt

    class CtrlC(NullProgress):
        """Presses Ctrl-C (a SIGINT to the process, as a terminal sends it) at the first file done."""

        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            if files and not interrupted.is_set():
                os.kill(os.getpid(), signal.SIGINT)
                # hold the loop until the waiting thread has the KeyboardInterrupt: the call is then
                # cancelled with at most the few uploads in flight finished
                assert interrupted.wait(60), "the SIGINT never reached the waiting thread"

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with SyncCorpus(corpus_name, connection_string=conn) as c:
            with pytest.raises(KeyboardInterrupt):
                c.upload(str(tmp_path), version="v1", max_parallel_uploads=2, progress=CtrlC())
            (row,) = rows(conn, corpus_name)
            assert row["Status"] == "pending" and len(blobs(conn, corpus_name)) < 60  # stopped, not finished
            rerun = c.upload(str(tmp_path), version="v1")  # the same corpus, still open, finishes the set
            assert rerun.ok and c.status().complete == 1
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(blobs(conn, corpus_name)) == 60


def test_the_facade_opens_on_first_use_and_again_after_close(conn: str, corpus_name: str, sample_tree: Path) -> None:
    c = SyncCorpus(corpus_name, connection_string=conn)  # no `with`: the first call opens it
    assert c.upload(str(sample_tree), version="v1").ok
    c.pool_size = 8  # on the open corpus: applied on its loop
    assert c.pool_size == 8 and c.status().complete == 4
    c.close()
    c.close()  # idempotent
    assert not any(t.name == "corpus-manager-sync" for t in threading.enumerate())
    assert [s.path for s in c.query("robin").sets] == ["red/angry/robin"]  # opened again
    c.close()
