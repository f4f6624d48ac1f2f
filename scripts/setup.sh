#!/usr/bin/env bash
# Sets up everything the demo and the tests need on a bare Debian machine; safe to rerun.
# EXTRA_APT adds packages (the benchmarks ask for rclone); PIP_EXTRAS picks the pip extras (default
# test,distributed: `make test` runs the Dask tests too).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# chromium: the report test drives it headless through Playwright (its own browser download is not reachable)
apt_pkgs=(imagemagick libmagickwand-dev chromium ${EXTRA_APT:-})
command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs npm)
# Debian's own python3 makes venvs only with python3-venv (ensurepip) installed
"$PY" -c "import ensurepip" >/dev/null 2>&1 || apt_pkgs+=(python3-venv)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]} with apt" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Azurite (and the bench's AzCopy) from npm, pinned in package.json / package-lock.json.
if [ ! -x node_modules/.bin/azurite ] || [ package.json -nt node_modules/.stamp ]; then
    echo "setup: installing npm dev dependencies" >&2
    if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
    touch node_modules/.stamp
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
fi
# The stamp holds the extras it was made with: a venv set up before an extra was added gets it too.
extras=${PIP_EXTRAS:-test,distributed}
if [ ! -f .venv/.stamp ] || [ pyproject.toml -nt .venv/.stamp ] || [ "$(cat .venv/.stamp)" != "$extras" ]; then
    echo "setup: pip install -e .[$extras]" >&2
    .venv/bin/pip install -q -e ".[$extras]"
    echo "$extras" > .venv/.stamp
fi
