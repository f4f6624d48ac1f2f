"""Streaming walk of a folder into directory groups (one future ImageSet each), with tags.

A generator over ``os.scandir``: one directory is listed at a time, so uploads start before the
crawl ends and memory holds one directory's entries, not the corpus. Symbolic links are followed
(an image folder often links to a data disk), each real directory is visited once, so a symlink
loop ends with a reported problem rather than an endless walk. Unreadable entries are reported and
skipped. A name that cannot round-trip as a blob name (``models.name_problem``) is refused: an image
file alone, a directory with everything below it (its set and every set nested in it).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import ConfigError
from .imagetypes import normalize_extensions
from .models import name_problem, tags_for


@dataclass(frozen=True)
class LocalFile:
    name: str
    path: str
    size: int


@dataclass
class DirGroup:
    rel_dir: str  # '/'-separated, '' for the root
    abs_dir: str
    files: list[LocalFile]

    @property
    def tags(self) -> list[str]:
        return tags_for(self.rel_dir)


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str
    kind: str = "skipped"  # or "refused": a name that cannot be a blob name


@dataclass
class Crawler:
    root: str
    extensions: tuple[str, ...] = field(default_factory=lambda: normalize_extensions(None))
    problems: list[Problem] = field(default_factory=list)
    files_seen: int = 0
    ignored: int = 0  # files without an image extension

    def __post_init__(self) -> None:
        root = os.path.abspath(os.path.expanduser(self.root))
        if not os.path.exists(root):
            raise ConfigError(f"{self.root}: no such directory")
        if not os.path.isdir(root):
            raise ConfigError(f"{self.root}: not a directory")
        self.root = root
        self.extensions = normalize_extensions(self.extensions)

    def _problem(self, path: str, reason: str, kind: str = "skipped") -> None:
        self.problems.append(Problem(path, reason, kind))

    def __iter__(self) -> Iterator[DirGroup]:
        visited: set[tuple[int, int]] = set()
        stack: list[tuple[str, str]] = [(self.root, "")]  # (absolute dir, relative dir)
        while stack:
            abs_dir, rel_dir = stack.pop()
            try:
                st = os.stat(abs_dir)
            except OSError as exc:
                self._problem(abs_dir, _skip_reason(exc))
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in visited:
                self._problem(abs_dir, "symlink loop or second link to a directory already crawled; skipped")
                continue
            visited.add(ident)
            files, subdirs = self._list(abs_dir)
            if files:
                yield DirGroup(rel_dir, abs_dir, files)
            # reversed so the walk pops directories in name order
            for name, path in reversed(subdirs):
                stack.append((path, f"{rel_dir}/{name}" if rel_dir else name))

    def _list(self, abs_dir: str) -> tuple[list[LocalFile], list[tuple[str, str]]]:
        files: list[LocalFile] = []
        subdirs: list[tuple[str, str]] = []
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except NotADirectoryError:
            self._problem(abs_dir, "is no longer a directory (changed during the walk)")
            return files, subdirs
        except OSError as exc:
            self._problem(abs_dir, _skip_reason(exc))
            return files, subdirs
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError as exc:
                self._problem(entry.path, _skip_reason(exc))
                continue
            if is_dir:
                refused = name_problem(entry.name)
                if refused is not None:  # every set below would carry the name in its blob names
                    self._problem(entry.path, f"directory {refused}; not uploaded, nor anything below it", "refused")
                    continue
                subdirs.append((entry.name, entry.path))
                continue
            if os.path.splitext(entry.name)[1].lower() not in self.extensions:
                self.ignored += 1
                continue
            refused = name_problem(entry.name)
            if refused is not None:
                self._problem(entry.path, f"{refused}; not uploaded", "refused")
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                self._problem(entry.path, _skip_reason(exc))
                continue
            if not stat.S_ISREG(st.st_mode):
                self._problem(entry.path, "not a regular file; skipped")
                continue
            if not os.access(entry.path, os.R_OK):  # found now, like an unreadable directory, not mid-upload
                self._problem(entry.path, "permission denied; skipped")
                continue
            self.files_seen += 1
            files.append(LocalFile(entry.name, entry.path, st.st_size))
        return files, subdirs


def _skip_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied; skipped"
    if isinstance(exc, FileNotFoundError):
        return "vanished or is a broken symlink; skipped"
    return f"{exc.strerror or exc.__class__.__name__}; skipped"
