"""What kind of image a file is, from its bytes: the cheapest check that is reliable.

The header says the kind; the tail says the file is whole (a JPEG ends with its EOI marker, a PNG
with IEND, a GIF with its trailer; BMP and WebP declare their size). A full decode would cost a
hundred times more CPU than the upload itself and is left to transform jobs, which decode anyway.
"""

from __future__ import annotations

import struct

from .errors import ConfigError

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "webp": "image/webp",
}

_TAIL = 1024


class NotAnImage(ValueError):
    """The bytes are not a whole image of a supported kind; the message says why."""


def sniff(data: bytes) -> str:
    """Return the kind ('jpeg', 'png', ...) or raise NotAnImage with the reason."""
    if not data:
        raise NotAnImage("empty file (0 bytes)")
    tail = data[-_TAIL:]
    if data[:3] == b"\xff\xd8\xff":
        if b"\xff\xd9" not in tail:
            raise NotAnImage("truncated JPEG (no end-of-image marker)")
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-64:]:
            raise NotAnImage("truncated PNG (no IEND chunk)")
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if b";" not in data[-16:]:
            raise NotAnImage("truncated GIF (no trailer)")
        return "gif"
    if data[:2] == b"BM" and len(data) >= 26:
        declared = struct.unpack_from("<I", data, 2)[0]
        if declared and len(data) < declared:
            raise NotAnImage(f"truncated BMP ({len(data)} of {declared} bytes)")
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = struct.unpack_from("<I", data, 4)[0] + 8
        if len(data) < declared:
            raise NotAnImage(f"truncated WebP ({len(data)} of {declared} bytes)")
        return "webp"
    if len(data) < 12:
        raise NotAnImage(f"too short to be an image ({len(data)} bytes)")
    return _unsupported(data)


def _unsupported(data: bytes) -> str:
    head = data[:512].lstrip()
    if head[:1] == b"<":
        raise NotAnImage("not an image of a supported kind (looks like XML/SVG/HTML)")
    if head[:4] == b"%PDF" or head[:2] == b"%!":
        raise NotAnImage("not an image of a supported kind (PDF/PostScript)")
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        raise NotAnImage("not an image of a supported kind (unknown binary header)") from None
    raise NotAnImage("not an image of a supported kind (looks like text)")


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
            raise ConfigError(f"--ext {item!r} is not a file extension: list extensions separated by commas, "
                              f"e.g. {','.join(DEFAULT_EXTENSIONS[:3])} (no wildcards)")
        out.append(ext)
    if not out:
        raise ConfigError(f"--ext {exts if isinstance(exts, str) else ','.join(exts)!r} names no extension: list them "
                          f"separated by commas, e.g. {','.join(DEFAULT_EXTENSIONS[:3])}, or leave --ext out for "
                          "the default")
    return tuple(dict.fromkeys(out))
