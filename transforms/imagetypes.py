"""Image kinds the tool accepts, recognised from their magic bytes, never from a name.

The one sniffer of the project: transforms decode what `sniff` recognises, and upload refuses what
`check_whole` refuses (the same recognition, plus cheap checks that the file is whole), so a file
upload accepts is one a transform can decode. Pure Python and free of `wand`, so `corpus_manager`
can use it without loading ImageMagick.
"""

from __future__ import annotations

import posixpath
import struct

KINDS: tuple[str, ...] = ("jpeg", "png", "gif", "bmp", "tiff", "webp")

CONTENT_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "webp": "image/webp",
}

# The extension written when a `format` op changes an image's type.
EXTENSIONS: dict[str, str] = {
    "jpeg": ".jpg",
    "png": ".png",
    "gif": ".gif",
    "bmp": ".bmp",
    "tiff": ".tiff",
    "webp": ".webp",
}

# Extensions already naming a kind: such a name is kept when the format does not change.
KNOWN_EXTENSIONS: dict[str, frozenset[str]] = {
    "jpeg": frozenset({".jpg", ".jpeg", ".jpe", ".jfif"}),
    "png": frozenset({".png"}),
    "gif": frozenset({".gif"}),
    "bmp": frozenset({".bmp", ".dib"}),
    "tiff": frozenset({".tif", ".tiff"}),
    "webp": frozenset({".webp"}),
}

# The ImageMagick coder used to decode/encode each kind; the only coders the policy allows.
CODERS: dict[str, str] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "webp": "WEBP",
}

# Coders ImageMagick picks by itself, from the magic bytes, for a variant of a kind it is asked to read
# (BigTIFF, which `sniff` calls "tiff"): the policy allows them for reading only.
READ_ONLY_CODERS: dict[str, tuple[str, ...]] = {"tiff": ("TIFF64",)}

_FORMAT_ALIASES: dict[str, str] = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff"}

# Sizes of the BMP DIB headers that exist (core, v2..v5, OS/2 2.x): "BM" alone is too weak a signature.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

HEAD = 512  # what `check_whole` reads of a file's start...
TAIL = 1024  # ...and of its end: a big file is checked from these two pieces, never read whole


class NotAnImage(ValueError):
    """The bytes are not a whole image of a supported kind; the message says why."""


def normalize_format(name: str) -> str | None:
    """`'JPG'` -> `'jpeg'`; None when `name` is not a kind this package writes."""
    key = name.strip().lower().lstrip(".")
    key = _FORMAT_ALIASES.get(key, key)
    return key if key in CONTENT_TYPES else None


def sniff(data: bytes) -> str | None:
    """The kind of image `data` holds, from its magic bytes ('jpeg', 'png', ...), or None."""
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES:
        return "bmp"
    return None


def check_whole(head: bytes, tail: bytes, size: int) -> str:
    """The kind of a file from its first HEAD bytes, its last TAIL bytes and its size, as `sniff` sees
    it, once cheap checks say the file is whole; else NotAnImage with the reason.

    The tail says the file is whole (a JPEG ends with its EOI marker, a PNG with IEND, a GIF with its
    trailer; BMP and WebP declare their size). A full decode would cost a hundred times more CPU than an
    upload and is left to transforms, which decode anyway. TIFF has no such cheap check.
    """
    kind = sniff(head)
    if kind is None:
        raise NotAnImage(unsupported_reason(head, size))
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        raise NotAnImage("truncated JPEG (no end-of-image marker)")
    if kind == "png" and b"IEND" not in tail[-64:]:
        raise NotAnImage("truncated PNG (no IEND chunk)")
    if kind == "gif" and b";" not in tail[-16:]:
        raise NotAnImage("truncated GIF (no trailer)")
    if kind == "bmp":
        declared = struct.unpack_from("<I", head, 2)[0]
        if declared and size < declared:  # a writer may leave the size 0
            raise NotAnImage(f"truncated BMP ({size} of {declared} bytes)")
    if kind == "webp":
        declared = struct.unpack_from("<I", head, 4)[0] + 8  # RIFF counts the bytes after its 8-byte header
        if size < declared:
            raise NotAnImage(f"truncated WebP ({size} of {declared} bytes)")
    return kind


def unsupported_reason(head: bytes, size: int) -> str:
    """Why content `sniff` does not recognise is refused, from its first bytes: what it looks like."""
    if not size:
        return "empty file (0 bytes)"
    start = bytes(head[:HEAD])
    if start.lstrip()[:1] == b"<":
        what = "XML/SVG/MSL or HTML"
    elif start.lstrip()[:4] == b"%PDF" or start.lstrip()[:2] == b"%!":
        what = "PDF/PostScript"
    elif _is_text(start):
        what = "text"
    else:
        what = "unrecognised binary data"
    return f"not a supported image ({what}); only {', '.join(k.upper() for k in KINDS)} are accepted"


