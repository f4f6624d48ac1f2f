"""Where a downloaded blob lands under ``--out``, and what is there now: ``local_target`` refuses a name that
could leave OUT (``..`` or ``.`` segments, empty segments, a leading ``/``, a backslash, a drive letter, a
NUL, a control character on Windows, or a symbolic link under OUT leading elsewhere)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .errors import CorpusError

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeBlobName(CorpusError):
    """A blob name that would land outside --out (or cannot be a portable local path)."""


def local_target(out_root: Path, blob_name: str, known: set[str] | None = None) -> Path:
    """Where a blob goes under ``out_root`` (already resolved), or UnsafeBlobName. ``known``: directories
    (as strings) found inside ``out_root`` earlier in the run (each is resolved once, not once per file)."""
    return target_and_stat(out_root, blob_name, known)[0]


def target_and_stat(
    out_root: Path, blob_name: str, known: set[str] | None = None
) -> tuple[Path, os.stat_result | None]:
    """``local_target``, and what is at the target now (its stat, symbolic links followed; None: nothing),
    known from the one ``lstat`` the symbolic-link check makes anyway (a rerun's stat per file)."""
    if not blob_name:
        raise UnsafeBlobName("empty blob name")
    if "\\" in blob_name:
        raise UnsafeBlobName("a backslash in a blob name could be a path separator")
    if blob_name.startswith("/"):
        raise UnsafeBlobName("an absolute blob name")
    if "\0" in blob_name:
        raise UnsafeBlobName("a NUL character in a blob name")
    # A POSIX file name may hold a newline or a tab, and the file uploaded under that name comes back
    # under it; Windows refuses control characters in names.
    if os.name == "nt" and any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in blob_name):
        raise UnsafeBlobName("a control character in a blob name")
    parts = blob_name.split("/")
    for segment in parts:
        if segment in (".", ".."):
            raise UnsafeBlobName(f"a {segment!r} path segment")
        if not segment:
            raise UnsafeBlobName("an empty path segment")
        if _DRIVE.match(segment):
            raise UnsafeBlobName(f"a drive letter in the path segment {segment!r}")
    # strings, not Path objects, for the per-file work: pathlib's parsing and hashing cost more than the
    # syscalls on a rerun of small files
    parent = os.path.join(str(out_root), *parts[:-1])
    target = os.path.join(parent, parts[-1])
    # a symbolic link planted under OUT (a directory, or the file itself) must not lead the write elsewhere
    known = set() if known is None else known
    if parent not in known and not Path(parent).resolve().is_relative_to(out_root):
        raise UnsafeBlobName("the path leaves the output directory (through a symbolic link)")
    try:
        st: os.stat_result | None = os.lstat(target)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        if not Path(target).resolve().is_relative_to(out_root):
            raise UnsafeBlobName("the path leaves the output directory (through a symbolic link)")
        try:
            st = os.stat(target)
        except OSError:
            st = None
    known.add(parent)
    return Path(target), st
