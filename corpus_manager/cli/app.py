"""The ``corpus`` group and what every command shares: connection and output options, the run loop
that maps library exceptions to one line and an exit code (``_run``), and result printing."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import click

from ..config import redact
from ..corpus import Corpus
from ..errors import CorpusError
from ..progress import printable
from ..results import Failure

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


# ----- shared option stacks ------------------------------------------------------------------
def connection_options(fn: F) -> F:
    """--connection-string, --account-url, --corpus: where the corpus lives."""
    fn = click.option(
        "--corpus",
        "corpus",
        envvar="CORPUS_NAME",
        default="images",
        show_default=True,
        help="Corpus name: one container and three tables. [env CORPUS_NAME]",
    )(fn)
    # No click envvar for these two: the library reads the environment itself, so an option given on
    # the command line beats either variable (SPEC: --account-url wins over the connection string in
    # the environment, and the reverse), which click's merged value could not tell apart.
    fn = click.option(
        "--account-url",
        default=None,
        help="Blob endpoint of an account reached with azure-identity (DefaultAzureCredential), "
        "or a SAS URL (an account SAS for blob and table). [env CORPUS_ACCOUNT_URL]",
    )(fn)
    fn = click.option(
        "--connection-string",
        default=None,
        help="Storage connection string (default: the local Azurite). An option given here "
        "beats the environment. [env AZURE_STORAGE_CONNECTION_STRING]",
    )(fn)
    return fn


def output_options(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (messages stay on stderr)."
    )(fn)


def parallel_options(fn: F) -> F:
    fn = click.option(
        "--max-parallel-upserts",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Table writes in flight at once.",
    )(fn)
    fn = click.option(
        "--max-parallel-uploads",
        type=click.IntRange(min=1),
        default=20,
        show_default=True,
        help="Blob transfers in flight at once.",
    )(fn)
    return fn


def _open(connection_string: str | None, account_url: str | None, corpus: str, pool: int = 64) -> Corpus:
    return Corpus(corpus, connection_string=connection_string, account_url=account_url, pool_size=pool)


def _err(message: str) -> None:
    click.echo(redact(message), err=True)


T = TypeVar("T")


class _Stop:
    """The stop signal a command received (SIGINT or SIGTERM), and the task it cancelled."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None

    def handle(self, signum: int, _frame: object) -> None:
        # the first signal cancels the command's task: the library stops its work in flight, cleans up
        # (temporary files, worker processes) and leaves the report saying what was done. A repeat is
        # ignored: the stop is already under way, and cutting it short could leave a partial file.
        if self.signum is not None:
            return
        self.signum = signum
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)

    async def run(self, make: Callable[[], Awaitable[T]]) -> T:
        self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        if self.signum is not None:  # it came before the loop started
            raise asyncio.CancelledError
        return await make()


