"""The ``corpus`` command: each command parses options, calls one library function, renders the result.

Results go to stdout (a human summary, or ``--json``); progress, warnings and errors to stderr.
Library exceptions are mapped to a one-line message and an exit code in one place, ``_run``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .config import redact
from .corpus import Corpus
from .download import DownloadReport, neutralise_cell
from .errors import CorpusError
from .imagetypes import DEFAULT_EXTENSIONS
from .models import ImageTransform
from .progress import BarProgress, human_bytes, printable
from .query import QueryResult
from .results import Failure
from .status import StatusReport
from .transform import TransformReport
from .upload import UploadReport

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


# ----- commands ------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="corpus-manager", prog_name="corpus")
def cli() -> None:
    """Keep a corpus of training images in Azure Blob Storage, indexed in Azure Table Storage."""


@cli.command()
@click.argument("root", type=click.Path(file_okay=True, dir_okay=True, path_type=str))
@click.option("--version", "version", required=True, help="Version of the sets this upload creates.")
@click.option(
    "--ext",
    "extensions",
    default=",".join(DEFAULT_EXTENSIONS),
    show_default=True,
    help="Image extensions, comma-separated, matched case-insensitively.",
)
@parallel_options
@click.option("--dry-run", is_flag=True, help="Crawl and show what would be uploaded; write nothing.")
@output_options
@connection_options
def upload(
    root: str,
    version: str,
    extensions: str,
    max_parallel_uploads: int,
    max_parallel_upserts: int,
    dry_run: bool,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Crawl ROOT and upload every directory of images as a versioned, tagged ImageSet."""

    partial = UploadReport(root=root, version=version)

    async def go() -> UploadReport:
        async with _open(connection_string, account_url, corpus, max_parallel_uploads) as c:
            with BarProgress("upload") as bar:
                return await c.upload(
                    root,
                    version,
                    extensions=extensions,
                    max_parallel_uploads=max_parallel_uploads,
                    max_parallel_upserts=max_parallel_upserts,
                    dry_run=dry_run,
                    progress=bar,
                    report=partial,
                )

    def interrupted() -> None:
        partial.interrupted = True
        if as_json:
            _print_json(partial.to_json())
        else:
            click.echo(format_upload(partial))

    report = _run(go, interrupted)
    if as_json:
        _print_json(report.to_json())
    else:
        for w in report.warnings:
            _err(_printable(f"warning: {w}"))
        _print_failures(report.failures)
        click.echo(format_upload(report))
    sys.exit(report.exit_code)


def format_upload(r: UploadReport) -> str:
    if r.dry_run:
        planned = [s for s in r.sets if s.status == "planned"]
        lines = [
            f"Dry run: would upload {r.files_uploaded} files ({human_bytes(r.bytes_uploaded)}) in "
            f"{len(planned)} sets as version {r.version}; {r.sets_skipped} sets already complete."
        ]
        lines += [f"  {s.path or '(root)'}: {s.images} files" for s in planned[:20]]
        if len(planned) > 20:
            lines.append(f"  ... and {len(planned) - 20} more sets")
        return _joined(lines)
    if r.interrupted:
        head = (
            f"Interrupted: version {r.version} from {r.root} is partly uploaded; the sets below that are not "
            "complete stay pending and a rerun finishes them"
        )
    elif r.files_uploaded == 0 and not r.failures and r.sets:
        head = f"Nothing to upload: all {len(r.sets)} sets of version {r.version} are already stored."
    elif not r.sets and not r.failures:
        head = f"Nothing to upload: no images under {r.root}."
    else:
        head = f"Uploaded version {r.version} from {r.root}"
    lines = [
        head,
        f"  sets        {len(r.sets)} total: {r.sets_uploaded} uploaded, {r.sets_skipped} already complete, "
        f"{r.sets_refused} refused, {r.sets_failed} failed"
        + (f", {r._count('interrupted')} interrupted" if r.interrupted else ""),
        f"  files       {r.files_uploaded} uploaded, {r.files_already_stored} already stored, "
        f"{r.files_corrupt} corrupt, {r.files_failed} failed, {r.files_ignored} ignored (not images)",
        f"  bytes       {human_bytes(r.bytes_uploaded)} in {r.elapsed:.1f} s ({r.files_per_second:.0f} files/s)",
    ]
    if r.retries:
        lines.append(f"  retries     retried {r.retries} requests")
    if r.duplicates:
        shown = "; ".join(" = ".join(group) for group in r.duplicates[:3])
        more = f" (and {len(r.duplicates) - 3} more)" if len(r.duplicates) > 3 else ""
        lines.append(f"  duplicates  {len(r.duplicates)} groups of byte-identical files: {shown}{more}")
    if r.failures:
        lines.append(f"  problems    {len(r.failures)} (listed above on stderr)")
    return _joined(lines)


