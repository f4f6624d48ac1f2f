"""Fixtures: a real Azurite from the project's node_modules, and sample corpora made with ImageMagick."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Shared with bench/ (standard library only); ROOT, ACCOUNT, KEY and free_port are imported from here by tests.
from bench.azurite_argv import ACCOUNT, AZURITE_BIN, KEY, azurite_argv, free_port
from bench.azurite_argv import ROOT as ROOT

# Hypothesis fails an example that takes over 200 ms by default: a wall-clock assert, off here.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


def _wait_port(port: int, timeout: float = 60.0) -> None:  # generous: Node starts slowly on a loaded machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"Azurite did not open port {port}")


@dataclass
class Azurite:
    """One Azurite process; restartable on the same --location (the fault tests kill it)."""

    location: Path
    blob_port: int
    queue_port: int
    table_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}/{ACCOUNT}"

    def start(self) -> None:
        if not AZURITE_BIN.exists():
            pytest.fail(f"{AZURITE_BIN} is missing: run `make test` (it runs `npm ci`)")
        self.proc = subprocess.Popen(
            azurite_argv(self.location, self.blob_port, self.queue_port, self.table_port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.blob_port)
        _wait_port(self.table_port)

    def stop(self, sig: int = 15) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    az = Azurite(tmp_path_factory.mktemp("azurite"), free_port(), free_port(), free_port())
    az.start()
    try:
        yield az
    finally:
        az.stop()


@pytest.fixture
def conn(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Azurite connection string, also exported so CLI runs pick it up."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.delenv("CORPUS_ACCOUNT_URL", raising=False)
    return azurite.connection_string


@pytest.fixture
def corpus_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh corpus per test, so tests share one Azurite without seeing each other's data."""
    name = "t" + uuid.uuid4().hex[:12]
    monkeypatch.setenv("CORPUS_NAME", name)
    return name


# ----- sample images --------------------------------------------------------------------------
def make_image(path: Path, size: str = "16x16", color: str = "red", fmt: str | None = None) -> Path:
    """A real image made by ImageMagick; the content varies with the color and size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = f"{fmt}:{path}" if fmt else str(path)
    subprocess.run(["convert", "-size", size, f"xc:{color}", target], check=True)
    return path


_IMAGE_CACHE: dict[tuple[str, str, str], bytes] = {}


def image_bytes(kind: str = "png", size: str = "16x16", color: str = "red") -> bytes:
    key = (kind, size, color)
    if key not in _IMAGE_CACHE:
        source = color if ":" in color else f"xc:{color}"  # e.g. "plasma:" for a busy image
        # -seed: plasma is random otherwise, and a test cutting an image at a fixed point must see the
        # same bytes every run (a GIF cut just after a 0x3B byte reads as whole to the tail check)
        # (PNG: no date chunks, so the same bytes every run too)
        cmd = ["convert", "-seed", "1", "-size", size, source, "-define", "png:exclude-chunk=date,time", f"{kind}:-"]
        out = subprocess.run(cmd, check=True, capture_output=True)
        _IMAGE_CACHE[key] = out.stdout
    return _IMAGE_CACHE[key]


def write_image(path: Path, kind: str = "png", size: str = "16x16", color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(kind, size, color))
    return path


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    """A small tagged tree: nested sets, root images, an uppercase extension, a non-image file."""
    root = tmp_path / "photos"
    write_image(root / "red" / "angry" / "robin" / "a.png", color="red")
    write_image(root / "red" / "angry" / "robin" / "b.jpg", "jpeg", color="orange")
    write_image(root / "red" / "angry" / "c.png", color="maroon")
    write_image(root / "blue" / "sky" / "D.JPG", "jpeg", color="blue")
    write_image(root / "top.gif", "gif", color="green")
    (root / "blue" / "sky" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def imagemagick() -> str:
    exe = shutil.which("convert")
    if not exe:
        pytest.fail("ImageMagick's convert is missing: run `make test` (it installs imagemagick)")
    return exe


def unique_png(path: Path, n: int, size: str = "16x16") -> Path:
    """A valid, distinct PNG without a fork per file: one ImageMagick image plus a tEXt chunk saying n."""
    import struct
    import zlib

    base = image_bytes("png", size, "plasma:")
    iend = base.rindex(b"IEND") - 4
    text = b"Comment\0" + str(n).encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base[:iend] + chunk + base[iend:])
    return path


@pytest.fixture(scope="module")
def pool() -> Iterator[Executor]:
    """One ImageMagick worker pool per test module: spawning the workers costs about a second."""
    import transforms  # here, not at collection: some tests check what importing transforms loads

    with transforms.create_pool(2) as p:
        yield p
