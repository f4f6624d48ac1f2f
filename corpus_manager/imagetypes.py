"""Upload's side of image types: which file names the crawler offers (``--ext``), and the content check.

What kind of image a file is comes from ``transforms.imagetypes``, the one sniffer of the project
(pure Python: importing it loads no ImageMagick), so upload and transforms agree on every file: a
file upload accepts is one a transform can decode. Re-exported here under the names upload uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from transforms.imagetypes import CONTENT_TYPES, HEAD, TAIL, NotAnImage

# The names from ``transforms.imagetypes`` are imported on first use (PEP 562): importing ``transforms``
# runs its package, and the CLI imports this module for ``--ext``'s default on every run (a download too).
_FROM_TRANSFORMS = ("CONTENT_TYPES", "HEAD", "TAIL", "NotAnImage")


def __getattr__(name: str) -> Any:
    if name in _FROM_TRANSFORMS:
        from transforms import imagetypes

        value = getattr(imagetypes, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_EXTENSIONS",
    "HEAD",
    "TAIL",
    "NotAnImage",
    "normalize_extensions",
    "sniff",
    "sniff_parts",
]


def sniff(data: bytes) -> str:
    """Return the kind ('jpeg', 'png', ...) of a whole file's bytes, or raise NotAnImage with the reason."""
    from transforms.imagetypes import HEAD, TAIL, check_whole

    return check_whole(data[:HEAD], data[-TAIL:], len(data))


def sniff_parts(head: bytes, tail: bytes, size: int) -> str:
    """``sniff`` from a file's first HEAD bytes, its last TAIL bytes and its size (a big file, never read whole)."""
    from transforms.imagetypes import check_whole

    return check_whole(head, tail, size)


def normalize_extensions(exts: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """'.jpg,PNG' -> ('.jpg', '.png'); matching is case-insensitive. A list that names no extension
    (``""``, ``","``) or holds a pattern or a path (``*``, ``*.jpg``, ``a/b``) is refused: it would
    otherwise silently match nothing and call every image "not an image"."""
    if exts is None:
        return DEFAULT_EXTENSIONS
    items = exts.split(",") if isinstance(exts, str) else list(exts)
    out = []
    for item in items:
        item = item.strip().lower()
        if not item:
            continue
        ext = item if item.startswith(".") else "." + item
        if ext == "." or any(ch in ext[1:] for ch in "*?[]/\\.") or any(ch.isspace() for ch in ext):
            raise ConfigError(
                f"--ext {item!r} is not a file extension: list extensions separated by commas, "
                f"e.g. {','.join(DEFAULT_EXTENSIONS[:3])} (no wildcards)"
            )
        out.append(ext)
    if not out:
        raise ConfigError(
            f"--ext {exts if isinstance(exts, str) else ','.join(exts)!r} names no extension: list them "
            f"separated by commas, e.g. {','.join(DEFAULT_EXTENSIONS[:3])}, or leave --ext out for "
            "the default"
        )
    return tuple(dict.fromkeys(out))
