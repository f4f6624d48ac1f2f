"""The outside tools the bench compares against or profiles with, found or installed on first use.

rclone comes from Debian (``make bench`` installs it); AzCopy ships as a binary inside an npm
package, installed into ``.bench/npm`` (not the project's package.json, which holds only what the
tests need); py-spy comes from PyPI into the running venv. Each is installed only when missing,
so ``make bench`` works on a clean clone and costs nothing on a rerun.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

from .azurite import ROOT

BENCH_DIR = ROOT / ".bench"
AZCOPY_PACKAGE = "@azure-tools/azcopy-linux"
AZCOPY_VERSION = "10.32.2"
NPM_PREFIX = BENCH_DIR / "npm"
PY_SPY = "py-spy>=0.4"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def rclone() -> str:
    exe = shutil.which("rclone")
    if not exe:
        raise SystemExit("bench: rclone is missing: `make bench` installs it (apt-get install rclone)")
    return exe


def rclone_version() -> str:
    return _first_line([rclone(), "version"])


def write_rclone_config(path: Path, sas_url: str) -> None:
    """One remote named ``dst`` for one container, by SAS URL (rclone 1.60's use_emulator is broken)."""
    path.write_text(f"[dst]\ntype = azureblob\nsas_url = {sas_url}\n")
    path.chmod(0o600)  # it holds a SAS


def azcopy() -> str:
    """The pinned AzCopy binary, installed from npm into .bench/npm when missing."""
    package = NPM_PREFIX / "node_modules" / AZCOPY_PACKAGE
    found = sorted(package.glob("dist/bin/azcopy*")) if package.exists() else []
    if not found:
        npm = shutil.which("npm")
        if not npm:
            raise SystemExit("bench: npm is missing (needed to install AzCopy): run `make setup`")
        print(f"bench: installing {AZCOPY_PACKAGE}@{AZCOPY_VERSION} into {NPM_PREFIX}", flush=True)
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(NPM_PREFIX),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                f"{AZCOPY_PACKAGE}@{AZCOPY_VERSION}",
            ],
            check=True,
        )
        found = sorted(package.glob("dist/bin/azcopy*"))
        if not found:
            raise SystemExit(f"bench: {AZCOPY_PACKAGE} installed but holds no azcopy binary")
    exe = found[0]
    # The npm tarball does not keep the executable bit.
    mode = exe.stat().st_mode
    if not mode & stat.S_IXUSR:
        exe.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(exe)


def azcopy_version() -> str:
    return _first_line([azcopy(), "--version"])


def py_spy() -> str:
    """py-spy next to the running interpreter, pip-installed into this venv when missing."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        found = shutil.which("py-spy")
        if found:
            return found
        print(f"bench: installing {PY_SPY} into {sys.prefix}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PY_SPY], check=True)
    return str(exe)
