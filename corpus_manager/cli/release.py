"""Releases: `corpus release create | list | show | diff | verify` (SPEC "Releases")."""

from __future__ import annotations

import sys

import click

from ..progress import BarProgress, human_bytes
from ..release import Release, ReleaseDefinition, ReleaseReport
from .app import (
    _filters,
    _joined,
    _open,
    _print_json,
    _run,
    cli,
    connection_options,
    output_options,
    query_options,
)


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
    tags: tuple[str, ...],
    any_tag: bool,
    version: str | None,
    transform: str | None,
    originals: bool,
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
    filters = _filters(tags, any_tag, version, transform, originals)

    async def go() -> ReleaseReport:
        async with _open(connection_string, account_url, corpus) as c:
            with BarProgress("listing sets", show_bytes=False) as bar:
                return await c.create_release(
                    name, split=split, split_by=split_by, seed=seed, label=label, progress=bar, **filters
                )

    report = _run(go)
    if as_json:
        _print_json(report.to_json())
    else:
        click.echo(format_create(report))
    sys.exit(report.exit_code)


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

    rel = _run(go)
    if as_json:
        _print_json(rel.to_json())
    else:
        click.echo(format_release(rel, left_out=rel.left_out, detail=True))
