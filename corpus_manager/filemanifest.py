"""The local manifest ``corpus download --manifest FILE`` writes: JSON lines or CSV, by extension.

Written whole to a temporary file beside FILE and renamed into place, so FILE is never half-written.
A CSV cell a spreadsheet would run as a formula is neutralised (shown, not run).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .dlcache import temp_path
from .errors import ConfigError

MANIFEST_FIELDS = (
    "local_path",
    "blob_name",
    "set_path",
    "tags",
    "version",
    "transform_name",
    "transform_version",
    "bytes",
    "md5",
)
# Spreadsheets run a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Record(Protocol):
    tags: list[str]

    def to_json(self) -> dict[str, Any]: ...


def manifest_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ConfigError(f"--manifest {path!r}: the extension must be .jsonl (JSON lines) or .csv")


def neutralise_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe (shown, not run)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_manifest(path: str, records: Sequence[Record]) -> None:
    """JSON lines or CSV by extension, written whole to a temporary file and renamed into place."""
    kind = manifest_kind(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(target)  # a name a rerun's sweep of this directory recognises
    try:
        with open(temp, "w", encoding="utf-8", newline="") as fh:
            if kind == "jsonl":
                for r in records:
                    fh.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            else:
                # a release's records add columns (label, split) after the usual ones
                fields = list(records[0].to_json()) if records else list(MANIFEST_FIELDS)
                writer = csv.writer(fh)
                writer.writerow(fields)
                for r in records:
                    cells = r.to_json()
                    cells["tags"] = json.dumps(r.tags, ensure_ascii=False)  # one unambiguous cell
                    writer.writerow([neutralise_cell(cells[k]) for k in fields])
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
