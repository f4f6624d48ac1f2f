"""``Corpus``: the library's front door. One Storage (one set of clients) per ``async with``."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from .config import connection_from_settings, corpus_from_settings
from .download import DownloadReport, download_sets
from .errors import ConfigError, CorpusError
from .models import ImageTransform
from .query import QueryFilter, QueryResult, open_for_reading, query_sets
from .results import Failure, ProgressSink
from .shards import DEFAULT_SHARD_SIZE
from .storage import Storage

# Imported by the methods that use them: a download or a query never loads upload, transform, status,
# release or report (nor the transforms package or jinja2 they import), which is start-up time every run
# pays (a no-op rerun is mostly start-up; tests/test_fastread.py checks the list).
if TYPE_CHECKING:
    from .export import ExportReport
    from .release import Release, ReleaseReport
    from .release.inspect import ReleaseDiff, VerifyReleaseReport
    from .report import ReportModel
    from .status import StatusReport
    from .transform import TransformReport
    from .upload import UploadReport


class Corpus:
    """A corpus: one container and its three tables.

    >>> async with Corpus("images") as corpus:          # doctest: +SKIP
    ...     report = await corpus.upload("photos/", version="v1")
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        pool_size: int = 64,
    ) -> None:
        self.name = corpus_from_settings(name)
        self.connection = connection_from_settings(connection_string, account_url)
        self.storage = Storage(self.connection, self.name, pool_size=pool_size)

    @property
    def pool_size(self) -> int:
        """HTTP connections the corpus may hold open at once. May be changed at any time: a change after
        the corpus is opened applies to the requests that start after it."""
        return self.storage.pool_size

    @pool_size.setter
    def pool_size(self, value: int) -> None:
        self.storage.pool_size = value

    async def __aenter__(self) -> Corpus:
        await self.storage.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.storage.close()

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, {self.connection!r})"

    async def upload(
        self,
        root: str,
        version: str,
        *,
        extensions: Any = None,
        max_parallel_uploads: int = 20,
        max_parallel_upserts: int = 5,
        dry_run: bool = False,
        progress: ProgressSink | None = None,
        report: UploadReport | None = None,
    ) -> UploadReport:
        """Crawl ``root`` and upload each directory of images as an ImageSet of ``version``."""
        from .upload import UploadReport, upload_tree

        self.storage.pool_size = max(self.storage.pool_size, max_parallel_uploads)
        report = report if report is not None else UploadReport(root=root, version=version)
        before = self.storage.stats.retries
        try:
            return await upload_tree(
                self.storage,
                root,
                version,
                extensions=extensions,
                max_parallel_uploads=max_parallel_uploads,
                max_parallel_upserts=max_parallel_upserts,
                dry_run=dry_run,
                progress=progress,
                report=report,
            )
        finally:
            report.retries = self.storage.stats.retries - before  # an interrupted run's report says it too

    async def query(
        self,
        tags: tuple[str, ...] | list[str] | str = (),
        *,
        any_tag: bool = False,
        version: str | None = None,
        transform: str | None = None,
        originals: bool = False,
        release: str | None = None,
    ) -> QueryResult:
        """The complete sets with all ``tags`` (any of them with ``any_tag``; case-insensitive), of
        ``version``, made by ``transform`` (``NAME`` or ``NAME@TV``) or ``originals`` only; sorted by
        (path, version, transform). No tags: every complete set. ``release``: the sets release NAME uses
        (with its images of each), instead of the filters."""
        filters = _selection(tags, any_tag, version, transform, originals, release)
        await open_for_reading(self.storage)
        if release is not None:
            from .release import load_release
            from .release.inspect import release_sets

            return release_sets(await load_release(self.storage, release))
        return await query_sets(self.storage, filters)

    async def download(
        self,
        out: str,
        tags: tuple[str, ...] | list[str] | str = (),
        *,
        any_tag: bool = False,
        version: str | None = None,
        transform: str | None = None,
        originals: bool = False,
        manifest: str | None = None,
        max_parallel_downloads: int = 20,
        progress: ProgressSink | None = None,
        report: DownloadReport | None = None,
        release: str | None = None,
        split: str | None = None,
        layout: str = "blob",
    ) -> DownloadReport:
        """Download the images of the sets ``query`` would return into ``out`` (by blob name), and
        write ``manifest`` (``.jsonl`` or ``.csv``) if given. ``release``: the images of release NAME
        instead (only its ``split``, if given), laid out by blob name or, with ``layout="imagefolder"``,
        as ``{split}/{label}/{file}``."""
        filters = _selection(tags, any_tag, version, transform, originals, release)
        if release is None and (split is not None or layout != "blob"):
            raise ConfigError("--split and --layout need --release")
        self.storage.pool_size = max(self.storage.pool_size, max_parallel_downloads)
        before = self.storage.stats.retries
        await open_for_reading(self.storage)
        result = report
        try:
            if release is not None:
                from .release.fetch import download_release

                result = await download_release(
                    self.storage,
                    release,
                    out,
                    split=split,
                    layout=layout,
                    manifest=manifest,
                    max_parallel_downloads=max_parallel_downloads,
                    progress=progress,
                    report=report,
                )
                return result
            result = await download_sets(
                self.storage,
                out,
                filters,
                manifest=manifest,
                max_parallel_downloads=max_parallel_downloads,
                progress=progress,
                report=report,
            )
            return result
        finally:
            if result is not None:  # an interrupted run's report says it too
                result.retries = self.storage.stats.retries - before

    async def status(
        self,
        *,
        repair: bool = False,
        verify: bool = False,
        max_parallel_upserts: int = 5,
        progress: ProgressSink | None = None,
    ) -> StatusReport:
        """Sets by status, totals, per-transform progress and tag counts; ``repair`` indexes complete
        sets that have no tag rows; ``verify`` lists every complete set and sets back to pending those
        whose blobs storage lost (one listing per set: see ``corpus_manager.verify``)."""
        from .release import list_release_rows
        from .status import corpus_status

        await open_for_reading(self.storage)
        report = await corpus_status(
            self.storage, repair=repair, verify=verify, max_parallel_upserts=max_parallel_upserts, progress=progress
        )
        try:
            releases = await list_release_rows(self.storage)
        except CorpusError as exc:  # a corrupt release row: named, the rest of the status stands
            report.problems.append(Failure(f"{self.storage.releases.table_name}", str(exc), "corrupt"))
        else:
            report.releases = [{"name": r.name, "images": r.images, "created": r.created} for r in releases]
        return report

    async def transform(
        self,
        name: str,
        version: str,
        *,
        ops: list[str] | tuple[str, ...] | None = None,
        spec_file: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        source_version: str | None = None,
        source: str | None = None,
        workers: int | None = None,
        dry_run: bool = False,
        progress: ProgressSink | None = None,
        report: TransformReport | None = None,
        pool: Executor | None = None,
        scheduler: str | None = None,
    ) -> TransformReport:
        """Register transform ``name@version`` (``ops`` like ``["resize=256x256", "charcoal=2"]`` or a
        ``spec_file``) and apply it to every complete source set (originals, or the outputs of
        ``source`` = ``NAME2@TV2``) with all ``tags`` and ``source_version`` that has no complete output.
        ``pool``: a process pool from ``transforms.create_pool`` to reuse across calls (else one per call).
        ``scheduler``: a Dask scheduler address (``tcp://HOST:PORT``) to run the job on its workers instead
        (needs the ``distributed`` extra; the workers read their own storage credentials)."""
        from .transform import TransformReport, parse_spec, run_transform

        spec = parse_spec(ops, spec_file)  # validated before anything is read or written
        report = report if report is not None else TransformReport(name, version)
        before = self.storage.stats.retries
        try:
            return await run_transform(
                self.storage,
                name,
                version,
                spec,
                tags=tags,
                source_version=source_version,
                source=source,
                workers=workers,
                dry_run=dry_run,
                progress=progress,
                report=report,
                pool=pool,
                scheduler=scheduler,
            )
        finally:
            report.retries = self.storage.stats.retries - before

    async def report(
        self,
        out: str,
        tags: tuple[str, ...] | list[str] | str = (),
        *,
        any_tag: bool = False,
        version: str | None = None,
        transform: str | None = None,
        originals: bool = False,
        release: str | None = None,
        per_set: int = 12,
        page_sets: int = 200,
        workers: int | None = None,
        pool: Executor | None = None,
        progress: ProgressSink | None = None,
    ) -> ReportModel:
        """Write a static report of the sets ``query`` would return into the folder ``out``
        (``out/index.html``, its pages and thumbnails): totals, charts, and per set a contact sheet of up
        to ``per_set`` images with their transform outputs beside them. Thumbnails are made in ``pool``
        (or a pool of ``workers`` processes) and cached in the container under ``thumbs/``, so a later
        report makes only the missing ones. Returns the model: what was shown, thumbnails made and
        cached, the images shown as placeholders (undecodable) with the reason. ``page_sets``: source sets
        (each with its outputs) per page. ``release``: the sets release NAME uses (instead of the
        filters), and its images per split and label."""
        from .release import load_release
        from .release.inspect import release_sets
        from .report import ReleaseTable
        from .report.run import check_out, run_report

        filters = _selection(tags, any_tag, version, transform, originals, release)
        check_out(out)  # a usage error before storage is reached
        await open_for_reading(self.storage)
        rows, table = None, None
        if release is not None:
            rel = await load_release(self.storage, release)
            rows = release_sets(rel).sets
            table = ReleaseTable.of(rel.name, rel.records, rel.parsed_definition.split_names)
        return await run_report(
            self.storage,
            out,
            filters,
            per_set=per_set,
            page_sets=page_sets,
            rows=rows,
            release=table,
            workers=workers,
            pool=pool,
            progress=progress,
        )

    async def transforms(self) -> list[ImageTransform]:
        """The registered transforms, sorted by (name, version)."""
        from .transform import list_transforms

        await open_for_reading(self.storage)
        return await list_transforms(self.storage)

    # ----- releases (corpus_manager.release) --------------------------------------------------
    async def create_release(
        self,
        name: str,
        tags: tuple[str, ...] | list[str] | str = (),
        *,
        any_tag: bool = False,
        version: str | None = None,
        transform: str | None = None,
        originals: bool = False,
        split: str | None = None,
        split_by: str = "set",
        seed: int = 0,
        label: str = "leaf",
        progress: ProgressSink | None = None,
    ) -> ReleaseReport:
        """Create release ``name``: the complete sets ``query`` would select, their images pinned by
        blob name and MD5, labelled (``label``: ``"leaf"`` or ``"T1,T2"``) and split (``split`` like
        ``"train=80,val=10,test=10"``, by ``split_by`` ``"set"`` or ``"image"``, placed by ``seed``).
        The same name and definition again returns the existing release and writes nothing."""
        from .release import ReleaseDefinition, create_release

        definition = ReleaseDefinition.make(
            _tag_tuple(tags),
            any_tag=any_tag,
            version=version,
            transform=transform,
            originals=originals,
            split=split,
            split_by=split_by,
            seed=seed,
            label=label,
        )
        return await create_release(self.storage, name, definition, progress=progress)

    async def release(self, name: str) -> Release:
        """Release ``name``: its row's fields and its manifest records (iterate it, or ``.records``)."""
        from .release import load_release

        await open_for_reading(self.storage)
        return await load_release(self.storage, name)

    async def releases(self, *, containing: str | None = None) -> list[Release]:
        """Every release (rows only, no records), by name; ``containing`` (``PATH[@VERSION]``): only those
        that use that set, directly or through a transform output made from it."""
        from .release.inspect import list_releases

        await open_for_reading(self.storage)
        return await list_releases(self.storage, containing)

    async def diff_releases(self, a: str, b: str) -> ReleaseDiff:
        """Images only in release ``a``, only in ``b``, and those whose MD5 differs."""
        from .release.inspect import diff_releases

        await open_for_reading(self.storage)
        return await diff_releases(self.storage, a, b)

    async def verify_release(
        self,
        name: str,
        *,
        deep: bool = False,
        max_parallel_downloads: int = 20,
        progress: ProgressSink | None = None,
    ) -> VerifyReleaseReport:
        """Check every image of release ``name`` against storage: exists, size, stored Content-MD5
        (one listing per set); ``deep`` re-reads every byte and recomputes its MD5."""
        from .release.inspect import verify_release

        self.storage.pool_size = max(self.storage.pool_size, max_parallel_downloads)
        await open_for_reading(self.storage)
        return await verify_release(
            self.storage, name, deep=deep, max_parallel_downloads=max_parallel_downloads, progress=progress
        )

    async def export(
        self,
        release: str,
        *,
        fmt: str = "webdataset",
        split: str | None = None,
        shard_size: int | str = DEFAULT_SHARD_SIZE,
        out: str | None = None,
        max_parallel_downloads: int = 20,
        progress: ProgressSink | None = None,
        report: ExportReport | None = None,
    ) -> ExportReport:
        """Export ``release`` (only ``split``, if given) as deterministic WebDataset tar shards of at most
        ``shard_size`` (``"256MB"``, ``"1GiB"`` or bytes): into the container under
        ``exports/RELEASE/webdataset/`` with an ``index.json``, or into directory ``out``. A rerun writes
        no shard that is already there with its SHA-256 (``report.writes`` counts what was written)."""
        from .export import export_release

        self.storage.pool_size = max(self.storage.pool_size, max_parallel_downloads)
        await open_for_reading(self.storage)
        return await export_release(
            self.storage,
            release,
            fmt=fmt,
            split=split,
            shard_size=shard_size,
            out=out,
            max_parallel_downloads=max_parallel_downloads,
            progress=progress,
            report=report,
        )


def _release_alone(filters: QueryFilter) -> None:
    if filters != QueryFilter():
        raise ConfigError(
            "--release and the query filters (--tag, --any, --version, --transform, --originals) exclude each other"
        )


def _tag_tuple(tags: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    return (tags,) if isinstance(tags, str) else tuple(tags)  # query("robin") means one tag, not five


def _selection(
    tags: tuple[str, ...] | list[str] | str,
    any_tag: bool,
    version: str | None,
    transform: str | None,
    originals: bool,
    release: str | None,
) -> QueryFilter:
    """The sets a call selects by the query filters; they exclude ``release`` (it selects them instead)."""
    filters = QueryFilter(_tag_tuple(tags), any_tag, version, transform, originals)
    if release is not None:
        _release_alone(filters)
    return filters


__all__ = ["Corpus"]
