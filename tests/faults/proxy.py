"""A fault-injecting HTTP proxy between the tool and Azurite, for the fault tests.

It speaks just enough HTTP/1.1 to see each request on a kept-alive connection (Content-Length and
chunked bodies, HEAD, 1xx/204/304), so it can decide per request, with a seeded RNG, to:

- ``500`` / ``503``: answer with a storage-style error without forwarding (the service never saw it);
- ``reset``: drop the connection with a TCP RST before forwarding;
- ``lost``: forward the request, then reset instead of relaying the answer (it *did* happen: a
  retried insert meets its own row, a retried conditional update its own ETag);
- ``stall``: read the request and answer nothing for ``stall_seconds`` (longer than the tool's read
  timeout), then drop the connection.

It can also go down as a whole: ``refuse()`` closes the listening socket and every open connection
(clients get ECONNREFUSED, like a closed port) until ``restore()``; or go silent: once it has seen
``freeze_after`` requests it reads every later request and never answers it (a hung endpoint that
still accepts connections), counting them in ``frozen``. ``hold`` makes each blob download wait until
that many wait at once (or ``hold_seconds`` pass), so a test can see how many ran in parallel.
``truncate_next`` cuts the next that many blob downloads mid-body: the answer's head and half its body are
relayed, then the connection is reset (a transfer that dies part-way, which no other fault produces). It runs
its own event loop in a thread, so the tool under test can run ``asyncio.run`` in the test's thread.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

FAULTS = ("500", "503", "reset", "lost", "stall")

_BLOB_ERROR = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>%s</Code>'
    b"<Message>injected by the fault proxy</Message></Error>"
)
_TABLE_ERROR = b'{"odata.error":{"code":"%s","message":{"lang":"en-US","value":"injected by the fault proxy"}}}'


@dataclass
class FaultPlan:
    """Which fraction of requests fail and how; the same seed gives the same sequence of decisions."""

    seed: int
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULTS
    stall_seconds: float = 3.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULTS)
        assert not unknown, f"unknown fault kinds {unknown}"
        self.rng = random.Random(self.seed)

    def draw(self) -> str | None:
        if self.rate and self.rng.random() < self.rate:
            return self.rng.choice(self.kinds)
        return None


class _Closed(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise _Closed from exc
    except asyncio.LimitOverrunError as exc:
        raise _Closed from exc


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    out = {}
    for line in lines:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip().lower()] = v.strip()
    return out


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], *, until_eof: bool = False) -> bytes:
    """The raw body bytes as they came (chunked framing kept), so they can be forwarded unchanged."""
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                line = await reader.readuntil(b"\r\n")
                parts.append(line)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        trailer = await reader.readuntil(b"\r\n")
                        parts.append(trailer)
                        if trailer == b"\r\n":
                            return b"".join(parts)
                parts.append(await reader.readexactly(size + 2))
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        if until_eof:
            return await reader.read()
        return b""
    except asyncio.IncompleteReadError as exc:
        raise _Closed from exc


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed or overloaded peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """One listening port forwarding to one upstream port (run one for blobs and one for tables)."""

    def __init__(
        self, upstream_port: int, plan: FaultPlan, loop: asyncio.AbstractEventLoop, *, table: bool = False
    ) -> None:
        self.upstream_port = upstream_port
        self.plan = plan
        self.loop = loop
        self.table = table
        self.port = 0
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []  # (fault, request line) of every fault injected
        self.freeze_after: int | None = None  # requests answered before the endpoint goes silent
        self.frozen = 0  # requests read while silent (never answered)
        self.hold = 0  # blob GETs held until this many wait at once (0: off)
        self.hold_seconds = 5.0
        self.truncate_next = 0  # blob GETs still to cut off mid-body
        self.truncated = 0  # blob GETs cut off so far
        self.held = 0  # blob GETs waiting now
        self.peak_held = 0
        self._released: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port or 0, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Down: stop listening and cut every connection (new connects are refused)."""
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                _reset(w)
            await self._server.wait_closed()
            self._server = None

    async def _hold(self) -> None:
        if self._released is None or self._released.is_set():
            self._released = asyncio.Event()
        released = self._released
        self.held += 1
        self.peak_held = max(self.peak_held, self.held)
        if self.held >= self.hold:
            released.set()
        with suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), self.hold_seconds)
        self.held -= 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_reader: asyncio.StreamReader | None = None
        up_writer: asyncio.StreamWriter | None = None
        try:
            while True:
                head = await _read_head(reader)
                headers = _headers(head)
                method = head.split(b" ", 1)[0].upper()
                if "100-continue" in headers.get("expect", "").lower():
                    raise AssertionError("the proxy does not do Expect: 100-continue")
                body = await _read_body(reader, headers)
                if self.freeze_after is not None and self.requests >= self.freeze_after:
                    self.frozen += 1
                    await asyncio.Event().wait()  # silent until the proxy stops (the task is cancelled)
                self.requests += 1
                line = head.split(b"\r\n", 1)[0]
                if self.hold and method == b"GET" and b"restype=" not in line and b"comp=" not in line:
                    await self._hold()  # a blob download (not a listing or a container request)
                fault = self.plan.draw()
                if fault is not None:
                    self.faults[fault] += 1
                    self.log.append((fault, head.split(b"\r\n", 1)[0].decode("latin-1")))
                if fault in ("500", "503"):
                    code = b"InternalError" if fault == "500" else b"ServerBusy"
                    payload = (_TABLE_ERROR if self.table else _BLOB_ERROR) % code
                    ctype = b"application/json" if self.table else b"application/xml"
                    reason = b"Internal Server Error" if fault == "500" else b"Service Unavailable"
                    writer.write(
                        b"HTTP/1.1 "
                        + fault.encode()
                        + b" "
                        + reason
                        + b"\r\nContent-Type: "
                        + ctype
                        + b"\r\nx-ms-error-code: "
                        + code
                        + b"\r\nContent-Length: "
                        + str(len(payload)).encode()
                        + b"\r\n\r\n"
                        + payload
                    )
                    await writer.drain()
                    continue
                if fault == "reset":
                    _reset(writer)
                    return
                if fault == "stall":
                    await asyncio.sleep(self.plan.stall_seconds)
                    _reset(writer)
                    return
                # Azurite (Node) closes a connection idle for 5 s; the proxy's own reuse of such a connection
                # must not become a fault nobody planned (the client would see it and retry, one retry more
                # than the faults drawn). A reused connection that fails before any answer byte is opened
                # anew and the request sent once more: Node closed it unread, so it was never processed.
                for fresh in (False, True):
                    if fresh or up_writer is None or up_reader is None or up_reader.at_eof():
                        if up_writer is not None:
                            up_writer.close()
                        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                        fresh = True
                    try:
                        up_writer.write(head + body)
                        await up_writer.drain()
                        resp_head = await _read_head(up_reader)
                        break
                    except (_Closed, ConnectionError):
                        if fresh:
                            raise
                status = int(resp_head.split(b" ", 2)[1])
                resp_headers = _headers(resp_head)
                no_body = method == b"HEAD" or status in (204, 304) or 100 <= status < 200
                resp_body = b"" if no_body else await _read_body(up_reader, resp_headers, until_eof=True)
                if fault == "lost":
                    _reset(writer)
                    return
                is_blob_get = method == b"GET" and b"restype=" not in line and b"comp=" not in line
                if self.truncate_next and is_blob_get and status in (200, 206) and len(resp_body) > 1:
                    self.truncate_next -= 1
                    self.truncated += 1
                    self.log.append(("truncate", line.decode("latin-1")))
                    writer.write(resp_head + resp_body[: len(resp_body) // 2])
                    await writer.drain()
                    _reset(writer)
                    return
                writer.write(resp_head + resp_body)
                await writer.drain()
                if resp_headers.get("connection", "").lower() == "close":
                    return
        except (_Closed, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy is stopping: a silent or held request ends here, not as a logged error
        finally:
            self._writers.discard(writer)
            for w in (writer, up_writer):
                if w is not None and not w.transport.is_closing():
                    w.close()


class FaultyStorage:
    """Blob and Table proxies in front of an Azurite, on a loop of their own in a daemon thread."""

    def __init__(self, blob_port: int, table_port: int, plan: FaultPlan, account: str, key: str) -> None:
        self.plan = plan
        self.account = account
        self.key = key
        self.loop = asyncio.new_event_loop()
        self.blob = FaultProxy(blob_port, plan, self.loop)
        self.table = FaultProxy(table_port, plan, self.loop, table=True)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)  # type: ignore[arg-type]

    def start(self) -> FaultyStorage:
        self._thread.start()
        self._call(self.blob.start())
        self._call(self.table.start())
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _shutdown(self) -> None:
        await self.blob.refuse()
        await self.table.refuse()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:  # stalled handlers: end them here, not at garbage collection on a closed loop
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def refuse(self) -> None:
        """Storage down: both ports refuse connections."""
        self._call(self.blob.refuse())
        self._call(self.table.refuse())

    def restore(self) -> None:
        """Storage back, on the same ports."""
        self._call(self.blob.start())
        self._call(self.table.start())

    def set_rate(self, rate: float) -> None:
        self.plan.rate = rate  # a float store: atomic enough across threads

    @property
    def requests(self) -> int:
        return self.blob.requests + self.table.requests

    @property
    def faults(self) -> Counter[str]:
        return self.blob.faults + self.table.faults

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob.port}/{self.account};"
            f"TableEndpoint=http://127.0.0.1:{self.table.port}/{self.account};"
        )


@contextmanager
def faulty_storage(blob_port: int, table_port: int, plan: FaultPlan, account: str, key: str) -> Iterator[FaultyStorage]:
    proxy = FaultyStorage(blob_port, table_port, plan, account, key).start()
    try:
        yield proxy
    finally:
        proxy.stop()
