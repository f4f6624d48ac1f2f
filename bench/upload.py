"""The upload suite (issue 5): scenarios a-d, the targets, and the CPU profile of `corpus upload`.

(a) first upload of 2,000 files of 20 KB in 100 dirs; (b) the no-op rerun of (a) into the same
containers; (c) 200 files of 2 MB; (d) the crawl and plan of 100,000 files of 1 KB (`--dry-run`),
and of 10,000 beside it to show whether memory grows with the corpus; (e) many small sets: the same
1,000 images as 200 directories of 5 and as one directory of 1,000 (issue 11: the per-set cost).

Each round runs every contender once per scenario, in an order rotated from round to round, so a
slow minute of the machine (or Azurite's own housekeeping) does not always land on the same one.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contenders as cs
from .common import Context, Row, Sample
from .corpora import CorpusSpec, make_corpus
from .harness import result_table

KB, MB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Sizes:
    a: CorpusSpec
    c: CorpusSpec
    d_small: CorpusSpec
    d_large: CorpusSpec
    warmup: CorpusSpec
    # (e): the same images (one seed, one random stream in the same order) as many sets and as one
    e_many: CorpusSpec
    e_one: CorpusSpec


FULL = Sizes(
    a=CorpusSpec(100, 20, 20 * KB),
    c=CorpusSpec(10, 20, 2 * MB),
    d_small=CorpusSpec(100, 100, KB),
    d_large=CorpusSpec(1000, 100, KB),
    warmup=CorpusSpec(5, 20, 20 * KB, seed=2),
    e_many=CorpusSpec(200, 5, 20 * KB, seed=5),
    e_one=CorpusSpec(1, 1000, 20 * KB, seed=5),
)
QUICK = Sizes(
    a=CorpusSpec(10, 20, 20 * KB),
    c=CorpusSpec(4, 5, 2 * MB),
    d_small=CorpusSpec(10, 100, KB),
    d_large=CorpusSpec(100, 100, KB),
    warmup=CorpusSpec(2, 10, 20 * KB, seed=2),
    e_many=CorpusSpec(40, 5, 20 * KB, seed=5),
    e_one=CorpusSpec(1, 200, 20 * KB, seed=5),
)

SCENARIOS = {
    "a": "first upload, {a}",
    "b": "no-op rerun of (a)",
    "c": "first upload, {c}",
    "d": "crawl + plan (--dry-run), {d_small} and {d_large}",
    "e": "many small sets: {e_many} vs {e_one} (the same images)",
}
ANCHOR = "rclone"
# (e): `corpus upload` of 200 sets of 5 within this factor of one set of 1,000 (issue 11)
MANY_SETS_TARGET = 1.3
CEILING_PUT, CEILING_CRAWL = "bare-put", "bare-crawl"


def e_id(spec: CorpusSpec) -> str:
    return f"e@{spec.dirs}x{spec.files_per_dir}"


def scenario_ids(sizes: Sizes, wanted: list[str]) -> list[str]:
    ids: list[str] = []
    for s in wanted:
        if s == "d":
            ids += [f"d@{sizes.d_small.files}", f"d@{sizes.d_large.files}"]
        elif s == "e":
            ids += [e_id(sizes.e_many), e_id(sizes.e_one)]
        else:
            ids.append(s)
    return ids


def describe(sizes: Sizes) -> dict[str, str]:
    fmt = {k: getattr(sizes, k).describe() for k in ("a", "c", "d_small", "d_large", "e_many", "e_one")}
    out = {k: v.format(**fmt) for k, v in SCENARIOS.items() if k not in ("d", "e")}
    out[f"d@{sizes.d_small.files}"] = f"crawl + plan (--dry-run), {fmt['d_small']}"
    out[f"d@{sizes.d_large.files}"] = f"crawl + plan (--dry-run), {fmt['d_large']}"
    out[e_id(sizes.e_many)] = f"many small sets: {fmt['e_many']}"
    out[e_id(sizes.e_one)] = f"the same images as one set: {fmt['e_one']}"
    return out


def anchors_and_ceilings(ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    anchors = dict.fromkeys(ids, ANCHOR)
    ceilings = {i: CEILING_CRAWL if i.startswith("d@") else CEILING_PUT for i in ids if i != "b"}
    return anchors, ceilings


def make_corpora(sizes: Sizes, wanted: list[str], where: Path) -> dict[str, Path]:
    roots = {"warmup": make_corpus(sizes.warmup, where)}
    if "a" in wanted or "b" in wanted:
        roots["a"] = make_corpus(sizes.a, where)
    if "c" in wanted:
        roots["c"] = make_corpus(sizes.c, where)
    if "d" in wanted:
        roots["d_small"] = make_corpus(sizes.d_small, where)
        roots["d_large"] = make_corpus(sizes.d_large, where)
    if "e" in wanted:
        roots["e_many"] = make_corpus(sizes.e_many, where)
        roots["e_one"] = make_corpus(sizes.e_one, where)
    return roots


def _rotate(items: list[cs.Contender], by: int) -> list[cs.Contender]:
    by %= max(1, len(items))
    return items[by:] + items[:by]


class UploadSuite:
    def __init__(self, ctx: Context, sizes: Sizes, wanted: list[str], roots: dict[str, Path]) -> None:
        self.ctx = ctx
        self.sizes = sizes
        self.wanted = wanted
        self.roots = roots
        self.contenders = cs.build(ctx)
        self.samples: list[Sample] = []

    # ----- one measured step ---------------------------------------------------------------------
    def _step(
        self,
        scenario: str,
        name: str,
        rnd: int,
        inv: cs.Invocation,
        target: cs.Target,
        spec: CorpusSpec,
        record: bool = True,
    ) -> bool:
        label = f"r{rnd}-{scenario.replace('@', '_')}-{name.replace(':', '_')}"
        m = self.ctx.run(inv.argv, inv.env, label)
        reason = ""
        if m.timed_out:
            reason = f"timed out after {self.ctx.timeout:.0f} s"
        elif m.returncode != 0:
            reason = f"exit {m.returncode}: {m.stderr.strip().splitlines()[-1] if m.stderr.strip() else ''}"
        else:
            reason = inv.check_output(m.stdout)
        if not reason and inv.expect_blobs is not None:
            got = self.ctx.endpoint.count_blobs(target.container)
            if got != inv.expect_blobs:
                reason = f"container holds {got} blobs, expected {inv.expect_blobs}"
        ok = not reason
        server = f", server {m.server_cpu:.2f} s CPU" if m.server_cpu is not None else ""
        status = "ok" if ok else f"FAILED ({reason}); logs: {self.ctx.log_dir / label}.*"
        where = f"round {rnd}" if rnd else "warm-up"
        print(
            f"  {where:8} {scenario:9} {name:14} {m.wall:7.2f} s wall {m.cpu:6.2f} s CPU "
            f"{m.maxrss_mb:6.0f} MB{server}  {status}",
            flush=True,
        )
        if record:
            self.samples.append(Sample.of(scenario, name, rnd, spec.files, spec.total_bytes, m, ok, reason))
        return ok

    # ----- scenarios -----------------------------------------------------------------------------
    def warmup(self) -> None:
        """One unrecorded upload each: Azurite's JIT, the page cache and .pyc files start warm for all."""
        spec, src = self.sizes.warmup, self.roots["warmup"]
        for c in self.contenders:
            t = c.target(self.ctx, "w")
            self._step("warmup", c.name, 0, c.upload(self.ctx, src, t, spec.files), t, spec, record=False)
            self.ctx.endpoint.drop(t.container, t.tables)

    def round(self, rnd: int) -> None:
        order = _rotate(self.contenders, rnd - 1)
        if "a" in self.wanted or "b" in self.wanted:
            self._first_and_rerun(rnd, order)
        if "c" in self.wanted:
            spec, src = self.sizes.c, self.roots["c"]
            for c in order:
                t = c.target(self.ctx, "c")
                self._step("c", c.name, rnd, c.upload(self.ctx, src, t, spec.files), t, spec)
                self.ctx.endpoint.drop(t.container, t.tables)
        if "d" in self.wanted:
            for key in ("d_small", "d_large"):
                spec, src = getattr(self.sizes, key), self.roots[key]
                for c in order:
                    t = c.target(self.ctx, "d")
                    inv = c.plan(self.ctx, src, t, spec.files)
                    if inv is not None:
                        name = CEILING_CRAWL if c.kind == "bare" else c.name
                        self._step(f"d@{spec.files}", name, rnd, inv, t, spec)
                    self.ctx.endpoint.drop(t.container, t.tables)
        if "e" in self.wanted:
            self._many_sets(rnd, order)

    def _many_sets(self, rnd: int, order: list[cs.Contender]) -> None:
        """(e): each contender uploads the same images as many small sets and as one set, back to back,
        in an order that alternates from round to round, so a slow minute hits both halves of a ratio."""
        pair = ["e_many", "e_one"] if rnd % 2 else ["e_one", "e_many"]
        for c in order:
            for key in pair:
                spec, src = getattr(self.sizes, key), self.roots[key]
                t = c.target(self.ctx, "e")
                self._step(e_id(spec), c.name, rnd, c.upload(self.ctx, src, t, spec.files), t, spec)
                self.ctx.endpoint.drop(t.container, t.tables)

    def _first_and_rerun(self, rnd: int, order: list[cs.Contender]) -> None:
        spec, src = self.sizes.a, self.roots["a"]
        done: list[tuple[cs.Contender, cs.Target, bool]] = []
        for c in order:
            t = c.target(self.ctx, "a")
            ok = self._step(
                "a", c.name, rnd, c.upload(self.ctx, src, t, spec.files), t, spec, record="a" in self.wanted
            )
            done.append((c, t, ok))
        if "b" in self.wanted:
            for c, t, ok in done:
                inv = c.rerun(self.ctx, src, t, spec.files)
                if inv is not None and ok:  # a rerun of a failed upload would measure an upload
                    self._step("b", c.name, rnd, inv, t, spec)
        for _, t, _ in done:
            self.ctx.endpoint.drop(t.container, t.tables)

    def run(self) -> list[Sample]:
        print(f"bench: warm-up ({self.sizes.warmup.describe()})", flush=True)
        self.warmup()
        for rnd in range(1, self.ctx.rounds + 1):
            print(f"bench: round {rnd} of {self.ctx.rounds}", flush=True)
            self.round(rnd)
        return self.samples

    # ----- profile -------------------------------------------------------------------------------
    def profile(self, out_dir: Path) -> dict[str, Any]:
        """py-spy over `corpus upload` per corpus variant: scenario (a), then its no-op rerun (b).

        Results are keyed "NAME a" and "NAME b". The profiled runs are extra runs, never counted in the
        table: py-spy's sampling, light as it is, is not part of what a user pays.
        """
        from . import profile, tools

        results: dict[str, Any] = {}
        spec, src = self.sizes.a, self.roots["a"]
        spy = tools.py_spy()
        out_dir.mkdir(parents=True, exist_ok=True)
        for c in self.contenders:
            if not isinstance(c, cs.Corpus):
                continue
            t = c.target(self.ctx, "p")
            steps = [("a", c.upload(self.ctx, src, t, spec.files))]
            if "b" in self.wanted:
                steps.append(("b", c.rerun(self.ctx, src, t, spec.files)))
            for scenario, inv in steps:
                key = f"{c.name} {scenario}"
                slug = f"{scenario}-{c.name.replace(':', '_')}"
                raw = out_dir / f"profile-{slug}.txt"
                # --nonblocking: py-spy reads the child's memory without pausing it, so the profile costs
                # the child (almost) nothing; 200 Hz gives a few thousand samples for a run of seconds.
                argv = [
                    spy,
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "-o",
                    str(raw),
                    "--",
                    *inv.argv,
                ]
                m = self.ctx.run(argv, inv.env, f"profile-{slug}")
                if m.returncode != 0 or not raw.exists():
                    results[key] = {"error": f"py-spy exited {m.returncode}: {m.stderr.strip()[-300:]}"}
                    break  # a failed (a) leaves nothing for (b) to rerun
                results[key] = {"scenario": scenario, "raw": str(raw), "wall": round(m.wall, 2), **profile.analyze(raw)}
            self.ctx.endpoint.drop(t.container, t.tables)
        return results


