"""Settings from options and the environment, and the redaction that keeps secrets out of text."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .errors import ConfigError

DEFAULT_CONNECTION_STRING = "UseDevelopmentStorage=true"
DEFAULT_CORPUS = "images"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL_ENV = "CORPUS_ACCOUNT_URL"
CORPUS_ENV = "CORPUS_NAME"
CORPUS_NAME_RE = re.compile(r"^[a-z][a-z0-9]{2,39}$")

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})  # an emulator's host: path-style URLs

# Azurite's published well-known development account (not a secret, but still never printed).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def development_connection_string(host: str = "127.0.0.1", blob_port: int = 10000, table_port: int = 10002) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/{AZURITE_ACCOUNT};"
        f"TableEndpoint=http://{host}:{table_port}/{AZURITE_ACCOUNT};"
    )


@dataclass(frozen=True)
class ConnectionInfo:
    """Where the account is and how to authenticate. Its repr never shows the secret."""

    blob_endpoint: str
    table_endpoint: str
    account_name: str
    account_key: str | None = None
    sas_token: str | None = None
    use_identity: bool = False

    def __repr__(self) -> str:  # secrets stay out of tracebacks and logs
        auth = "identity" if self.use_identity else ("key" if self.account_key else "sas")
        return f"ConnectionInfo(blob={self.blob_endpoint!r}, table={self.table_endpoint!r}, auth={auth})"

    @property
    def is_local_emulator(self) -> bool:
        host = urlsplit(self.blob_endpoint).hostname or ""
        return host in _LOCAL_HOSTS or self.account_name == AZURITE_ACCOUNT


def parse_connection_string(conn_str: str) -> ConnectionInfo:
    """Parse an Azure Storage connection string (and Azurite's shorthand) without echoing it."""
    text = conn_str.strip()
    if not text:
        raise ConfigError(
            "the connection string is empty; set AZURE_STORAGE_CONNECTION_STRING or pass --connection-string"
        )
    parts: dict[str, str] = {}
    for piece in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = piece.partition("=")
        if not sep or not key:
            raise ConfigError(
                "the connection string is malformed: expected key=value pairs "
                "separated by ';' (e.g. DefaultEndpointsProtocol=https;AccountName=...;"
                "AccountKey=...)"
            )
        parts[key.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        proxy = parts.get("developmentstorageproxyuri")
        host = urlsplit(proxy).hostname if proxy else "127.0.0.1"
        return parse_connection_string(development_connection_string(host or "127.0.0.1"))
    account = parts.get("accountname", "")
    account_key = parts.get("accountkey") or None
    sas = parts.get("sharedaccesssignature") or None
    protocol = parts.get("defaultendpointsprotocol", "https")
    suffix = parts.get("endpointsuffix", "core.windows.net")
    blob = parts.get("blobendpoint") or (f"{protocol}://{account}.blob.{suffix}" if account else "")
    table = parts.get("tableendpoint") or (f"{protocol}://{account}.table.{suffix}" if account else "")
    if not blob or not table:
        raise ConfigError(
            "the connection string names no account: it needs AccountName (or BlobEndpoint and TableEndpoint)"
        )
    blob = check_endpoint(blob, "the connection string's BlobEndpoint")
    table = check_endpoint(table, "the connection string's TableEndpoint")
    if not account_key and not sas:
        raise ConfigError("the connection string has neither AccountKey nor SharedAccessSignature")
    if account_key:
        import base64
        import binascii

        try:
            base64.b64decode(account_key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the connection string's AccountKey is not valid base64") from None
    if not account:
        account = (urlsplit(blob).hostname or "").split(".")[0]
    return ConnectionInfo(blob.rstrip("/"), table.rstrip("/"), account, account_key, sas.lstrip("?") if sas else None)


def table_endpoint_for(account_url: str) -> str:
    """Derive the Table endpoint from a Blob endpoint: Azure's `.blob.` host, or a local emulator's
    port + 2 (Azurite's layout: blob 10000, table 10002; moved ports keep that offset)."""
    parts = urlsplit(account_url.rstrip("/"))
    host = parts.netloc
    if ".blob." in host:
        host = host.replace(".blob.", ".table.", 1)
    elif parts.port is not None and (parts.hostname or "") in _LOCAL_HOSTS:
        host = host.rsplit(":", 1)[0] + f":{parts.port + 2}"
    else:
        raise ConfigError(
            f"cannot derive the Table endpoint from {redact(account_url)}: expected a "
            "https://ACCOUNT.blob.core.windows.net URL"
        )
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_endpoint(url: str, what: str) -> str:
    """An http(s) URL with a host and a valid port, else ConfigError: a bad endpoint is a usage error
    found before any request (nothing is written), not an internal error in the middle of a run."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise ConfigError(f"{what} {redact(url)!r} has an invalid port: use 1-65535") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an http(s) URL with a host, got {redact(url)!r}")
    if port == 0:
        raise ConfigError(f"{what} {redact(url)!r} has an invalid port: use 1-65535")
    return url.strip()


def _from_account_url(account_url: str) -> ConnectionInfo:
    """``--account-url``: the blob endpoint, reached with azure-identity; or, when it carries a SAS
    token (``?sv=...&sig=...``), with that token. A SAS in the URL is used, never dropped: a user who
    pastes a SAS URL (as AzCopy takes them) means it. It must be an account SAS for the Blob and Table
    services (``ss`` holding ``b`` and ``t``): a corpus is a container and tables."""
    url = account_url.strip()
    if not url:
        raise ConfigError("--account-url is empty: give the blob endpoint, e.g. https://ACCOUNT.blob.core.windows.net")
    if not re.match(r"^https?://", url, re.IGNORECASE):
        raise ConfigError(f"--account-url must be an http(s) URL, got {redact(url)!r}")
    parts = urlsplit(url)
    blob = check_endpoint(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")), "--account-url")
    account = (parts.hostname or "").split(".")[0]
    if (parts.hostname or "") in _LOCAL_HOSTS and parts.path.strip("/"):
        account = parts.path.strip("/").split("/")[0]  # an emulator's path-style URL: http://HOST:PORT/ACCOUNT
    table = check_endpoint(table_endpoint_for(blob), "the Table endpoint derived from --account-url")
    if not parts.query:
        return ConnectionInfo(blob, table, account, use_identity=True)
    query = parse_qs(parts.query)
    if "sig" not in query:
        raise ConfigError(
            "--account-url has a query string but no SAS signature (sig=): give the bare blob "
            "endpoint (signed in with azure-identity) or a SAS URL"
        )
    services = "".join(query.get("ss", []))
    if "b" not in services or "t" not in services:
        raise ConfigError(
            "the SAS token in --account-url must be an account SAS for the Blob and Table services "
            "(ss=bt): a corpus is a container and tables"
        )
    return ConnectionInfo(blob, table, account, sas_token=parts.query)


def connection_from_settings(connection_string: str | None = None, account_url: str | None = None) -> ConnectionInfo:
    """Where the corpus lives. An argument given (a command-line option) beats the environment, both
    ways: ``account_url`` wins over AZURE_STORAGE_CONNECTION_STRING and ``connection_string`` over
    CORPUS_ACCOUNT_URL. Both given is a usage error; a given but empty value is refused, never a silent
    fall-back. From the environment (an empty variable counts as unset) the connection string wins
    over the account URL. The default is the local Azurite."""
    if connection_string is not None and account_url is not None:
        raise ConfigError("--connection-string and --account-url exclude each other: give one of them")
    if connection_string is not None:
        if not connection_string.strip():
            raise ConfigError(
                "--connection-string is empty: give a connection string, or leave the option out "
                f"to use {CONNECTION_STRING_ENV} (default: the local Azurite)"
            )
        return parse_connection_string(connection_string)
    if account_url is not None:
        return _from_account_url(account_url)
    if os.environ.get(CONNECTION_STRING_ENV):
        return parse_connection_string(os.environ[CONNECTION_STRING_ENV])
    if os.environ.get(ACCOUNT_URL_ENV):
        return _from_account_url(os.environ[ACCOUNT_URL_ENV])
    return parse_connection_string(DEFAULT_CONNECTION_STRING)


def check_corpus_name(name: str) -> str:
    if not CORPUS_NAME_RE.match(name or ""):
        raise ConfigError(
            f"corpus name {name!r} is not valid: use 3-40 lower-case letters and digits, "
            "starting with a letter (it names a container and three tables)"
        )
    return name


def corpus_from_settings(corpus: str | None = None) -> str:
    """The corpus given, else CORPUS_NAME (an empty variable counts as unset), else ``images``. A given
    but empty name is refused: it must never fall back to writing into the default corpus."""
    if corpus is None:
        return check_corpus_name(os.environ.get(CORPUS_ENV) or DEFAULT_CORPUS)
    if not corpus.strip():
        raise ConfigError(
            "--corpus is empty: give a corpus name (3-40 lower-case letters and digits), or leave "
            f"the option out to use {CORPUS_ENV} (default: {DEFAULT_CORPUS})"
        )
    return check_corpus_name(corpus)


# Anything that looks like a secret: account keys, SAS signatures, whole connection-string pairs.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(AccountKey\s*=\s*)[^;\s'\"]+"),
    re.compile(r"(?i)(SharedAccessSignature\s*=\s*)[^;\s'\"]+"),
    re.compile(r"(?i)([?&]sig=)[^&\s'\"]+"),
    re.compile(r"(?i)(Authorization['\"]?\s*[:=]\s*['\"]?)(SharedKey|Bearer)?\s*[^'\"\s,}]+"),
]


def redact(text: str, extra_secrets: tuple[str, ...] = ()) -> str:
    """Mask secrets in any text before it is printed or logged."""
    out = str(text)
    for secret in (*extra_secrets, AZURITE_KEY):
        if secret:
            out = out.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        out = pattern.sub(lambda m: m.group(1) + "***", out)
    return out
