"""corpus-manager: a corpus of ML training images in Azure Blob Storage, indexed in Azure Table Storage."""

from .corpus import Corpus
from .crawler import Crawler, DirGroup, LocalFile
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
from .results import Failure
from .status import StatusReport
from .throttle import Outcome, ThrottleWork
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
    "Crawler",
    "DirGroup",
    "DownloadReport",
    "Failure",
    "ImageSet",
    "ImageTransform",
    "ImmutableSetError",
    "InvalidName",
    "LocalFile",
    "NotFound",
    "Outcome",
    "QueryFilter",
    "QueryResult",
    "SetIdentity",
    "StatusReport",
    "StorageError",
    "StorageUnavailable",
    "ThrottleWork",
    "TransformReport",
    "TransformSpecError",
    "UploadReport",
    "__version__",
]
