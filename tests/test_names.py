"""The name rule (SPEC "Blob layout"), on a real Azurite through the CLI: every local file and directory
name either round-trips byte-exactly through upload and download, or is refused at upload with its name
and the reason (exit 1); it is never stored under a name that reads back as another, and one bad name
never makes its neighbours unreadable.

Refused (corpus_manager.models.name_problem): names that are not UTF-8, a backslash (Azure and Azurite
store it as '/'), control characters (Azure refuses them; Azurite stores most of them and then fails
every listing of the prefix with HTTP 500), Unicode noncharacters (U+FFFE/U+FFFF break Azurite's
listings too). A refused directory refuses every set at or below it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from corpus_manager.cli import cli
from corpus_manager.dlcache import CACHE_NAME

from .conftest import unique_png
from .helpers import blobs, md5_of

BACKSLASH = "name contains a backslash, which Azure Blob Storage stores as '/' (rename it)"
DIR_TAIL = "; not uploaded, nor anything below it"
FILE_TAIL = "; not uploaded"


def control(code: int) -> str:
    return (
        f"name contains the control character U+{code:04X}, which Azure Blob Storage refuses in blob names (rename it)"
    )


def files_under(root: Path) -> dict[str, bytes]:
    # not download's MD5 cache (dlcache.CACHE_NAME)
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != CACHE_NAME
    }


def upload_json(root: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = CliRunner().invoke(cli, ["upload", str(root), "--version", "v1", "--json", *extra])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, json.loads(res.stdout)


def test_backslash_names_are_refused_and_never_read_back_as_another_path(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """Issue 12 point 2: `a\\b/x.png` was stored as `a/b/x.png`, so set `a/b` downloaded the other set's
    bytes; `back\\slash.png` came back as `back/slash.png` (a warning, exit 0)."""
    root = tmp_path / "root"
    unique_png(root / "a\\b" / "x.png", 1)
    unique_png(root / "a\\b" / "deeper" / "y.png", 2)  # a set below a refused directory
    mine = unique_png(root / "a" / "b" / "x.png", 3)
    slash = unique_png(root / "c" / "back\\slash.png", 4)
    neighbour = unique_png(root / "c" / "ok.png", 5)
    code, report = upload_json(root)
    assert code == 1
    assert sorted((f["item"], f["kind"], f["reason"]) for f in report["failures"]) == [
        (str(root / "a\\b"), "refused", "directory " + BACKSLASH + DIR_TAIL),
        (str(slash), "refused", BACKSLASH + FILE_TAIL),
    ]
    assert report["sets"] == {"total": 2, "uploaded": 2, "skipped": 0, "refused": 0, "failed": 0}
    stored = blobs(conn, corpus_name)
    assert {n: b["md5"] for n, b in stored.items()} == {
        "original/a/b/v1/x.png": md5_of(mine),
        "original/c/v1/ok.png": md5_of(neighbour),
    }

    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["download", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert files_under(out) == {
        "original/a/b/v1/x.png": mine.read_bytes(),
        "original/c/v1/ok.png": neighbour.read_bytes(),
    }


def test_control_characters_and_noncharacters_are_refused_and_neighbours_stay_readable(
    conn: str, corpus_name: str, tmp_path: Path
) -> None:
    """Issue 12 point 3: `\\x01`, `ESC[31m` or U+FFFE in a file name uploaded with exit 0, then every
    listing of the set failed with HTTP 500, so download and verify of the whole set failed."""
    root = tmp_path / "root"
    bad = {
        "a\x01b.png": control(0x01),
        "\x1b[31mred.png": control(0x1B),
        "tab\there.png": control(0x09),
        "new\nline.png": control(0x0A),
        "c1\x85.png": control(0x85),
        "x\ufffe.png": "name contains the Unicode noncharacter U+FFFE, which is not for interchange (rename it)",
    }
    for i, name in enumerate(bad):
        unique_png(root / "odd" / name, i)
    ok = unique_png(root / "odd" / "ok.png", 99)
    unique_png(root / "esc\x1b[0m" / "z.png", 100)
    code, report = upload_json(root)
    assert code == 1
    expected = [(str(root / "odd" / n), "refused", reason + FILE_TAIL) for n, reason in bad.items()]
    expected.append((str(root / "esc\x1b[0m"), "refused", "directory " + control(0x1B) + DIR_TAIL))
    assert sorted((f["item"], f["kind"], f["reason"]) for f in report["failures"]) == sorted(expected)
    assert list(blobs(conn, corpus_name)) == ["original/odd/v1/ok.png"]

    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["download", "--tag", "odd", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert files_under(out) == {"original/odd/v1/ok.png": ok.read_bytes()}
    verify = CliRunner().invoke(cli, ["status", "--verify", "--json"])
    assert verify.exit_code == 0, verify.output


def test_names_of_241_to_255_bytes_download(conn: str, corpus_name: str, tmp_path: Path) -> None:
    """Issue 12 point 5: the download's temporary name added 15 bytes to the file name, so a name of
    241-255 bytes uploaded but never downloaded (`File name too long`)."""
    root = tmp_path / "root"
    names = ["x" * 251 + ".png", "é" * 120 + "y" * 11 + ".png", "z" * 237 + ".png"]  # 255, 255, 241 bytes
    assert sorted(len(os.fsencode(n)) for n in names) == [241, 255, 255]
    local = {n: unique_png(root / ("d" * 255) / n, i) for i, n in enumerate(names)}
    res = CliRunner().invoke(cli, ["upload", str(root), "--version", "v1"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["download", "--out", str(out)])
    assert res.exit_code == 0, res.output
    back = out / "original" / ("d" * 255) / "v1"
    assert {p.name: p.read_bytes() for p in back.iterdir()} == {n: p.read_bytes() for n, p in local.items()}


# ----- the property -------------------------------------------------------------------------------
def expected_problem(name: bytes) -> bool:
    """The rule, restated independently of the code: not UTF-8, a backslash, a control character (C0,
    DEL, C1) or a Unicode noncharacter."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(
        ch == "\\"
        or ord(ch) < 0x20
        or 0x7F <= ord(ch) <= 0x9F
        or 0xFDD0 <= ord(ch) <= 0xFDEF
        or ord(ch) & 0xFFFE == 0xFFFE
        for ch in text
    )


