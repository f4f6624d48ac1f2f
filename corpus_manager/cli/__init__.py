"""The ``corpus`` command: each command parses options, calls one library function, renders the result.

Results go to stdout (a human summary, or ``--json``); progress, warnings and errors to stderr.
Library exceptions are mapped to a one-line message and an exit code in one place, ``app._run``.
One module per family of commands; each registers itself on the group in ``app``.
"""

from . import export, query, release, report, transform, upload  # noqa: F401  (registers the commands)
from .app import cli
from .query import format_status
from .upload import format_upload

__all__ = ["cli", "format_status", "format_upload", "main"]


def main() -> None:
    cli(prog_name="corpus")
