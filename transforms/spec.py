"""A transform spec: the ordered list of operations of a transform, validated before any work.

Ways to write one:

- on the command line, one `--op` per operation: `OP` or `OP=ARG` (`resize=256x256`, `flip`);
- a TOML file (`*.toml`) with a single key `ops`, a list whose items are `"OP=ARG"` strings or
  `{op = "OP", arg = "ARG"}` tables (arg omitted for operations without one). Both TOML spellings
  give the same list::

      ops = ["resize=256x256", { op = "charcoal", arg = "2" }, "flip"]

      # or
      [[ops]]
      op = "resize"
      arg = "256x256"

- a JSON file (`*.json`): the same list, bare or as `{"ops": [...]}`::

      ["resize=256x256", {"op": "charcoal", "arg": "2"}, {"op": "flip"}]

Files with another extension are read as JSON when they start with `[` or `{`, else as TOML.
Numeric args may be written as numbers (`arg = 2`). Unknown keys are errors, to catch typos.

The canonical JSON (stored in the ImageTransform row) is a list of `{"arg": ..., "op": ...}` objects,
args in their normalized form (null when the op takes none), sorted keys, no whitespace; its
sha256 is the spec digest. Equal recipes have equal digests; order matters.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any

from transforms.errors import SpecError
from transforms.registry import get_operation


@dataclass(frozen=True)
class Op:
    """One validated operation: its name and canonical argument (None when it takes none)."""

    name: str
    arg: str | None = None

    @classmethod
    def create(cls, name: str, arg: str | None = None) -> Op:
        """Validate and normalize; SpecError if the name or argument is bad."""
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"an operation needs a name, got {name!r}")
        operation = get_operation(name.strip().lower())
        if arg is not None:
            arg = arg.strip()
        return cls(operation.name, operation.normalize(arg))

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}={self.arg}"

    def to_json(self) -> dict[str, str | None]:
        return {"op": self.name, "arg": self.arg}


def parse_op(text: str) -> Op:
    """`"resize=256x256"` -> `Op("resize", "256x256")`; `"flip"` -> `Op("flip")`."""
    if not isinstance(text, str):
        raise SpecError(f"an operation must be written as OP or OP=ARG, got {text!r}")
    name, eq, arg = text.partition("=")
    return Op.create(name, arg if eq else None)


def _op_from_item(item: Any, where: str) -> Op:
    if isinstance(item, str):
        return parse_op(item)
    if isinstance(item, dict):
        unknown = set(item) - {"op", "arg"}
        if unknown or "op" not in item:
            raise SpecError(f"{where}: an operation object has the keys 'op' and optionally 'arg', got {sorted(item)}")
        arg = item.get("arg")
        if isinstance(arg, bool) or not isinstance(arg, str | int | float | type(None)):
            raise SpecError(f"{where}: operation {item['op']!r}: 'arg' must be a string, got {arg!r}")
        return Op.create(item["op"], None if arg is None else str(arg))
    raise SpecError(f"{where}: an operation is a string 'OP=ARG' or an object with 'op' and 'arg', got {item!r}")


@dataclass(frozen=True)
class Spec:
    """An ordered, validated, non-empty list of operations."""

    ops: tuple[Op, ...]

    def __post_init__(self) -> None:
        # Re-validate even Op objects built by hand, so a Spec is always canonical.
        object.__setattr__(self, "ops", tuple(Op.create(op.name, op.arg) for op in self.ops))
        if not self.ops:
            raise SpecError("a transform needs at least one operation (e.g. --op resize=256x256)")
        seen: set[str] = set()
        for op in self.ops:
            if get_operation(op.name).unique:
                if op.name in seen:
                    raise SpecError(f"{op.name}: given more than once; a spec may set it only once")
                seen.add(op.name)

    @classmethod
    def from_ops(cls, ops: Iterable[str | Op]) -> Spec:
        """From `--op` values (`"resize=256x256"`, `"flip"`) or Op objects."""
        return cls(tuple(op if isinstance(op, Op) else parse_op(op) for op in ops))

    @classmethod
    def from_command_line(cls, text: str) -> Spec:
        """The inverse of `command_line()`."""
        return cls.from_ops(text.split())

    @classmethod
    def from_data(cls, data: Any, where: str = "spec") -> Spec:
        """From parsed JSON/TOML: a list of operations, or a mapping with the single key 'ops'."""
        if isinstance(data, dict):
            if set(data) != {"ops"}:
                raise SpecError(f"{where}: expected a single key 'ops' (a list of operations), got {sorted(data)}")
            data = data["ops"]
        if not isinstance(data, list):
            raise SpecError(f"{where}: expected a list of operations, got {type(data).__name__}")
        return cls(tuple(_op_from_item(item, f"{where}: operation {i + 1}") for i, item in enumerate(data)))

    @classmethod
    def from_file(cls, path: str | PathLike[str]) -> Spec:
        """From a TOML or JSON spec file (see the module docstring)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"cannot read spec file {str(p)!r}: {e}") from None
        suffix = p.suffix.lower()
        as_json = suffix == ".json" or (suffix != ".toml" and text.lstrip()[:1] in ("[", "{"))
        try:
            data: Any = json.loads(text) if as_json else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            kind = "JSON" if as_json else "TOML"
            raise SpecError(f"spec file {str(p)!r} is not valid {kind}: {e}") from None
        return cls.from_data(data, where=f"spec file {str(p)!r}")

    @classmethod
    def from_canonical_json(cls, text: str) -> Spec:
        """From `canonical_json()` (e.g. read back from an ImageTransform row); validated again."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise SpecError(f"stored spec is not valid JSON: {e}") from None
        return cls.from_data(data, where="stored spec")

    def canonical_json(self) -> str:
        return json.dumps([op.to_json() for op in self.ops], sort_keys=True, separators=(",", ":"))

    @cached_property
    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def command_line(self) -> str:
        """The human form: `resize=256x256 charcoal=2`."""
        return " ".join(str(op) for op in self.ops)

    @property
    def output_format(self) -> str | None:
        """The kind the `format` op writes ('png', 'jpeg', ...), or None to keep each input's kind."""
        for op in self.ops:
            if op.name == "format":
                return op.arg
        return None

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __str__(self) -> str:
        return self.command_line()


def spec_from_args(ops: Sequence[str] | None = None, spec_file: str | PathLike[str] | None = None) -> Spec:
    """What a CLI with `--op ...` / `--spec FILE` (exactly one of them) needs."""
    if ops and spec_file is not None:
        raise SpecError("give either --op or --spec, not both")
    if spec_file is not None:
        return Spec.from_file(spec_file)
    return Spec.from_ops(ops or ())
