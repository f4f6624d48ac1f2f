"""Transform jobs on a Dask cluster (`--scheduler`): a real LocalCluster of two worker processes against the
test Azurite and real ImageMagick, compared with the local process pool; worker death; missing credentials."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

try:
    import dask
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # a failure, not a skip: `make test` installs the extra
    pytest.fail(
        "the distributed extra is missing: run `make test` (pip install -e '.[test,distributed]')", pytrace=False
    )

from corpus_manager import distributed as cluster_jobs
from corpus_manager.cli import cli

from .conftest import KEY, Azurite, image_bytes, unique_png, write_image
from .helpers import blobs, png_bomb, rows, run

KILL_MARK = "kill-me"
WORKERS = 2


@pytest.fixture(scope="module")
def cluster(azurite: Azurite) -> Iterator[distributed.LocalCluster]:
    """Two single-threaded worker processes; started once per module (a few seconds).

    The connection string reaches the workers through the nanny's ``env=`` (the client never sends it).
    ``allowed_failures=1``: a task that kills two workers is declared lost (Dask's default is 3, slower to test).
    Worker saturation 1.0: a worker holds only the task it runs, so a dying worker takes no bystander task
    with it (with the default 1.1 a queued task would count the death too, and the kill test would be racy).
    """
    with (
        dask.config.set({"distributed.scheduler.worker-saturation": 1.0}),
        distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string},
            scheduler_kwargs={"allowed_failures": 1},
        ) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def dask_client(cluster: distributed.LocalCluster) -> Iterator[distributed.Client]:
    """The test's own view of the cluster (task stream, worker environment, fault plugins)."""
    with distributed.Client(cluster, set_as_default=False) as c:
        yield c


def upload(conn: str, corpus: str, root: Path) -> None:
    report = run(conn, corpus, lambda c: c.upload(str(root), "v1"))
    assert report.ok, report.failures


class Recorder:
    """A ProgressSink that remembers what it was told."""

    def __init__(self) -> None:
        self.grown = self.advanced = self.nbytes = 0

    def grow(self, files: int = 0, nbytes: int = 0) -> None:
        self.grown += files

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self.advanced += files
        self.nbytes += nbytes

    def note(self, message: str) -> None:
        pass


def outputs(conn: str, corpus: str, name: str, version: str) -> dict[str, tuple[Any, ...]]:
    """Output blobs of NAME@VERSION by their name under the transform's prefix: (md5, size, content type)."""
    prefix = f"transform/{name}/{version}/"
    return {
        n[len(prefix) :]: (b["md5"], b["size"], b["content_type"])
        for n, b in blobs(conn, corpus).items()
        if n.startswith(prefix)
    }


def output_rows(conn: str, corpus: str, version: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["Path"], r["Version"]): r for r in rows(conn, corpus) if r["TransformVersion"] == version}


def test_cluster_output_is_byte_identical_to_the_local_pool(
    conn: str,
    corpus_name: str,
    tmp_path: Path,
    cluster: distributed.LocalCluster,
    dask_client: distributed.Client,
    pool: Executor,
) -> None:
    root = tmp_path / "photos"
    for i in range(9):  # a set of several chunks
        unique_png(root / "big" / "set" / f"p{i}.png", i, size="40x30")
    assert cluster_jobs.chunk_size(9, WORKERS) == 4
    write_image(root / "red" / "a.jpg", "jpeg", size="20x20", color="orange")
    write_image(root / "red" / "b.png", size="24x12", color="red")
    write_image(root / "top.gif", "gif", color="green")
    # bad images fail the same way on a worker: a corrupt PNG, and a bomb the safety policy refuses
    good = image_bytes("png", "16x16", "red")
    write_image(root / "broken" / "ok.png")
    (root / "broken" / "bad.png").write_bytes(good[:16] + b"\x00" * 40 + good[-12:])
    (root / "bomb").mkdir()
    (root / "bomb" / "big.png").write_bytes(png_bomb(20000, 20000))
    upload(conn, corpus_name, root)
    sizes = {"big/set": 9, "red": 2, "": 1, "broken": 2, "bomb": 1}
    # random-crop is seeded by the source blob name: the workers must see the very same names
    ops = ["random-crop=10x10", "charcoal=1", "format=png"]

    local = run(conn, corpus_name, lambda c: c.transform("thumbs", "local", ops=ops, pool=pool))
    progress = Recorder()
    with distributed.get_task_stream(client=dask_client) as stream:
        remote = run(
            conn,
            corpus_name,
            lambda c: c.transform("thumbs", "dask", ops=ops, progress=progress, scheduler=cluster.scheduler_address),
        )

    assert {(f.item, f.reason) for f in remote.failures} == {(f.item, f.reason) for f in local.failures}
    assert {f.item for f in remote.failures} == {"original/broken/v1/bad.png", "original/bomb/v1/big.png"}
    assert remote.exit_code == local.exit_code == 1
    assert {s.path for s in remote.sets if s.status == "failed"} == {"broken", "bomb"}
    assert remote.sets_transformed == local.sets_transformed == 3
    assert remote.images_transformed == local.images_transformed == 13  # with broken/ok.png
    assert remote.workers == WORKERS and remote.scheduler == cluster.scheduler_address
    # the same names, bytes and content types under each version's prefix
    local_out, remote_out = outputs(conn, corpus_name, "thumbs", "local"), outputs(conn, corpus_name, "thumbs", "dask")
    assert remote_out == local_out
    assert len(remote_out) == 13 and all(n.endswith(".png") for n in remote_out)
    # the same complete rows: counts, digest, tags, lineage
    local_rows, remote_rows = output_rows(conn, corpus_name, "local"), output_rows(conn, corpus_name, "dask")
    assert local_rows.keys() == remote_rows.keys() == {(p, "v1") for p in sizes}
    for key, row in remote_rows.items():
        for column in ("Status", "ImageCount", "TotalBytes", "ContentDigest", "Tags", "SourceSet"):
            assert row[column] == local_rows[key][column], (key, column)
        assert row["Status"] == ("pending" if key[0] in ("broken", "bomb") else "complete")
    tag_rows = rows(conn, corpus_name, "tags")
    assert (
        {(r["Tag"], r["Path"]) for r in tag_rows if r["TransformVersion"] == "dask"}
        == {(r["Tag"], r["Path"]) for r in tag_rows if r["TransformVersion"] == "local"}
        != set()
    )
    registered = {r["RowKey"]: r for r in rows(conn, corpus_name, "transforms")}
    assert registered["dask"]["ImageMagickVersion"] == registered["local"]["ImageMagickVersion"]
    # the images went through the cluster, one task per chunk of one set, spread over every worker thread
    chunk_tasks = [t for t in stream.data if str(t["key"]).startswith("corpus-transform-")]
    assert len(chunk_tasks) == sum(math.ceil(n / cluster_jobs.chunk_size(n, WORKERS)) for n in sizes.values()) == 7
    # the progress bar was fed from the task completions
    assert progress.grown == progress.advanced == 15
    assert progress.nbytes == sum(size for _, size, _ in remote_out.values())