def _run(make: Callable[[], Awaitable[T]], on_interrupt: Callable[[], None] | None = None) -> T:
    """Run the library call; map its exceptions to a one-line message and exit code, once.

    SIGINT (Ctrl-C) and SIGTERM stop it the same way: the running call is cancelled, what finished is
    stored and summarised (``on_interrupt``), and the exit code is 130 or 143 (128 + the signal)."""
    stop = _Stop()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
        previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # asyncio.run waits for the threads it started before returning, so nothing runs on after the summary
        return asyncio.run(stop.run(make))
    except CorpusError as exc:
        _err(_printable(f"Error: {exc}"))  # one line, whatever path or name the message holds
        sys.exit(exc.exit_code)
    except (asyncio.CancelledError, KeyboardInterrupt) as exc:
        if isinstance(exc, asyncio.CancelledError) and stop.signum is None:
            raise  # not a stop signal: a bug, not an interrupt
        if on_interrupt is not None:
            on_interrupt()
        stopped = "Terminated (SIGTERM)" if stop.signum == signal.SIGTERM else "Interrupted"
        _err(
            f"{stopped}: work in flight was stopped; what finished is stored. Rerun the same command "
            "to finish the rest."
        )
        sys.exit(EXIT_TERMINATED if stop.signum == signal.SIGTERM else EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line; the traceback only on request (it may hold URLs)
        if os.environ.get("CORPUS_DEBUG"):
            import traceback

            _err(traceback.format_exc())
        _err(f"Internal error: {exc.__class__.__name__}: {exc} (set CORPUS_DEBUG=1 for the traceback)")
        sys.exit(1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


# Control characters shown escaped (progress.printable): a name with a newline stays on its line, and
# a name, tag or label cannot send escape sequences to the terminal.
_printable = printable


def _joined(lines: list[str]) -> str:
    """A summary's lines, each printable: a path, tag or label from storage stays on its line."""
    return "\n".join(_printable(line) for line in lines)


def _print_failures(failures: list[Failure], limit: int = 50) -> None:
    for f in failures[:limit]:
        _err(_printable(f"{f.kind}: {f.item}: {f.reason}"))
    if len(failures) > limit:
        _err(f"... and {len(failures) - limit} more (use --json for the full list)")


class _Result(Protocol):
    def to_json(self) -> Any: ...


class _Outcome(_Result, Protocol):
    @property
    def exit_code(self) -> int: ...


ResultT = TypeVar("ResultT", bound=_Result)
OutcomeT = TypeVar("OutcomeT", bound=_Outcome)


def _show(
    result: ResultT,
    as_json: bool,
    render: Callable[[ResultT], str],
    failures: list[Failure] | None = None,
    warnings: list[str] | None = None,
) -> None:
    """A result as every command prints it: ``--json`` on stdout, or its warnings and failures on stderr
    and ``render``'s summary on stdout."""
    if as_json:
        _print_json(result.to_json())
        return
    for w in warnings or []:
        _err(_printable(f"warning: {w}"))
    _print_failures(failures or [])
    click.echo(render(result))


def _finish(
    result: OutcomeT,
    as_json: bool,
    render: Callable[[OutcomeT], str],
    failures: list[Failure] | None = None,
    warnings: list[str] | None = None,
) -> NoReturn:
    """``_show`` the result, then exit with its code."""
    _show(result, as_json, render, failures, warnings)
    sys.exit(result.exit_code)


class _Partial(_Result, Protocol):
    interrupted: bool


class _RunReport(_Outcome, _Partial, Protocol):
    failures: list[Failure]


RunT = TypeVar("RunT", bound=_RunReport)


def _finish_run(
    make: Callable[[], Awaitable[RunT]],
    partial: RunT,
    as_json: bool,
    render: Callable[[RunT], str],
    warnings: Callable[[RunT], list[str]] | None = None,
) -> NoReturn:
    """A command whose library call fills ``partial`` as it runs (upload, download, transform): run it
    (interrupted: ``partial`` summarised), then ``_finish`` with its failures and ``warnings``."""

    def summarise() -> None:  # interrupted: what ``partial`` holds, as the finished report would print
        partial.interrupted = True
        _print_json(partial.to_json()) if as_json else click.echo(render(partial))

    report = _run(make, summarise)
    _finish(report, as_json, render, report.failures, warnings(report) if warnings else None)


def _planned(head: str, items: list[str], limit: int = 20) -> str:
    """A dry run's summary: ``head``, then the sets it would process (the first ``limit`` of them)."""
    lines = [head, *(f"  {item}" for item in items[:limit])]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more sets")
    return _joined(lines)


# ----- commands ------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="corpus-manager", prog_name="corpus")
def cli() -> None:
    """Keep a corpus of training images in Azure Blob Storage, indexed in Azure Table Storage."""


def query_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The set filters `query`, `download`, `report` and `release create` share. The command gets them
    as one ``filters`` argument: the library's keyword arguments, checked (a usage error before anything
    else runs)."""

    @functools.wraps(fn)  # keeps the options below it and the help text
    def command(
        *args: Any,
        tags: tuple[str, ...],
        any_tag: bool,
        version: str | None,
        transform: str | None,
        originals: bool,
        **kwargs: Any,
    ) -> None:
        if transform is not None and originals:
            raise click.UsageError("--transform and --originals exclude each other")
        filters = {"tags": tags, "any_tag": any_tag, "version": version, "transform": transform, "originals": originals}
        fn(*args, filters=filters, **kwargs)

    out: Callable[..., None] = command
    out = click.option("--originals", is_flag=True, help="Only original (untransformed) sets.")(out)
    out = click.option(
        "--transform",
        "transform",
        metavar="NAME[@TV]",
        default=None,
        help="Only the outputs of transform NAME (of version TV, if given).",
    )(out)
    out = click.option("--version", "version", default=None, help="Only sets of this version.")(out)
    out = click.option("--any", "any_tag", is_flag=True, help="Sets with any of the tags (default: all of them).")(out)
    out = click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="T",
        help="A tag the sets must carry; repeat for several. Matched case-insensitively.",
    )(out)
    return out
