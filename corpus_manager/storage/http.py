"""One retry loop for every storage request, and the thin path's requests and signatures.

``retrying`` runs one try of a request again after a connection error, a timeout or a 408/429/5xx answer,
at most RETRY_TOTAL times, RETRY_BACKOFF (+-0.5 s) apart, counting each retry in ``stats.retries``; a
timeout is retried only while its endpoint still answers (``Health.retry_allowed``). The thin blob and
table requests go through it (``send``), and so do the SDK's table calls.

A try is any coroutine: ``send`` reads a small answer whole, and a caller that streams a body (a thin Get
Blob) passes its own try built on ``Connection.session``, with its own handling of a body cut short.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import hashlib
import hmac
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple, TypeVar
from urllib.parse import quote

import aiohttp
from azure.core.exceptions import HttpResponseError
from yarl import URL

from .. import storage as tuning
from .errors import NETWORK_ERRORS, is_retriable, unreachable

if TYPE_CHECKING:
    from .clients import Connection

T = TypeVar("T")


class Answer(NamedTuple):
    """What a thin request got back: its status, x-ms-error-code, ETag and (when read) body."""

    status: int
    code: str
    etag: str | None
    body: bytes


def _status_ok(_: object) -> int:
    return 200


async def retrying(
    conn: Connection,
    endpoint: str,
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    status: Callable[[T], int] = _status_ok,
    secrets: tuple[str, ...] = (),
) -> T:
    """``attempt()``, tried again as the module docstring says. A try that raises the SDK's error for
    an answer is retried on that answer's status; one that returns is retried on ``status(result)``.
    Out of retries, a failure to reach storage raises StorageUnavailable (``secrets`` masked)."""
    for n in range(tuning.RETRY_TOTAL + 1):
        more = n < tuning.RETRY_TOTAL
        try:
            result = await attempt()
        except HttpResponseError as exc:  # an SDK call's answer, refused
            if more and exc.status_code is not None and is_retriable(exc.status_code):
                await pause(conn)
                continue
            raise
        except NETWORK_ERRORS as exc:
            if more and conn.health.retry_allowed(exc, endpoint):
                await pause(conn)
                continue
            raise unreachable(conn.info, endpoint, what, exc, secrets) from None
        if more and is_retriable(status(result)):
            await pause(conn)
            continue
        return result
    raise AssertionError("unreachable")  # the loop always returns or raises


class ConnectionDropped(aiohttp.ClientConnectionError):
    """A connection that closed under a request (reset, or closed by the server while idle in the pool):
    aiohttp's own ClientOSError or ServerDisconnectedError, re-raised as this by ``no_silent_resend``."""


async def no_silent_resend(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """A client middleware (aiohttp's public ``middlewares=``) on the shared session: aiohttp resends an
    idempotent request (GET, PUT, DELETE) once, silently, when a kept-alive connection drops under it
    (ClientOSError or ServerDisconnectedError; client.py, "retrying-requests" of RFC 9112). That resend
    is neither counted nor bounded by ours, so the error leaves the handler as ConnectionDropped, an
    error aiohttp does not resend on, and ``retrying`` retries it like any other: counted, within
    RETRY_TOTAL. Errors before a connection exists (ClientConnectorError) pass unchanged: never resent."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise ConnectionDropped(str(exc) or exc.__class__.__name__) from exc


async def pause(conn: Connection) -> None:
    conn.stats.retries += 1
    await asyncio.sleep(tuning.RETRY_BACKOFF + random.uniform(-0.5, 0.5))  # as LinearRetry(backoff, jitter 0.5)


async def send(
    conn: Connection,
    endpoint: str,
    what: str,
    method: str,
    url: Callable[[], URL],
    *,
    headers: dict[str, str],
    data: bytes = b"",
    read: bool = False,
    secrets: tuple[str, ...] = (),
) -> Answer:
    """One thin request on the shared session, retried; ``url()`` signs each try (it may add headers).
    The body is read when ``read`` or the answer is an error (drained: the connection goes back to the pool)."""

    async def once() -> Answer:
        target = url()
        conn.stats.thin_requests += 1
        async with conn.session.request(
            method, target, data=data, headers=headers, timeout=conn.request_timeout
        ) as resp:
            status = resp.status
            body = await resp.read() if read or status >= 300 else b""
            return Answer(status, resp.headers.get("x-ms-error-code") or "", resp.headers.get("ETag"), body)

    return await retrying(conn, endpoint, what, once, status=lambda a: a.status, secrets=secrets)


# ----- signatures --------------------------------------------------------------------------------
def blob_shared_key(
    account: str, key: str, method: str, url: URL, headers: dict[str, str], length: int
) -> dict[str, str]:
    """x-ms-date, x-ms-version and a Shared Key Authorization for one blob request (the SDK's signing,
    for the one container-level request the thin path makes)."""
    signed = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": tuning.API_VERSION}
    ms = sorted((k.lower(), v) for k, v in {**headers, **signed}.items() if k.lower().startswith("x-ms-"))
    resource = f"/{account}{url.raw_path}" + "".join(f"\n{k.lower()}:{v}" for k, v in sorted(url.query.items()))
    plain = {k.lower(): v for k, v in headers.items()}
    fields = [
        method,
        plain.get("content-encoding", ""),
        plain.get("content-language", ""),
        str(length) if length else "",
        plain.get("content-md5", ""),
        plain.get("content-type", ""),
        "",
        "",
        "",
        "",
        "",
        "",
    ]  # Date (x-ms-date instead), If-* and Range: unused
    text = "\n".join(fields) + "\n" + "".join(f"{k}:{v}\n" for k, v in ms) + resource
    return {**signed, "Authorization": f"SharedKey {account}:{_sign(key, text)}"}


def table_shared_key(account: str, key: str, method: str, url: URL, content_type: str) -> dict[str, str]:
    """x-ms-date and the Shared Key Authorization of one table request: the table service signs the
    verb, Content-MD5 (none), Content-Type, the date and the resource, no other header (the SDK's
    SharedKeyCredentialPolicy for tables does the same)."""
    date = email.utils.formatdate(usegmt=True)
    text = f"{method}\n\n{content_type}\n{date}\n/{account}{url.raw_path}"
    return {"x-ms-date": date, "Authorization": f"SharedKey {account}:{_sign(key, text)}"}


def container_sas(
    account: str, key: str, container: str, permission: str, expiry: float, version: str | None = None
) -> str:
    """A service SAS for one container, signed with the account key as the blob SDK's
    generate_container_sas does (minted here so an upload never imports the blob SDK)."""
    version = version or tuning.API_VERSION
    se = datetime.datetime.fromtimestamp(int(expiry), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # sp, st, se, resource, si, sip, spr, sv, sr, snapshot time, ses, rscc, rscd, rsce, rscl, rsct
    text = "\n".join(
        [permission, "", se, f"/blob/{account}/{container}", "", "", "", version, "c", "", "", "", "", "", "", ""]
    )
    return f"se={quote(se, safe='')}&sp={permission}&sv={version}&sr=c&sig={quote(_sign(key, text), safe='')}"


def _sign(key: str, text: str) -> str:
    """The base64 HMAC-SHA256 of ``text`` by the (base64) account key: what Shared Key and a SAS carry."""
    return base64.b64encode(hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()).decode()