class KillOnMarkedBlob(WorkerPlugin):
    """Fault injection (no mock: a real worker process dies): while token files are left in ``tokens``, a
    worker that transforms a blob named with KILL_MARK takes a token and SIGKILLs itself, as the kernel's
    OOM killer would. Registered on the scheduler, so the workers the nanny restarts get it too."""

    name = "corpus-test-kill"

    def __init__(self, tokens: str) -> None:
        self.tokens = tokens

    def setup(self, worker: Any) -> None:
        import transforms as worker_transforms

        original = self.original = worker_transforms.apply_spec
        tokens = Path(self.tokens)

        def apply_spec(spec_json: str, data: bytes, blob_name: str) -> Any:
            if KILL_MARK in blob_name:
                for token in sorted(tokens.iterdir()):
                    try:
                        token.unlink()  # atomic: each token kills one worker, whichever takes it
                    except FileNotFoundError:
                        continue
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(spec_json, data, blob_name)

        worker_transforms.apply_spec = apply_spec

    def teardown(self, worker: Any) -> None:
        import transforms as worker_transforms

        worker_transforms.apply_spec = self.original


def set_tokens(directory: Path, n: int) -> None:
    directory.mkdir(exist_ok=True)
    for i in range(n):
        (directory / f"token{i}").touch()


