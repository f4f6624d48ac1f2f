"""`corpus report` on a real Azurite with real ImageMagick, opened in a real (headless) Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from corpus_manager.cli import cli
from corpus_manager.report import Bar, ReportModel, cache_prefix, environment
from corpus_manager.report.render import render
from transforms import sniff

from .browser import Browser, browser  # noqa: F401  (the fixture)
from .conftest import unique_png, write_image
from .helpers import blobs, run
from .processes import alive, descendants

HOSTILE = ["<script>alert(1)", "a#b?c%20d", "ünïcødé 鳥 🐦"]
# What undecodable-but-whole looks like: a JPEG's start and end markers around garbage. Upload's cheap
# checks (magic bytes, end marker) accept it; only a decode finds out.
BROKEN = "original/birds/broken/v1/broken.jpg"
CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"not really a jpeg " * 20 + b"\xff\xd9"


@pytest.fixture
def hostile_corpus(conn: str, corpus_name: str, tmp_path: Path, pool: Executor) -> dict[str, Any]:
    """Sets with hostile names, a corrupt image, and a transform of every set."""
    root = tmp_path / "photos"
    n = 0
    for name in HOSTILE:
        for i in range(2):
            n += 1
            unique_png(root / "birds" / name / f"img{i}.png", n, size="40x30")
    write_image(root / "birds" / "robin" / "big.jpg", "jpeg", size="600x400", color="plasma:")
    write_image(root / "birds" / "robin" / "wide.png", "png", size="300x100", color="navy")
    unique_png(root / "birds" / "broken" / "fine.png", 99, size="40x30")
    (root / "birds" / "broken" / "broken.jpg").write_bytes(CORRUPT_JPEG)
    up = run(conn, corpus_name, lambda c: c.upload(str(root), "v1"))
    assert up.ok, up.failures
    t = run(conn, corpus_name, lambda c: c.transform("small", "1", ops=["resize=20x20"], pool=pool))
    # the set with the corrupt image has no complete output: its transform failed on that image
    assert t.sets_transformed == 4 and [f.item for f in t.failures] == [BROKEN], t.failures
    return {"sets": ["birds/" + h for h in HOSTILE] + ["birds/broken", "birds/robin"]}


PAGE_STATE = """() => ({
    imgs: [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
    text: document.body.innerText,
    scripts: document.querySelectorAll('script').length,
    tagBars: [...document.querySelectorAll('#chart-tags rect.bar')].map(r => [r.dataset.label, +r.dataset.value]),
    coverage: [...document.querySelectorAll('#chart-coverage rect.bar')].map(r => [r.dataset.label, +r.dataset.value]),
    sizes: [...document.querySelectorAll('#chart-sizes rect.bar')].map(r => [r.dataset.label, +r.dataset.value]),
    placeholders: [...document.querySelectorAll('.placeholder:not(.missing)')].map(p => p.innerText),
    pageLinks: [...document.querySelectorAll('nav.pages a, nav.pages strong')].map(
        a => a.getAttribute('href') || location.pathname.split('/').pop()),
    anchors: [...document.querySelectorAll('#toc a')].map(a => {
        const href = a.getAttribute('href');
        return [href, document.querySelectorAll('[id="' + href.slice(1) + '"]').length];
    }),
})"""


def cli_report(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["report", *args])
    return result.exit_code, result.stdout, result.stderr


def test_report_in_a_real_browser(
    conn: str,
    corpus_name: str,
    hostile_corpus: dict[str, Any],
    tmp_path: Path,
    browser: Browser,  # noqa: F811  (the fixture imported above)
) -> None:
    out = tmp_path / "report one"
    code, stdout, stderr = cli_report("--out", str(out), "--json", "--workers", "2")
    assert code == 0, stderr
    model = json.loads(stdout)
    # 9 good originals and the 8 images of the 4 complete outputs; the corrupt one a placeholder
    assert model["thumbnails"] == {"made": 17, "cached": 0}
    assert [p["item"] for p in model["placeholders"]] == [BROKEN]
    assert "could not decode" in model["placeholders"][0]["reason"]
    assert model["sets"] == 5 + 4 and model["images"] == 10 + 8
    thumbs_stored = [n for n in blobs(conn, corpus_name) if n.startswith(cache_prefix())]
    assert len(thumbs_stored) == 17 + 1  # and the corrupt image's reason (.err), so it is not decoded again

    visit = browser.visit(out, PAGE_STATE, screenshot=tmp_path / "report.png")
    state = visit.result
    assert len(state["imgs"]) == 17 and all(i["ok"] for i in state["imgs"]), state["imgs"]
    assert all(re.fullmatch(r"thumbs/[0-9a-f]{32}\.jpg", i["src"]) for i in state["imgs"])
    assert visit.errors == [] and visit.outside == []
    for path in hostile_corpus["sets"]:
        assert path in state["text"], path  # literally, as text: "<script>" was not parsed as a tag
    assert state["scripts"] == 0
    # images per tag: of the source sets only (an output's images are not counted twice)
    assert sorted(state["tagBars"]) == sorted([["birds", 10], ["robin", 2], ["broken", 2]] + [[h, 2] for h in HOSTILE])
    assert state["coverage"] == [["small@1", 4]]  # of 5 source sets
    assert sorted(state["sizes"]) == [["300×100", 1], ["40×30", 7], ["600×400", 1]]  # the 9 decodable
    assert len(state["placeholders"]) == 1 and "broken.jpg" in state["placeholders"][0]
    assert len(state["anchors"]) == 5
    for href, targets in state["anchors"]:  # every TOC entry leads to one section on the page
        assert re.fullmatch(r"#set-[0-9a-f]{16}", href) and targets == 1

    # Again, into another folder: every thumbnail comes from the cache, no image is read or decoded.
    async def second(c: Any) -> tuple[ReportModel, tuple[int, int, int]]:
        s = c.storage.stats
        before = s.blob_gets, s.blob_puts, s.blob_lists
        m = await c.report(str(tmp_path / "two"), workers=1, page_sets=2)  # paged: 2 source sets a page
        return m, (s.blob_gets - before[0], s.blob_puts - before[1], s.blob_lists - before[2])

    again, (gets, puts, lists) = run(conn, corpus_name, second)
    assert (again.thumbs_made, again.thumbs_cached) == (0, 17 + 1)
    assert gets == 18 and puts == 0  # the cached thumbnails (and the one reason) only: no source image
    assert lists == 9 + 1  # one per set, and one of the thumbnail cache (not one request per image)
    assert [p.item for p in again.placeholders] == [BROKEN]
    assert again.pages == ["index.html", "page-2.html", "page-3.html"]
    assert [g.href.split("#")[0] for g in again.groups] == ["index.html"] * 2 + ["page-2.html"] * 2 + ["page-3.html"]
    shown, images = [], 0
    for page in again.pages:
        visit = browser.visit(tmp_path / "two", PAGE_STATE, page=page)
        assert all(i["ok"] for i in visit.result["imgs"]) and visit.errors == [] and visit.outside == []
        assert visit.result["pageLinks"] == ["index.html", "page-2.html", "page-3.html"]
        assert (visit.result["tagBars"] != []) == (page == "index.html")  # the charts are on the first page
        shown += [a for a, _n in visit.result["anchors"]]
        images += len(visit.result["imgs"])
    assert shown == ["#" + g.anchor for g in again.groups]  # every set once, in order, over the pages
    assert images == 17


def test_report_filters_and_usage_errors(conn: str, corpus_name: str, hostile_corpus: Any, tmp_path: Path) -> None:
    code, stdout, _ = cli_report("--out", str(tmp_path / "r"), "--tag", "robin", "--originals", "--json")
    assert code == 0
    model = json.loads(stdout)
    assert [g["path"] for g in model["groups"]] == ["birds/robin"] and model["coverage"] == []
    assert model["groups"][0]["columns"] == ["original"] and len(model["groups"][0]["rows"]) == 2
    code, stdout, _ = cli_report("--out", str(tmp_path / "r2"), "--per-set", "1")
    assert code == 0 and "Open: file://" in stdout
    # the same folder again, with fewer pages: no page of the former report is left to link to old sets
    paged = run(conn, corpus_name, lambda c: c.report(str(tmp_path / "r2"), page_sets=1))
    assert len(paged.pages) == 5 and (tmp_path / "r2" / "page-5.html").exists()
    one = run(conn, corpus_name, lambda c: c.report(str(tmp_path / "r2")))
    assert one.pages == ["index.html"] and sorted(p.name for p in (tmp_path / "r2").glob("*.html")) == ["index.html"]
    file = tmp_path / "a-file"
    file.write_text("x")
    for args in (["--out", str(file)], ["--out", str(tmp_path / "r3"), "--per-set", "0"]):
        code, _, stderr = cli_report(*args)
        assert code == 2, stderr
    assert not (tmp_path / "r3").exists()


def test_templates_escape_user_text(tmp_path: Path) -> None:
    """Autoescaping is on in every template: a tag or label from storage is text, never markup."""
    env = environment()
    assert env.autoescape is True
    model = ReportModel(out=str(tmp_path), per_set=1, corpus="c")
    model.tag_images = [Bar('<img src=x onerror="alert(1)">', 3)]
    render(model)
    html = (tmp_path / "index.html").read_text()
    assert '<img src=x onerror="alert(1)">' not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html


def test_thumbnail_recipe_is_small_deterministic_jpeg() -> None:
    """The built-in recipe, in-process: at most 256 px, JPEG, the same bytes every time, the source's size
    from its header; an undecodable image raises ImageError with the reason."""
    import transforms
    from transforms.thumbnail import THUMB_SIDE, make_thumbnail

    data = subprocess_image("jpeg", "1024x768")
    a, b = make_thumbnail(data), make_thumbnail(data)
    assert a.data == b.data and transforms.sniff(a.data) == "jpeg"
    assert (a.width, a.height) == (THUMB_SIDE, 192) and (a.source_width, a.source_height) == (1024, 768)
    small = make_thumbnail(subprocess_image("png", "40x30"))
    assert (small.width, small.height) == (40, 30)  # never enlarged
    with pytest.raises(transforms.ImageError, match="could not decode"):
        make_thumbnail(CORRUPT_JPEG)


def subprocess_image(kind: str, size: str) -> bytes:
    from .conftest import image_bytes

    return image_bytes(kind, size, "plasma:")


def test_report_of_a_release(
    conn: str,
    corpus_name: str,
    hostile_corpus: Any,
    tmp_path: Path,
    browser: Browser,  # noqa: F811  (the fixture imported above)
) -> None:
    """`--release NAME`: the release's sets, and its images per split and label as a table and a chart."""
    created = run(
        conn, corpus_name, lambda c: c.create_release("r1", originals=True, split="train=50,val=50", split_by="image")
    )
    assert created.exit_code == 0
    records = run(conn, corpus_name, lambda c: c.release("r1")).records
    want = Counter((r["split"], r["label"]) for r in records)
    labels = sorted({lb for _s, lb in want})
    assert len(records) == 10 and set(labels) == {*HOSTILE, "broken", "robin"}

    code, stdout, stderr = cli_report("--release", "r1", "--out", str(tmp_path / "rel"), "--json")
    assert code == 0, stderr
    model = json.loads(stdout)
    assert model["release"]["splits"] == ["train", "val"] and model["release"]["labels"] == labels
    got = {(s, lb): n for s, row in model["release"]["counts"].items() for lb, n in row.items() if n}
    assert got == dict(want)
    assert [g["path"] for g in model["groups"]] == sorted(hostile_corpus["sets"])
    assert all(g["columns"] == ["original"] for g in model["groups"])  # the release has no outputs

    visit = browser.visit(
        tmp_path / "rel",
        """() => ({
            segs: [...document.querySelectorAll('#chart-release rect.seg')].map(
                r => [r.dataset.split, r.dataset.label, +r.dataset.value]),
            rows: [...document.querySelectorAll('table.release tbody tr')].map(
                tr => [...tr.children].map(td => td.textContent)),
            imgs: [...document.images].every(i => i.complete && i.naturalWidth > 0),
        })""",
    )
    assert visit.errors == [] and visit.outside == [] and visit.result["imgs"]
    assert {(s, lb): n for s, lb, n in visit.result["segs"] if n} == dict(want)
    assert len(visit.result["segs"]) == 2 * len(labels)
    for label, train, val, total in visit.result["rows"]:  # the hostile labels as text, with their counts
        assert (int(train), int(val), int(total)) == (
            want[("train", label)],
            want[("val", label)],
            want[("train", label)] + want[("val", label)],
        )
    assert sorted(row[0] for row in visit.result["rows"]) == labels

    code, _, stderr = cli_report("--release", "r1", "--tag", "robin", "--out", str(tmp_path / "x"))
    assert code == 2 and "exclude each other" in stderr and not (tmp_path / "x").exists()
    code, _, stderr = cli_report("--release", "nope", "--out", str(tmp_path / "y"))
    assert code == 2 and "does not exist" in stderr and not (tmp_path / "y").exists()


def test_sigterm_stops_a_report_cleanly(conn: str, corpus_name: str, tmp_path: Path) -> None:
    """SIGTERM mid-report: exit 143, every thumbnail written is whole, no temporary file and no worker left."""
    for i in range(150):
        unique_png(tmp_path / "photos" / f"s{i % 5}" / f"{i:03d}.png", i, size="400x400")
    up = run(conn, corpus_name, lambda c: c.upload(str(tmp_path / "photos"), "v1"))
    assert up.ok, up.failures
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "corpus_manager.cli", "report", "--out", str(out), "--per-set", "30", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    deadline = time.monotonic() + 120  # a generous bound for a loaded machine, not a speed claim
    workers: dict[int, str] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= descendants(proc.pid)
        if list((out / "thumbs").glob("*.jpg")):  # thumbnails are being made: stop it now
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the report ended before it could be stopped: {proc.communicate()}"
    workers |= descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Terminated (SIGTERM)" in stderr
    helpers = {p: c for p, c in workers.items() if "spawn_main" in c or "resource_tracker" in c}
    # at least one worker was running (a pool may have replaced one, so not an exact count); all must go
    assert any("spawn_main" in c for c in helpers.values()), workers
    # the tracker exits once the pipe of the (gone) parent closes: wait for it, within a generous bound
    while time.monotonic() < deadline + 120 and [p for p in helpers if alive(p)]:
        time.sleep(0.05)
    assert not [c for p, c in helpers.items() if alive(p)], "a worker or the resource tracker outlived the report"
    files = list(out.rglob("*"))
    assert not [f for f in files if f.name.endswith(".part")]
    thumbs = [f for f in files if f.suffix == ".jpg"]
    assert 0 < len(thumbs) < 150
    assert all(sniff(f.read_bytes()) == "jpeg" and f.read_bytes().endswith(b"\xff\xd9") for f in thumbs)
