"""The two ways a transform can fail.

`SpecError` is the user's mistake in the recipe (exit 2, nothing written); `ImageError` is one image
that could not be processed (that image's set fails, the job goes on).
"""

from __future__ import annotations


class SpecError(ValueError):
    """A bad operation name or argument, or a malformed spec file: a usage error.

    The message names the operation, what is wrong, and what was expected.
    """


class ImageError(Exception):
    """One image could not be decoded, transformed or encoded, exceeded the resource limits, or is not
    an allowed format. The message is a single line meant to be shown to the user as the reason."""

    def __init__(self, message: str) -> None:
        # One line, always: the reason ends up in a table cell and in a one-line-per-failure summary.
        super().__init__(" ".join(str(message).split()))
