"""``corpus report``: a static site of the corpus (charts and contact sheets) that opens from disk.

``build_model`` selects the sets and makes (or fetches from the container's cache) their thumbnails;
``render`` writes the pages. ``Corpus.report`` runs both.
"""

from .model import PAGE_SETS, Bar, Cell, Group, ReleaseTable, ReportModel, SetSummary, build_model
from .render import environment, render
from .thumbs import ThumbCache, cache_prefix

__all__ = [
    "PAGE_SETS",
    "Bar",
    "Cell",
    "Group",
    "ReleaseTable",
    "ReportModel",
    "SetSummary",
    "ThumbCache",
    "build_model",
    "cache_prefix",
    "environment",
    "render",
]
