"""WebDataset shards, the pure part: the sample order, the shard plan and a deterministic tar writer.

Everything here is a function of the release's manifest records, its seed and the shard size, so the
same release gives byte-identical shards on every run and every machine: the order is a sort by a
SHA-256 of (seed, blob name), never Python's ``hash`` or ``random``; every tar header is written here
field by field (mtime 0, uid/gid 0, empty user and group names, mode 0644, ustar), not by ``tarfile``,
whose defaults could change between Python versions.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

DEFAULT_SHARD_SIZE = "256MB"
FORMATS = ("webdataset",)
BLOCK = 512
END = 2 * BLOCK  # the two zero blocks that end a tar archive
USTAR_MAX_SIZE = 8**11 - 1  # the largest size an 11-digit octal field holds (8 GiB - 1)
_EXT = re.compile(r"^[a-z0-9]{1,16}$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``256MB`` -> 256,000,000; ``256MiB`` (or ``256M``) -> 268,435,456; a bare number is bytes."""
    if isinstance(text, int):
        size = text
    else:
        found = _SIZE.match(text)
        if not found:
            raise ValueError(f"shard size {text!r}: expected a number with an optional unit (256MB, 1GiB)")
        unit = (found.group(2) or "b").lower()
        power = " kmgt".index(unit[0]) if unit != "b" else 0
        # KB, MB, GB are decimal as on a disk's label; KiB, MiB and a bare K/M/G are binary as in rclone
        base = 1000 if unit.endswith("b") and "i" not in unit and unit != "b" else 1024
        size = int(found.group(1)) * base**power
    if size < 1:
        raise ValueError(f"shard size {text!r}: must be positive")
    return size


