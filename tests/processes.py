"""Processes seen through /proc (no extra dependency): the signal and pool tests look for what is left."""

from __future__ import annotations

from pathlib import Path


def _state_and_parent(stat: str) -> tuple[str, int]:
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (or sleeping): not exited, and not a zombie waiting to be reaped."""
    try:
        state, _ = _state_and_parent(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid``, with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = _state_and_parent((entry / "stat").read_text())
            except OSError:
                continue
            if state != "Z":
                parents[int(entry.name)] = parent
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    out = {}
    for p in found:
        try:
            out[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out
