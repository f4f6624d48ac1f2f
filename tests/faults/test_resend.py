"""A connection reset under a request on a kept-alive connection is retried by our loop, counted, never
resent silently by aiohttp (which resends an idempotent request once on its own: ``storage.http.
no_silent_resend`` turns that off through aiohttp's public client middlewares)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from corpus_manager.config import parse_connection_string
from corpus_manager.storage import Storage

from ..conftest import ACCOUNT, KEY, Azurite
from .proxy import FaultPlan, faulty_storage


class ScriptedPlan(FaultPlan):
    """The faults of the requests in the order they come (None: forwarded), then none."""

    def __init__(self, script: list[str | None]) -> None:
        super().__init__(seed=0)
        self.script = list(script)

    def draw(self) -> str | None:
        return self.script.pop(0) if self.script else None


@pytest.mark.parametrize("fast_path", [True, False], ids=["thin", "sdk"])
def test_a_reset_on_a_reused_connection_is_one_counted_retry(
    azurite: Azurite, corpus_name: str, fast_path: bool
) -> None:
    """The same requests on either path (``fast_path=False``: every request through the SDK)."""
    tables: list[str | None] = [None, None, None]  # the three tables made
    blobs = [None, None, "reset"]  # the container, blob a, then blob b's first try (on a's connection)
    rows = [None, None, "reset"]  # blob b's retry, row 1, row 2's first try (a PUT, on row 1's connection)
    plan = ScriptedPlan([*tables, *blobs, *rows])
    with faulty_storage(azurite.blob_port, azurite.table_port, plan, ACCOUNT, KEY) as proxy:

        async def go() -> tuple[int, str | None]:
            info = parse_connection_string(proxy.connection_string)
            async with Storage(info, corpus_name, fast_path=fast_path) as storage:
                await storage.ensure(container=False)
                await storage.ensure_container()
                for name in ("a", "b"):
                    data = name.encode()
                    md5 = hashlib.md5(data).digest()
                    await storage.put_blob(name, data, content_type="text/plain", md5=md5)
                for rk in ("1", "2"):
                    row = {"PartitionKey": "p", "RowKey": rk, "Path": rk}
                    await storage.upsert_entity(storage.sets, row, merge=False)
                got = await storage.get_entity(storage.sets, "p", "2")
                assert storage.fast_path is fast_path
                assert (storage.stats.thin_requests > 0) is fast_path
                return storage.stats.retries, got["Path"] if got else None

        retries, path = asyncio.run(go())
    assert plan.script == [] and dict(proxy.faults) == {"reset": 2}
    # each reset cost exactly one counted retry: with aiohttp's silent resend, 0 and 2 requests fewer
    assert retries == 2, retries
    assert (proxy.blob.requests, proxy.table.requests) == (4, 7), (proxy.blob.requests, proxy.table.requests)
    assert path == "2"
