"""Finding sets again: `corpus query`, `download`, `status`."""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import TYPE_CHECKING, Any

import click

from ..download import DownloadReport, neutralise_cell
from ..progress import BarProgress, human_bytes
from ..query import QueryResult
from .app import (
    _err,
    _finish,
    _finish_run,
    _joined,
    _open,
    _print_failures,
    _print_json,
    _printable,
    _run,
    cli,
    connection_options,
    output_options,
    query_options,
)

if TYPE_CHECKING:
    from ..status import StatusReport


@cli.command()
@query_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default=None,
    help="Output format. Default: table on a terminal, JSON otherwise.",
)
@click.option("--release", default=None, metavar="NAME", help="The sets release NAME uses (instead of the filters).")
@output_options
@connection_options
def query(
    filters: dict[str, Any],
    fmt: str | None,
    release: str | None,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """List the complete sets with the given tags (all of them; any with --any), version and transform."""
    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} exclude each other")
    fmt = "json" if as_json else fmt or ("table" if sys.stdout.isatty() else "json")

    async def go() -> QueryResult:
        async with _open(connection_string, account_url, corpus) as c:
            return await c.query(release=release, **filters)

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
@click.option("--release", default=None, metavar="NAME", help="The images of release NAME (instead of the filters).")
@click.option("--split", default=None, metavar="S", help="With --release: only the images of split S.")
@click.option(
    "--layout",
    type=click.Choice(["blob", "imagefolder"]),
    default="blob",
    show_default=True,
    help="With --release: by blob name, or as DIR/{split}/{label}/{file} (torchvision's ImageFolder).",
)
@output_options
@connection_options
def download(
    filters: dict[str, Any],
    out: str,
    manifest: str | None,
    max_parallel_downloads: int,
    release: str | None,
    split: str | None,
    layout: str,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Download the images of the matching complete sets into --out, with an optional manifest."""
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
                    release=release,
                    split=split,
                    layout=layout,
                    **filters,
                )

    _finish_run(go, partial, as_json, format_download, lambda r: r.warnings)


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
    _finish(report, as_json, lambda r: format_status(r, top), report.problems)


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
    if r.releases:
        lines.append(f"  releases    {len(r.releases)}:")
        width = max(len(x["name"]) for x in r.releases)
        lines += [f"    {x['name'].ljust(width)}  {x['images']} images, created {x['created']}" for x in r.releases]
    if r.tags:
        shown = r.tags[:top]
        more = f" (top {len(shown)} of {len(r.tags)}; --json lists all)" if len(r.tags) > len(shown) else ""
        lines.append(f"  tags        sets per tag{more}:")
        width = max((len(t) for t, _ in shown), default=0)
        lines += [f"    {t.ljust(width)}  {n}" for t, n in shown]
    return _joined(lines)
