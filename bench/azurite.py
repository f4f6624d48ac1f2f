"""The storage the contenders write to: an Azurite this harness starts, or one named by the environment.

``BENCH_CONNECTION_STRING`` (an account-key connection string with BlobEndpoint and TableEndpoint)
points the bench at a running emulator or account instead; then the server's CPU is not measured.
Every contender gets the same endpoint; rclone, AzCopy and the bare-PUT loop get a container SAS
(Debian's rclone 1.60 builds a broken URL from its ``use_emulator`` option, so it needs one anyway).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ACCOUNT/KEY: Azurite's published development account; not a secret, and the bench never targets anything
# else unless BENCH_CONNECTION_STRING says so. Re-exported: the other bench modules import ROOT etc. from here.
from .azurite_argv import ACCOUNT, AZURITE_BIN, KEY, azurite_argv, free_port
from .azurite_argv import ROOT as ROOT

ENV_CONNECTION = "BENCH_CONNECTION_STRING"


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited with {proc.returncode} before opening port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"Azurite did not open port {port} within {timeout:.0f} s")


@dataclass
class Endpoint:
    account: str
    key: str
    blob_endpoint: str
    table_endpoint: str
    server_pid: int | None = None  # set when the harness owns the server: its CPU gets measured
    _blob: Any = field(default=None, repr=False)
    _tables: Any = field(default=None, repr=False)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.blob_endpoint};TableEndpoint={self.table_endpoint};"
        )

    @property
    def blob_service(self) -> Any:
        if self._blob is None:
            from azure.storage.blob import BlobServiceClient

            self._blob = BlobServiceClient(
                self.blob_endpoint, credential={"account_name": self.account, "account_key": self.key}
            )
        return self._blob

    @property
    def table_service(self) -> Any:
        if self._tables is None:
            from azure.core.credentials import AzureNamedKeyCredential
            from azure.data.tables import TableServiceClient

            self._tables = TableServiceClient(
                self.table_endpoint, credential=AzureNamedKeyCredential(self.account, self.key)
            )
        return self._tables

    def container_sas_url(self, container: str, hours: float = 6.0) -> str:
        """Create the container if needed and return its URL with a read/write/list SAS."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        with contextlib.suppress(ResourceExistsError):
            self.blob_service.create_container(container)
        sas = generate_container_sas(
            self.account,
            container,
            account_key=self.key,
            permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True),
            expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours),
        )
        return f"{self.blob_endpoint}/{container}?{sas}"

    def count_blobs(self, container: str) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return sum(1 for _ in self.blob_service.get_container_client(container).list_blobs())
        except ResourceNotFoundError:
            return 0

    def drop(self, container: str, tables: tuple[str, ...] = ()) -> None:
        """Delete a contender's container (and a corpus's tables) so Azurite's state stays small."""
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self.blob_service.delete_container(container)
        for table in tables:
            self.table_service.delete_table(table)  # a no-op for a table that does not exist

    def close(self) -> None:
        for client in (self._blob, self._tables):
            if client is not None:
                client.close()


def parse_connection_string(text: str) -> Endpoint:
    parts = {}
    for piece in filter(None, (p.strip() for p in text.split(";"))):
        key, _, value = piece.partition("=")
        parts[key.strip().lower()] = value.strip()
    missing = [k for k in ("accountname", "accountkey", "blobendpoint", "tableendpoint") if not parts.get(k)]
    if missing:
        raise SystemExit(
            f"bench: {ENV_CONNECTION} needs AccountName, AccountKey, BlobEndpoint and "
            f"TableEndpoint (missing: {', '.join(missing)})"
        )
    return Endpoint(
        parts["accountname"], parts["accountkey"], parts["blobendpoint"].rstrip("/"), parts["tableendpoint"].rstrip("/")
    )


class Azurite:
    """An Azurite of our own on free ports, data in ``location``; stopped (and its data dropped) by stop()."""

    def __init__(self, location: Path, *, in_memory: bool = False) -> None:
        self.location = location
        self.in_memory = in_memory
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = (free_port(), free_port(), free_port())

    def start(self) -> Endpoint:
        if not AZURITE_BIN.exists():
            raise SystemExit(f"bench: {AZURITE_BIN} is missing: run `make setup` (it runs `npm ci`)")
        self.location.mkdir(parents=True, exist_ok=True)
        blob, queue, table = self.ports
        argv = azurite_argv(self.location, blob, queue, table, in_memory=self.in_memory)
        log = open(self.location / "azurite.log", "wb")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        _wait_port(blob, self.proc)
        _wait_port(table, self.proc)
        return Endpoint(
            ACCOUNT,
            KEY,
            f"http://127.0.0.1:{blob}/{ACCOUNT}",
            f"http://127.0.0.1:{table}/{ACCOUNT}",
            server_pid=self.proc.pid,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None


def version() -> str:
    try:
        out = subprocess.run([str(AZURITE_BIN), "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
