"""A corpus with one release for the training tests: three labels of small PNGs and one big image,
uploaded and released through the real CLI on Azurite."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from corpus_manager import Corpus
from corpus_manager.cli import cli

from .conftest import Azurite, unique_png

LABELS = ("cat", "dog", "owl")
PER_LABEL = 10
SHARD_SIZE = 16000  # about four small samples per shard; the big image (~50 KB) is bigger than a shard


@dataclass
class TrainingCorpus:
    conn: str
    corpus: str
    release: str
    records: list[dict[str, Any]]
    data: dict[str, bytes]  # blob name -> the bytes uploaded
    seed: int

    @property
    def env(self) -> dict[str, str | None]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.conn, "CORPUS_NAME": self.corpus, "CORPUS_ACCOUNT_URL": None}

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=self.env)

    def by_blob(self) -> dict[str, dict[str, Any]]:
        return {r["blob_name"]: r for r in self.records}


def build_training_corpus(conn: str, root: Path, *, big: bool = True, release: str = "pets-1") -> TrainingCorpus:
    corpus = "tr" + uuid.uuid4().hex[:12]
    photos = root / "photos"
    n = 0
    local: dict[str, bytes] = {}
    for label in LABELS:
        for i in range(PER_LABEL):
            n += 1
            path = unique_png(photos / "pets" / label / f"{label}{i:02d}.png", n)
            local[f"original/pets/{label}/v1/{path.name}"] = path.read_bytes()
    if big:
        path = unique_png(photos / "pets" / "whale" / "huge.png", 999, size="96x96")
        local[f"original/pets/whale/v1/{path.name}"] = path.read_bytes()
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn, "CORPUS_NAME": corpus, "CORPUS_ACCOUNT_URL": None}
    up = CliRunner().invoke(cli, ["upload", str(photos), "--version", "v1", "--json"], env=env)
    assert up.exit_code == 0, up.output
    seed = 3
    made = CliRunner().invoke(
        cli,
        ["release", "create", release, "--split", "train=70,val=30", "--split-by", "image", "--seed", str(seed)],
        env=env,
    )
    assert made.exit_code == 0, made.output

    async def load() -> list[dict[str, Any]]:
        async with Corpus(corpus, connection_string=conn) as c:
            return list((await c.release(release)).records)

    records = asyncio.run(load())
    assert {r["blob_name"] for r in records} == set(local), "the release holds every uploaded image"
    return TrainingCorpus(conn, corpus, release, records, local, seed)


@pytest.fixture(scope="module")
def trained(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> TrainingCorpus:
    return build_training_corpus(azurite.connection_string, tmp_path_factory.mktemp("training"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
