#!/usr/bin/env bash
# The main job on a local Azurite: make a sample corpus, upload it, upload again (nothing to do).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
scripts/azurite.sh start
export AZURE_STORAGE_CONNECTION_STRING="UseDevelopmentStorage=true"
export CORPUS_NAME=demo
python scripts/make_sample.py .demo/photos

echo '$ corpus upload .demo/photos --version v1'
corpus upload .demo/photos --version v1
echo
echo '$ corpus upload .demo/photos --version v1   # again: nothing to upload'
corpus upload .demo/photos --version v1
