"""What a run reports: failures with their item and reason, and a progress sink the CLI can draw."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .config import redact
from .errors import CorpusError


@dataclass(frozen=True)
class Failure:
    """One item that could not be done: what (a file, a blob or a set), why, and of which kind."""

    item: str
    reason: str
    kind: str = "failed"  # failed | corrupt | refused | skipped

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def failure_reason(exc: BaseException) -> str:
    """The reason a Failure gives for an exception: the message of the tool's own errors (they name
    their item and cause), else the exception's class and message, with any secret redacted."""
    if isinstance(exc, CorpusError) or _is_image_error(exc):
        return str(exc)
    return redact(f"{exc.__class__.__name__}: {exc}")


def _is_image_error(exc: BaseException) -> bool:
    """An ImageError of ``transforms``, without importing it (a download never needs the package: ~0.05 s
    of start-up): an exception of a module not yet imported cannot be one of its classes."""
    errors = sys.modules.get("transforms.errors")
    return errors is not None and isinstance(exc, errors.ImageError)


class ProgressSink(Protocol):
    def grow(self, files: int = 0, nbytes: int = 0) -> None:
        """More work discovered (the crawl is streaming, so the total grows)."""

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        """Work done."""

    def note(self, message: str) -> None:
        """A warning worth showing now (it is also in the final report)."""


class NullProgress:
    def grow(self, files: int = 0, nbytes: int = 0) -> None:
        pass

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        pass

    def note(self, message: str) -> None:
        pass
