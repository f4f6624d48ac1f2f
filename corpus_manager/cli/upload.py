"""`corpus upload`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..imagetypes import DEFAULT_EXTENSIONS
from ..progress import BarProgress, human_bytes
from .app import _finish_run, _joined, _open, _planned, cli, connection_options, output_options, parallel_options

if TYPE_CHECKING:
    from ..upload import UploadReport


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

    from ..upload import UploadReport  # here: a download never loads upload (start-up time)

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

    _finish_run(go, partial, as_json, format_upload, lambda r: r.warnings)


def format_upload(r: UploadReport) -> str:
    if r.dry_run:
        planned = r.sets_with("planned")
        return _planned(
            f"Dry run: would upload {r.files_uploaded} files ({human_bytes(r.bytes_uploaded)}) in "
            f"{len(planned)} sets as version {r.version}; {r.sets_skipped} sets already complete.",
            [f"{s.path or '(root)'}: {s.images} files" for s in planned],
        )
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
        + (f", {r.count('interrupted')} interrupted" if r.interrupted else ""),
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
