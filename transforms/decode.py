"""Decoding and encoding through Wand, the only module that touches ImageMagick's readers and writers.

Imported lazily (by `transforms.worker`) after `transforms.policy.apply_policy()` has run.
Not thread-safe, like Wand: one image at a time per process.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from wand.api import library
from wand.cdefs.magick_image import MagickProgressMonitor
from wand.color import Color
from wand.exceptions import ResourceLimitError
from wand.image import Image

from transforms import capi
from transforms.errors import ImageError
from transforms.imagetypes import CODERS, HEAD, header_size, sniff, unsupported_reason, zero_tiff_padding
from transforms.policy import Limits

# The per-image deadline (time.monotonic()) the progress monitor enforces; see transforms.policy for
# why ImageMagick's own time limit cannot be used. Module state is fine: one image at a time.
_deadline = math.inf
_timed_out = False


def _on_progress(_text: bytes, _offset: int, _span: int, _client: int) -> bool:
    global _timed_out
    if time.monotonic() > _deadline:
        _timed_out = True
        return False  # ImageMagick stops the running operation
    return True


# Kept referenced for the life of the process: C holds a pointer to it.
_MONITOR = MagickProgressMonitor(_on_progress)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Abort ImageMagick work (on images opened by `open_image`) after `seconds`."""
    global _deadline, _timed_out
    _deadline, _timed_out = time.monotonic() + seconds, False
    try:
        yield
    finally:
        _deadline = math.inf


def check_time(limits: Limits) -> None:
    # ImageMagick returns a partial result (or none) after an abort, not always an error: ask the flag.
    if _timed_out:
        raise ImageError(f"processing took longer than the time limit ({limits.seconds:g} s)")


def clean_message(error: BaseException) -> str:
    """ImageMagick's message without the internal buffer name and source location."""
    text = str(error)
    text = re.sub(r" @ (error|warning|fatal)/\S+", "", text)
    text = re.sub(r" `[^']*'", "", text)
    return " ".join(text.split()) or type(error).__name__


def _check_size(width: int, height: int, limits: Limits) -> None:
    if width > limits.width or height > limits.height or width * height > limits.area:
        raise ImageError(
            f"image is {width}x{height}, which exceeds the limits "
            f"(at most {limits.width}x{limits.height} and {limits.area} pixels)"
        )


def _read(image: Image, data: bytes, kind: str, *, ping: bool, size_hint: tuple[int, int] | None = None) -> None:
    # The coder is forced from the sniffed kind; the "file name" is a constant of ours, never the blob
    # name, and "[0]" makes multi-frame readers (GIF, TIFF) stop after the first frame.
    if size_hint is not None and kind == "jpeg":
        # shrink-on-load: libjpeg decodes at 1/2, 1/4 or 1/8 scale, no smaller than the hint
        library.MagickSetOption(image.wand, b"jpeg:size", f"{size_hint[0]}x{size_hint[1]}".encode())
    library.MagickSetFormat(image.wand, CODERS[kind].encode())
    library.MagickSetFilename(image.wand, f"image.{kind}[0]".encode())
    reader = library.MagickPingImageBlob if ping else library.MagickReadImageBlob
    if reader(image.wand, data, len(data)):
        # Forget the forced reader format and name again: they would otherwise pick the encoder and
        # silently override a `format` op.
        library.MagickSetFormat(image.wand, b"")
        library.MagickSetFilename(image.wand, b"")
        library.MagickSetImageFilename(image.wand, b"")
        return
    error = image.get_exception()
    if isinstance(error, ResourceLimitError):
        raise ImageError(f"image exceeds the limits: {clean_message(error)}")
    if error is None or isinstance(error, Warning):
        # ImageMagick 6 fails some images (e.g. PNGs beyond the width limit) without saying why.
        raise ImageError(f"could not decode the {kind.upper()} image (corrupt, or beyond the resource limits)")
    raise ImageError(f"could not decode the {kind.upper()} image: {clean_message(error)}")


def open_image(data: bytes, limits: Limits, *, size_hint: tuple[int, int] | None = None) -> tuple[Image, str]:
    """Decode `data` (first frame only) within `limits`; returns the image and its kind. `size_hint`: the
    smallest size the caller needs, so a JPEG may be decoded at a fraction of its size (thumbnails).

    Raises ImageError for anything but a decodable JPEG/PNG/GIF/BMP/TIFF/WebP within the limits.
    Run inside `time_limit()`.
    """
    kind = sniff(data)
    if kind is None:
        raise ImageError(unsupported_reason(data[:HEAD], len(data)))
    size = header_size(data, kind)
    if size is None:
        # Header not understood by us: let ImageMagick read just the header before any pixel.
        with Image() as probe:
            _read(probe, data, kind, ping=True)
            size = probe.size
    width, height = size
    _check_size(width, height, limits)

    image = Image()
    try:
        capi.set_progress_monitor(image.wand, _MONITOR)  # watches the decode too: see transforms.capi
        _read(image, data, kind, ping=False, size_hint=size_hint)
        check_time(limits)
        if image.width == 0 or image.height == 0:  # JPEG garbage can "decode" with only warnings
            raise ImageError(f"could not decode the {kind.upper()} image: it holds no pixels")
        if len(image.sequence) > 1:
            del image.sequence[1:]
        _check_size(image.width, image.height, limits)  # frames can be larger than the header says
    except BaseException:
        image.destroy()
        raise
    return image, kind


def encode_image(image: Image, kind: str, quality: int | None) -> bytes:
    """Encode deterministically: the same pixels and settings give the same bytes on every run."""
    if kind == "jpeg" and image.alpha_channel:
        # JPEG has no alpha: composite on white rather than let hidden colours show through.
        image.background_color = Color("white")
        image.alpha_channel = "remove"
    image.format = CODERS[kind]
    if quality is not None:
        image.compression_quality = quality
    if kind == "png":
        # PNG would otherwise carry the encoding time (tIME and date:* text chunks).
        image.options["png:exclude-chunk"] = "date,time"
    blob = image.make_blob()
    if kind == "tiff":
        blob = zero_tiff_padding(blob)
    if sniff(blob) != kind:  # cheap guard: a wrong content type would poison the corpus
        raise RuntimeError(f"ImageMagick wrote {sniff(blob)} instead of {kind}")
    return blob
