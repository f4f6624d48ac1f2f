"""The ``corpus`` command: each command parses options, calls one library function, renders the result.

Results go to stdout (a human summary, or ``--json``); progress, warnings and errors to stderr.
Library exceptions are mapped to a one-line message and an exit code in one place, ``_run``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .config import redact
from .corpus import Corpus
from .errors import CorpusError
from .imagetypes import DEFAULT_EXTENSIONS
from .progress import BarProgress, human_bytes
from .results import Failure
from .upload import UploadReport

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130


# ----- shared option stacks ------------------------------------------------------------------
def connection_options(fn: F) -> F:
    """--connection-string, --account-url, --corpus: where the corpus lives."""
    fn = click.option("--corpus", "corpus", envvar="CORPUS_NAME", default="images", show_default=True,
                      help="Corpus name: one container and three tables. [env CORPUS_NAME]")(fn)
    fn = click.option("--account-url", envvar="CORPUS_ACCOUNT_URL", default=None,
                      help="Blob endpoint of an account reached with azure-identity "
                           "(DefaultAzureCredential). [env CORPUS_ACCOUNT_URL]")(fn)
    fn = click.option("--connection-string", envvar="AZURE_STORAGE_CONNECTION_STRING", default=None,
                      show_envvar=False,
                      help="Storage connection string (default: the local Azurite). "
                           "[env AZURE_STORAGE_CONNECTION_STRING]")(fn)
    return fn


def output_options(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as JSON on stdout (messages stay on stderr).")(fn)


def parallel_options(fn: F) -> F:
    fn = click.option("--max-parallel-upserts", type=click.IntRange(min=1), default=5, show_default=True,
                      help="Table writes in flight at once.")(fn)
    fn = click.option("--max-parallel-uploads", type=click.IntRange(min=1), default=20, show_default=True,
                      help="Blob transfers in flight at once.")(fn)
    return fn


def _open(connection_string: str | None, account_url: str | None, corpus: str, pool: int = 64) -> Corpus:
    return Corpus(corpus, connection_string=connection_string, account_url=account_url, pool_size=pool)


def _err(message: str) -> None:
    click.echo(redact(message), err=True)


T = TypeVar("T")


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run the library call; map its exceptions to a one-line message and exit code, once."""
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except CorpusError as exc:
        _err(f"Error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err("Interrupted: work in flight was stopped; what finished is stored. Rerun the same command "
             "to finish the rest.")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line; the traceback only on request (it may hold URLs)
        if os.environ.get("CORPUS_DEBUG"):
            import traceback

            _err(traceback.format_exc())
        _err(f"Internal error: {exc.__class__.__name__}: {exc} (set CORPUS_DEBUG=1 for the traceback)")
        sys.exit(1)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _print_failures(failures: list[Failure], limit: int = 50) -> None:
    for f in failures[:limit]:
        _err(f"{f.kind}: {f.item}: {f.reason}")
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
@click.option("--ext", "extensions", default=",".join(DEFAULT_EXTENSIONS), show_default=True,
              help="Image extensions, comma-separated, matched case-insensitively.")
@parallel_options
@click.option("--dry-run", is_flag=True, help="Crawl and show what would be uploaded; write nothing.")
@output_options
@connection_options
def upload(root: str, version: str, extensions: str, max_parallel_uploads: int, max_parallel_upserts: int,
           dry_run: bool, as_json: bool, connection_string: str | None, account_url: str | None,
           corpus: str) -> None:
    """Crawl ROOT and upload every directory of images as a versioned, tagged ImageSet."""

    async def go() -> UploadReport:
        async with _open(connection_string, account_url, corpus, max_parallel_uploads) as c:
            with BarProgress("upload") as bar:
                return await c.upload(root, version, extensions=extensions,
                                      max_parallel_uploads=max_parallel_uploads,
                                      max_parallel_upserts=max_parallel_upserts, dry_run=dry_run, progress=bar)

    report = _run(go)
    if as_json:
        _print_json(report.to_json())
    else:
        _print_failures(report.failures)
        click.echo(format_upload(report))
    sys.exit(report.exit_code)


def format_upload(r: UploadReport) -> str:
    if r.dry_run:
        planned = [s for s in r.sets if s.status == "planned"]
        lines = [f"Dry run: would upload {r.files_uploaded} files ({human_bytes(r.bytes_uploaded)}) in "
                 f"{len(planned)} sets as version {r.version}; {r.sets_skipped} sets already complete."]
        lines += [f"  {s.path or '(root)'}: {s.images} files" for s in planned[:20]]
        if len(planned) > 20:
            lines.append(f"  ... and {len(planned) - 20} more sets")
        return "\n".join(lines)
    if r.files_uploaded == 0 and not r.failures and r.sets:
        head = f"Nothing to upload: all {len(r.sets)} sets of version {r.version} are already stored."
    else:
        head = f"Uploaded version {r.version} from {r.root}"
    lines = [
        head,
        f"  sets        {len(r.sets)} total: {r.sets_uploaded} uploaded, {r.sets_skipped} already complete, "
        f"{r.sets_refused} refused, {r.sets_failed} failed",
        f"  files       {r.files_uploaded} uploaded, {r.files_already_stored} already stored, "
        f"{r.files_corrupt} corrupt, {r.files_failed} failed, {r.files_ignored} ignored (not images)",
        f"  bytes       {human_bytes(r.bytes_uploaded)} in {r.elapsed:.1f} s ({r.files_per_second:.0f} files/s)",
    ]
    if r.duplicates:
        shown = "; ".join(" = ".join(group) for group in r.duplicates[:3])
        more = f" (and {len(r.duplicates) - 3} more)" if len(r.duplicates) > 3 else ""
        lines.append(f"  duplicates  {len(r.duplicates)} groups of byte-identical files: {shown}{more}")
    if r.failures:
        lines.append(f"  problems    {len(r.failures)} (listed above on stderr)")
    return "\n".join(lines)


def main() -> None:
    cli(prog_name="corpus")


if __name__ == "__main__":
    main()
