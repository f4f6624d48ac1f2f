"""The streaming crawl: groups by directory, tags from the path, and problems reported, never fatal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corpus_manager.crawler import Crawler
from corpus_manager.errors import ConfigError
from corpus_manager.models import tags_for


def _groups(root: Path | str, **kw: object) -> dict[str, list[str]]:
    return {g.rel_dir: [f.name for f in g.files] for g in Crawler(str(root), **kw)}  # type: ignore[arg-type]


def test_groups_by_directory_with_root_images_and_nested_sets(sample_tree: Path) -> None:
    assert _groups(sample_tree) == {
        "": ["top.gif"],
        "blue/sky": ["D.JPG"],
        "red/angry": ["c.png"],
        "red/angry/robin": ["a.png", "b.jpg"],
    }


def test_tags_are_path_components_trimmed_deduplicated_in_order() -> None:
    assert tags_for("red/angry/robin") == ["red", "angry", "robin"]
    assert tags_for(" red / Red/ /robin/red ") == ["red", "robin"]
    assert tags_for("") == []


def test_extensions_match_case_insensitively_and_can_be_chosen(tmp_path: Path) -> None:
    for name in ("a.JPG", "b.Png", "c.txt", "d.webp", "e"):
        (tmp_path / name).write_bytes(b"x")
    assert _groups(tmp_path) == {"": ["a.JPG", "b.Png", "d.webp"]}
    assert _groups(tmp_path, extensions=".png,TXT") == {"": ["b.Png", "c.txt"]}


def test_relative_root_and_trailing_slash_work(sample_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sample_tree.parent)
    assert _groups("photos/") == _groups(sample_tree)
    assert _groups("./photos") == _groups(sample_tree)


def test_walk_is_streaming(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "x.png").write_bytes(b"x")
    crawler = Crawler(str(tmp_path))
    it = iter(crawler)
    first = next(it)
    # only the first directory's entries have been listed when the first group arrives
    assert first.rel_dir == "d0" and crawler.files_seen == 1


def test_missing_root_and_file_root_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        Crawler(str(tmp_path / "nope"))
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a directory"):
        Crawler(str(tmp_path / "f.png"))


def test_symlink_loop_is_reported_not_followed_forever(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    crawler = Crawler(str(tmp_path))
    groups = {g.rel_dir for g in crawler}
    assert groups == {"a"}
    assert any("loop" in p.path and "symlink loop" in p.reason for p in crawler.problems)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything; permissions cannot be tested as root")
def test_unreadable_directory_is_reported_and_skipped(tmp_path: Path) -> None:  # pragma: no cover - non-root
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(b"x")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "b.png").write_bytes(b"x")
    locked.chmod(0)
    try:
        crawler = Crawler(str(tmp_path))
        assert {g.rel_dir for g in crawler} == {"ok"}
        assert [p.reason for p in crawler.problems] == ["permission denied; skipped"]
    finally:
        locked.chmod(0o755)


def test_non_utf8_names_are_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(b"x")
    bad = os.fsencode(str(tmp_path)) + b"/bad\xff.png"
    with open(bad, "wb") as fh:
        fh.write(b"x")
    crawler = Crawler(str(tmp_path))
    assert _groups(tmp_path) == {"": ["good.png"]}
    list(crawler)
    assert len(crawler.problems) == 1 and "not valid UTF-8" in crawler.problems[0].reason
