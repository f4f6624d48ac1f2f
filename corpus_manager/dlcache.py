"""What `corpus download` keeps beside the files: the MD5 of each file it wrote or checked, and the
one-call writer of a small download.

**The MD5 cache** (``Md5Cache``) is one JSON file in ``--out`` (``.corpus-download-md5.json``): for each
file, by its path under ``--out``, the size, ``st_mtime_ns`` and inode it had when its MD5 was known
(computed while it was written, or by hashing it), and that MD5. A rerun trusts an entry only while the
file's size, mtime and inode are still exactly those: a file rewritten, touched, replaced or truncated
since is hashed again. So a no-op rerun hashes nothing, and a file changed behind the tool is never
taken on its old MD5. JSON rather than SQLite: the cache is read once at the start of a run and written
once at its end (to a temporary file, then renamed: never half-written), so there is nothing for a
database to do per row, and no lock or second file is left in ``--out``; 100,000 entries are ~10 MB and
load in a fraction of a second. A run killed before its end leaves the previous cache: the next run
only hashes again the files that run wrote. Concurrent runs into the same ``--out`` each write their own
view; the last one wins, and a missing entry only costs a hash.

**Durability**: a download is not fsynced (a flush per photo would cost more than the download). A
file is renamed into place only after its bytes matched the blob's Content-MD5; after a power loss a
file may come back short or empty, and then its size (or mtime) no longer matches the blob or the cache,
so the next run fetches it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

CACHE_NAME = ".corpus-download-md5.json"
_FORMAT = 1


class Md5Cache:
    """Path under OUT -> (size, mtime_ns, inode, md5 hex); thread-safe; ``hashed`` counts files hashed."""

    def __init__(self, out_root: Path) -> None:
        self.out_root = out_root
        self.path = out_root / CACHE_NAME
        self._root = os.path.join(os.fspath(out_root), "")  # with its trailing separator
        self.entries: dict[str, list[Any]] = {}
        self.hashed = 0  # local files read and hashed by this run (a rerun of unchanged files: 0)
        self.lock = threading.Lock()
        self.dirty = False

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # none yet, or unreadable: every file is hashed once and the cache written anew
        if isinstance(data, dict) and data.get("format") == _FORMAT and isinstance(data.get("files"), dict):
            self.entries = data["files"]

    def _key(self, target: Path) -> str:
        # by string: ``Path.relative_to`` costs more than the rest of a rerun's look-up of a file
        rel = os.fspath(target)[len(self._root) :]
        return rel if os.sep == "/" else rel.replace(os.sep, "/")

    def md5_of(self, target: Path, st: os.stat_result) -> str | None:
        """The cached MD5 of ``target`` if the file is still the one it was computed for."""
        entry = self.entries.get(self._key(target))
        if (
            isinstance(entry, list)
            and len(entry) == 4
            and entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]
            and isinstance(entry[3], str)
        ):
            return entry[3]
        return None

    def remember(self, target: Path, st: os.stat_result, md5_hex: str) -> None:
        with self.lock:
            self.entries[self._key(target)] = [st.st_size, st.st_mtime_ns, st.st_ino, md5_hex]
            self.dirty = True

    def local_md5(self, target: Path, size: int) -> str | None:
        """The MD5 of the regular file at ``target`` if its size is ``size``: from the cache while the file
        is unchanged, else by hashing it (and remembering). None: absent, another size, or unreadable."""
        try:
            st = target.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:  # from the stat taken: not a second one
            return None
        cached = self.md5_of(target, st)
        if cached is not None:
            return cached
        try:
            with open(target, "rb") as fh:
                h = hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False))
                after = os.fstat(fh.fileno())
        except OSError:
            return None
        with self.lock:
            self.hashed += 1
        if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # not changed while hashed
            self.remember(target, after, h.hexdigest())
        return h.hexdigest()

    def save(self) -> None:
        """Write the cache (only if this run changed it), to a temporary file renamed into place."""
        if not self.dirty:
            return
        temp = self.path.with_name(f"{CACHE_NAME}.{os.getpid()}.tmp")
        try:
            with self.lock:
                text = json.dumps({"format": _FORMAT, "files": self.entries}, separators=(",", ":"))
            temp.write_text(text, encoding="utf-8")
            os.replace(temp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            # no cache only means hashing again next time: never a failed download


def temp_path(target: Path) -> Path:
    """A fresh hidden temporary name beside ``target``, of fixed length (22 bytes): deriving it from the
    target's name would push a name of 241-255 bytes past the file system's limit of 255.
    ``is_temp_name`` recognises it, so a rerun can remove what a killed run left: keep the two together."""
    return target.with_name(f".{uuid.uuid4().hex[:16]}.part")


_TEMP_NAME = re.compile(r"\.[0-9a-f]{16}\.part")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one ``temp_path`` makes."""
    return _TEMP_NAME.fullmatch(name) is not None


def write_whole(
    target: Path,
    data: bytes,
    expected_md5: str | None,
    create_temp: Callable[[Path], tuple[Path, IO[bytes]]],
    mismatch: Callable[[str, str | None], Exception],
) -> tuple[str, os.stat_result]:
    """(One thread call.) A small download's whole life on disk: check the MD5, create the temporary file
    beside ``target`` (``create_temp``: locked against another run's sweep), write, rename into place;
    or nothing at all. Returns the MD5 hex and the stat of the file now in place."""
    md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if md5_hex != expected_md5:
        raise mismatch(md5_hex, expected_md5)  # checked before anything is written
    temp, fh = create_temp(target)
    try:
        with fh:
            fh.write(data)
            fh.flush()
            st = os.fstat(fh.fileno())
            os.replace(temp, target)  # while still open and locked (see download._TempFile)
        return md5_hex, st
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