# Pieces that make names interesting: separators Azure rewrites, controls, noncharacters, bytes that are
# not UTF-8 (alone or cut mid-sequence); and, to be kept, percent-escapes, dots and spaces, XML and URL
# specials, combining and astral characters, a name like the version.
_BAD = [
    b"\\",
    b"\x01",
    b"\x1b[31m",
    b"\t",
    b"\n",
    b"\r",
    b"\x7f",
    "\u0085".encode(),
    "\ufffe".encode(),
    "\uffff".encode(),
    "\ufdd0".encode(),
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
]
_GOOD = [
    b" ",
    b".",
    b"..",
    b"%2F",
    b"%00",
    b"%",
    b"#",
    b"?",
    b"&amp;",
    b"<x>",
    b"~",
    b"|",
    b"'\"",
    b":",
    b"*",
    "é".encode(),
    "e\u0301".encode(),
    "\U0001f600".encode(),
    "\u2028".encode(),
    "\ufeff".encode(),
    "\ue000".encode(),
    "\u00a0".encode(),
    b"v1",
    b"a",
    b"Z9",
]
_good = st.one_of(
    st.sampled_from(_GOOD),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Cn"]), min_size=1, max_size=6).map(
        str.encode
    ),
)
_any = st.one_of(_good, st.sampled_from(_BAD), st.binary(min_size=1, max_size=3))


def _clean(raw: bytes, limit: int) -> bytes:
    return raw.replace(b"/", b"_").replace(b"\0", b"_")[:limit]


