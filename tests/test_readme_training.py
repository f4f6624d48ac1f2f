"""The README's Training section runs as written: its bash and python blocks, in order, against a
release `pets-1` on Azurite (each python block a script of its own, in one working directory)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_manager.cli import cli

from .conftest import ROOT, Azurite
from .training_corpus import LABELS, PER_LABEL, build_training_corpus

IMAGEFOLDER = "**An ImageFolder on disk.**"


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Training\n")
    return text[start : text.index("\n## ", start + 1)]


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", text, re.S)


def run_blocks(azurite: Azurite, tmp_path: Path, code: list[tuple[str, str]]) -> list[str]:
    t = build_training_corpus(azurite.connection_string, tmp_path / "corpus", release="pets-1")
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": t.conn, "CORPUS_NAME": t.corpus, "PYTHONPATH": str(ROOT)}
    env.pop("CORPUS_ACCOUNT_URL", None)
    work = tmp_path / "work"
    work.mkdir()
    outputs = []
    for n, (lang, body) in enumerate(code):
        if lang == "bash":
            for line in body.splitlines():
                words = shlex.split(line, comments=True)
                if not words:
                    continue
                assert words[0] == "corpus", f"README bash line that is not a corpus command: {line}"
                cmd = [sys.executable, "-m", "corpus_manager.cli", *words[1:]]
                res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
                assert res.returncode == 0, f"{line}\n{res.stdout}\n{res.stderr}"
                outputs.append(res.stdout)
        else:
            script = work / f"example_{n}.py"
            script.write_text(body)
            res = subprocess.run(
                [sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300
            )
            assert res.returncode == 0, f"README example {n} failed:\n{body}\n{res.stdout}\n{res.stderr}"
            outputs.append(res.stdout)
    return outputs


def test_readme_training_examples_run(azurite: Azurite, tmp_path: Path) -> None:
    text = section()
    code = blocks(text[: text.index(IMAGEFOLDER)])
    assert [lang for lang, _ in code] == ["python", "python", "bash", "python", "python"]
    outputs = run_blocks(azurite, tmp_path, code)
    images = len(LABELS) * PER_LABEL + 1  # the release's images (three labels and the one big image)
    loader_out = outputs[0]
    epochs = re.findall(r"epoch (\d): (\d+) images", loader_out)
    assert [e for e, _ in epochs] == ["0", "1"]
    assert epochs[0][1] == epochs[1][1] and 0 < int(epochs[0][1]) < images  # the train split, each epoch
    assert f"{epochs[0][1]} samples over HTTP" in outputs[-1]


def test_readme_imagefolder_example_runs(azurite: Azurite, tmp_path: Path) -> None:
    if "--layout" not in CliRunner().invoke(cli, ["download", "--help"]).output:
        pytest.skip("`corpus download --release --layout imagefolder` (the releases feature) is not on this branch")
    text = section()
    code = blocks(text[text.index(IMAGEFOLDER) :])
    assert [lang for lang, _ in code] == ["bash", "python"]
    (listing,) = [out for out in run_blocks(azurite, tmp_path, code) if "images in" in out]
    assert "'cat'" in listing