def _is_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 3:  # not merely a character cut by the end of the sample
            return False
        text = sample[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def kind_from_name(file_name: str) -> str | None:
    """The kind a file name's extension claims (no content is looked at), or None."""
    ext = posixpath.splitext(posixpath.basename(file_name))[1].lower()
    for kind, exts in KNOWN_EXTENSIONS.items():
        if ext in exts:
            return kind
    return None


def header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """Width and height read from the file header without decoding, or None if not found.

    Needed because ImageMagick 6 fails some over-limit images (PNG) without saying why; reading the
    size first lets us reject a decompression bomb with a clear message before any pixel is decoded.
    Best effort: None means "unknown", and ImageMagick's own limits still apply.
    """
    try:
        reader = _HEADER_READERS.get(kind)
        return reader(memoryview(data)) if reader else None
    except (struct.error, IndexError, ValueError):
        return None


def _png_size(d: memoryview) -> tuple[int, int] | None:
    if bytes(d[12:16]) != b"IHDR":
        return None
    w, h = struct.unpack_from(">II", d, 16)
    return w, h


def _gif_size(d: memoryview) -> tuple[int, int] | None:
    # The logical screen; frames larger than it are still caught by ImageMagick's own limits.
    w, h = struct.unpack_from("<HH", d, 6)
    return w, h


def _bmp_size(d: memoryview) -> tuple[int, int] | None:
    header = struct.unpack_from("<I", d, 14)[0]
    if header == 12:
        w, h = struct.unpack_from("<HH", d, 18)
        return w, h
    w, h = struct.unpack_from("<ii", d, 18)
    return abs(w), abs(h)  # a negative height means top-down rows, not a negative size


def _jpeg_size(d: memoryview) -> tuple[int, int] | None:
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i = 2
    n = len(d)
    while i + 4 <= n:
        if d[i] != 0xFF:
            return None
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = struct.unpack_from(">H", d, i + 2)[0]
        if marker in sof:
            h, w = struct.unpack_from(">HH", d, i + 5)
            return w, h
        if marker == 0xDA:  # start of scan without a frame header: give up
            return None
        i += 2 + length
    return None


def _webp_size(d: memoryview) -> tuple[int, int] | None:
    chunk = bytes(d[12:16])
    if chunk == b"VP8X":
        w = int.from_bytes(d[24:27], "little") + 1
        h = int.from_bytes(d[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L" and d[20] == 0x2F:
        bits = int.from_bytes(d[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and bytes(d[23:26]) == b"\x9d\x01\x2a":
        w, h = struct.unpack_from("<HH", d, 26)
        return w & 0x3FFF, h & 0x3FFF
    return None


def _tiff_size(d: memoryview) -> tuple[int, int] | None:
    order = "<" if bytes(d[:2]) == b"II" else ">"
    if struct.unpack_from(order + "H", d, 2)[0] != 42:  # BigTIFF: leave it to ImageMagick's limits
        return None
    ifd = struct.unpack_from(order + "I", d, 4)[0]
    count = struct.unpack_from(order + "H", d, ifd)[0]
    found: dict[int, int] = {}
    for k in range(count):
        tag, typ, _n = struct.unpack_from(order + "HHI", d, ifd + 2 + 12 * k)
        if tag in (256, 257):
            fmt = order + ("H" if typ == 3 else "I")
            found[tag] = struct.unpack_from(fmt, d, ifd + 2 + 12 * k + 8)[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


_HEADER_READERS = {
    "png": _png_size,
    "gif": _gif_size,
    "bmp": _bmp_size,
    "jpeg": _jpeg_size,
    "webp": _webp_size,
    "tiff": _tiff_size,
}


_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


def zero_tiff_padding(data: bytes) -> bytes:
    """`data` (a classic TIFF) with every byte that no structure uses set to zero.

    libtiff word-aligns the directory and tag data by seeking, and ImageMagick's in-memory blob leaves
    the skipped byte uninitialised, so the same image would encode to different bytes from run to run.
    Readers never look at those bytes. Anything unexpected returns `data` unchanged.
    """
    try:
        d = memoryview(data)
        order = "<" if bytes(d[:2]) == b"II" else ">"
        if struct.unpack_from(order + "H", d, 2)[0] != 42:
            return data
        used: list[tuple[int, int]] = [(0, 8)]
        ifd = struct.unpack_from(order + "I", d, 4)[0]
        seen: set[int] = set()
        while ifd and ifd not in seen:
            seen.add(ifd)
            count = struct.unpack_from(order + "H", d, ifd)[0]
            end = ifd + 2 + 12 * count + 4
            used.append((ifd, end))
            arrays: dict[int, list[int]] = {}
            for k in range(count):
                entry = ifd + 2 + 12 * k
                tag, typ, n = struct.unpack_from(order + "HHI", d, entry)
                size = _TIFF_TYPE_SIZES.get(typ, 1) * n
                if size > len(d):
                    return data
                where = entry + 8
                if size > 4:
                    where = struct.unpack_from(order + "I", d, where)[0]
                    used.append((where, where + size))
                if tag in (273, 279, 324, 325) and typ in (3, 4):  # strip/tile offsets and byte counts
                    arrays[tag] = list(struct.unpack_from(order + ("H" if typ == 3 else "I") * n, d, where))
            for offsets, counts in ((273, 279), (324, 325)):
                for start, length in zip(arrays.get(offsets, ()), arrays.get(counts, ()), strict=False):
                    used.append((start, start + length))
            ifd = struct.unpack_from(order + "I", d, end - 4)[0]
        if any(b > len(data) for _a, b in used):
            return data
        out = bytearray(len(data))
        for a, b in used:
            out[a:b] = d[a:b]
        return bytes(out)
    except (struct.error, IndexError, ValueError):
        return data
