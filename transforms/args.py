"""Argument types for operations: each parses a user's string into a value and writes the value back in
one canonical form, so that equal recipes have equal canonical JSON (and digest) however they were typed.

A parser raises `ValueError` with what is wrong; the registry turns it into a `SpecError` that also
names the operation and what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from transforms.imagetypes import KINDS, normalize_format

# Bounds for sizes and offsets in arguments. Images are limited far below this by the policy; the
# bound only keeps nonsense (and huge integers) out of specs.
MAX_DIMENSION = 65535
MAX_ARG_LENGTH = 64

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def format_number(x: float) -> str:
    """Canonical text of a number: `90.0` -> `90`, `-0.0` -> `0`, `1.50` -> `1.5`."""
    if x == int(x):
        return str(int(x))
    return repr(float(x))


def parse_decimal(text: str) -> float:
    # A strict grammar instead of float(): float() also takes 'nan', 'inf', '1e400' and '1_0'.
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


class ArgType(Protocol):
    # read-only: frozen dataclasses and properties both satisfy it
    @property
    def metavar(self) -> str: ...

    @property
    def expected(self) -> str: ...

    def parse(self, text: str) -> Any: ...

    def format(self, value: Any) -> str: ...


@dataclass(frozen=True)
class Number:
    """A decimal number (or integer) in a range."""

    metavar: str
    low: float
    high: float
    integer: bool = False
    low_open: bool = False  # True: the low bound itself is not allowed

    @property
    def expected(self) -> str:
        kind = "an integer" if self.integer else "a number"
        op = ">" if self.low_open else ">="
        return f"{kind} {op} {format_number(self.low)} and <= {format_number(self.high)}"

    def parse(self, text: str) -> float | int:
        value = parse_decimal(text)
        if self.integer and value != int(value):
            raise ValueError(f"{text!r} is not an integer")
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            raise ValueError(f"{text!r} is out of range")
        return int(value) if self.integer else value + 0.0  # + 0.0 turns -0.0 into 0.0

    def format(self, value: float) -> str:
        return format_number(value)


@dataclass(frozen=True)
class Numbers:
    """Up to len(parts) comma-separated numbers; missing trailing ones take their defaults."""

    metavar: str
    parts: tuple[Number, ...]
    defaults: tuple[float, ...]
    required: int = 1
    separators: str = ","

    @property
    def expected(self) -> str:
        names = ",".join(p.metavar for p in self.parts)
        ranges = "; ".join(f"{p.metavar} {p.expected}" for p in self.parts)
        return f"{names} ({ranges}; omitted trailing values default to {self.format(self.defaults)})"

    def parse(self, text: str) -> tuple[float, ...]:
        pieces = re.split("[" + re.escape(self.separators) + "]", text)
        if not self.required <= len(pieces) <= len(self.parts):
            raise ValueError(f"{text!r} has {len(pieces)} value(s)")
        values = [part.parse(piece) for part, piece in zip(self.parts, pieces, strict=False)]
        values += self.defaults[len(values) :]
        return tuple(values)

    def format(self, value: tuple[float, ...]) -> str:
        return ",".join(format_number(v) for v in value)


@dataclass(frozen=True)
class Geometry:
    """An ImageMagick resize geometry: a box (`width`/`height`, either may be None) with a `flag`, or a
    `percent` scale."""

    width: int | None = None
    height: int | None = None
    flag: str = ""  # '' fit inside, '!' exact, '^' fill, '>' only shrink, '<' only enlarge
    percent: float | None = None

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{format_number(self.percent)}%"
        w = "" if self.width is None else str(self.width)
        h = "" if self.height is None else f"x{self.height}"
        return f"{w}{h}{self.flag}"

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size ImageMagick's `-resize` gives a `width` x `height` image (ParseMetaGeometry)."""
        if self.percent is not None:
            return (
                max(1, math.floor(width * self.percent / 100.0 + 0.5)),
                max(1, math.floor(height * self.percent / 100.0 + 0.5)),
            )
        if self.flag == "!":
            return self.width or width, self.height or height
        if self.width is not None and self.height is not None:
            sx, sy = self.width / width, self.height / height
            scale = max(sx, sy) if self.flag == "^" else min(sx, sy)
        elif self.width is not None:
            scale = self.width / width
        else:
            assert self.height is not None
            scale = self.height / height
        new_w = max(1, math.floor(scale * width + 0.5))
        new_h = max(1, math.floor(scale * height + 0.5))
        if self.flag == ">" and width <= new_w and height <= new_h:
            return width, height  # only shrink: an image already inside the box is left alone
        if self.flag == "<" and width >= new_w and height >= new_h:
            return width, height  # only enlarge
        return new_w, new_h


