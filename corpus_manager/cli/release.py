"""Releases: `corpus release create | list | show | diff | verify` (SPEC "Releases")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..progress import BarProgress, human_bytes
from .app import (
    _err,
    _finish,
    _joined,
    _open,
    _print_json,
    _run,
    _show,
    cli,
    connection_options,
    output_options,
    query_options,
)

# Imported when used: other commands (a download) never load them (start-up time).
if TYPE_CHECKING:
    from ..release import Release, ReleaseReport
    from ..release.inspect import ReleaseDiff, VerifyReleaseReport


@cli.group()
def release() -> None:
    """Named, immutable training sets: which images, labels and splits a training run used."""


@release.command("create")
@click.argument("name")
@query_options
@click.option(
    "--split",
    "split",
    default=None,
    metavar="NAME=PCT,...",
    help="Integer percentages summing to 100, e.g. train=80,val=10,test=10. Default: every image in 'all'.",
)
@click.option(
    "--split-by",
    "split_by",
    type=click.Choice(["set", "image"]),
    default="set",
    show_default=True,
    help="Keep each set's images in one split (set), or place each image on its own (image).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Changes which split each set lands in.")
@click.option(
    "--label",
    default="leaf",
    show_default=True,
    metavar="leaf|T1,T2,...",
    help="leaf: a set's last tag; T1,T2,...: the one of these tags a set carries "
    "(sets with none or several are left out).",
)
@output_options
@connection_options
def release_create(
    name: str,
    filters: dict[str, Any],
    split: str | None,
    split_by: str,
    seed: int,
    label: str,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Create release NAME from the complete sets the filters select (`corpus query`'s)."""

    async def go() -> ReleaseReport:
        async with _open(connection_string, account_url, corpus) as c:
            with BarProgress("listing sets", show_bytes=False) as bar:
                return await c.create_release(
                    name, split=split, split_by=split_by, seed=seed, label=label, progress=bar, **filters
                )

    _finish(_run(go), as_json, format_create)


def format_create(r: ReleaseReport) -> str:
    if r.written:
        head = f"Created release {r.release.name}"
    else:
        head = f"Release {r.release.name} exists with this definition: nothing written"
    return format_release(r.release, head=head, left_out=r.left_out)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def format_release(
    rel: Release, *, head: str | None = None, left_out: dict[str, int] | None = None, detail: bool = False
) -> str:
    """The human view of a release; ``detail`` adds the sets, transforms and source sets (needs records)."""
    from ..release import ReleaseDefinition

    try:
        described = ReleaseDefinition.from_json(rel.definition).describe()
    except Exception:  # a definition this version cannot read: show it raw rather than fail
        described = str(rel.definition)
    lines = [
        head or f"Release {rel.name}",
        f"  created     {rel.created}",
        f"  definition  {described}",
        f"  images      {rel.images} ({human_bytes(rel.bytes)}) in {rel.sets} sets",
        f"  splits      {_counts(rel.splits)}",
        f"  labels      {_counts(rel.labels)}",
    ]
    for i, (reason, n) in enumerate((left_out or {}).items()):
        lines.append(f"  {'left out' if i == 0 else '':<10}  {n} {'set' if n == 1 else 'sets'} ({reason})")
    lines.append(f"  manifest    {rel.manifest_blob} (sha256 {rel.manifest_sha256})")
    if detail:
        sets = rel.set_labels()
        lines.append(f"  sets        {len(sets)}:")
        lines += [f"    {s}" for s in sets]
        transforms = rel.transforms()
        if transforms:
            lines.append(f"  transforms  {', '.join(transforms)}")
            sources = rel.source_sets()
            lines.append(f"  sources     {len(sources)} sets the transform outputs were made from:")
            lines += [f"    {s}" for s in sources]
    return _joined(lines)


@release.command("show")
@click.argument("name")
@output_options
@connection_options
def release_show(name: str, as_json: bool, connection_string: str | None, account_url: str | None, corpus: str) -> None:
    """Show release NAME: definition, counts, manifest, and the sets and transforms it uses."""

    async def go() -> Release:
        async with _open(connection_string, account_url, corpus) as c:
            return await c.release(name)

    _show(_run(go), as_json, lambda rel: format_release(rel, left_out=rel.left_out, detail=True))


