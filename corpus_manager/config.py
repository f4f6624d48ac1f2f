"""Settings from options and the environment, and the redaction that keeps secrets out of text."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

DEFAULT_CONNECTION_STRING = "UseDevelopmentStorage=true"
DEFAULT_CORPUS = "images"
CORPUS_NAME_RE = re.compile(r"^[a-z][a-z0-9]{2,39}$")

# Azurite's published well-known development account (not a secret, but still never printed).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def development_connection_string(host: str = "127.0.0.1", blob_port: int = 10000,
                                  table_port: int = 10002) -> str:
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
        return host in {"127.0.0.1", "localhost", "::1"} or self.account_name == AZURITE_ACCOUNT


def parse_connection_string(conn_str: str) -> ConnectionInfo:
    """Parse an Azure Storage connection string (and Azurite's shorthand) without echoing it."""
    text = conn_str.strip()
    if not text:
        raise ConfigError("the connection string is empty; set AZURE_STORAGE_CONNECTION_STRING or "
                          "pass --connection-string")
    parts: dict[str, str] = {}
    for piece in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = piece.partition("=")
        if not sep or not key:
            raise ConfigError("the connection string is malformed: expected key=value pairs "
                              "separated by ';' (e.g. DefaultEndpointsProtocol=https;AccountName=...;"
                              "AccountKey=...)")
        parts[key.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        proxy = parts.get("developmentstorageproxyuri")
        host = urlsplit(proxy).hostname if proxy else "127.0.0.1"
        return parse_connection_string(development_connection_string(host or "127.0.0.1"))
    account = parts.get("accountname", "")
    key = parts.get("accountkey") or None
    sas = parts.get("sharedaccesssignature") or None
    protocol = parts.get("defaultendpointsprotocol", "https")
    suffix = parts.get("endpointsuffix", "core.windows.net")
    blob = parts.get("blobendpoint") or (f"{protocol}://{account}.blob.{suffix}" if account else "")
    table = parts.get("tableendpoint") or (f"{protocol}://{account}.table.{suffix}" if account else "")
    if not blob or not table:
        raise ConfigError("the connection string names no account: it needs AccountName (or BlobEndpoint "
                          "and TableEndpoint)")
    if not key and not sas:
        raise ConfigError("the connection string has neither AccountKey nor SharedAccessSignature")
    if key:
        import base64
        import binascii

        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the connection string's AccountKey is not valid base64") from None
    if not account:
        account = (urlsplit(blob).hostname or "").split(".")[0]
    return ConnectionInfo(blob.rstrip("/"), table.rstrip("/"), account, key, sas.lstrip("?") if sas else None)


def table_endpoint_for(account_url: str) -> str:
    """Derive the Table endpoint from a Blob endpoint (Azure's `.blob.` host or Azurite's port 10000)."""
    parts = urlsplit(account_url.rstrip("/"))
    host = parts.netloc
    if ".blob." in host:
        host = host.replace(".blob.", ".table.", 1)
    elif parts.port == 10000:
        host = host.rsplit(":", 1)[0] + ":10002"
    else:
        raise ConfigError(f"cannot derive the Table endpoint from {redact(account_url)}: expected a "
                          "https://ACCOUNT.blob.core.windows.net URL")
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def connection_from_settings(connection_string: str | None = None, account_url: str | None = None) -> ConnectionInfo:
    """Options win over the environment; the default is the local Azurite."""
    account_url = account_url or os.environ.get("CORPUS_ACCOUNT_URL") or None
    if account_url and not connection_string:
        if not re.match(r"^https?://", account_url):
            raise ConfigError(f"--account-url must be an http(s) URL, got {redact(account_url)!r}")
        blob = account_url.split("?", 1)[0].rstrip("/")
        account = (urlsplit(blob).hostname or "").split(".")[0]
        return ConnectionInfo(blob, table_endpoint_for(blob), account, use_identity=True)
    conn = connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or DEFAULT_CONNECTION_STRING
    return parse_connection_string(conn)


def check_corpus_name(name: str) -> str:
    if not CORPUS_NAME_RE.match(name or ""):
        raise ConfigError(f"corpus name {name!r} is not valid: use 3-40 lower-case letters and digits, "
                          "starting with a letter (it names a container and three tables)")
    return name


def corpus_from_settings(corpus: str | None = None) -> str:
    return check_corpus_name(corpus or os.environ.get("CORPUS_NAME") or DEFAULT_CORPUS)


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