_GEOMETRY = re.compile(r"(?P<w>\d+)?(?:x(?P<h>\d+))?(?P<flag>[!^<>])?")
_PERCENT = re.compile(r"(?P<p>\d+(?:\.\d*)?|\.\d+)%")


def _dimension(text: str, what: str, *, zero: bool = False) -> int:
    value = int(text)
    if value > MAX_DIMENSION or (value == 0 and not zero):
        raise ValueError(f"{what} {text} is out of range (1..{MAX_DIMENSION})")
    return value


@dataclass(frozen=True)
class ResizeGeometry:
    metavar: str = "GEOMETRY"
    expected: str = (
        "WxH (fit inside), WxH! (exact), WxH^ (fill), WxH> (only shrink), WxH< (only enlarge), "
        "W or xH (keep the aspect ratio), or P% (e.g. 256x256, 50%)"
    )

    def parse(self, text: str) -> Geometry:
        text = text.lower()
        if m := _PERCENT.fullmatch(text):
            percent = parse_decimal(m["p"])
            if not 0 < percent <= 1000:
                raise ValueError(f"{text!r}: the percentage must be > 0 and <= 1000")
            return Geometry(percent=percent + 0.0)
        m = _GEOMETRY.fullmatch(text)
        if not m or (m["w"] is None and m["h"] is None):
            raise ValueError(f"{text!r} is not a valid geometry")
        width = _dimension(m["w"], "width") if m["w"] is not None else None
        height = _dimension(m["h"], "height") if m["h"] is not None else None
        flag = m["flag"] or ""
        if flag in "!^" and flag and (width is None or height is None):
            raise ValueError(f"{text!r}: '{flag}' needs both a width and a height")
        return Geometry(width=width, height=height, flag=flag)

    def format(self, value: Geometry) -> str:
        return str(value)


@dataclass(frozen=True)
class CropBox:
    width: int
    height: int
    x: int | None = None  # None: centred
    y: int | None = None

    def __str__(self) -> str:
        offset = "" if self.x is None else f"+{self.x}+{self.y}"
        return f"{self.width}x{self.height}{offset}"


_CROP = re.compile(r"(?P<w>\d+)x(?P<h>\d+)(?:\+(?P<x>\d+)\+(?P<y>\d+))?")


@dataclass(frozen=True)
class CropGeometry:
    metavar: str = "WxH[+X+Y]"
    expected: str = "WxH+X+Y (a region at offset X,Y) or WxH (a centred region), e.g. 224x224+16+16"
    offsets: bool = True

    def parse(self, text: str) -> CropBox:
        m = _CROP.fullmatch(text.lower())
        if not m or (m["x"] is not None and not self.offsets):
            raise ValueError(f"{text!r} is not a valid size")
        box = CropBox(_dimension(m["w"], "width"), _dimension(m["h"], "height"))
        if m["x"] is not None:
            box = CropBox(box.width, box.height, _dimension(m["x"], "x", zero=True), _dimension(m["y"], "y", zero=True))
        return box

    def format(self, value: CropBox) -> str:
        return str(value)


def size_arg() -> CropGeometry:
    """A plain `WxH` size (no offset)."""
    return CropGeometry(metavar="WxH", expected="WxH, e.g. 224x224", offsets=False)


@dataclass(frozen=True)
class ImageFormat:
    metavar: str = "FMT"
    expected: str = "one of " + ", ".join((*KINDS[:1], "jpg", *KINDS[1:]))

    def parse(self, text: str) -> str:
        kind = normalize_format(text)
        if kind is None or text.strip().startswith("."):
            raise ValueError(f"{text!r} is not an allowed output format")
        return kind

    def format(self, value: str) -> str:
        return value
