#!/usr/bin/env bash
# The main job on a local Azurite: make a sample corpus, upload it, upload again (nothing to do),
# transform it into a new versioned set, query both, and pull a slice back out with its manifest;
# then pin the originals as a release, show it, download its train split as an image folder, export it
# as WebDataset shards and stream it as a training loop would.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
scripts/azurite.sh start
export AZURE_STORAGE_CONNECTION_STRING="UseDevelopmentStorage=true"
export CORPUS_NAME=demo
python scripts/make_sample.py .demo/photos

run() { echo "\$ $*"; "$@"; echo; }

run corpus upload .demo/photos --version v1
echo '# again: nothing to upload'
run corpus upload .demo/photos --version v1
run corpus transform sketch --version 1 --op resize=64x64 --op charcoal=1 --op format=png
run corpus query --tag birds --format table
run corpus query --tag birds --transform sketch@1 --format table
run corpus download --tag birds --transform sketch@1 --out .demo/out --manifest .demo/out/manifest.jsonl
echo '$ head -n 1 .demo/out/manifest.jsonl'
head -n 1 .demo/out/manifest.jsonl
echo
run corpus status
run corpus release create demo-v1 --originals --split train=60,val=20,test=20 --seed 1
run corpus release show demo-v1
run corpus download --release demo-v1 --split train --layout imagefolder --out .demo/release
echo '$ find .demo/release/train -type f | sort'
find .demo/release/train -type f | sort
echo '# see it: a static report (charts, a contact sheet per set with its sketches beside it)'
run corpus report --out .demo/report
echo
echo '# training: the release as WebDataset shards (locally, then into the container), then streamed'
run corpus export --release demo-v1 --format webdataset --shard-size 1MB --out .demo/shards
echo '$ ls .demo/shards'
ls .demo/shards
echo
run corpus export --release demo-v1 --format webdataset
echo '$ python  # iter_release: the train split, straight from blob storage'
python - <<'PY'
from corpus_manager import iter_release

for data, record in iter_release("demo-v1", split="train", shuffle=True, seed=0):
    print(f"{record['label']:8} {len(data):6} bytes  {record['blob_name']}")
PY