def test_a_killed_worker_fails_only_its_set_and_the_rerun_finishes_it(
    conn: str, corpus_name: str, tmp_path: Path, cluster: distributed.LocalCluster, dask_client: distributed.Client
) -> None:
    root = tmp_path / "photos"
    for i in range(8):  # two chunks: d0-d3, and d4-d6 with the marked blob
        unique_png(root / "doomed" / f"{KILL_MARK}-{i}.png" if i == 7 else root / "doomed" / f"d{i}.png", i)
    for i in range(3):
        unique_png(root / "fine" / f"f{i}.png", 10 + i)
    upload(conn, corpus_name, root)
    tokens = tmp_path / "tokens"
    set_tokens(tokens, 2)  # allowed_failures=1: the second death makes Dask give the task up
    dask_client.register_plugin(KillOnMarkedBlob(str(tokens)))
    try:
        first = CliRunner().invoke(
            cli,
            ["transform", "thumbs", "--version", "1", "--op", "resize=8x8!", "--scheduler", cluster.scheduler_address],
        )
        assert first.exit_code == 1, first.output
        assert not any(tokens.iterdir())  # two workers died on the chunk with the marked blob
        assert "set doomed@v1: 4 of 8 images not transformed: the Dask workers running it died (2 tries" in first.stderr
        assert "out of memory?" in first.stderr
        assert "1 transformed, 0 already done, 1 failed" in first.stdout
        status = {p: r["Status"] for (p, _), r in output_rows(conn, corpus_name, "1").items()}
        assert status == {"doomed": "pending", "fine": "complete"}
        assert not [r for r in rows(conn, corpus_name, "tags") if r["Path"] == "doomed" and r["TransformName"]]

        # the rerun: one more death, which Dask's rescheduling on the other worker absorbs
        dask_client.wait_for_workers(WORKERS, timeout=60)
        set_tokens(tokens, 1)
        second = CliRunner().invoke(
            cli,
            [
                "transform",
                "thumbs",
                "--version",
                "1",
                "--op",
                "resize=8x8!",
                "--scheduler",
                cluster.scheduler_address,
                "--json",
            ],
        )
        assert second.exit_code == 0, second.output
        assert not any(tokens.iterdir())
        results = {r["path"]: r for r in json.loads(second.stdout)["set_results"]}
        assert results["fine"]["status"] == "skipped" and results["doomed"]["status"] == "transformed"
        # the chunk that finished in the first run is not done again
        assert results["doomed"]["already_done"] >= 4
        assert results["doomed"]["already_done"] + results["doomed"]["transformed"] == 8
    finally:
        dask_client.unregister_worker_plugin(KillOnMarkedBlob.name)
        dask_client.wait_for_workers(WORKERS, timeout=60)
    doomed = output_rows(conn, corpus_name, "1")[("doomed", "v1")]
    assert doomed["Status"] == "complete" and doomed["ImageCount"] == 8
    assert sorted(outputs(conn, corpus_name, "thumbs", "1")) == sorted(
        [
            *(f"doomed/v1/d{i}.png" for i in range(7)),
            f"doomed/v1/{KILL_MARK}-7.png",
            "fine/v1/f0.png",
            "fine/v1/f1.png",
            "fine/v1/f2.png",
        ]
    )
    assert {(r["Tag"], r["Path"]) for r in rows(conn, corpus_name, "tags") if r["TransformName"]} == {
        ("doomed", "doomed"),
        ("fine", "fine"),
    }


def _drop_credentials() -> None:
    os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
    os.environ.pop("CORPUS_ACCOUNT_URL", None)


def _set_credentials(value: str) -> None:
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = value


def test_workers_without_credentials_fail_every_set_with_a_clear_reason(
    conn: str,
    corpus_name: str,
    tmp_path: Path,
    cluster: distributed.LocalCluster,
    dask_client: distributed.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "photos"
    write_image(root / "a" / "x.png")
    write_image(root / "b" / "y.png", color="blue")
    upload(conn, corpus_name, root)
    monkeypatch.setenv("CORPUS_DASK_SCHEDULER", cluster.scheduler_address)  # the option's environment form
    dask_client.run(_drop_credentials)
    try:
        result = CliRunner().invoke(cli, ["transform", "thumbs", "--version", "1", "--op", "flip"])
    finally:
        dask_client.run(_set_credentials, conn)
    assert result.exit_code == 1, result.output
    lines = sorted(result.stderr.splitlines())
    assert len(lines) == 2, lines
    for line, set_name in zip(lines, ("a@v1", "b@v1"), strict=True):
        assert line.startswith(f"failed: set {set_name}: 1 of 1 images not transformed: Dask worker tcp://127.0.0.1:")
        assert line.endswith(
            "has no storage credentials: set AZURE_STORAGE_CONNECTION_STRING (or CORPUS_ACCOUNT_URL "
            "for a managed identity) in the environment of every `dask worker`; credentials are "
            "never sent through the scheduler"
        )
    assert "0 transformed, 0 already done, 2 failed" in result.stdout
    assert KEY not in result.output
    assert outputs(conn, corpus_name, "thumbs", "1") == {}
    assert {r["Status"] for r in output_rows(conn, corpus_name, "1").values()} == {"pending"}
    # with credentials back, the rerun finishes both sets
    again = CliRunner().invoke(cli, ["transform", "thumbs", "--version", "1", "--op", "flip"])
    assert again.exit_code == 0, again.output
    assert sorted(outputs(conn, corpus_name, "thumbs", "1")) == ["a/v1/x.png", "b/v1/y.png"]


def test_usage_errors_write_nothing(
    conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "photos" / "a" / "x.png")
    upload(conn, corpus_name, tmp_path / "photos")
    before = blobs(conn, corpus_name)
    args = ["transform", "thumbs", "--version", "1", "--op", "flip"]

    both = CliRunner().invoke(cli, [*args, "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"])
    assert both.exit_code == 2
    assert "--workers sizes the local process pool; with --scheduler the cluster's workers do the work" in both.stderr

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(cluster_jobs, "CONNECT_TIMEOUT", 2.0)
    nobody = CliRunner().invoke(cli, [*args, "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert nobody.exit_code == 2
    assert nobody.stderr.startswith(f"Error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port} (")
    assert f"start one with `dask scheduler` and workers with `dask worker tcp://127.0.0.1:{port}`" in nobody.stderr

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    missing = CliRunner().invoke(cli, [*args, "--scheduler", "tcp://127.0.0.1:8786"])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "Error: --scheduler needs Dask's distributed scheduler, an optional extra that "
        "is not installed (distributed): pip install 'corpus-manager[distributed]'"
    )
    assert blobs(conn, corpus_name) == before
    assert rows(conn, corpus_name, "transforms") == []