def record_json(record: dict[str, Any]) -> bytes:
    """A manifest record as the ``{key}.json`` member: canonical JSON, so its bytes never vary."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def sample_ext(blob_name: str) -> str:
    """The image member's extension: the blob's own, lower-cased (WebDataset decoders go by it)."""
    ext = posixpath.splitext(posixpath.basename(blob_name))[1][1:].lower()
    return ext if _EXT.match(ext) else "bin"


def sample_key(index: int, blob_name: str) -> str:
    """Unique (the sample's position), dot-free (WebDataset splits a member name at its first dot), and
    traceable: 12 hex digits of the blob name's SHA-256 follow the position."""
    return f"{index:08d}_{hashlib.sha256(blob_name.encode()).hexdigest()[:12]}"


def order_key(seed: int | str, blob_name: str, epoch: int | None = None) -> str:
    salt = f"{seed}" if epoch is None else f"{seed}\x00{epoch}"
    return hashlib.sha256(f"{salt}\x00{blob_name}".encode()).hexdigest()


def shuffled(records: Sequence[dict[str, Any]], seed: int | str, epoch: int | None = None) -> list[dict[str, Any]]:
    """The records in a seeded order: a sort by SHA-256 of (seed[, epoch], blob name), the manifest
    position breaking ties, so the permutation is the same on every machine and Python version."""
    keyed = sorted(range(len(records)), key=lambda i: (order_key(seed, records[i]["blob_name"], epoch), i))
    return [records[i] for i in keyed]


def member_size(size: int) -> int:
    """Bytes a member of ``size`` takes in the tar: its header(s) and its data padded to 512."""
    padded = -(-size // BLOCK) * BLOCK
    return BLOCK + padded + (2 * BLOCK if size > USTAR_MAX_SIZE else 0)  # + a pax header and its record


@dataclass(frozen=True)
class Sample:
    key: str
    ext: str
    record: dict[str, Any]
    meta: bytes  # record_json(record)

    @property
    def blob_name(self) -> str:
        return str(self.record["blob_name"])

    @property
    def size(self) -> int:
        return int(self.record["bytes"])

    @property
    def tar_bytes(self) -> int:
        return member_size(self.size) + member_size(len(self.meta))


@dataclass
class ShardPlan:
    name: str
    split: str
    samples: list[Sample] = field(default_factory=list)
    size: int = END  # the shard's bytes: its samples' and the end-of-archive blocks (kept by add())

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        self.size += sample.tar_bytes


def plan_shards(records: Iterable[dict[str, Any]], seed: int | str, shard_size: int) -> list[ShardPlan]:
    """Split by ``split``, shuffle each split by ``seed``, and fill shards ``{split}-{NNNNNN}.tar`` in
    that order up to ``shard_size`` bytes each (a sample bigger than that alone in its own shard)."""
    by_split: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_split.setdefault(str(record["split"]), []).append(record)
    plans: list[ShardPlan] = []
    for split in sorted(by_split):
        current: ShardPlan | None = None
        for n, record in enumerate(shuffled(by_split[split], seed)):
            blob = str(record["blob_name"])
            sample = Sample(sample_key(n, blob), sample_ext(blob), record, record_json(record))
            if current is None or (current.samples and current.size + sample.tar_bytes > shard_size):
                current = ShardPlan(shard_name(split, sum(p.split == split for p in plans)), split)
                plans.append(current)
            current.add(sample)
    return plans


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


# ----- the tar writer --------------------------------------------------------------------------
def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def tar_header(name: str, size: int, typeflag: bytes = b"0") -> bytes:
    """One ustar header: mode 0644, uid/gid 0, mtime 0, no user or group names."""
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    fields = [
        raw.ljust(100, b"\0"),
        _octal(0o644, 8),
        _octal(0, 8),  # uid
        _octal(0, 8),  # gid
        _octal(size if size <= USTAR_MAX_SIZE else 0, 12),  # a bigger size: in the pax header
        _octal(0, 12),  # mtime
        b" " * 8,  # the checksum, counted as spaces
        typeflag,
        b"\0" * 100,  # linkname
        b"ustar\x0000",
        b"\0" * 32,  # uname
        b"\0" * 32,  # gname
        _octal(0, 8),  # devmajor
        _octal(0, 8),  # devminor
        b"\0" * 155,  # prefix
    ]
    header = b"".join(fields).ljust(BLOCK, b"\0")
    checksum = f"{sum(header):06o}".encode() + b"\0 "
    return header[:148] + checksum + header[156:]


def _pax_size(name: str, size: int) -> bytes:
    """A pax extended header giving ``size``: only for a member of 8 GiB or more (ustar cannot say it)."""
    body = f" size={size}\n"
    length = len(body) + 1
    while len(f"{length}{body}") != length:
        length += 1
    record = f"{length}{body}".encode()
    return tar_header(f"PaxHeader/{name}"[:100], len(record), b"x") + record.ljust(BLOCK, b"\0")


def member_header(name: str, size: int) -> bytes:
    return (_pax_size(name, size) if size > USTAR_MAX_SIZE else b"") + tar_header(name, size)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class HashingWriter:
    """Writes to a binary file while hashing: SHA-256 (index.json), MD5 (the blob's Content-MD5) and the
    MD5 of each ``block_size`` piece (each Put Block's Content-MD5)."""

    def __init__(self, out: IO[bytes], block_size: int) -> None:
        self.out = out
        self.block_size = block_size
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()
        self.block_md5s: list[bytes] = []
        self._block = hashlib.md5()
        self._in_block = 0
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.out.write(view)
        self.sha256.update(view)
        self.md5.update(view)
        self.size += len(view)
        while len(view):
            take = min(len(view), self.block_size - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == self.block_size:
                self.block_md5s.append(self._block.digest())
                self._block, self._in_block = hashlib.md5(), 0

    def finish(self) -> None:
        if self._in_block or not self.block_md5s:
            self.block_md5s.append(self._block.digest())
            self._block, self._in_block = hashlib.md5(), 0

    def add(self, name: str, data: bytes) -> None:
        self.write(member_header(name, len(data)))
        self.write(data)
        self.write(padding(len(data)))

    def add_sample(self, sample: Sample, data: bytes) -> None:
        """``{key}.{ext}`` (the image as stored) then ``{key}.json``: the order WebDataset groups by."""
        self.add(f"{sample.key}.{sample.ext}", data)
        self.add(f"{sample.key}.json", sample.meta)

    def end(self) -> None:
        self.write(b"\0" * END)
        self.finish()


def read_tar(chunks: Iterable[bytes]) -> Iterable[tuple[str, bytes]]:
    """The (name, data) members of a tar stream this module wrote (ustar, pax size headers), read from
    ``chunks`` as they come: a shard is never held whole."""
    buf = bytearray()
    source = iter(chunks)

    def need(n: int) -> bool:
        while len(buf) < n:
            try:
                buf.extend(next(source))
            except StopIteration:
                return False
        return True

    def take(n: int) -> bytes:
        if not need(n):
            raise ValueError("tar stream ends inside a member")
        out = bytes(buf[:n])
        del buf[:n]
        return out

    pax_size: int | None = None
    while need(BLOCK):
        header = take(BLOCK)
        if header == b"\0" * BLOCK:
            return
        name = header[:100].rstrip(b"\0").decode()
        size = int(header[124:135].rstrip(b"\0 ") or b"0", 8)
        if pax_size is not None:
            size, pax_size = pax_size, None
        data = take(size)
        take(-size % BLOCK)
        if header[156:157] == b"x":
            pax_size = int(data.split(b"size=", 1)[1].split(b"\n", 1)[0])
            continue
        yield name, data


def sample_of(members: Iterable[tuple[str, bytes]]) -> Iterable[tuple[bytes, dict[str, Any]]]:
    """(data, record) pairs from a shard's members: each image member followed by its ``.json``."""
    data: bytes | None = None
    for name, body in members:
        if name.endswith(".json") and data is not None:
            yield data, json.loads(body)
            data = None
        else:
            data = body


__all__ = [
    "HashingWriter",
    "Sample",
    "ShardPlan",
    "parse_size",
    "plan_shards",
    "read_tar",
    "record_json",
    "sample_of",
    "shuffled",
]