# ----- targets (issue 5) -------------------------------------------------------------------------
@dataclass
class Verdict:
    scenario: str
    contender: str
    target: str
    measured: str
    passed: bool | None  # None: not measured in this run

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _fmt(x: float | None, unit: str = "x") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def many_sets_ratio(samples: list[Sample], sizes: Sizes, contender: str) -> tuple[float, list[float]] | None:
    """(e): the median wall of the many small sets / the median wall of the one set (the ratio the
    table's other targets use: medians first), with each round's own ratio (the two halves of a round
    ran back to back) to show the spread; None when a half never succeeded."""
    walls: dict[tuple[int, str], float] = {
        (s.round, s.scenario): s.wall for s in samples if s.contender == contender and s.ok
    }
    many, one = e_id(sizes.e_many), e_id(sizes.e_one)
    many_walls = [w for (_, sc), w in walls.items() if sc == many]
    one_walls = [w for (_, sc), w in walls.items() if sc == one]
    if not many_walls or not one_walls:
        return None
    rounds = [
        walls[(r, many)] / walls[(r, one)]
        for r in sorted({r for r, _ in walls})
        if (r, many) in walls and (r, one) in walls and walls[(r, one)] > 0
    ]
    return statistics.median(many_walls) / statistics.median(one_walls), rounds


