"""Releases: named, immutable training sets (SPEC "Releases").

``definition``: the canonical definition, split assignment and labels; ``manifest``: the stored row and
manifest blob, and the public readers ``load_release`` / ``read_manifest``; ``create``: ``release
create``; ``inspect``: ``list``, ``diff`` and ``verify``.
"""

from .create import ReleaseReport, create_release
from .definition import ReleaseDefinition, check_release_name, parse_split
from .manifest import Release, list_release_rows, load_release, manifest_blob_name, read_manifest

__all__ = [
    "Release",
    "ReleaseDefinition",
    "ReleaseReport",
    "check_release_name",
    "create_release",
    "list_release_rows",
    "load_release",
    "manifest_blob_name",
    "parse_split",
    "read_manifest",
]
