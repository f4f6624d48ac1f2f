"""One mapping of storage failures to ``corpus_manager.errors``, for the thin path and the SDK alike, and
``Health``: whether storage still answers this run (which decides whether a failed request is retried).

No message made here holds a secret: SDK messages embed request URLs (with SAS signatures) and headers,
so only their first line goes out, redacted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import aiohttp
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from yarl import URL

from .. import storage as tuning
from ..config import ConnectionInfo, redact
from ..errors import AuthenticationFailed, Conflict, CorpusError, NotFound, StorageError, StorageUnavailable

# A request that could not reach storage (or got no answer): retried while retries are left.
NETWORK_ERRORS = (ServiceRequestError, ServiceResponseError, aiohttp.ClientError, TimeoutError, OSError)


class Health:
    """Whether storage still answers this run, shared by every request of a Storage.

    Once a request has failed to reach storage through all its retries, storage counts as ``down`` for the
    rest of the run: later requests fail at once with that reason instead of each spending its own retry
    window, so a run against a dead endpoint ends within about one request's retries (every item still
    named) and a rerun finishes the work."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info
        self.down: str | None = None  # why storage counts as down for the rest of this run, once it does
        self.probing = False  # Storage.ensure() is checking that storage answers at all
        # when each endpoint (by origin) last sent this run any byte of an answer: see STALL_LIMIT
        self.answered: dict[str, float] = {}

    def reset(self) -> None:
        self.down = None
        now = time.monotonic()
        self.answered = {origin(self.info.blob_endpoint): now, origin(self.info.table_endpoint): now}

    def heard(self, url: URL) -> None:
        self.answered[str(url.origin())] = time.monotonic()

    def silent_for(self, endpoint: str) -> float:
        """Seconds since ``endpoint`` last sent any byte of an answer (or since open())."""
        return time.monotonic() - self.answered.get(origin(endpoint), 0.0)

    def retry_allowed(self, error: BaseException | None, endpoint: str) -> bool:
        if error is None:
            return True
        # During the reachability check a refused connection is final: nothing listens there (the
        # usual cause: the emulator is not started), so the user hears it at once, not after 7 s.
        if self.probing and refused(error):
            return False
        if self.down is not None:
            return False  # another request already found storage gone: this run is ending
        return not (timed_out(error) and self.silent_for(endpoint) >= tuning.STALL_LIMIT)

    def went_down(self, message: str) -> None:
        if self.down is None:
            self.down = message

    @contextlib.contextmanager
    def translate(self, what: str, endpoint: str | None = None) -> Iterator[None]:
        """Map every failure of the requests inside to ours, naming the thing and never echoing a secret."""
        if self.down is not None:
            raise StorageUnavailable(
                f"{what}: not tried, storage stopped answering earlier in this run ({self.down}); rerun to finish"
            )
        try:
            yield
        except AuthenticationFailed:
            raise
        except StorageUnavailable as exc:
            self.went_down(str(exc))
            raise
        except CorpusError:
            raise
        except ClientAuthenticationError as exc:
            raise AuthenticationFailed(
                f"storage refused the credentials for {what} ({code_of(exc)}): check the account key, "
                "SAS token or identity"
            ) from None
        except ResourceNotFoundError as exc:
            raise NotFound(f"{what}: not found ({code_of(exc)})") from None
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise Conflict(f"{what}: changed by someone else or already exists ({code_of(exc)})") from None
        except (ServiceRequestError, ServiceResponseError, aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            error = unreachable(self.info, endpoint or self.info.blob_endpoint, what, exc)
            self.went_down(str(error))
            raise error from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise AuthenticationFailed(
                    f"storage refused the credentials for {what} (403 {code_of(exc)}): check the account key, "
                    "SAS token or identity"
                ) from None
            raise StorageError(f"{what}: storage error {exc.status_code} {code_of(exc)}") from None
        except AzureError as exc:
            raise StorageError(f"{what}: {redact(short(exc))}") from None


def unreachable(
    info: ConnectionInfo, endpoint: str, what: str, exc: BaseException, secrets: tuple[str, ...] = ()
) -> StorageUnavailable:
    """The error of a request that could not reach storage (redacted, ``secrets`` masked: some aiohttp
    errors name the URL)."""
    return StorageUnavailable(
        f"cannot reach storage at {endpoint} for {what} ({redact(why(exc), secrets)}); {emulator_hint(info)}"
    )


def http_error(what: str, status: int, code: str) -> CorpusError:
    """The error a refused thin request maps to: the same types and words as ``Health.translate``."""
    if status in (401, 403):
        return AuthenticationFailed(
            f"storage refused the credentials for {what} ({status} {code or 'HTTP'}): "
            "check the account key, SAS token or identity"
        )
    if status == 404:
        return NotFound(f"{what}: not found ({code or f'HTTP {status}'})")
    if status in (409, 412):
        return Conflict(f"{what}: changed by someone else or already exists ({code or f'HTTP {status}'})")
    return StorageError(f"{what}: storage error {status} {code}".rstrip())


def is_retriable(status: int) -> bool:
    # the blob SDK's rule (storage policies.is_retry): timeouts, throttling and 5xx but 501/505
    return status in (408, 429) or (status >= 500 and status not in (501, 505))


def emulator_hint(info: ConnectionInfo) -> str:
    if info.is_local_emulator:
        return "start the local emulator with `make azurite-start` (or `npx azurite --location .azurite`)"
    return "check the account URL, the network and the firewall"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it wraps (the SDK's inner_exception, causes, contexts), each once."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = getattr(cur, "inner_exception", None) or cur.__cause__ or cur.__context__


def refused(exc: BaseException) -> bool:
    """A connection refused (nothing listens at the endpoint), anywhere in the exception's chain."""
    return any(
        isinstance(cur, ConnectionRefusedError)
        or (isinstance(cur, aiohttp.ClientConnectorError) and isinstance(cur.os_error, ConnectionRefusedError))
        for cur in _chain(exc)
    )


def timed_out(exc: BaseException) -> bool:
    """No connection or no answer within its timeout, anywhere in the exception's chain."""
    return any(
        isinstance(cur, TimeoutError | ServiceRequestTimeoutError | ServiceResponseTimeoutError) for cur in _chain(exc)
    )


def why(exc: BaseException) -> str:
    """Why a request could not reach storage, in a few words (a timeout says how long it waited)."""
    if timed_out(exc):
        if isinstance(exc, ServiceRequestTimeoutError | aiohttp.ConnectionTimeoutError):
            return f"no connection within {tuning.CONNECT_TIMEOUT:g} s"
        return f"no answer within {tuning.READ_TIMEOUT:g} s"
    return short(exc)


def origin(endpoint: str) -> str:
    return str(URL(endpoint).origin())


def code_of(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    if code:
        return str(code)
    status = getattr(exc, "status_code", None)
    return f"HTTP {status}" if status else exc.__class__.__name__


def short(exc: BaseException) -> str:
    # The first line only, redacted: SDK messages embed request URLs (with SAS signatures) and headers.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    if inner is not None and ("Cannot connect" in str(inner) or "refused" in str(inner).lower()):
        return "connection refused"
    if "Connection refused" in text or "Cannot connect" in text:
        return "connection refused"
    return redact(text)[:200]