def targets(
    rows: list[Row], sizes: Sizes, corpus_names: list[str], samples: list[Sample] | None = None
) -> list[Verdict]:
    by = {(r.scenario, r.contender): r for r in rows}
    out: list[Verdict] = []
    reference = many_sets_ratio(samples or [], sizes, ANCHOR)
    for name in corpus_names:
        got = many_sets_ratio(samples or [], sizes, name)
        rounds = ", ".join(f"{x:.2f}" for x in got[1]) if got else ""
        also = f"; rclone {reference[0]:.2f}x" if reference else ""
        out.append(
            Verdict(
                "e",
                name,
                f"wall of {sizes.e_many.dirs} sets of {sizes.e_many.files_per_dir} / 1 set of "
                f"{sizes.e_one.files:,} <= {MANY_SETS_TARGET}x",
                f"{got[0]:.2f}x (rounds: {rounds}{also})" if got else "n/a",
                None if got is None else got[0] <= MANY_SETS_TARGET,
            )
        )
    small, large = f"d@{sizes.d_small.files}", f"d@{sizes.d_large.files}"
    for name in corpus_names:
        a, b, c = by.get(("a", name)), by.get(("b", name)), by.get(("c", name))
        rb = by.get(("b", ANCHOR))
        out.append(
            Verdict(
                "a",
                name,
                "files/s vs rclone >= 1.5x",
                _fmt(a and a.speed_vs_anchor),
                None if a is None or a.speed_vs_anchor is None else a.speed_vs_anchor >= 1.5,
            )
        )
        out.append(
            Verdict(
                "a",
                name,
                "client CPU per file vs rclone <= 1.0x",
                _fmt(a and a.cpu_vs_anchor),
                None if a is None or a.cpu_vs_anchor is None else a.cpu_vs_anchor <= 1.0,
            )
        )
        wall_ratio = b.wall / rb.wall if b is not None and rb is not None and rb.wall > 0 else None
        detail = (
            f"{_fmt(wall_ratio)} ({b.wall:.2f} s vs {rb.wall:.2f} s)" if wall_ratio is not None and b and rb else "n/a"
        )
        out.append(
            Verdict(
                "b",
                name,
                "no-op rerun wall vs rclone's rerun <= 1.0x",
                detail,
                None if wall_ratio is None else wall_ratio <= 1.0,
            )
        )
        out.append(
            Verdict(
                "c",
                name,
                "MB/s vs rclone >= 1.0x",
                _fmt(c and c.speed_vs_anchor),
                None if c is None or c.speed_vs_anchor is None else c.speed_vs_anchor >= 1.0,
            )
        )
        ds, dl = by.get((small, name)), by.get((large, name))
        out.append(
            Verdict(
                large,
                name,
                f"peak RSS for {sizes.d_large.files:,} files <= 150 MB",
                _fmt(dl and dl.maxrss_mb, " MB"),
                None if dl is None else dl.maxrss_mb <= 150,
            )
        )
        growth = dl.maxrss_mb / ds.maxrss_mb if dl is not None and ds is not None and ds.maxrss_mb > 0 else None
        flat = (
            f"{_fmt(growth)} ({ds.maxrss_mb:.0f} MB -> {dl.maxrss_mb:.0f} MB)"
            if growth is not None and ds and dl
            else "n/a"
        )
        out.append(
            Verdict(
                "d",
                name,
                f"RSS flat {sizes.d_small.files:,} -> {sizes.d_large.files:,} files (<= 1.2x)",
                flat,
                None if growth is None else growth <= 1.2,
            )
        )
    return out


def render_table(rows: list[Row], descriptions: dict[str, str]) -> str:
    out = [result_table(rows)]
    legend = ["", "scenarios:"] + [f"  {k}: {v}" for k, v in descriptions.items()]
    legend.append(
        "vs rclone = rclone's wall / this wall (>1 faster); CPU vs rc = this client CPU / rclone's "
        "(<1 cheaper); of ceiling = bare-put (bare-crawl for d) wall / this wall. Medians over rounds."
    )
    return "\n".join(out + legend)


def render_targets(verdicts: list[Verdict], quick: bool) -> str:
    head = ["scenario", "contender", "target", "measured", "result"]
    lines = [
        [v.scenario, v.contender, v.target, v.measured, "n/a" if v.passed is None else ("PASS" if v.passed else "MISS")]
        for v in verdicts
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)) for line in lines]
    if quick:
        out.append("(--quick: small sizes, a smoke run; the targets are defined for the full sizes)")
    return "\n".join(out)


def iter_rows_json(rows: list[Row]) -> Iterator[dict[str, Any]]:
    for r in rows:
        yield r.to_json()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
