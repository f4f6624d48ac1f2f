"""The report's pages from its model: Jinja2 templates (``templates/``), autoescaping on, because set
paths, tags, file names and reasons are user data (a directory named ``<script>`` shows as text).

Everything a page needs is in the page or under the report folder: styles inline, charts as inline SVG
drawn here, no script at all, so it opens from disk with no network.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import UTC, datetime

import jinja2

from ..progress import human_bytes
from .model import Bar, ReportModel, page_file

_PAGE = re.compile(r"page-[0-9]+\.html")
CHART_WIDTH = 340  # px of the longest bar


def environment() -> jinja2.Environment:
    """The templates' environment. ``autoescape=True`` for every template whatever its name: a
    ``select_autoescape`` by extension would not cover ``.html.j2``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("corpus_manager.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["bar_width"] = bar_width
    env.globals["human_bytes"] = human_bytes
    env.globals["chart_width"] = CHART_WIDTH
    env.globals["seg_width"] = seg_width
    return env


def bar_width(bar: Bar, bars: list[Bar]) -> int:
    """The bar's length in px: against the largest bar, or against its total for coverage."""
    if bar.total:
        return round(CHART_WIDTH * bar.value / bar.total)
    top = max((b.value for b in bars), default=0)
    return round(CHART_WIDTH * bar.value / top) if top else 0


def seg_width(value: int, top: int) -> int:
    """A stacked segment's length in px, against the longest stack."""
    return round(CHART_WIDTH * value / top) if top else 0


def render(model: ReportModel, *, now: datetime | None = None) -> list[str]:
    """Write the pages (``index.html``, then ``page-2.html``...) into ``model.out``; returns their names."""
    env = environment()
    template = env.get_template("page.html.j2")
    created = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    pages = [page_file(p) for p in range(1, model.page_count + 1)]
    for number, name in enumerate(pages, start=1):
        groups = model.page_groups(number)
        html = template.render(model=model, groups=groups, page=number, pages=pages, created=created)
        _write(os.path.join(model.out, name), html)
    # a page a former, larger report left in the same folder would link to sets no longer shown
    for stale in os.listdir(model.out):
        if _PAGE.fullmatch(stale) and stale not in pages:
            os.unlink(os.path.join(model.out, stale))
    model.pages = pages
    return pages


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.part"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # a reader never sees half a page
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
