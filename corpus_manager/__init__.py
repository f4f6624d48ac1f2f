"""corpus-manager: a corpus of ML training images in Azure Blob Storage, indexed in Azure Table Storage."""

from .corpus import Corpus
from .crawler import Crawler, DirGroup, LocalFile
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
from .results import Failure
from .throttle import Outcome, ThrottleWork
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
    "Failure",
    "ImageSet",
    "ImageTransform",
    "ImmutableSetError",
    "InvalidName",
    "LocalFile",
    "NotFound",
    "Outcome",
    "SetIdentity",
    "StorageError",
    "StorageUnavailable",
    "ThrottleWork",
    "TransformSpecError",
    "UploadReport",
    "__version__",
]
