"""`corpus transform` and `corpus transforms`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ..models import ImageTransform
from ..progress import BarProgress
from .app import (
    _finish_run,
    _joined,
    _open,
    _planned,
    _print_json,
    _printable,
    _run,
    cli,
    connection_options,
    output_options,
)

if TYPE_CHECKING:
    from ..transform import TransformReport


def _operations_epilog() -> str:
    import transforms  # the library's operation registry

    # \b keeps click from rewrapping the table
    return "\n".join(
        ["\b", "Operations (--op OP[=ARG], applied in order):"]
        + [f"  {op.usage:<26} {op.help}" for op in transforms.operations()]
    )


class _OperationsEpilog(click.Command):
    """The operations table as the help's epilog, built when help is shown (click's public
    ``format_epilog``): building it at import would load ``transforms`` for every command."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = self.epilog or _operations_epilog()
        super().format_epilog(ctx, formatter)


@cli.command(cls=_OperationsEpilog)
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
    from ..transform import TransformReport  # here: other commands never load transform (start-up time)

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

    _finish_run(go, partial, as_json, format_transform)


def format_transform(r: TransformReport) -> str:
    label = f"{r.name}@{r.version}"
    if r.dry_run:
        planned = r.sets_with("planned")
        return _planned(
            f"Dry run: transform {label} (`{r.command_line}`) would process {len(planned)} sets "
            f"({sum(s.images for s in planned)} images) from {r.source}; {r.sets_skipped} already done.",
            [f"{s.path or '(root)'}@{s.version}: {s.images} images" for s in planned],
        )
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
    lines = [
        head,
        f"  sets        {len(r.sets)} total: {r.sets_transformed} transformed, {r.sets_skipped} already done, "
        f"{r.sets_failed} failed" + (f", {r.count('interrupted')} interrupted" if r.interrupted else ""),
        f"  images      {r.images_transformed} transformed, {sum(s.already_done for s in r.sets)} already done, "
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
