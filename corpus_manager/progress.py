"""A rich progress bar on stderr (files, bytes, rate), drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

# rich is imported only when a bar is drawn (stderr is a terminal): it costs ~50 ms of start-up, and
# a disabled rich Progress still does work on every update.


class BarProgress:
    """A ProgressSink drawing one bar; totals grow as a streaming crawl discovers work."""

    def __init__(self, description: str, *, enabled: bool | None = None, show_bytes: bool = True) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._task: Any = None
        self._description = description
        self.files_total = 0
        self.bytes_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self._progress: Any = None
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files")]
        if show_bytes:
            columns += [TextColumn("{task.fields[nbytes]}")]
        columns += [TextColumn("{task.fields[rate]} files/s"), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=self.console, transient=False)

    def __enter__(self) -> BarProgress:
        if self._progress is not None:
            self._progress.__enter__()
            self._task = self._progress.add_task(self._description, total=None, rate="0", nbytes="0 B")
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(t, e, tb)

    def grow(self, files: int = 0, nbytes: int = 0) -> None:
        self.files_total += files
        self.bytes_total += nbytes
        if self._task is not None:
            self._progress.update(self._task, total=self.files_total)

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self.files_done += files
        self.bytes_done += nbytes
        if self._task is not None:
            task = self._progress.tasks[0]
            elapsed = task.elapsed or 0.0
            rate = f"{self.files_done / elapsed:.0f}" if elapsed > 0 else "0"
            self._progress.update(self._task, advance=files, rate=rate, nbytes=human_bytes(self.bytes_done))

    def note(self, message: str) -> None:
        if self.enabled:
            from rich.markup import escape

            # the message is text, not markup: a path holding "[/]" or "[draft]" prints as it is
            self._progress.console.print(
                f"[yellow]warning:[/] {escape(printable(message))}", markup=True, highlight=False
            )


# Control characters shown escaped: a file name with a newline stays on its line, and a name cannot
# send escape sequences to the terminal (C0, DEL and the C1 block, whose U+009B some terminals take
# for ESC [). A byte of a non-UTF-8 name (a lone surrogate) shows as \xNN.
_CONTROL = (
    {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
    | {9: "\\t", 10: "\\n", 13: "\\r"}
    | {i: f"\\u{i:04x}" for i in range(0x80, 0xA0)}
    | {i: f"\\x{i - 0xDC00:02x}" for i in range(0xDC80, 0xDD00)}
)


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (and undecodable bytes) escaped."""
    return text.translate(_CONTROL)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
