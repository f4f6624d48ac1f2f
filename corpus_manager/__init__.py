"""corpus-manager: a corpus of ML training images in Azure Blob Storage, indexed in Azure Table Storage.

What a notebook or a script needs: ``Corpus`` (async) or ``SyncCorpus`` (plain calls), the models, the
reports, the query filter and result, ``Failure`` and the exceptions. Everything else is internal and
imported from its own module (``corpus_manager.throttle``, ``corpus_manager.crawler``, ...).
"""

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
from .status import StatusReport
from .sync import SyncCorpus
from .transform import TransformReport
from .upload import UploadReport

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "Conflict",
    "Corpus",
    "CorpusError",
    "CorruptRow",
    "DownloadReport",
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
]
