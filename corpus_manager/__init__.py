"""corpus-manager: a corpus of ML training images in Azure Blob Storage, indexed in Azure Table Storage.

What a notebook or a script needs: ``Corpus`` (async) or ``SyncCorpus`` (plain calls), the models, the
reports, the query filter and result, ``Failure`` and the exceptions. Everything else is internal and
imported from its own module (``corpus_manager.throttle``, ``corpus_manager.crawler``, ...).
"""

from typing import TYPE_CHECKING, Any

from .corpus import Corpus
from .download import DownloadReport
from .errors import (
    AuthenticationFailed,
    ConfigError,
    Conflict,
    CorpusError,
    CorruptRow,
    ImmutableSetError,
    InvalidName,
    NotFound,
    StorageError,
    StorageUnavailable,
    TransformSpecError,
)
from .models import ImageSet, ImageTransform, SetIdentity
from .query import QueryFilter, QueryResult
from .results import Failure, ProgressSink
from .sync import SyncCorpus

if TYPE_CHECKING:
    from .export import ExportReport
    from .status import StatusReport
    from .stream import iter_release, iter_shards, shard_urls
    from .transform import TransformReport
    from .upload import UploadReport

__version__ = "0.1.0"

# Imported on first use (PEP 562): a download or a query never loads upload, transform and status, nor
# the transforms package they import (start-up time every run, and most of a no-op rerun, pays).
_LAZY = {
    "StatusReport": "status",
    "TransformReport": "transform",
    "UploadReport": "upload",
    "ExportReport": "export",
    "iter_release": "stream",
    "iter_shards": "stream",
    "shard_urls": "stream",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "Conflict",
    "Corpus",
    "CorpusError",
    "CorruptRow",
    "DownloadReport",
    "ExportReport",
    "Failure",
    "ImageSet",
    "ImageTransform",
    "ImmutableSetError",
    "InvalidName",
    "NotFound",
    "ProgressSink",
    "QueryFilter",
    "QueryResult",
    "SetIdentity",
    "StatusReport",
    "StorageError",
    "StorageUnavailable",
    "SyncCorpus",
    "TransformReport",
    "TransformSpecError",
    "UploadReport",
    "__version__",
    "iter_release",
    "iter_shards",
    "shard_urls",
]
