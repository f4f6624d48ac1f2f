"""Blob and Table access: the only package that imports ``azure.*``.

One shared aiohttp session (its pool sized to the run's parallelism) serves one container client
and the table clients of a corpus for a whole run. Retries are explicit and short (the SDK's
defaults wait 15 s and more between tries), and every retry is counted in ``stats.retries``. Every
failure is translated here into a ``corpus_manager.errors`` exception whose message holds no secret.

Modules, one job each:

- ``clients``: the connection and credentials, the Storage lifecycle (open, close, ensure, pool size);
- ``errors``: one mapping of failures to our exceptions, and whether storage still answers this run;
- ``http``: one retry loop (backoff, stall handling) for every request, thin or SDK; Shared Key and SAS;
- ``blobs``: put (one request or blocks), get, download, list, delete;
- ``reads``: the thin Get Blob and List Blobs (``listing``: the List Blobs XML, parsed safely with expat);
- ``tables``: the table handles (``Table``), entity CRUD, group-commit batches, queries;
- ``entities``: rows <-> the service's types (Int64), the OData filter (``Where``), batch bodies.

Blob and table writes do not go through the SDK by default but are thin requests on the shared session
(``http``; why: the docstrings of ``Storage.put_blob`` and ``tables``). ``Storage(..., fast_path=False)``,
or ``CORPUS_STORAGE_SDK=1`` in the environment, sends every request through the SDK instead (as with a
bearer token from ``--account-url``), with the same error mapping and retries.

The tunables below are read through this package at call time, so a test can lower them here.
"""

from __future__ import annotations

import logging

# The SDK logs request URLs and headers at DEBUG; keep them quiet so no signature can leak.
for _name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Short, bounded retries: a blip of a few seconds is survived, a dead endpoint fails a request
# after about RETRY_TOTAL * RETRY_BACKOFF seconds instead of minutes. Every kind of failure (refused or reset
# connection, no answer within READ_TIMEOUT, 408/429/5xx) gets the same RETRY_TOTAL retries, whatever the
# method (the SDK defaults give connection errors only 3 and never retry a table POST: insert, batch).
RETRY_TOTAL = 5
RETRY_BACKOFF = 1.0
CONNECT_TIMEOUT = 5
# No byte of an answer for this long: the request is abandoned and retried (a stalled connection
# is never waited on forever). Read at Storage.open(), so tests can shorten it.
READ_TIMEOUT = 10
# A request that got no answer (a timeout) is retried only while its endpoint (blob or table) has
# answered something, to this run, within the last STALL_LIMIT seconds: one stalled connection is
# retried, an endpoint that went silent fails the run about STALL_LIMIT s after its last answer
# instead of after every request's whole retry budget of timeouts (minutes). Read at each retry.
STALL_LIMIT = 30.0
PROBE_TIMEOUT = 5.0
TAG_BATCH = 100  # entity group transactions: at most 100 rows of one partition
API_VERSION = "2023-11-03"  # the blob API the thin path speaks; any version the service knows would do
TABLE_API_VERSION = "2019-02-02"  # the table API version the SDK speaks; the thin writes speak it too
SAS_LIFETIME = 6 * 3600  # a run's container SAS; minted again when less than SAS_RENEW is left
SAS_RENEW = 3600
# Big files: above BLOCK_THRESHOLD a file goes up as blocks of BLOCK_SIZE (Put Block, then one Put Block
# List), read from disk as each block's turn comes, at most BLOCKS_IN_FLIGHT of them per file; below it,
# as one Put Blob from memory. Read at call time, so tests can lower them.
# 32 MiB, measured (`python -m bench --suite bigfiles`, its threshold probe, 3 runs; bench/README.md,
# "Big files"): on Azurite, 8 files at once, one Put Blob is faster up to 8 MiB (one request instead of
# two; blocks at 0.75-0.91x, medians), the two are even at 16 and 32 MiB (1.07x, 1.01x), and from 64 MiB
# blocks win in every run (1.24-1.32x) at a third of the client CPU (aiohttp sends one big body slower
# than several smaller ones). 32 MiB, the top of the even range: no file that is faster as blocks goes
# as one Put Blob, whose memory (its whole file) is no more than a big file's 4 blocks in flight. Every
# photo stays one request; Azure's own single-request limit (5,000 MiB) is far above.
BLOCK_THRESHOLD = 32 * 1024 * 1024
# 8 MiB blocks: 50,000 blocks (the service's limit per blob) make 390 GiB, and with them the big files
# of the bench go up at 2.6x rclone's rate, so bigger blocks (more memory) were not needed; 4 in flight
# per file keep its upload from waiting on one block's round trip, and hold at most 32 MiB of it.
BLOCK_SIZE = 8 * 1024 * 1024
BLOCKS_IN_FLIGHT = 4
# Downloads: the first request reads at most this much, then chunks of DOWNLOAD_CHUNK, one at a time,
# so a download holds about 12 MiB whatever the blob's size (the SDK's defaults: 32 MiB, then 4 MiB).
DOWNLOAD_FIRST = 8 * 1024 * 1024
DOWNLOAD_CHUNK = 4 * 1024 * 1024
# The thin GET hands a body up to this size to its sink in one call (one thread hop and one write for a
# photo); bigger ones go in chunks of at most STREAM_CHUNK (and DOWNLOAD_CHUNK), written as they arrive.
# 256 KiB, measured (200 files of 2 MB, 32 at once, on Azurite; bench/README.md, "Download"): holding a
# 2 MB body whole and writing it in one call cost twice the kernel CPU (a fresh multi-MB buffer per file)
# and ~1.3x the wall of streaming it in 256 KiB chunks; 128 KiB chunks were no faster (more hand-offs).
# A List Blobs page holds up to LIST_PAGE entries (the service's maximum: one request per set of up to
# 5,000 images).
DOWNLOAD_WHOLE = 256 * 1024
STREAM_CHUNK = 256 * 1024
LIST_PAGE = 5000
# The environment switch to the SDK for every request (see above): "1", "true" or "yes".
SDK_ENV = "CORPUS_STORAGE_SDK"

# The package's API (imported after the tunables: the modules read them from here).
from .blobs import BlobInfo, Blobs, block_id, read_range  # noqa: E402
from .clients import StorageStats, Table  # noqa: E402
from .entities import Row, Where, and_, eq, etag_of, ge, lt  # noqa: E402
from .http import container_sas  # noqa: E402
from .tables import Tables  # noqa: E402


class Storage(Blobs, Tables):
    """Access to one corpus: its container and tables (``sets``, ``transforms``, ``tags``), over one
    connection (``clients.Connection``: open, close, ensure, pool size, ``fast_path``)."""


__all__ = [
    "API_VERSION",
    "BLOCKS_IN_FLIGHT",
    "BLOCK_SIZE",
    "BLOCK_THRESHOLD",
    "CONNECT_TIMEOUT",
    "DOWNLOAD_CHUNK",
    "DOWNLOAD_FIRST",
    "DOWNLOAD_WHOLE",
    "LIST_PAGE",
    "PROBE_TIMEOUT",
    "READ_TIMEOUT",
    "RETRY_BACKOFF",
    "RETRY_TOTAL",
    "SDK_ENV",
    "STALL_LIMIT",
    "STREAM_CHUNK",
    "TAG_BATCH",
    "BlobInfo",
    "Row",
    "Storage",
    "StorageStats",
    "Table",
    "Where",
    "and_",
    "block_id",
    "container_sas",
    "eq",
    "etag_of",
    "ge",
    "lt",
    "read_range",
]
