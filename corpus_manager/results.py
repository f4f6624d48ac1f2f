"""What a run reports: failures with their item and reason, and a progress sink the CLI can draw."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, Generic, Protocol, TypeVar

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


def per_second(count: int, elapsed: float) -> float:
    """A run's rate: ``count`` over ``elapsed`` seconds (0 for a run that took no measurable time)."""
    return count / elapsed if elapsed > 0 else 0.0


class HasStatus(Protocol):
    """A set's outcome in a run's report (upload, transform)."""

    status: str


SetT = TypeVar("SetT", bound=HasStatus)


class SetRunReport(Generic[SetT]):
    """What the reports of runs over sets (upload, transform) share: the sets by status, and the run is
    ok (exit 0) when nothing failed and it was not interrupted (else exit 1)."""

    sets: list[SetT]
    failures: list[Failure]
    interrupted: bool

    def sets_with(self, status: str) -> list[SetT]:
        return [s for s in self.sets if s.status == status]

    def count(self, status: str) -> int:
        return sum(1 for s in self.sets if s.status == status)

    @property
    def sets_skipped(self) -> int:
        return self.count("skipped")

    @property
    def sets_failed(self) -> int:
        return self.count("failed")

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


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
