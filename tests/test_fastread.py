"""The read path of issue 15 on a real Azurite: thin List Blobs and Get Blob, the download's MD5 cache,
truncated transfers retried and never left as files, big blobs streamed in bounded chunks, and the
listing parser against hostile names and hostile XML."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from corpus_manager import storage as storage_module
from corpus_manager.dlcache import CACHE_NAME
from corpus_manager.download import is_temp_name
from corpus_manager.errors import NotFound
from corpus_manager.storage import Storage
from corpus_manager.storage.listing import ListingError, parse_listing

from .conftest import ACCOUNT, KEY, Azurite, unique_png
from .faults.proxy import FaultPlan, faulty_storage
from .helpers import run, with_storage


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def put(conn: str, corpus: str, blobs: dict[str, bytes]) -> None:
    """Blobs stored through the tool's own Put Blob (Content-MD5 set and checked by the service)."""

    async def fn(s: Storage) -> None:
        gate = asyncio.Semaphore(32)

        async def one(name: str, data: bytes) -> None:
            async with gate:
                await s.put_blob(name, data, content_type="image/png", md5=hashlib.md5(data).digest())

        await asyncio.gather(*(one(n, d) for n, d in blobs.items()))

    with_storage(conn, corpus, fn)


def upload_tree(conn: str, corpus: str, tmp_path: Path, sets: int = 3, per_set: int = 4) -> Path:
    root = tmp_path / "photos"
    for d in range(sets):
        for i in range(per_set):
            unique_png(root / "birds" / f"set{d}" / f"{i}.png", d * 100 + i)

    async def up(c: Any) -> None:
        report = await c.upload(str(root), "v1")
        assert report.ok, report.failures

    run(conn, corpus, up)
    return root


def download(conn: str, corpus: str, out: Path) -> Any:
    return run(conn, corpus, lambda c: c.download(str(out)))


# ----- the listing parser (pure) -------------------------------------------------------------------
def _listing(*names: str, marker: str = "", encoded: tuple[str, ...] = ()) -> bytes:
    blobs = "".join(
        f"<Blob><Name>{n}</Name><Properties><Content-Length>7</Content-Length>"
        "<Content-Type>image/png</Content-Type><Content-MD5>1B2M2Y8AsgTpgAmY7PhCfg==</Content-MD5>"
        "</Properties></Blob>"
        for n in names
    ) + "".join(
        f'<Blob><Name Encoded="true">{n}</Name><Properties><Content-Length>1</Content-Length></Properties></Blob>'
        for n in encoded
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="c"><Prefix>p/</Prefix>'
        f"<Blobs>{blobs}<BlobPrefix><Name>p/sub/</Name></BlobPrefix></Blobs>"
        f"<NextMarker>{marker}</NextMarker></EnumerationResults>"
    ).encode()


def test_listing_parser_decodes_escaped_and_unicode_names_sizes_md5_and_marker() -> None:
    page = parse_listing(
        _listing(
            "p/a&amp;b&lt;c&gt;&apos;&quot;.png",
            "p/日本-ünï.png",
            "p/back\\slash.png",
            "p/&#x41;ref.png",
            marker="2!72!MDAwMDA&amp;x",
            encoded=("p/ctl%01char.png",),
        )
    )
    assert [b.name for b in page.blobs] == [
        "p/a&b<c>'\".png",
        "p/日本-ünï.png",
        "p/back\\slash.png",
        "p/Aref.png",
        "p/ctl\x01char.png",  # Encoded="true": the service percent-encodes what XML cannot carry
    ]
    assert page.blobs[0].size == 7 and page.blobs[0].md5_hex == "d41d8cd98f00b204e9800998ecf8427e"
    assert page.blobs[0].content_type == "image/png"
    assert page.blobs[-1].md5_hex is None and page.blobs[-1].content_type is None
    assert page.prefixes == ["p/sub/"]
    assert page.next_marker == "2!72!MDAwMDA&x"


LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<EnumerationResults><Blobs><Blob><Name>&lol3;</Name><Properties><Content-Length>1</Content-Length>
</Properties></Blob></Blobs></EnumerationResults>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<EnumerationResults><Blobs><Blob><Name>&x;</Name></Blob></Blobs></EnumerationResults>"""


@pytest.mark.parametrize("doc", [LAUGHS, EXTERNAL, b'<?xml version="1.0"?><!DOCTYPE r><EnumerationResults/>'])
def test_listing_parser_refuses_any_dtd_so_no_entity_is_ever_expanded(doc: bytes) -> None:
    with pytest.raises(ListingError, match="document type declaration"):
        parse_listing(doc)


@pytest.mark.parametrize(
    "doc",
    [
        b"<EnumerationResults><Blobs><Blob><Name>x</Name>",  # cut off
        b"<EnumerationResults><Blobs><Blob><Name>&undefined;</Name></Blob></Blobs></EnumerationResults>",
        b"<EnumerationResults><Blobs><Blob><Name>x</Name><Properties/></Blob></Blobs></EnumerationResults>",
    ],
)
def test_listing_parser_refuses_broken_listings(doc: bytes) -> None:
    with pytest.raises(ListingError):
        parse_listing(doc)


# ----- thin listing and GET on Azurite ----------------------------------------------------------------
HOSTILE = [
    "h/a&b<c>'\"d.png",
    "h/]]>cdata.png",
    "h/ünïcødé-日本語-🐦.png",
    "h/sp ace+plus%41#hash?q=1;semi.png",
    "h/&amp;literal.png",
]


def test_thin_listing_and_get_round_trip_hostile_names(conn: str, corpus_name: str) -> None:
    data = {name: f"body of {name}".encode() for name in HOSTILE}
    put(conn, corpus_name, {**data, "h/nested/other.png": b"another set"})

    async def fn(s: Storage) -> tuple[dict[str, Any], dict[str, bytes], int]:
        listed = await s.list_prefix("h/")
        got = {name: (await s.get_blob(name))[0] for name in listed}
        return listed, got, s.stats.blob_lists

    listed, got, lists = with_storage(conn, corpus_name, fn)
    assert sorted(listed) == sorted(HOSTILE)  # the nested set's blob is not in this one
    assert got == data
    for name, info in listed.items():
        assert (info.size, info.md5_hex, info.content_type) == (len(data[name]), md5(data[name]), "image/png")
    assert lists == 1


def test_a_listing_of_more_than_5000_blobs_is_read_in_pages_of_5000(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, corpus_name: str
) -> None:
    names = {f"big/{i:05d}.png": i.to_bytes(4, "big") for i in range(5_003)}
    with faulty_storage(azurite.blob_port, azurite.table_port, FaultPlan(0), ACCOUNT, KEY) as proxy:
        put(proxy.connection_string, corpus_name, names)

        async def fn(s: Storage) -> tuple[dict[str, Any], int]:
            await s.list_prefix("none/")  # the run's first request: the container SAS is minted before
            before = proxy.blob.requests
            listed = await s.list_prefix("big/")
            return listed, proxy.blob.requests - before

        listed, requests = with_storage(proxy.connection_string, corpus_name, fn)
    assert storage_module.LIST_PAGE == 5000
    assert requests == 2  # 5,000 + 3
    assert sorted(listed) == sorted(names)
    assert all(listed[n].md5_hex == md5(d) and listed[n].size == 4 for n, d in names.items())


# ----- the download's MD5 cache -------------------------------------------------------------------
def test_a_rerun_downloads_nothing_and_hashes_nothing_unchanged(conn: str, corpus_name: str, tmp_path: Path) -> None:
    root = upload_tree(conn, corpus_name, tmp_path)
    out = tmp_path / "out"
    first = download(conn, corpus_name, out)
    assert (first.files_downloaded, first.files_present, first.files_hashed) == (12, 0, 0)
    cache = json.loads((out / CACHE_NAME).read_text())["files"]
    assert len(cache) == 12

    rerun = download(conn, corpus_name, out)
    assert (rerun.files_downloaded, rerun.files_present, rerun.files_hashed) == (0, 12, 0)
    assert rerun.to_json()["files_hashed"] == 0

    # a file changed locally (same size, new mtime) is hashed again and, not matching, fetched again
    victim = out / "original" / "birds" / "set1" / "v1" / "2.png"
    good = victim.read_bytes()
    victim.write_bytes(bytes(len(good)))
    third = download(conn, corpus_name, out)
    assert (third.files_downloaded, third.files_present, third.files_hashed) == (1, 11, 1)
    assert victim.read_bytes() == good == (root / "birds" / "set1" / "2.png").read_bytes()

    # without the cache every file is hashed once, and the cache is written again
    (out / CACHE_NAME).unlink()
    fourth = download(conn, corpus_name, out)
    assert (fourth.files_downloaded, fourth.files_present, fourth.files_hashed) == (0, 12, 12)
    assert download(conn, corpus_name, out).files_hashed == 0


def test_a_blob_changed_behind_the_tool_is_downloaded_again(conn: str, corpus_name: str, tmp_path: Path) -> None:
    upload_tree(conn, corpus_name, tmp_path, sets=1, per_set=3)
    out = tmp_path / "out"
    assert download(conn, corpus_name, out).files_downloaded == 3
    name = "original/birds/set0/v1/1.png"
    old = (out / name).read_bytes()
    new = bytes(reversed(old))  # same size, other bytes: only the listing's Content-MD5 tells
    put(conn, corpus_name, {name: new})

    again = download(conn, corpus_name, out)
    assert (again.files_downloaded, again.files_present, again.files_hashed) == (1, 2, 0)
    assert (out / name).read_bytes() == new


# ----- truncated transfers ---------------------------------------------------------------------------
def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_name(p.name)]


@pytest.mark.parametrize("whole", [True, False], ids=["photo-one-call", "streamed-in-chunks"])
def test_a_transfer_cut_off_mid_body_is_retried_and_the_file_is_whole(
    azurite: Azurite, conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    upload_tree(conn, corpus_name, tmp_path, sets=1, per_set=2)
    if not whole:  # the streamed path (resumed with Range + If-Match), at test sizes
        monkeypatch.setattr(storage_module, "DOWNLOAD_WHOLE", 16)
        monkeypatch.setattr(storage_module, "DOWNLOAD_CHUNK", 64)
    monkeypatch.setattr(storage_module, "RETRY_BACKOFF", 0.5)
    out = tmp_path / "out"
    with faulty_storage(azurite.blob_port, azurite.table_port, FaultPlan(0), ACCOUNT, KEY) as proxy:
        proxy.blob.truncate_next = 1
        report = download(proxy.connection_string, corpus_name, out)
        assert proxy.blob.truncated == 1
    assert report.exit_code == 0, report.failures
    assert (report.files_downloaded, report.retries) == (2, 1)
    originals = {
        f"original/birds/set0/v1/{i}.png": (tmp_path / "photos" / "birds" / "set0" / f"{i}.png") for i in range(2)
    }
    assert files_under(out) == {n: p.read_bytes() for n, p in originals.items()} | {
        CACHE_NAME: (out / CACHE_NAME).read_bytes()
    }
    assert _temp_files(out) == []


def test_a_transfer_cut_off_every_time_fails_and_leaves_no_file(
    azurite: Azurite, conn: str, corpus_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_tree(conn, corpus_name, tmp_path, sets=1, per_set=1)
    monkeypatch.setattr(storage_module, "RETRY_BACKOFF", 0.5)
    out = tmp_path / "out"
    with faulty_storage(azurite.blob_port, azurite.table_port, FaultPlan(0), ACCOUNT, KEY) as proxy:
        proxy.blob.truncate_next = 1_000
        report = download(proxy.connection_string, corpus_name, out)
        assert proxy.blob.truncated == storage_module.RETRY_TOTAL + 1
    assert (report.files_downloaded, report.files_failed, report.exit_code) == (0, 1, 1)
    assert "cannot reach storage" in report.failures[0].reason
    assert [p for p in out.rglob("*") if p.is_file()] == []  # neither the image nor a temporary file


# ----- big blobs stream --------------------------------------------------------------------------------
def test_a_big_blob_is_handed_on_in_bounded_chunks_and_a_photo_in_one(
    conn: str, corpus_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "DOWNLOAD_WHOLE", 64 * 1024)
    monkeypatch.setattr(storage_module, "DOWNLOAD_CHUNK", 32 * 1024)
    big, photo = bytes(range(256)) * 1200, b"photo" * 100  # 300 KiB, 500 bytes
    put(conn, corpus_name, {"s/big.png": big, "s/photo.png": photo})

    async def fn(s: Storage) -> dict[str, list[bytes]]:
        seen: dict[str, list[bytes]] = {}
        for name in ("s/big.png", "s/photo.png"):
            chunks: list[bytes] = []

            async def write(chunk: bytes, chunks: list[bytes] = chunks) -> None:
                chunks.append(chunk)

            info = await s.download_to(name, write)
            assert info.md5_hex == md5(b"".join(chunks))
            seen[name] = chunks
        return seen

    seen = with_storage(conn, corpus_name, fn)
    assert b"".join(seen["s/big.png"]) == big
    assert len(seen["s/big.png"]) >= len(big) // (32 * 1024)
    assert max(len(c) for c in seen["s/big.png"]) <= 32 * 1024  # never more than a chunk at once
    assert seen["s/photo.png"] == [photo]  # one call: one write, one thread hop


def test_reads_use_no_sdk_client_with_an_account_key(conn: str, corpus_name: str) -> None:
    """The thin path serves listing and GET: the blob SDK's container client is never made."""
    put(conn, corpus_name, {"x/a.png": b"a"})

    async def fn(s: Storage) -> tuple[bool, bytes]:
        await s.list_prefix("x/")
        data, _ = await s.get_blob("x/a.png")
        return s._container is None, data

    assert with_storage(conn, corpus_name, fn) == (True, b"a")


