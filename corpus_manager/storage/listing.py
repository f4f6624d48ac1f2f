"""A List Blobs answer (the blob service's XML), parsed with the stdlib's expat, safely and in one pass.

Why not the SDK's parser: it builds an ElementTree and a model object per blob (~1/8 of a transform's
parent CPU, bench/README.md). Why not ElementTree here: expat with handlers for the few elements we
read keeps no tree and makes no object we do not return.

Safety: the service never sends a document type declaration, so any ``<!DOCTYPE`` is refused outright,
before an entity could be declared; with no DTD there is no entity to expand (internal or external),
so neither "billion laughs" nor an external entity can happen. Only the five predefined entities and
character references (``&amp;``, ``&#x41;``) are decoded, as XML requires. A name the service could not
put in XML as is comes with ``Encoded="true"`` and percent-encoded; it is decoded here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote
from xml.parsers import expat


class ListingError(ValueError):
    """The answer is not a List Blobs document we can trust."""


@dataclass(frozen=True)
class BlobInfo:
    """A blob as a listing or a read reports it (the SDK path builds the same, in ``blobs``)."""

    name: str
    size: int
    md5_hex: str | None
    content_type: str | None


@dataclass
class ListingPage:
    blobs: list[BlobInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # nested "directories" (delimiter listings)
    next_marker: str = ""  # empty: this was the last page


# the elements whose text we keep, by their parent: (parent, element)
_WANTED = {
    ("Blob", "Name"),
    ("BlobPrefix", "Name"),
    ("Properties", "Content-Length"),
    ("Properties", "Content-MD5"),
    ("Properties", "Content-Type"),
    ("EnumerationResults", "NextMarker"),
}


class _Refused(Exception):
    pass


def parse_listing(data: bytes) -> ListingPage:
    """One page of a List Blobs answer; ListingError when it is not well-formed or carries a DTD."""
    page = ListingPage()
    stack: list[str] = []
    text: list[str] = []
    keep = False
    encoded = False
    blob: dict[str, str] = {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal keep, encoded
        parent = stack[-1] if stack else ""
        stack.append(tag)
        keep = (parent, tag) in _WANTED
        if keep:
            text.clear()
            encoded = tag == "Name" and attrs.get("Encoded", "").lower() == "true"
        elif tag == "Blob":
            blob.clear()

    def chars(data: str) -> None:
        if keep:
            text.append(data)

    def end(tag: str) -> None:
        nonlocal keep
        stack.pop()
        parent = stack[-1] if stack else ""
        if keep:
            value = "".join(text)
            if tag == "Name" and encoded:
                value = unquote(value)
            if parent == "BlobPrefix":
                page.prefixes.append(value)
            elif parent == "EnumerationResults":
                page.next_marker = value
            else:
                blob[tag] = value
            keep = False
        elif tag == "Blob":
            page.blobs.append(_blob(blob))

    def refuse(*_args: object) -> Any:
        raise _Refused("a document type declaration (the service never sends one)")

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    # no DTD, so no entity can be declared; the other handlers are belt and braces
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise ListingError(f"blob listing refused: {exc}") from None
    except expat.ExpatError as exc:
        raise ListingError(f"blob listing is not well-formed XML ({expat.ErrorString(exc.code)})") from None
    except (KeyError, ValueError) as exc:
        raise ListingError(f"blob listing has a blob without {exc}") from None
    return page


def _blob(values: dict[str, str]) -> BlobInfo:
    name = values["Name"]
    try:
        size = int(values["Content-Length"])
    except KeyError:
        raise ValueError("Content-Length") from None
    return BlobInfo(name, size, md5_hex(values.get("Content-MD5") or ""), values.get("Content-Type") or None)


def md5_hex(b64: str) -> str | None:
    """A Content-MD5 (base64) as hex; None when empty or not base64: not a Content-MD5 we can compare
    with, treated as none (download refuses it)."""
    try:
        return base64.b64decode(b64, validate=True).hex() if b64 else None
    except binascii.Error:
        return None
