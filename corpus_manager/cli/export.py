"""Training exports: `corpus export --release NAME --format webdataset`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..progress import BarProgress, human_bytes
from ..shards import DEFAULT_SHARD_SIZE, FORMATS, parse_size
from .app import _finish_run, _joined, _open, cli, connection_options, output_options

if TYPE_CHECKING:
    from ..export import ExportReport


def _shard_size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option("--release", "release", required=True, metavar="NAME", help="The release to export.")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="webdataset", show_default=True, help="Export format."
)
@click.option("--split", default=None, metavar="S", help="Only this split of the release (default: every split).")
@click.option(
    "--shard-size",
    default=DEFAULT_SHARD_SIZE,
    show_default=True,
    callback=_shard_size,
    help="Largest shard: 256MB (decimal), 1GiB (binary) or bytes. A bigger image gets a shard of its own.",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Write the shards and index.json into this directory instead of the container.",
)
@click.option(
    "--max-parallel-downloads",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Image reads in flight at once.",
)
@output_options
@connection_options
def export(
    release: str,
    fmt: str,
    split: str | None,
    shard_size: int,
    out: str | None,
    max_parallel_downloads: int,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Export a release as deterministic WebDataset tar shards {split}-NNNNNN.tar (samples shuffled by the
    release's seed), into the container under exports/NAME/webdataset/ or into --out DIR."""
    from ..export import ExportReport  # here: the other commands never load the export machinery

    partial = ExportReport(release, out or f"{corpus}/exports/{release}/webdataset/", shard_size, split)

    async def go() -> ExportReport:
        async with _open(connection_string, account_url, corpus, max_parallel_downloads) as c:
            with BarProgress("export", show_bytes=False) as bar:
                return await c.export(
                    release,
                    fmt=fmt,
                    split=split,
                    shard_size=shard_size,
                    out=out,
                    max_parallel_downloads=max_parallel_downloads,
                    progress=bar,
                    report=partial,
                )

    _finish_run(go, partial, as_json, format_export)


def format_export(r: ExportReport) -> str:
    head = "Interrupted export" if r.interrupted else "Exported"
    total = sum(s["bytes"] for s in r.shards)
    samples = sum(s["samples"] for s in r.shards)
    lines = [
        f"{head} release {r.release}{f' (split {r.split})' if r.split else ''} as WebDataset to {r.destination}",
        f"  shards      {len(r.shards)} ({samples} samples, {human_bytes(total)}): {r.shards_written} written, "
        f"{r.shards_present} already there",
        f"  images      {r.images_read} read in {r.elapsed:.1f} s; index.json "
        + ("written" if r.index_written else "unchanged" if not r.failures else "not written (failures)"),
    ]
    if r.removed:
        lines.append(f"  removed     {len(r.removed)} shards of an earlier export: {', '.join(r.removed[:5])}")
    if r.failures:
        lines.append(f"  problems    {len(r.failures)} shards not written (listed above on stderr)")
    return _joined(lines)
