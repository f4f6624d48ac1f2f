"""The operation registry: adding an operation is one small function and one `@operation` line.

    @operation("blur", Number("SIGMA", 0, 100, low_open=True), help="Gaussian blur")
    def blur(image, sigma, ctx):
        image.blur(radius=0, sigma=sigma)

The function gets the `wand.image.Image` (changed in place), the parsed argument (or None for an
operation without one) and an `OpContext`. Arguments are parsed and validated when the spec is
built, before any image is touched, and stored in the parser's canonical form.

This module never imports wand: specs are parsed in the CLI process, which must stay free of
ImageMagick until the policy is in place (see `transforms.policy`).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.args import MAX_ARG_LENGTH, ArgType
from transforms.errors import ImageError, SpecError

if TYPE_CHECKING:
    from wand.image import Image

OpFunction = Callable[["Image", Any, "OpContext"], None]


@dataclass
class OpContext:
    """What an operation may need besides the image: a seed for randomness, the output settings, and
    the limits that apply to what it creates."""

    spec_digest: str
    blob_name: str
    index: int = 0  # position of the running operation in the spec
    output_format: str | None = None
    quality: int | None = None
    max_width: int = 16384
    max_height: int = 16384
    max_area: int = 128_000_000

    def random_int(self, bound: int, salt: str = "") -> int:
        """A number in [0, bound) fixed by (spec digest, blob name, operation index, salt).

        sha256 rather than `random`/`hash()`: the same image and spec must give the same bytes on every
        run, machine and Python version.
        """
        if bound <= 1:
            return 0
        material = "\0".join((self.spec_digest, self.blob_name, str(self.index), salt)).encode()
        return int.from_bytes(hashlib.sha256(material).digest(), "big") % bound

    def check_size(self, width: int, height: int, what: str) -> None:
        """Refuse to create an image larger than the limits (ImageMagick may fail without a reason)."""
        if width > self.max_width or height > self.max_height or width * height > self.max_area:
            raise ImageError(
                f"{what} would make a {width}x{height} image, which exceeds the limits "
                f"(at most {self.max_width}x{self.max_height} and {self.max_area} pixels)"
            )


@dataclass(frozen=True)
class Operation:
    name: str
    function: OpFunction
    arg: ArgType | None
    help: str
    unique: bool = False  # may appear at most once in a spec (an output setting)

    @property
    def usage(self) -> str:
        return self.name if self.arg is None else f"{self.name}={self.arg.metavar}"

    def normalize(self, arg: str | None) -> str | None:
        """Validate `arg` and return its canonical text. Raises SpecError naming this operation."""
        if self.arg is None:
            if arg is not None:
                raise SpecError(f"{self.name}: takes no argument, but got {arg!r}; use it as '{self.name}'")
            return None
        if arg is None or arg == "":
            raise SpecError(
                f"{self.name}: requires an argument; expected {self.usage} where {self.arg.metavar} is "
                f"{self.arg.expected}"
            )
        if len(arg) > MAX_ARG_LENGTH:
            raise SpecError(f"{self.name}: argument is longer than {MAX_ARG_LENGTH} characters")
        try:
            return self.arg.format(self.arg.parse(arg))
        except ValueError as e:
            raise SpecError(f"{self.name}: {e}; expected {self.arg.metavar}: {self.arg.expected}") from None

    def parse_arg(self, canonical: str | None) -> Any:
        """The value an operation function receives."""
        return None if self.arg is None or canonical is None else self.arg.parse(canonical)


_REGISTRY: dict[str, Operation] = {}


def operation(
    name: str, arg: ArgType | None = None, *, help: str, unique: bool = False
) -> Callable[[OpFunction], OpFunction]:
    """Register `function` as the operation `name` taking an argument of type `arg` (None: no argument)."""

    def register(function: OpFunction) -> OpFunction:
        if name in _REGISTRY:
            raise RuntimeError(f"operation {name!r} is registered twice")
        _REGISTRY[name] = Operation(name, function, arg, help, unique)
        return function

    return register


def _load_builtins() -> None:
    # Imported here, not at module top, because ops.py imports this module to register itself.
    import transforms.ops  # noqa: F401


def get_operation(name: str) -> Operation:
    """The registered operation `name`; SpecError (with a suggestion) if there is none."""
    _load_builtins()
    op = _REGISTRY.get(name)
    if op is None:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpecError(f"unknown operation {name!r}{hint}; expected one of: {', '.join(sorted(_REGISTRY))}")
    return op


def operations() -> list[Operation]:
    """All registered operations, sorted by name (for help texts)."""
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