def _names(limit: int) -> st.SearchStrategy[bytes]:
    """Mostly names the rule keeps (so round-trips are tried), some with anything in them, some long."""

    def joined(piece: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        return st.lists(piece, min_size=1, max_size=6).map(lambda ps: _clean(b"".join(ps), limit))

    long = st.tuples(_any, st.integers(limit - 15, limit)).map(lambda t: _clean(t[0] * limit, t[1]))
    return st.one_of(joined(_good), joined(_good), joined(_any), long)


_dir_name = _names(255).filter(lambda n: n not in (b"", b".", b".."))
# an image needs the extension; a stem of dots only would make the whole name an extensionless dotfile
_stem = _names(251).filter(lambda n: n.strip(b".") != b"")
_file = st.tuples(st.lists(_dir_name, max_size=2), _stem)


def _printable(path: bytes) -> str:
    """What the CLI shows for a path: controls (C0, DEL, C1) escaped, a non-UTF-8 byte as \\xNN (one line)."""
    out = []
    for ch in os.fsdecode(path):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0x80 <= code < 0xA0:  # the C1 block (U+009B is ESC [ to some terminals)
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(files=st.lists(_file, min_size=1, max_size=10))
def test_every_name_round_trips_or_is_refused_with_its_reason(
    conn: str, tmp_path: Path, files: list[tuple[list[bytes], bytes]]
) -> None:
    """Generated trees (any bytes a POSIX name allows, 1-255 bytes each): after `upload` and `download`,
    each file is at OUT/original/<dirs>/v1/<name> with its own bytes, or the upload named it (or the
    directory above it that was refused) with a reason; exactly the names the rule refuses are refused,
    and nothing lands under another name."""
    work = tmp_path / uuid.uuid4().hex
    root, out = os.fsencode(work / "root"), work / "out"
    corpus = "p" + uuid.uuid4().hex[:12]
    local: dict[bytes, bytes] = {}  # relative path -> bytes, for every file made
    for n, (dirs, stem) in enumerate(files):
        rel = b"/".join([*dirs, stem + b".png"])
        if any(p == rel or p.startswith(rel + b"/") or rel.startswith(p + b"/") for p in local):
            continue  # a file where another needs a directory: not a tree a disk can hold
        path = unique_png(Path(os.fsdecode(root + b"/" + rel)), n)
        local[rel] = path.read_bytes()
    try:
        up = CliRunner().invoke(cli, ["upload", os.fsdecode(root), "--version", "v1", "--corpus", corpus])
        assert up.exception is None or isinstance(up.exception, SystemExit), up.output
        # one line per named item, "kind: item: reason" (split on "\n" only: a name may hold U+2028)
        lines = up.stderr.split("\n")[:-1]
        matched: set[str] = set()

        def named(prefix: str) -> str:
            found = [line for line in lines if line.startswith(prefix)]
            assert len(found) == 1, f"{prefix!r} is not named once:\n{up.stderr}"
            matched.add(found[0])
            return found[0]

        down = CliRunner().invoke(cli, ["download", "--out", str(out), "--corpus", corpus])
        assert down.exit_code == 0, down.output
        back = {
            os.fsencode(p.relative_to(out).as_posix()): p.read_bytes()
            for p in out.rglob("*")
            if p.is_file() and p.name != CACHE_NAME
        }
        expected_back: dict[bytes, bytes] = {}
        for rel, data in local.items():
            *dirs, name = rel.split(b"/")
            stored = b"/".join([b"original", *dirs, b"v1", name])
            # the first refused component is the one named (nothing below a refused directory is looked at)
            depth = next((i for i, part in enumerate([*dirs, name]) if expected_problem(part)), None)
            if depth is None:
                if stored in back:
                    assert back[stored] == data, f"{rel!r} came back with other bytes"
                    expected_back[stored] = data
                    event("a file round-tripped")
                else:  # a name the rule accepts may fail only with its set, named with the limit it exceeds
                    line = named(f"failed: {_printable(b'/'.join([root, *dirs]))}: ")
                    assert "too long for a Table key" in line, line
                    event("a set path was too long")
                continue
            if depth < len(dirs):
                line = named(f"refused: {_printable(b'/'.join([root, *dirs[: depth + 1]]))}: directory name ")
                assert line.endswith(DIR_TAIL), line
                event("a directory was refused")
            else:
                line = named(f"refused: {_printable(root + b'/' + rel)}: name ")
                assert line.endswith(FILE_TAIL), line
                event("a file was refused")
        assert back == expected_back, "a file came back that is no local file, or under another name"
        assert set(blobs(conn, corpus)) == {os.fsdecode(n) for n in back}, "a blob no download returns"
        assert sorted(matched) == sorted(lines), "an unexpected message"
        assert up.exit_code == (1 if lines else 0), up.output
    finally:
        shutil.rmtree(work, ignore_errors=True)
