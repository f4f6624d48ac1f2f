"""What every suite shares: the run context, one measured sample, medians, and the machine description.

A suite (upload today; query/download and transform later) yields ``Sample``s, one per contender per
scenario per round; ``summarize`` turns them into median rows with ratios to the scenario's anchor
(rclone for transfers) and to its ceiling (the bare-PUT loop, the physical limit).
"""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .azurite import ROOT, Endpoint
from .measure import Measured, run_measured


@dataclass
class Context:
    endpoint: Endpoint
    work: Path  # scratch: configs, logs, child outputs
    corpora: Path  # where the generated corpora live (reused across runs)
    parallel: int
    rounds: int
    quick: bool
    variants: dict[str, str | None]  # corpus contender name -> PYTHONPATH to put first (None: the repo's)
    contenders: set[str] | None  # restrict to these contender kinds (corpus, rclone, azcopy, bare)
    timeout: float = 900.0
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = self.work / "logs"

    def wants(self, kind: str) -> bool:
        return self.contenders is None or kind in self.contenders

    def fresh_name(self, prefix: str) -> str:
        """A container/corpus name never used before: lower-case letters and digits, 3-40 long."""
        return f"{prefix}{secrets.token_hex(4)}"

    def child_env(self, extra: dict[str, str] | None = None, pythonpath: str | None = None) -> dict[str, str]:
        """The environment of a contender: ours without storage settings or coverage/profiler hooks."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AZURE_", "CORPUS_", "AZCOPY_", "RCLONE_", "PYTHON", "COV_"))
        }
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        env.update(extra or {})
        return env

    def run(self, argv: list[str], env: dict[str, str], label: str) -> Measured:
        # cwd is the scratch dir, never the repo: `python -m` puts the cwd first on sys.path, which
        # would shadow a prototype given by PYTHONPATH with the repo's package.
        return run_measured(
            argv,
            env=env,
            cwd=self.work,
            out_dir=self.log_dir,
            label=label,
            server_pid=self.endpoint.server_pid,
            timeout=self.timeout,
        )


@dataclass
class Sample:
    scenario: str
    contender: str
    round: int
    files: int
    bytes: int
    wall: float
    cpu: float
    user: float
    sys: float
    maxrss_mb: float
    server_cpu: float | None
    ok: bool
    note: str = ""

    @classmethod
    def of(
        cls, scenario: str, contender: str, rnd: int, files: int, nbytes: int, m: Measured, ok: bool, note: str = ""
    ) -> Sample:
        return cls(
            scenario, contender, rnd, files, nbytes, m.wall, m.cpu, m.user, m.sys, m.maxrss_mb, m.server_cpu, ok, note
        )


@dataclass
class Row:
    """The median of one contender in one scenario, and its ratios."""

    scenario: str
    contender: str
    rounds: int
    files: int
    bytes: int
    wall: float
    wall_min: float
    wall_max: float
    cpu: float
    maxrss_mb: float
    server_cpu: float | None
    failed_rounds: int
    speed_vs_anchor: float | None = None  # anchor wall / wall: > 1 is faster than the anchor
    cpu_vs_anchor: float | None = None  # cpu / anchor cpu: < 1 costs less client CPU
    of_ceiling: float | None = None  # ceiling wall / wall: the fraction of the physical limit's rate

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall if self.wall > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / (1 << 20) / self.wall if self.wall > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["files_per_s"] = round(self.files_per_s, 1)
        out["mb_per_s"] = round(self.mb_per_s, 2)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def summarize(samples: list[Sample], anchors: dict[str, str], ceilings: dict[str, str]) -> list[Row]:
    """Median rows per (scenario, contender), in first-seen order, with ratios to anchor and ceiling."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.scenario, s.contender), []).append(s)
    rows: list[Row] = []
    for (scenario, contender), group in groups.items():
        good = [s for s in group if s.ok] or group  # a contender that failed every round still shows
        servers = [s.server_cpu for s in good if s.server_cpu is not None]
        rows.append(
            Row(
                scenario=scenario,
                contender=contender,
                rounds=len(good),
                files=good[0].files,
                bytes=good[0].bytes,
                wall=statistics.median(s.wall for s in good),
                wall_min=min(s.wall for s in good),
                wall_max=max(s.wall for s in good),
                cpu=statistics.median(s.cpu for s in good),
                maxrss_mb=statistics.median(s.maxrss_mb for s in good),
                server_cpu=statistics.median(servers) if servers else None,
                failed_rounds=sum(1 for s in group if not s.ok),
            )
        )
    by_key = {(r.scenario, r.contender): r for r in rows}
    for r in rows:
        anchor = by_key.get((r.scenario, anchors.get(r.scenario, "")))
        if anchor is not None and r.wall > 0 and anchor.cpu > 0:
            r.speed_vs_anchor = anchor.wall / r.wall
            r.cpu_vs_anchor = r.cpu / anchor.cpu
        ceiling = by_key.get((r.scenario, ceilings.get(r.scenario, "")))
        if ceiling is not None and r.wall > 0:
            r.of_ceiling = ceiling.wall / r.wall
    return rows


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """What the numbers were measured on: they mean little without it."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")), 0
    )
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "corpus_manager"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "corpus_manager_commit": commit + ("+dirty" if dirty else ""),
    }


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()
