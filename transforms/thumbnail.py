"""The built-in thumbnail recipe `corpus report` runs in the worker pool: one image in, a small JPEG out.

    pool.submit(make_thumbnail, data).result()   # Thumbnail, or raises ImageError

Deterministic (same bytes in, same bytes out), at most `THUMB_SIDE` px on the longer side, JPEG. A JPEG
source is decoded at a fraction of its size (libjpeg's shrink-on-load, ImageMagick's `jpeg:size` hint):
a thumbnail needs a sixteenth of the pixels of a 1024 px photo. The recipe's digest names the cache
prefix, so a change here makes new thumbnails rather than mixing old and new ones.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

from transforms.errors import ImageError
from transforms.imagetypes import HEAD, header_size, sniff, unsupported_reason
from transforms.policy import current_limits, policy_status
from transforms.worker import init_worker

THUMB_SIDE = 256
THUMB_QUALITY = 80
# What the output depends on: changing any of it changes RECIPE_DIGEST, hence the cache prefix.
RECIPE = {"recipe": "thumbnail", "revision": 1, "max_side": THUMB_SIDE, "format": "jpeg", "quality": THUMB_QUALITY}
RECIPE_DIGEST = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Thumbnail:
    data: bytes  # JPEG
    width: int
    height: int
    source_width: int  # the source's size from its header (or its decoded size when the header says nothing)
    source_height: int


def fitted(width: int, height: int, side: int = THUMB_SIDE) -> tuple[int, int]:
    """The size of a `width` x `height` image scaled to fit `side` x `side` (never enlarged)."""
    scale = min(1.0, side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_thumbnail(data: bytes) -> Thumbnail:
    """The thumbnail of one image. Raises ImageError (with the reason) for anything undecodable."""
    if policy_status() is None:
        init_worker()  # never decode without the safety policy
    limits = current_limits()
    from wand.exceptions import WandException  # wand loads only once the policy is in place

    from transforms import decode

    kind = sniff(data)
    if kind is None:
        raise ImageError(unsupported_reason(data[:HEAD], len(data)))
    source = header_size(data, kind)
    with warnings.catch_warnings(), decode.time_limit(limits.seconds):
        warnings.simplefilter("ignore")  # ImageMagick's warnings on an image it did decode
        image, _kind = decode.open_image(data, limits, size_hint=(THUMB_SIDE, THUMB_SIDE))
        with image:
            try:
                if source is None:
                    source = image.width, image.height
                width, height = fitted(image.width, image.height)
                if (width, height) != (image.width, image.height):
                    image.thumbnail(width, height)  # resize plus strip of profiles and comments
                else:
                    image.strip()
                decode.check_time(limits)
                blob = decode.encode_image(image, "jpeg", THUMB_QUALITY)
            except (WandException, MemoryError) as e:
                decode.check_time(limits)
                raise ImageError(f"thumbnail: {decode.clean_message(e)}") from None
            decode.check_time(limits)
            width, height = image.width, image.height
    return Thumbnail(blob, width, height, source[0], source[1])


__all__ = ["RECIPE", "RECIPE_DIGEST", "THUMB_SIDE", "Thumbnail", "fitted", "make_thumbnail"]
