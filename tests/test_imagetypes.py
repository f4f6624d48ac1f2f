"""One image sniffer for upload and transforms (``transforms.imagetypes``), so they agree on every file.

The rule: the kind comes from the magic bytes only; "BM" is a BMP only with a DIB header of a size that
exists (the bytes "BM" start plenty of text and binary files), and BigTIFF is a TIFF (ImageMagick reads
it with its TIFF64 coder, which the policy allows for reading). Upload also refuses a file whose tail or
declared size says it was cut short, which a transform finds out by decoding. Images made by ImageMagick;
every accepted sample is decoded by a real transform.
"""

from __future__ import annotations

import subprocess

import pytest

from corpus_manager import imagetypes as upload_types
from transforms import ImageError, Spec, apply_spec, imagetypes

from .conftest import image_bytes


def convert(*args: str) -> bytes:
    return subprocess.run(["convert", "-size", "20x10", "xc:red", *args], check=True, capture_output=True).stdout


def bad_dib(bmp: bytes) -> bytes:
    """A real BMP whose DIB header size (offset 14) names no DIB header that exists."""
    return bmp[:14] + (99).to_bytes(4, "little") + bmp[18:]


# name -> (bytes, the kind under the one rule, or None: refused by both)
SAMPLES = {
    "jpeg": (lambda: image_bytes("jpeg"), "jpeg"),
    "png": (lambda: image_bytes("png"), "png"),
    "gif": (lambda: image_bytes("gif"), "gif"),
    "bmp": (lambda: image_bytes("bmp"), "bmp"),
    "tiff": (lambda: image_bytes("tiff"), "tiff"),
    "webp": (lambda: image_bytes("webp"), "webp"),
    # the two former rules differed on these:
    "bigtiff-little-endian": (lambda: convert("TIFF64:-"), "tiff"),
    "bigtiff-big-endian": (lambda: convert("-define", "tiff:endian=msb", "TIFF64:-"), "tiff"),
    "bmp-with-a-bad-dib-header": (lambda: bad_dib(image_bytes("bmp")), None),
    "BM-then-zeros": (lambda: b"BM" + bytes(64), None),
    "BM-then-text": (lambda: b"BMW owners' club: minutes of the meeting of " * 3, None),
}


def upload_kind(data: bytes) -> str | None:
    try:
        return upload_types.sniff(data)
    except upload_types.NotAnImage:
        return None


@pytest.mark.parametrize("name", SAMPLES)
def test_upload_and_transforms_recognise_the_same_kind(name: str) -> None:
    make, kind = SAMPLES[name]
    data = make()
    assert (upload_kind(data), imagetypes.sniff(data)) == (kind, kind)
    # a big file is sniffed from its head and tail only: the same answer
    head, tail = data[: upload_types.HEAD], data[-upload_types.TAIL :]
    try:
        parts: str | None = upload_types.sniff_parts(head, tail, len(data))
    except upload_types.NotAnImage:
        parts = None
    assert parts == kind


@pytest.mark.parametrize("name", SAMPLES)
def test_what_upload_accepts_a_transform_decodes_and_what_it_refuses_a_transform_refuses(name: str) -> None:
    make, kind = SAMPLES[name]
    data = make()
    spec = Spec.from_ops(["flip"]).canonical_json()
    if kind is not None:
        result = apply_spec(spec, data, f"set/v1/{name}")
        assert (result.source_format, result.format) == (kind, kind) and result.width > 0
        return
    with pytest.raises(upload_types.NotAnImage) as refused:
        upload_types.sniff(data)
    with pytest.raises(ImageError) as failed:
        apply_spec(spec, data, f"set/v1/{name}")
    assert str(failed.value) == str(refused.value)  # one reason, worded once
    assert str(refused.value).startswith("not a supported image (")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("jpeg", "truncated JPEG (no end-of-image marker)"),
        ("png", "truncated PNG (no IEND chunk)"),
        ("gif", "truncated GIF (no trailer)"),
        ("bmp", "truncated BMP"),
        ("webp", "truncated WebP"),
    ],
)
def test_upload_refuses_a_cut_short_file_of_a_kind_the_sniffer_recognises(kind: str, reason: str) -> None:
    whole = image_bytes(kind, "64x64", "plasma:")
    cut = whole[: len(whole) // 2]
    assert imagetypes.sniff(cut) == kind  # the kind is still recognised...
    with pytest.raises(upload_types.NotAnImage, match=reason.replace("(", r"\(").replace(")", r"\)")):
        upload_types.sniff(cut)  # ...but upload sees the file is not whole


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"hello", "not a supported image (text)"),
        (b"a" + "é".encode() * 300, "not a supported image (text)"),  # UTF-8 text, a character cut at 512
        (b"<svg/>", "not a supported image (XML/SVG/MSL or HTML)"),
        (b"  %PDF-1.4\n", "not a supported image (PDF/PostScript)"),
        (bytes(range(256)), "not a supported image (unrecognised binary data)"),
    ],
)
def test_refusals_say_what_the_content_looks_like(data: bytes, reason: str) -> None:
    with pytest.raises(upload_types.NotAnImage) as refused:
        upload_types.sniff(data)
    assert str(refused.value).startswith(reason)