# ----- finding sets again: query, download, status --------------------------------------------
def query_options(fn: F) -> F:
    """The set filters `query` and `download` share."""
    fn = click.option("--originals", is_flag=True, help="Only original (untransformed) sets.")(fn)
    fn = click.option(
        "--transform",
        "transform",
        metavar="NAME[@TV]",
        default=None,
        help="Only the outputs of transform NAME (of version TV, if given).",
    )(fn)
    fn = click.option("--version", "version", default=None, help="Only sets of this version.")(fn)
    fn = click.option("--any", "any_tag", is_flag=True, help="Sets with any of the tags (default: all of them).")(fn)
    fn = click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="T",
        help="A tag the sets must carry; repeat for several. Matched case-insensitively.",
    )(fn)
    return fn


def _check_filters(transform: str | None, originals: bool) -> None:
    if transform is not None and originals:
        raise click.UsageError("--transform and --originals exclude each other")


def _filters(
    tags: tuple[str, ...], any_tag: bool, version: str | None, transform: str | None, originals: bool
) -> dict[str, Any]:
    _check_filters(transform, originals)
    return {"tags": tags, "any_tag": any_tag, "version": version, "transform": transform, "originals": originals}


@cli.command()
@query_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default=None,
    help="Output format. Default: table on a terminal, JSON otherwise.",
)
@output_options
@connection_options
def query(
    tags: tuple[str, ...],
    any_tag: bool,
    version: str | None,
    transform: str | None,
    originals: bool,
    fmt: str | None,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """List the complete sets with the given tags (all of them; any with --any), version and transform."""
    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} exclude each other")
    fmt = "json" if as_json else fmt or ("table" if sys.stdout.isatty() else "json")
    filters = _filters(tags, any_tag, version, transform, originals)

    async def go() -> QueryResult:
        async with _open(connection_string, account_url, corpus) as c:
            return await c.query(**filters)

    result = _run(go)
    _print_failures(result.problems)
    if fmt == "json":
        _print_json(result.to_json())
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "version", "tags", "transform", "images", "bytes", "blob_prefix"])
        for s in result.sets:
            cells = (
                s.path,
                s.version,
                json.dumps(list(s.tags), ensure_ascii=False),
                s.identity.transform_label or "",
                s.images,
                s.bytes,
                s.blob_prefix,
            )
            writer.writerow([neutralise_cell(v) for v in cells])
        click.echo(out.getvalue(), nl=False)
    else:
        if result.sets:
            click.echo(format_query_table(result))
        _err(f"{len(result.sets)} sets, {result.images} images, {human_bytes(result.bytes)}")
    sys.exit(result.exit_code)


