"""Seeing the corpus: `corpus report`, a static site of charts and contact sheets."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from ..progress import BarProgress, human_bytes
from .app import _finish, _joined, _open, _run, cli, connection_options, output_options, query_options

# Imported when used: other commands (a download) never load them (start-up time).
if TYPE_CHECKING:
    from ..report import ReportModel


@cli.command()
@query_options
@click.option("--out", required=True, metavar="DIR", help="The report's folder: DIR/index.html and its images.")
@click.option(
    "--per-set",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Images shown per set (the first by file name), each with its transform outputs beside it.",
)
@click.option(
    "--release",
    default=None,
    metavar="NAME",
    help="The sets release NAME uses (instead of the filters), with its images per split and label.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes making thumbnails (default: one per core).",
)
@output_options
@connection_options
def report(
    filters: dict[str, Any],
    out: str,
    per_set: int,
    release: str | None,
    workers: int | None,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Write a static report of the matching complete sets into --out: totals, charts, and a contact
    sheet per set with its transform outputs beside it. Opens from disk, no network needed."""

    async def go() -> ReportModel:
        async with _open(connection_string, account_url, corpus) as c:
            with BarProgress("thumbnails", show_bytes=False) as bar:
                return await c.report(out, per_set=per_set, release=release, workers=workers, progress=bar, **filters)

    model = _run(go)
    _finish(model, as_json, format_report, model.failures)


def format_report(m: ReportModel) -> str:
    lines = [
        f"Report of {m.sets} sets ({len(m.groups)} source sets with their outputs), {m.images} images, "
        f"{human_bytes(m.bytes)}: {m.shown} shown, {len(m.pages)} page{'s' if len(m.pages) != 1 else ''}",
        f"  thumbnails: {m.thumbs_made} made, {m.thumbs_cached} from the cache",
    ]
    if m.placeholders:
        lines.append(f"  {len(m.placeholders)} images shown as placeholders (could not be decoded):")
        lines += [f"    {p.item}: {p.reason}" for p in m.placeholders[:10]]
        if len(m.placeholders) > 10:
            lines.append(f"    ... and {len(m.placeholders) - 10} more (use --json for the full list)")
    if m.failures:
        lines.append(f"  {len(m.failures)} items could not be read (listed above on stderr)")
    lines.append(f"Open: file://{os.path.abspath(m.index)}")
    return _joined(lines)


__all__ = ["format_report", "report"]