@release.command("list")
@click.option(
    "--containing",
    default=None,
    metavar="PATH[@VERSION]",
    help="Only the releases that use this set (directly or through a transform output made from it).",
)
@output_options
@connection_options
def release_list(
    containing: str | None, as_json: bool, connection_string: str | None, account_url: str | None, corpus: str
) -> None:
    """List the releases: name, images, splits, created."""

    async def go() -> list[Release]:
        async with _open(connection_string, account_url, corpus) as c:
            return await c.releases(containing=containing)

    releases = _run(go)
    if as_json:
        _print_json([r.to_json() for r in releases])
        return
    if releases:
        click.echo(format_release_list(releases))
    _err(f"{len(releases)} releases" + (f" using {containing}" if containing else ""))


def format_release_list(releases: list[Release]) -> str:
    head = ("NAME", "IMAGES", "BYTES", "CREATED", "SPLITS")
    body = [(r.name, str(r.images), human_bytes(r.bytes), r.created, _counts(r.splits)) for r in releases]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *body]:
        cells = [row[i].rjust(widths[i]) if i in (1, 2) else row[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return _joined(lines)


@release.command("diff")
@click.argument("a")
@click.argument("b")
@output_options
@connection_options
def release_diff(
    a: str, b: str, as_json: bool, connection_string: str | None, account_url: str | None, corpus: str
) -> None:
    """Images only in release A, only in B, and those whose MD5 differs, with counts per label and split."""

    async def go() -> ReleaseDiff:
        async with _open(connection_string, account_url, corpus) as c:
            return await c.diff_releases(a, b)

    _show(_run(go), as_json, format_diff)


def format_diff(d: ReleaseDiff, limit: int = 20) -> str:
    lines = [f"Releases {d.a} and {d.b}: {d.same} images the same"]
    counts = d.counts()
    for key, title, records in (
        ("only_a", f"only in {d.a}", d.only_a),
        ("only_b", f"only in {d.b}", d.only_b),
        ("changed", "MD5 changed", d.changed),
    ):
        c = counts[key]
        extra = f" (labels: {_counts(c['labels'])}; splits: {_counts(c['splits'])})" if records else ""
        lines.append(f"  {title}: {len(records)} images{extra}")
        lines += [f"    {r['blob_name']}" for r in records[:limit]]
        if len(records) > limit:
            lines.append(f"    ... and {len(records) - limit} more (--json lists all)")
    return _joined(lines)


@release.command("verify")
@click.argument("name")
@click.option(
    "--deep", is_flag=True, help="Re-read every byte and recompute its MD5 (not only the stored Content-MD5)."
)
@click.option(
    "--max-parallel-downloads",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Blobs read at once with --deep.",
)
@output_options
@connection_options
def release_verify(
    name: str,
    deep: bool,
    max_parallel_downloads: int,
    as_json: bool,
    connection_string: str | None,
    account_url: str | None,
    corpus: str,
) -> None:
    """Check that every image of release NAME is stored with its size and MD5 (exit 1 naming each that is not)."""

    async def go() -> VerifyReleaseReport:
        async with _open(connection_string, account_url, corpus, max_parallel_downloads) as c:
            with BarProgress("verify", enabled=None if deep else False) as bar:
                return await c.verify_release(
                    name, deep=deep, max_parallel_downloads=max_parallel_downloads, progress=bar
                )

    report = _run(go)
    _finish(report, as_json, format_verify, report.failures)


def format_verify(r: VerifyReleaseReport) -> str:
    how = "every byte re-read" if r.deep else "sizes and stored Content-MD5s from listings"
    if r.failures:
        head = (
            f"Release {r.release}: {len(r.failures)} of {r.images} images do not match ({how}; listed above on stderr)"
        )
    else:
        head = f"Release {r.release}: all {r.images} images match ({how})"
    lines = [head]
    if r.deep:
        lines.append(f"  read        {human_bytes(r.bytes_read)} in {r.elapsed:.1f} s")
    return _joined(lines)