def format_query_table(result: QueryResult) -> str:
    head = ("PATH", "VERSION", "TRANSFORM", "IMAGES", "BYTES", "TAGS")
    body = [
        (
            _printable(s.path) or "(root)",
            s.version,
            s.identity.transform_label or "-",
            str(s.images),
            human_bytes(s.bytes),
            _printable(", ".join(s.tags)),
        )
        for s in result.sets
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for r in [head, *body]:
        cells = [r[i].rjust(widths[i]) if i in (3, 4) else r[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


@cli.command()
@query_options
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Directory to download into; files are laid out by blob name beneath it.",
)
@click.option(
    "--manifest",
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="Write one record per image to FILE: JSON lines (.jsonl) or CSV (.csv).",
)
@click.option(
    "--max-parallel-downloads",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Blob transfers in flight at once.",
)
@output_options
@connection_options
def download(
    tags: tuple[str, ...],
    any_tag: bool,
    version: str | None,
    transform: str | None,
    originals: bool,
    out: str,
    manifest: str | None,
    max_parallel_downloads: int,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Download the images of the matching complete sets into --out, with an optional manifest."""
    filters = _filters(tags, any_tag, version, transform, originals)
    partial = DownloadReport(out=out)

    async def go() -> DownloadReport:
        async with _open(connection_string, account_url, corpus, max_parallel_downloads) as c:
            with BarProgress("download") as bar:
                return await c.download(
                    out,
                    manifest=manifest,
                    max_parallel_downloads=max_parallel_downloads,
                    progress=bar,
                    report=partial,
                    **filters,
                )

    def interrupted() -> None:
        partial.interrupted = True
        _print_json(partial.to_json()) if as_json else click.echo(format_download(partial))

    report = _run(go, interrupted)
    if as_json:
        _print_json(report.to_json())
    else:
        for w in report.warnings:
            _err(_printable(f"warning: {w}"))
        _print_failures(report.failures)
        click.echo(format_download(report))
    sys.exit(report.exit_code)


def format_download(r: DownloadReport) -> str:
    if r.interrupted and not r.files_selected:
        return _printable(f"Interrupted: download to {r.out} stopped before any set was selected; nothing was written.")
    if r.interrupted:
        head = (
            f"Interrupted: download to {r.out} stopped; every file there is whole (checked against its MD5) "
            "and a rerun downloads only the rest"
        )
    elif r.sets == 0 and not r.failures:
        head = "Nothing to download: no complete set matches."
    elif r.files_downloaded == 0 and not r.failures and r.records:
        head = f"Nothing to download: all {len(r.records)} files of {r.sets} sets are already in {r.out}."
    elif (missing := r.files_failed + r.files_refused) and not r.files_downloaded and not r.files_present:
        head = f"Nothing downloaded: all {missing} files of {r.sets} sets failed (listed above on stderr)"
    elif missing:
        head = f"Downloaded {r.sets} sets to {r.out} except {missing} files (listed above on stderr)"
    else:
        head = f"Downloaded {r.sets} sets to {r.out}"
    lines = [
        head,
        f"  files       {r.files_downloaded} downloaded, {r.files_present} already present, "
        f"{r.files_failed} failed, {r.files_refused} refused"
        + (f", {r.files_not_done} not downloaded yet" if r.interrupted else ""),
        f"  bytes       {human_bytes(r.bytes_downloaded)} in {r.elapsed:.1f} s ({r.files_per_second:.0f} files/s)",
    ]
    if r.manifest and r.interrupted:
        lines.append(f"  manifest    {r.manifest} not written (the rerun writes it)")
    elif r.manifest and r.manifest_error:
        lines.append(f"  manifest    {r.manifest} {r.manifest_error}")
    elif r.manifest:
        lines.append(f"  manifest    {r.manifest} ({len(r.records)} records)")
    if r.retries:
        lines.append(f"  retries     retried {r.retries} requests")
    if r.failures:
        lines.append(f"  problems    {len(r.failures)} (listed above on stderr)")
    return _joined(lines)


@cli.command()
@click.option(
    "--repair", is_flag=True, help="Index complete sets that have no tag rows (e.g. after an interrupted run)."
)
@click.option(
    "--verify",
    is_flag=True,
    help="List every complete set and compare it with its row; a set whose blobs storage lost is set "
    "back to pending, for its upload or transform, rerun, to finish (one listing per set).",
)
@click.option(
    "--top", type=click.IntRange(min=0), default=10, show_default=True, help="How many tags to list (--json lists all)."
)
@output_options
@connection_options
def status(
    repair: bool,
    verify: bool,
    top: int,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Sets by status, totals, per-transform progress and tags with their set counts."""

    async def go() -> StatusReport:
        async with _open(connection_string, account_url, corpus) as c:
            with BarProgress("repair", show_bytes=False, enabled=None if repair else False) as bar:
                return await c.status(repair=repair, verify=verify, progress=bar)

    report = _run(go)
    if as_json:
        _print_json(report.to_json())
    else:
        _print_failures(report.problems)
        click.echo(format_status(report, top))
    sys.exit(report.exit_code)


def format_status(r: StatusReport, top: int = 10) -> str:
    lines = [
        f"Corpus {r.corpus}",
        f"  sets        {r.complete} complete ({r.originals} originals, {r.outputs} transform outputs), "
        f"{len(r.pending)} pending, {len(r.unindexed)} unindexed",
        f"  images      {r.images} ({human_bytes(r.bytes)}) in complete sets",
    ]
    if r.pending:
        lines.append(f"  pending     {len(r.pending)} (rerun the same upload or transform to finish them):")
        lines += [f"    {label}" for label in r.pending]
    if r.verified is not None:
        lines.append(
            f"  verified    {r.verified} complete sets listed: {len(r.demoted)} did not match their row "
            "and are pending again (rerun their upload or transform)" + (":" if r.demoted else "")
        )
        lines += [f"    {d}" for d in r.demoted]
    if r.repaired:
        lines.append(f"  repaired    {len(r.repaired)} sets indexed by tag:")
        lines += [f"    {label}" for label in r.repaired]
    if r.unindexed:
        lines.append(
            f"  unindexed   {len(r.unindexed)} complete sets not found by tag (`corpus status --repair` indexes them):"
        )
        lines += [f"    {label}" for label in r.unindexed]
    if r.transforms:
        lines.append("  transforms  source sets done / missing:")
        width = max(len(t.label) for t in r.transforms)
        for t in r.transforms:
            extra = f", {t.pending} pending" if t.pending else ""
            unreg = " (not registered)" if not t.registered else ""
            lines.append(
                f"    {t.label.ljust(width)}  from {t.source}: {t.done} done, {t.missing} missing{extra}{unreg}"
            )
    if r.tags:
        shown = r.tags[:top]
        more = f" (top {len(shown)} of {len(r.tags)}; --json lists all)" if len(r.tags) > len(shown) else ""
        lines.append(f"  tags        sets per tag{more}:")
        width = max((len(t) for t, _ in shown), default=0)
        lines += [f"    {t.ljust(width)}  {n}" for t, n in shown]
    return _joined(lines)


def _operations_epilog() -> str:
    import transforms  # the library's operation registry (already loaded by corpus_manager.transform)

    # \b keeps click from rewrapping the table
    return "\n".join(
        ["\b", "Operations (--op OP[=ARG], applied in order):"]
        + [f"  {op.usage:<26} {op.help}" for op in transforms.operations()]
    )


@cli.command(epilog=_operations_epilog())
@click.argument("name")
@click.option("--version", "version", required=True, help="Version of this transform (immutable once registered).")
@click.option(
    "--op",
    "ops",
    multiple=True,
    metavar="OP[=ARG]",
    help="An operation, in order (repeatable): resize=256x256, charcoal=2, format=png, ...",
)
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="A TOML or JSON file listing the operations (instead of --op).",
)
@click.option("--tag", "tags", multiple=True, help="Only source sets with this tag (repeatable: all of them).")
@click.option("--source-version", default=None, help="Only source sets of this version.")
@click.option(
    "--from",
    "source",
    default=None,
    metavar="NAME2@TV2",
    help="Transform the outputs of transform NAME2@TV2 instead of the originals.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Worker processes for ImageMagick [default: all cores]."
)
@click.option(
    "--scheduler",
    envvar="CORPUS_DASK_SCHEDULER",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Run the job on the Dask cluster of this scheduler (needs the distributed extra; each worker "
    "needs its own AZURE_STORAGE_CONNECTION_STRING or CORPUS_ACCOUNT_URL). "
    "[env CORPUS_DASK_SCHEDULER]",
)
@click.option("--dry-run", is_flag=True, help="List the sets that would be processed; write nothing.")
@output_options
@connection_options
def transform(
    name: str,
    version: str,
    ops: tuple[str, ...],
    spec_file: str | None,
    tags: tuple[str, ...],
    source_version: str | None,
    source: str | None,
    workers: int | None,
    scheduler: str | None,
    dry_run: bool,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Apply transform NAME (ImageMagick operations) to every complete source set without its output yet."""
    partial = TransformReport(name, version)

    async def go() -> TransformReport:
        async with _open(connection_string, account_url, corpus) as c:
            with BarProgress(f"transform {name}@{version}") as bar:
                return await c.transform(
                    name,
                    version,
                    ops=ops,
                    spec_file=spec_file,
                    tags=tags,
                    source_version=source_version,
                    source=source,
                    workers=workers,
                    dry_run=dry_run,
                    progress=bar,
                    report=partial,
                    scheduler=scheduler,
                )

    def interrupted() -> None:
        partial.interrupted = True
        _print_json(partial.to_json()) if as_json else click.echo(format_transform(partial))

    report = _run(go, interrupted)
    if as_json:
        _print_json(report.to_json())
    else:
        _print_failures(report.failures)
        click.echo(format_transform(report))
    sys.exit(report.exit_code)


def format_transform(r: TransformReport) -> str:
    label = f"{r.name}@{r.version}"
    if r.dry_run:
        planned = [s for s in r.sets if s.status == "planned"]
        lines = [
            f"Dry run: transform {label} (`{r.command_line}`) would process {len(planned)} sets "
            f"({sum(s.images for s in planned)} images) from {r.source}; {r.sets_skipped} already done."
        ]
        lines += [f"  {s.path or '(root)'}@{s.version}: {s.images} images" for s in planned[:20]]
        if len(planned) > 20:
            lines.append(f"  ... and {len(planned) - 20} more sets")
        return _joined(lines)
    if r.interrupted:
        head = f"Interrupted: transform {label} is partly done; unfinished sets stay pending and a rerun finishes them"
    elif not r.sets and not r.failures:
        what = "original" if r.source == "original" else f"{r.source} output"
        head = (
            f"Nothing to transform: no set matches (complete {what} sets with the tags and source version asked for)."
        )
    elif not r.sets_transformed and not r.failures:
        head = f"Nothing to transform: every matching set already has a complete {label} output."
    else:
        head = f"Transformed with {label} (`{r.command_line}`) from {r.source}"
    images = sum(s.transformed for s in r.sets)
    lines = [
        head,
        f"  sets        {len(r.sets)} total: {r.sets_transformed} transformed, {r.sets_skipped} already done, "
        f"{r.sets_failed} failed" + (f", {r._count('interrupted')} interrupted" if r.interrupted else ""),
        f"  images      {images} transformed, {sum(s.already_done for s in r.sets)} already done, "
        f"{sum(s.failed for s in r.sets)} failed",
        f"  time        {r.elapsed:.1f} s with {r.workers} workers"
        + (f" of the Dask cluster at {r.scheduler}" if r.scheduler else "")
        + f" ({r.images_per_second:.1f} images/s)",
    ]
    if r.retries:
        lines.append(f"  retries     retried {r.retries} requests")
    if r.failures:
        lines.append(
            f"  problems    {len(r.failures)} (listed above on stderr); failed sets stay pending, rerun to retry them"
        )
    return _joined(lines)


@cli.command(name="transforms")
@output_options
@connection_options
def transforms_command(as_json: bool, connection_string: str | None, account_url: str | None, corpus: str) -> None:
    """List the registered transforms with their specs."""

    async def go() -> list[ImageTransform]:
        async with _open(connection_string, account_url, corpus) as c:
            return await c.transforms()

    items = _run(go)
    if as_json:
        _print_json(
            [
                {
                    "name": t.name,
                    "version": t.version,
                    "command_line": t.command_line,
                    "spec": json.loads(t.spec),
                    "spec_digest": t.spec_digest,
                    "source": t.source,
                    "created_at": t.created_at,
                    "imagemagick_version": t.imagemagick_version,
                }
                for t in items
            ]
        )
        return
    if not items:
        click.echo("No transforms registered yet.")
        return
    width = max(len(f"{t.name}@{t.version}") for t in items)
    for t in items:
        click.echo(
            _printable(f"{t.name + '@' + t.version:<{width}}  {t.command_line}  (from {t.source}, {t.created_at})")
        )


def main() -> None:
    cli(prog_name="corpus")


if __name__ == "__main__":
    main()
