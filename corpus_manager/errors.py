"""Typed library exceptions. The CLI maps each to a one-line message and an exit code, once."""

from __future__ import annotations


class CorpusError(Exception):
    """Base of every error the library raises on purpose."""

    #: exit code the CLI uses; 2 = usage/configuration (nothing written), 1 = some work failed
    exit_code = 1


class ConfigError(CorpusError):
    """Bad settings: malformed connection string, bad corpus name, bad option value."""

    exit_code = 2


class InvalidName(ConfigError):
    """A version, transform name or path that cannot be used as a key or blob name."""


class StorageUnavailable(CorpusError):
    """The storage endpoint cannot be reached (or refuses our credentials)."""

    exit_code = 2


class AuthenticationFailed(StorageUnavailable):
    """The endpoint answered but rejected the credentials."""


class StorageError(CorpusError):
    """A storage operation failed after retries (the message never holds a secret)."""


class Conflict(StorageError):
    """A conditional write lost a race (ETag mismatch) or the entity already exists."""


class NotFound(StorageError):
    """A blob, row or table does not exist."""


class ImmutableSetError(CorpusError):
    """A complete set's local content differs: versions are immutable."""


class TransformSpecError(ConfigError):
    """A transform spec that cannot be used (unknown op, bad argument, changed spec for a version)."""


class CorruptRow(CorpusError):
    """A table row that cannot be read as what it should be."""
