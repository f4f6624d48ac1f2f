"""How to run Azurite on our own loopback ports: shared by bench/azurite.py and tests/conftest.py.

Standard library only, so the tests can import it without pulling in anything bench-only.
"""

from __future__ import annotations

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azurite_argv(location: Path, blob: int, queue: int, table: int, *, in_memory: bool = False) -> list[str]:
    """The command line: data in ``location``, every service on 127.0.0.1 only; ``--loose`` and
    ``--skipApiVersionCheck`` so newer SDKs' headers are accepted."""
    argv = [str(AZURITE_BIN), "--disableTelemetry", "--silent", "--skipApiVersionCheck", "--loose"]
    argv += ["--location", str(location)]
    argv += ["--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1"]
    argv += ["--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table)]
    if in_memory:
        argv.append("--inMemoryPersistence")
    return argv