def test_a_blob_above_download_whole_is_written_as_it_arrives_in_stream_chunks(
    conn: str, corpus_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 MB photo is not held whole: the thin GET hands it on in STREAM_CHUNK pieces even while
    DOWNLOAD_CHUNK (the SDK's chunk) is bigger (bench/README.md, "Download": whole 2 MB bodies cost twice
    the kernel CPU)."""
    monkeypatch.setattr(storage_module, "DOWNLOAD_WHOLE", 64 * 1024)
    monkeypatch.setattr(storage_module, "STREAM_CHUNK", 32 * 1024)
    assert storage_module.DOWNLOAD_CHUNK > 32 * 1024
    big = bytes(range(256)) * 1200  # 300 KiB
    put(conn, corpus_name, {"s/big.png": big})

    async def fn(s: Storage) -> list[bytes]:
        chunks: list[bytes] = []

        async def write(chunk: bytes) -> None:
            chunks.append(chunk)

        await s.download_to("s/big.png", write)
        return chunks

    chunks = with_storage(conn, corpus_name, fn)
    assert b"".join(chunks) == big
    assert max(len(c) for c in chunks) == 32 * 1024 and len(chunks) == -(-len(big) // (32 * 1024))


def test_a_missing_blob_is_not_found(conn: str, corpus_name: str) -> None:
    put(conn, corpus_name, {"x/a.png": b"a"})

    async def fn(s: Storage) -> None:
        await s.get_blob("x/none.png")

    with pytest.raises(NotFound, match=r"download of x/none\.png: not found"):
        with_storage(conn, corpus_name, fn)


# What a download must never load: the blob SDK (its reads are thin requests), nor what only other commands
# use (upload, transform, status, release, report, the transforms package, Wand/ImageMagick, torch,
# jinja2, rich, the identity library for --account-url). Each is start-up time a no-op rerun would pay.
_NOT_FOR_A_DOWNLOAD = (
    "azure.storage.blob",
    "azure.identity",
    "transforms",
    "wand",
    "torch",
    "webdataset",
    "jinja2",
    "rich",
    "corpus_manager.upload",
    "corpus_manager.transform",
    "corpus_manager.status",
    "corpus_manager.release",
    "corpus_manager.report",
)


def test_a_download_and_its_rerun_never_import_the_blob_sdk(conn: str, corpus_name: str, tmp_path: Path) -> None:
    """Listing, GET and the container probe are thin requests: the blob SDK's start-up cost is never paid;
    nor is any other command's (``_NOT_FOR_A_DOWNLOAD``)."""
    upload_tree(conn, corpus_name, tmp_path, sets=1, per_set=2)
    probe = (
        "import json, sys\n"
        "from corpus_manager.cli import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:], standalone_mode=False)\n"
        "finally:\n"
        f"    heavy = {_NOT_FOR_A_DOWNLOAD!r}\n"
        "    print(json.dumps(sorted({m for m in sys.modules for h in heavy if m == h or m.startswith(h + '.')})),"
        " file=sys.stderr)\n"
    )
    out = tmp_path / "out"
    for expected in (2, 0):  # the first download, then the no-op rerun
        args = ["download", "--out", str(out), "--corpus", corpus_name, "--json"]
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["files"]["downloaded"] == expected
        assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_the_names_other_commands_need_are_still_there_when_asked_for() -> None:
    """The package's lazy names (PEP 562) resolve to the modules' own classes, and ``transform --help``
    still lists the operations (its epilog is built when shown)."""
    import corpus_manager
    from corpus_manager import StatusReport, TransformReport, UploadReport, imagetypes
    from corpus_manager.cli import cli
    from corpus_manager.status import StatusReport as S
    from corpus_manager.transform import TransformReport as T
    from corpus_manager.upload import UploadReport as U
    from transforms import imagetypes as sniffer

    assert (StatusReport, TransformReport, UploadReport) == (S, T, U)
    assert (imagetypes.CONTENT_TYPES, imagetypes.HEAD, imagetypes.NotAnImage) == (
        sniffer.CONTENT_TYPES,
        sniffer.HEAD,
        sniffer.NotAnImage,
    )
    with pytest.raises(AttributeError):
        _ = corpus_manager.NoSuchName  # type: ignore[attr-defined]
    result = CliRunner().invoke(cli, ["transform", "--help"])
    assert result.exit_code == 0
    assert "Operations (--op OP[=ARG], applied in order):" in result.output
    assert "charcoal" in result.output
