"""A release's definition: which sets (``corpus query``'s filters), how images are split and labelled.

The definition is canonical, so two spellings of one choice are one definition: tags case-folded,
stripped, deduplicated and sorted; ``--any`` dropped when it cannot matter (one tag or none); splits
sorted by name (the cumulative ranges follow that order, so ``val=10,train=90`` and ``train=90,val=10``
assign every image alike); label tags case-folded and sorted; every default written out (``--seed 0``
equals no ``--seed``). ``DefinitionDigest`` is the sha256 of its JSON.

Split assignment: sha256 of ``seed``, the set's key (its identity, ``SetIdentity.key``) and, with
``--split-by image``, the file name, read as a number in [0, 1) and placed on the cumulative
percentages. It depends on nothing else, so a set keeps its split in every later release with the same
split and seed, whatever sets were added since (Python's ``hash`` is salted per process: not used).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..models import NAME_RE, check_name
from ..query import QueryFilter, SetRow

SPLIT_BY = ("set", "image")
DEFAULT_SPLIT = (("all", 100),)
_SPLIT_NAME = NAME_RE


def check_release_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"release name {name!r} is not valid: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_split(value: str | None) -> tuple[tuple[str, int], ...]:
    """``train=80,val=10,test=10`` -> (("test", 10), ("train", 80), ("val", 10)): sorted by name."""
    if value is None or not value.strip():
        return DEFAULT_SPLIT
    shares: dict[str, int] = {}
    for part in value.split(","):
        name, sep, pct = part.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--split {value!r}: each part is NAME=PERCENT (got {part.strip()!r})")
        if not _SPLIT_NAME.match(name):
            raise ConfigError(f"--split {value!r}: split name {name!r} must be letters, digits, '.', '_' or '-'")
        try:
            share = int(pct.strip())
        except ValueError:
            raise ConfigError(f"--split {value!r}: {pct.strip()!r} is not a whole percentage") from None
        if share <= 0:
            raise ConfigError(f"--split {value!r}: the share of {name!r} must be above 0 (got {share})")
        if name in shares:
            raise ConfigError(f"--split {value!r}: split {name!r} is named twice")
        shares[name] = share
    if sum(shares.values()) != 100:
        raise ConfigError(f"--split {value!r}: the percentages sum to {sum(shares.values())}, not 100")
    return tuple(sorted(shares.items()))


def parse_label(value: str | None) -> tuple[str, ...]:
    """``leaf`` -> (); ``T1,T2`` -> the case-folded tags, sorted."""
    if value is None or value.strip().casefold() == "leaf":
        return ()
    tags = sorted({t.strip().casefold() for t in value.split(",") if t.strip()})
    if not tags:
        raise ConfigError(f"--label {value!r}: give 'leaf' or a comma-separated list of tags")
    return tuple(tags)


@dataclass(frozen=True)
class ReleaseDefinition:
    filters: QueryFilter
    split: tuple[tuple[str, int], ...] = DEFAULT_SPLIT
    split_by: str = "set"
    seed: int = 0
    label_tags: tuple[str, ...] = ()  # empty: the leaf tag

    @classmethod
    def make(
        cls,
        tags: tuple[str, ...] | list[str] = (),
        *,
        any_tag: bool = False,
        version: str | None = None,
        transform: str | None = None,
        originals: bool = False,
        split: str | None = None,
        split_by: str = "set",
        seed: int = 0,
        label: str | None = "leaf",
    ) -> ReleaseDefinition:
        folded = tuple(sorted({t.strip().casefold() for t in tags}))
        if any(not t for t in folded):
            raise ConfigError("--tag needs a non-empty value")
        filters = QueryFilter(folded, any_tag and len(folded) > 1, version, transform, originals)
        if split_by not in SPLIT_BY:
            raise ConfigError(f"--split-by {split_by!r}: use 'set' or 'image'")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"--seed {seed!r} is not an integer")
        return cls(filters, parse_split(split), split_by, seed, parse_label(label))

    def to_json(self) -> dict[str, Any]:
        f = self.filters
        return {
            "filters": {
                "tags": list(f.tags),
                "any": f.any_tag,
                "version": f.version,
                "transform": f.transform,
                "originals": f.originals,
            },
            "split": {name: share for name, share in self.split},
            "split_by": self.split_by,
            "seed": self.seed,
            "label": list(self.label_tags) if self.label_tags else "leaf",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseDefinition:
        f = data["filters"]
        label = data.get("label", "leaf")
        return cls.make(
            tuple(f.get("tags") or ()),
            any_tag=bool(f.get("any")),
            version=f.get("version"),
            transform=f.get("transform"),
            originals=bool(f.get("originals")),
            split=",".join(f"{k}={v}" for k, v in (data.get("split") or {"all": 100}).items()),
            split_by=data.get("split_by", "set"),
            seed=int(data.get("seed", 0)),
            label=label if isinstance(label, str) else ",".join(label),
        )

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    @property
    def split_names(self) -> list[str]:
        return [name for name, _ in self.split]

    def assign(self, set_key: str, file_name: str | None = None) -> str:
        """The split of a set (``--split-by set``) or of one of its files (``--split-by image``)."""
        if len(self.split) == 1:
            return self.split[0][0]
        text = f"{self.seed}\n{set_key}" + (f"\n{file_name}" if self.split_by == "image" else "")
        point = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")  # in [0, 2**64)
        cumulative = 0
        for name, share in self.split:
            cumulative += share
            # point / 2**64 < cumulative / 100, in integers
            if point * 100 < cumulative << 64:
                return name
        return self.split[-1][0]

    def label_of(self, row: SetRow) -> tuple[str | None, str]:
        """(label, "") or (None, why the set is left out)."""
        if not self.label_tags:
            if not row.tags:
                return None, "no tags (images directly in the root)"
            return row.tags[-1], ""
        found = sorted({t.casefold() for t in row.tags} & set(self.label_tags))
        if not found:
            return None, "none of the label tags"
        if len(found) > 1:
            return None, "several of the label tags"
        return found[0], ""

    def describe(self) -> str:
        """One line for humans: the filters, split and label."""
        f = self.filters
        parts = []
        if f.tags:
            parts.append(("any of tags " if f.any_tag else "tags ") + ", ".join(f.tags))
        if f.version:
            parts.append(f"version {f.version}")
        if f.transform:
            parts.append(f"transform {f.transform}")
        if f.originals:
            parts.append("originals")
        sets = "; ".join(parts) if parts else "all sets"
        split = ",".join(f"{n}={s}" for n, s in self.split)
        label = "leaf" if not self.label_tags else ",".join(self.label_tags)
        return f"{sets}; split {split} by {self.split_by}, seed {self.seed}; label {label}"


__all__ = ["ReleaseDefinition", "check_name", "check_release_name", "parse_label", "parse_split"]
