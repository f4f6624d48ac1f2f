"""Read a py-spy profile (``--format raw``: one collapsed stack and its sample count per line).

Three views of where the client CPU goes, because each answers a different question:
- **phase**: start-up imports vs the run itself (a CLI pays its imports on every invocation);
- **under which corpus_manager call**: the innermost frame of our own code on each stack (put_blob,
  the read/hash/sniff worker, listing, table writes), which is what a change to the package moves;
- **self time by library layer** (the leaf frame's package: azure.core, azure.storage.blob, aiohttp,
  asyncio, ...), and the top leaf frames with their lines, which say what inside a layer costs.
py-spy attributes time spent in C (MD5, socket calls) to the Python line that called it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*(?:\([^)]*\))?[^():]*):(?P<line>\d+)\)$")

# py-spy prints paths shortened to their last components; these prefixes name the layer.
_LAYERS = (
    ("<frozen", "import machinery"),
    ("corpus_manager/", "corpus_manager"),
    ("core/", "azure.core"),
    ("blob/", "azure.storage.blob"),
    ("tables/", "azure.data.tables"),
    ("identity/", "azure.identity"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "aiohttp (yarl URLs)"),
    ("multidict/", "aiohttp (multidict)"),
    ("asyncio/", "asyncio"),
    ("concurrent/", "thread pool"),
    ("threading.py", "thread pool"),
    ("click/", "click"),
    ("rich/", "rich"),
    ("xml/", "xml (listing parse)"),
    ("hashlib.py", "hashlib"),
)


def parse_frame(text: str) -> tuple[str, str, int]:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip(), "", 0
    return m.group("func"), m.group("file"), int(m.group("line"))


def layer_of(path: str) -> str:
    for prefix, name in _LAYERS:
        if path.startswith(prefix) or f"/{prefix}" in path:
            return name
    head = path.split("/", 1)[0] if "/" in path else path
    return head or "unknown"


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _share(counter: Counter[str], total: int, top: int) -> list[dict[str, Any]]:
    return [{"what": k, "share": round(v / total, 4), "samples": v} for k, v in counter.most_common(top)]


def analyze(path: Path, top: int = 15) -> dict[str, Any]:
    stacks = read_raw(path)
    total = sum(n for _, n in stacks)
    if not total:
        return {"samples": 0}
    phase: Counter[str] = Counter()
    under: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, n in stacks:
        parsed = [parse_frame(f) for f in frames]
        importing = any(func.startswith("_find_and_load") for func, _, _ in parsed)
        phase["start-up (imports)" if importing else "run"] += n
        func, file, line = parsed[-1]
        layers[layer_of(file)] += n
        leaves[f"{func} ({file}:{line})"] += n
        if importing:
            under["(imports at start-up)"] += n
            continue
        own = next(
            (
                f"{fn} ({fl})"
                for fn, fl, _ in reversed(parsed)
                if fl.startswith("corpus_manager/")
                and not fl.startswith("corpus_manager/cli/")
                and not fl.endswith("throttle.py")
            ),
            None,
        )
        under[own or f"(no corpus_manager frame: {layer_of(file)})"] += n
    return {
        "samples": total,
        "phase": _share(phase, total, top),
        "under_corpus_manager_call": _share(under, total, top),
        "self_by_layer": _share(layers, total, top),
        "top_self_frames": _share(leaves, total, top),
    }


def render(name: str, result: dict[str, Any], top: int = 10) -> str:
    if "error" in result:
        return f"profile of {name}: {result['error']}"
    lines = [
        f"profile of {name} ({result['samples']} samples at 200 Hz, wall {result['wall']} s under py-spy): "
        f"{result['raw']}"
    ]
    for key, title in (
        ("phase", "phase"),
        ("under_corpus_manager_call", "under which corpus_manager call"),
        ("self_by_layer", "self time by layer"),
        ("top_self_frames", "top self frames"),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {item['share'] * 100:5.1f}%  {item['what']}" for item in result[key][:top]]
    return "\n".join(lines)
