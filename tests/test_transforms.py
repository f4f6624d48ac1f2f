"""Tests of the `transforms` package: real ImageMagick through Wand, no Azure.

Sample images are made in memory with Wand (blank canvases, drawn rectangles, imported pixels), which
the restrictive policy allows; the decompression bomb is a real, decodable PNG written with zlib,
because ImageMagick's own limits refuse to create one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import resource
import shutil
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

import transforms
from transforms import (
    DEFAULT_LIMITS,
    ImageError,
    Limits,
    Op,
    Spec,
    SpecError,
    apply_spec,
    colliding_outputs,
    output_name,
    parse_op,
    sniff,
)
from transforms import registry as registry_module
from transforms.imagetypes import CONTENT_TYPES, header_size, kind_from_name, zero_tiff_padding
from transforms.registry import operation

from .helpers import png_bomb

REPO = Path(__file__).resolve().parents[1]

# The policy goes in before this module touches wand, as in a worker.
transforms.init_worker()

from wand.api import library  # noqa: E402
from wand.color import Color  # noqa: E402
from wand.drawing import Drawing  # noqa: E402
from wand.image import Image  # noqa: E402

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


# ----------------------------------------------------------------------------------------- helpers


def encode(image: Image, kind: str) -> bytes:
    image.format = kind
    return image.make_blob()


def blank(width: int, height: int, color: str = "white", kind: str = "png") -> bytes:
    with Image(width=width, height=height, background=Color(color)) as img:
        return encode(img, kind)


def quadrants(width: int = 100, height: int = 80, kind: str = "png") -> bytes:
    """Top-left red, top-right green, bottom-left blue, bottom-right yellow."""
    with Image(width=width, height=height, background=Color("red")) as img:
        with Drawing() as draw:
            for color, (x0, y0) in (
                ("lime", (width // 2, 0)),
                ("blue", (0, height // 2)),
                ("yellow", (width // 2, height // 2)),
            ):
                draw.fill_color = Color(color)
                draw.rectangle(left=x0, top=y0, right=x0 + width // 2 - 1, bottom=y0 + height // 2 - 1)
            draw(img)
        return encode(img, kind)


def with_markers(width: int, height: int, points: list[tuple[int, int]]) -> bytes:
    """A black PNG with white single pixels at `points`."""
    pixels = bytearray(width * height * 3)
    for x, y in points:
        pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3] = b"\xff\xff\xff"
    return from_pixels(width, height, bytes(pixels))


def from_pixels(width: int, height: int, rgb: bytes, kind: str = "png") -> bytes:
    with Image(width=width, height=height) as img:
        img.import_pixels(channel_map="RGB", storage="char", data=rgb)
        img.alpha_channel = "off"  # a blank canvas starts transparent; these pixels are opaque
        return encode(img, kind)


def noise(width: int, height: int) -> bytes:
    """Deterministic, non-uniform content so that different crops differ."""
    rgb = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(width * height * 3 // 32 + 1))
    return from_pixels(width, height, rgb[: width * height * 3])


def run(ops: list[str], data: bytes, blob_name: str = "set/v1/image.png") -> transforms.TransformResult:
    return apply_spec(Spec.from_ops(ops).canonical_json(), data, blob_name)


def rgb_at(data: bytes, x: int, y: int) -> tuple[int, int, int]:
    kind = sniff(data)
    assert kind is not None
    with Image(blob=data, format=kind) as img:
        c = img[x, y]
        return c.red_int8, c.green_int8, c.blue_int8


def size_of(data: bytes) -> tuple[int, int]:
    kind = sniff(data)
    assert kind is not None
    with Image(blob=data, format=kind) as img:
        return img.width, img.height


def close(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 8) -> bool:
    return all(abs(p - q) <= tolerance for p, q in zip(a, b, strict=True))


def clean_env() -> dict[str, str]:
    """The environment without our policy, for helper subprocesses that need other coders."""
    env = dict(os.environ)
    env.pop("MAGICK_CONFIGURE_PATH", None)
    return env


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )


# ------------------------------------------------------------------------------- argument parsing

# op -> (good arg, its canonical form) pairs and bad args. None: the op takes no argument.
GOOD: dict[str, list[tuple[str | None, str | None]]] = {
    "resize": [
        ("256x256", "256x256"),
        ("256X128!", "256x128!"),
        ("100x100^", "100x100^"),
        ("50%", "50%"),
        ("50.0%", "50%"),
        ("12.5%", "12.5%"),
        ("256", "256"),
        ("x256", "x256"),
        ("800x600>", "800x600>"),
        ("64x64<", "64x64<"),
    ],
    "thumbnail": [("128x128", "128x128"), ("25%", "25%")],
    "crop": [("224x224+16+8", "224x224+16+8"), ("224x224", "224x224"), ("10x10+0+0", "10x10+0+0")],
    "random-crop": [("224x224", "224x224")],
    "flip": [(None, None)],
    "flop": [(None, None)],
    "rotate": [("90", "90"), ("-45.50", "-45.5"), ("+180", "180"), ("0", "0"), ("-0", "0"), ("360", "360")],
    "auto-orient": [(None, None)],
    "grayscale": [(None, None)],
    "charcoal": [("2", "2"), ("2.0", "2"), ("0.5", "0.5"), ("0", "0")],
    "blur": [("1.5", "1.5"), ("3", "3")],
    "sharpen": [("1", "1"), ("0.25", "0.25")],
    "modulate": [("120,80,100", "120,80,100"), ("120", "120,100,100"), ("90,0", "90,0,100")],
    "brightness-contrast": [("10,-20", "10,-20"), ("10x-20", "10,-20"), ("-5", "-5,0")],
    "strip": [(None, None)],
    "quality": [("85", "85"), ("1", "1"), ("100", "100"), ("85.0", "85")],
    "format": [
        ("png", "png"),
        ("JPG", "jpeg"),
        ("jpeg", "jpeg"),
        ("tiff", "tiff"),
        ("webp", "webp"),
        ("gif", "gif"),
        ("bmp", "bmp"),
    ],
}

BAD: dict[str, list[str | None]] = {
    "resize": [
        None,
        "",
        "abc",
        "256x",
        "x",
        "256xx256",
        "0x10",
        "-5x5",
        "10x10!!",
        "256!",
        "x10^",
        "0%",
        "2000%",
        "nan%",
        "1e3x10",
        "70000x10",
        "1_0x10",
        "10x10+5+5",
    ],
    "thumbnail": [None, "foo", "0x0"],
    "crop": [None, "10", "10x", "10x10+5", "10x10-5-5", "0x10", "10x10+1.5+2", "10x10+70000+0"],
    "random-crop": [None, "10", "10x10+1+1", "0x5", "axb"],
    "flip": ["1", "yes", ""],
    "flop": ["1"],
    "rotate": [None, "", "ninety", "361", "-400", "nan", "inf", "1e2", "0x10"],
    "auto-orient": ["1"],
    "grayscale": ["true"],
    "charcoal": [None, "-1", "51", "two", "2x1"],
    "blur": [None, "0", "-1", "101", "inf"],
    "sharpen": [None, "0", "abc"],
    "modulate": [None, "a,b,c", "100,100,100,100", "-1", "100,100,201", "1001", "100,,100"],
    "brightness-contrast": [None, "101", "0,-101", "1,2,3", "x"],
    "strip": ["all"],
    "quality": [None, "0", "101", "50.5", "high", "-1"],
    "format": [None, "svg", "pdf", "msl", "text", "mvg", ".png", "ps", "jpeg2000", "png:"],
}


def test_every_registered_operation_is_covered_by_the_parsing_tables():
    assert {op.name for op in transforms.operations()} == set(GOOD) == set(BAD)


@pytest.mark.parametrize(("name", "arg", "canonical"), [(n, a, c) for n, pairs in GOOD.items() for a, c in pairs])
def test_good_arguments_are_accepted_and_normalized(name, arg, canonical):
    op = parse_op(name if arg is None else f"{name}={arg}")
    assert op == Op(name, canonical)
    assert Op.create(name, arg) == Op(name, canonical)


@pytest.mark.parametrize(("name", "arg"), [(n, a) for n, args in BAD.items() for a in args])
def test_bad_arguments_are_spec_errors_naming_the_operation(name, arg):
    text = name if arg is None else f"{name}={arg}"
    with pytest.raises(SpecError) as info:
        parse_op(text)
    message = str(info.value)
    assert message.startswith(f"{name}:"), message
    assert "expected" in message or "takes no argument" in message


def test_operations_without_argument_say_so_and_with_argument_say_what_is_expected():
    with pytest.raises(SpecError, match=r"^flip: takes no argument"):
        parse_op("flip=1")
    with pytest.raises(SpecError, match=r"^resize: requires an argument; expected resize=GEOMETRY"):
        parse_op("resize")
    with pytest.raises(SpecError, match=r"^blur: '0' is out of range; expected SIGMA: a number > 0 and <= 100"):
        parse_op("blur=0")


def test_unknown_operation_is_a_spec_error_with_a_suggestion():
    with pytest.raises(SpecError, match=r"unknown operation 'rezise' \(did you mean 'resize'\?\).*charcoal"):
        parse_op("rezise=10x10")
    with pytest.raises(SpecError, match="unknown operation"):
        parse_op("msl:evil")
    with pytest.raises(SpecError):
        parse_op("=10")


def test_names_and_arguments_are_trimmed_and_case_folded():
    assert parse_op(" Resize = 10X20 ") == Op("resize", "10x20")


def test_an_operation_is_one_function_and_one_registration(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @operation("negate", help="invert colours")
    def negate(image, _arg, ctx):
        image.negate()

    spec = Spec.from_ops(["negate"])
    assert spec.command_line() == "negate"
    with pytest.raises(SpecError, match="takes no argument"):
        parse_op("negate=1")
    result = transforms.transform(spec, blank(4, 4, "white"), "x.png")
    assert close(rgb_at(result.data, 1, 1), (0, 0, 0))


# ------------------------------------------------------------------------------------------- specs


def test_canonical_json_is_exact_sorted_and_compact():
    spec = Spec.from_ops(["resize=256X256", "charcoal=2.0", "flip", "format=JPG"])
    expected = (
        '[{"arg":"256x256","op":"resize"},{"arg":"2","op":"charcoal"},'
        '{"arg":null,"op":"flip"},{"arg":"jpeg","op":"format"}]'
    )
    assert spec.canonical_json() == expected
    assert spec.digest == hashlib.sha256(expected.encode()).hexdigest()
    assert spec.command_line() == "resize=256x256 charcoal=2 flip format=jpeg"


def test_equivalent_spellings_share_a_digest_and_order_matters():
    a = Spec.from_ops(["resize=256x256", "charcoal=2"])
    b = Spec.from_ops(["RESIZE=256X256", "charcoal=2.00"])
    c = Spec.from_ops(["charcoal=2", "resize=256x256"])
    assert a.digest == b.digest
    assert a.digest != c.digest
    assert a.canonical_json() != c.canonical_json()
    assert Spec.from_ops(["blur=1"]).digest != Spec.from_ops(["blur=2"]).digest


def test_canonical_json_and_command_line_round_trip():
    spec = Spec.from_ops(["random-crop=64x64", "modulate=120", "rotate=-90", "strip", "quality=90", "format=png"])
    assert Spec.from_canonical_json(spec.canonical_json()) == spec
    assert Spec.from_command_line(spec.command_line()) == spec
    assert Spec.from_canonical_json(spec.canonical_json()).digest == spec.digest


def test_from_canonical_json_validates_again():
    with pytest.raises(SpecError, match="resize"):
        Spec.from_canonical_json('[{"arg":"huge","op":"resize"}]')
    with pytest.raises(SpecError, match="not valid JSON"):
        Spec.from_canonical_json("[{")


def test_hand_built_ops_are_normalized_or_refused():
    assert Spec((Op("resize", "10X10"),)).ops == (Op("resize", "10x10"),)
    with pytest.raises(SpecError, match=r"^resize:"):
        Spec((Op("resize", "bad"),))


def test_empty_spec_and_repeated_output_settings_are_spec_errors():
    with pytest.raises(SpecError, match="at least one operation"):
        Spec.from_ops([])
    with pytest.raises(SpecError, match=r"^format: given more than once"):
        Spec.from_ops(["format=png", "flip", "format=jpeg"])
    with pytest.raises(SpecError, match=r"^quality: given more than once"):
        Spec.from_ops(["quality=50", "quality=60"])


def test_output_format():
    assert Spec.from_ops(["resize=10x10"]).output_format is None
    assert Spec.from_ops(["format=JPG", "flip"]).output_format == "jpeg"


def test_spec_from_args_takes_ops_or_a_file_not_both(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('["flip"]')
    assert transforms.spec_from_args(["flip"]) == transforms.spec_from_args(None, path)
    with pytest.raises(SpecError, match="not both"):
        transforms.spec_from_args(["flip"], path)
    with pytest.raises(SpecError, match="at least one"):
        transforms.spec_from_args([], None)


SPEC_FILES = {
    "inline.toml": 'ops = ["resize=256x256", { op = "charcoal", arg = "2" }, { op = "flip" }]\n',
    "tables.toml": textwrap.dedent(
        """\
        [[ops]]
        op = "resize"
        arg = "256x256"

        [[ops]]
        op = "charcoal"
        arg = 2

        [[ops]]
        op = "flip"
        """
    ),
    "list.json": '["resize=256x256", {"op": "charcoal", "arg": "2"}, {"op": "flip", "arg": null}]',
    "object.json": '{"ops": ["resize=256x256", "charcoal=2", "flip"]}',
    "noext-json": '  ["resize=256x256", "charcoal=2", "flip"]',
    "noext-toml": 'ops = ["resize=256x256", "charcoal=2", "flip"]',
}


@pytest.mark.parametrize("name", sorted(SPEC_FILES))
def test_spec_files_in_toml_and_json_give_the_same_spec(tmp_path, name):
    path = tmp_path / name
    path.write_text(SPEC_FILES[name])
    assert Spec.from_file(path) == Spec.from_ops(["resize=256x256", "charcoal=2", "flip"])


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("bad.toml", "ops = [", r"not valid TOML"),
        ("bad.json", "[", r"not valid JSON"),
        ("keys.toml", 'ops = ["flip"]\nname = "x"', r"single key 'ops'"),
        ("item.json", '[{"op": "flip", "args": "1"}]', r"operation 1: .*'op' and optionally 'arg'"),
        ("arg.json", '[{"op": "blur", "arg": true}]', r"'arg' must be a string"),
        ("type.json", '"flip"', r"expected a list of operations"),
        ("op.toml", 'ops = ["resize=big"]', r"^resize: 'big' is not a valid geometry"),
        ("empty.json", "[]", r"at least one operation"),
        ("number.json", "[42]", r"OP=ARG"),
    ],
)
def test_bad_spec_files_are_spec_errors(tmp_path, name, text, pattern):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError, match=pattern):
        Spec.from_file(path)


def test_missing_spec_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec file"):
        Spec.from_file(tmp_path / "nope.toml")


# ------------------------------------------------------------------------------- names and types


def test_output_name_follows_a_changing_format_only():
    png = Spec.from_ops(["format=png"])
    jpeg = Spec.from_ops(["format=jpg"])
    keep = Spec.from_ops(["flip"])
    assert output_name("a.jpg", png) == "a.png"
    assert output_name("dir/sub/a.b.JPEG", png) == "dir/sub/a.b.png"
    assert output_name("a.png", png) == "a.png"
    assert output_name("a.JPEG", jpeg) == "a.JPEG"
    assert output_name("a.png", jpeg) == "a.jpg"
    assert output_name("noext", png) == "noext.png"
    assert output_name("a.jpg", keep) == "a.jpg"
    assert output_name("d.x/a", Spec.from_ops(["format=tiff"])) == "d.x/a.tiff"


def test_colliding_outputs_are_reported():
    spec = Spec.from_ops(["format=png"])
    assert colliding_outputs(["a.jpg", "a.png", "b.gif", "c.jpg"], spec) == {"a.png": ["a.jpg", "a.png"]}
    assert colliding_outputs(["a.jpg", "a.png"], Spec.from_ops(["flip"])) == {}


@pytest.mark.parametrize("kind", ["jpeg", "png", "gif", "bmp", "tiff", "webp"])
def test_sniff_and_header_size_recognise_real_images(kind):
    data = blank(37, 21, "red", kind)
    assert sniff(data) == kind
    assert header_size(data, kind) == (37, 21)
    assert kind in CONTENT_TYPES


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"BM not a bitmap at all, just text", b"<svg/>", b"%PDF-1.4", b"RIFF\0\0\0\0WAVEfmt ", b"\x89PNG"],
)
def test_sniff_rejects_other_content(data):
    assert sniff(data) is None


def test_kind_from_name():
    assert kind_from_name("x/y/Photo.JPG") == "jpeg"
    assert kind_from_name("scan.tif") == "tiff"
    assert kind_from_name("notes.txt") is None


# --------------------------------------------------------------------------- operations on pixels


def resize_oracle(width: int, height: int, geometries: list[str]) -> list[tuple[int, int]]:
    """What `convert -resize` makes of a width x height image, for each geometry (one convert run)."""
    if shutil.which("convert") is None:
        pytest.skip("ImageMagick's convert is not installed")
    args: list[str] = []
    for g in geometries:
        args += ["(", "-size", f"{width}x{height}", "xc:white", "-resize", g, "-format", "%wx%h\n"]
        args += ["-write", "info:", "+delete", ")"]
    out = subprocess.run(["convert", *args, "null:"], capture_output=True, text=True, env=clean_env(), check=False)
    sizes = [tuple(int(v) for v in line.split("x")) for line in out.stdout.split()]
    assert len(sizes) == len(geometries), out.stderr
    return sizes  # type: ignore[return-value]


GEOMETRIES = [
    "100x100", "100x100!", "100x100^", "100x100>", "100x100<", "100", "x100", "50%", "33.3%", "150%",
    "250x50", "250x50^", "500x500>", "500x500<", "50x500>", "50x500<", "120>", "x500<", "37x91!",
]  # fmt: skip


@pytest.mark.parametrize(("width", "height"), [(300, 200), (200, 300), (64, 64), (7, 3)])
def test_resize_geometry_matches_imagemagick(width, height):
    expected = resize_oracle(width, height, GEOMETRIES)
    mine = [parse_op(f"resize={g}") for g in GEOMETRIES]
    got = [registry_module.get_operation("resize").parse_arg(op.arg).target_size(width, height) for op in mine]
    assert got == expected


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        ("100x100", (100, 50)),  # fit inside, aspect kept
        ("100x100!", (100, 100)),  # exact
        ("100x100^", (200, 100)),  # fill
        ("50%", (150, 75)),
        ("60", (60, 30)),
        ("x30", (60, 30)),
        ("1000x1000>", (300, 150)),  # only shrink: left alone
        ("100x100<", (300, 150)),  # only enlarge: left alone
    ],
)
def test_resize_output_has_the_geometry_size(geometry, expected):
    result = run([f"resize={geometry}"], quadrants(300, 150))
    assert (result.width, result.height) == expected
    assert size_of(result.data) == expected


def test_thumbnail_size():
    result = run(["thumbnail=64x64"], quadrants(300, 150))
    assert size_of(result.data) == (64, 32)


def test_resize_beyond_the_limits_is_an_image_error():
    with pytest.raises(ImageError, match="exceeds the limits"):
        run(["resize=20000x10!"], blank(10, 10))


def test_crop_has_size_and_offset():
    data = with_markers(100, 80, [(63, 52), (62, 52), (73, 62)])
    result = run(["crop=10x10+63+52"], data)
    assert size_of(result.data) == (10, 10)
    assert rgb_at(result.data, 0, 0) == (255, 255, 255)  # the marker at the offset is the new corner
    assert rgb_at(result.data, 9, 9) == (0, 0, 0)
    assert rgb_at(result.data, 1, 0) == (0, 0, 0)  # (62, 52) is outside, left of the region
    assert rgb_at(result.data, 9, 9) != rgb_at(run(["crop=11x11+63+52"], data).data, 10, 10)


def test_crop_past_the_edge_is_clipped_and_outside_is_an_error():
    result = run(["crop=50x50+80+70"], blank(100, 80))
    assert size_of(result.data) == (20, 10)
    with pytest.raises(ImageError, match=r"crop=10x10\+100\+0 lies outside the 100x80 image"):
        run(["crop=10x10+100+0"], blank(100, 80))


def test_centred_crop():
    data = with_markers(100, 80, [(40, 30), (59, 49), (39, 29)])
    result = run(["crop=20x20"], data)
    assert size_of(result.data) == (20, 20)
    assert rgb_at(result.data, 0, 0) == (255, 255, 255)
    assert rgb_at(result.data, 19, 19) == (255, 255, 255)
    assert rgb_at(result.data, 1, 1) == (0, 0, 0)


def test_crop_leaves_no_virtual_canvas_offset():
    result = run(["crop=10x10+20+20", "format=png"], blank(50, 50))
    assert b"oFFs" not in result.data
    with Image(blob=result.data, format="png") as img:
        assert img.page == (10, 10, 0, 0)


def test_grayscale_output_has_no_colour():
    data = quadrants(40, 40)
    assert rgb_at(data, 0, 0) == RED
    for kind in ("png", "jpeg"):
        result = run(["grayscale", f"format={kind}"], data)
        for x, y in [(5, 5), (35, 5), (5, 35), (35, 35), (20, 20)]:
            r, g, b = rgb_at(result.data, x, y)
            assert r == g == b, (kind, x, y, (r, g, b))


def test_flip_mirrors_vertically_and_flop_horizontally():
    data = quadrants(100, 80)
    assert [rgb_at(data, 0, 0), rgb_at(data, 99, 0), rgb_at(data, 0, 79)] == [RED, GREEN, BLUE]
    flipped = run(["flip"], data).data
    assert rgb_at(flipped, 0, 0) == BLUE
    assert rgb_at(flipped, 99, 79) == GREEN
    flopped = run(["flop"], data).data
    assert rgb_at(flopped, 0, 0) == GREEN
    assert rgb_at(flopped, 99, 79) == BLUE


def test_rotate_90_swaps_dimensions_and_turns_clockwise():
    result = run(["rotate=90"], quadrants(100, 60))
    assert size_of(result.data) == (60, 100)
    assert rgb_at(result.data, 0, 0) == BLUE  # bottom-left comes to the top-left
    assert rgb_at(result.data, 59, 0) == RED
    assert size_of(run(["rotate=360"], quadrants(100, 60)).data) == (100, 60)
    w, h = size_of(run(["rotate=45"], quadrants(100, 60)).data)
    assert w > 100 and h > 60


def test_auto_orient_applies_the_orientation_tag():
    with Image(blob=quadrants(100, 60), format="png") as img:
        img.orientation = "right_top"
        data = encode(img, "tiff")
    result = run(["auto-orient", "format=png"], data)
    assert size_of(result.data) == (60, 100)


def test_blur_softens_an_edge_and_sharpen_steepens_it():
    half = from_pixels(40, 10, b"".join(b"\0\0\0" * 20 + b"\xff\xff\xff" * 20 for _ in range(10)))
    blurred = run(["blur=3"], half).data
    assert 30 < rgb_at(blurred, 20, 5)[0] < 225

    def steepest(data: bytes) -> int:
        return max(abs(rgb_at(data, x + 1, 5)[0] - rgb_at(data, x, 5)[0]) for x in range(10, 30))

    assert steepest(run(["sharpen=2"], blurred).data) > steepest(blurred)


def test_charcoal_draws_edges_dark_on_light():
    result = run(["charcoal=1"], quadrants(100, 80))
    assert min(rgb_at(result.data, 50, 20)) < 128  # on the vertical edge between the quadrants
    assert min(rgb_at(result.data, 20, 20)) > 200  # inside a uniform area


def test_modulate_and_brightness_contrast_change_the_colours():
    gray = blank(10, 10, "rgb(100,100,100)")
    assert rgb_at(run(["modulate=50"], gray).data, 5, 5)[0] < 80
    red = blank(10, 10, "rgb(200,50,50)")
    r, g, b = rgb_at(run(["modulate=100,0"], red).data, 5, 5)
    assert r == g == b
    assert rgb_at(run(["brightness-contrast=40"], gray).data, 5, 5)[0] > 130


def test_strip_removes_comments():
    with Image(blob=blank(10, 10), format="png") as img:
        library.MagickSetImageProperty(img.wand, b"comment", b"secret-comment")
        data = encode(img, "png")
    assert b"secret-comment" in run(["flip"], data).data
    assert b"secret-comment" not in run(["strip"], data).data


def test_quality_reaches_the_encoder():
    data = noise(64, 64)
    low = run(["quality=10", "format=jpeg"], data).data
    high = run(["format=jpeg", "quality=95"], data).data
    assert len(low) < len(high)
    with Image(blob=low, format="jpeg") as img:
        assert img.compression_quality == 10


@pytest.mark.parametrize(
    ("kind", "extension"),
    [("png", ".png"), ("jpeg", ".jpg"), ("gif", ".gif"), ("bmp", ".bmp"), ("tiff", ".tiff"), ("webp", ".webp")],
)
def test_format_changes_bytes_extension_and_content_type(kind, extension):
    result = run([f"format={kind}"], quadrants(20, 20, "jpeg" if kind != "jpeg" else "png"))
    assert sniff(result.data) == kind
    assert result.format == kind
    assert result.extension == extension
    assert result.content_type == CONTENT_TYPES[kind]


def test_format_png_from_jpeg():
    result = run(["resize=10x10", "format=png"], blank(40, 40, "red", "jpeg"))
    assert result.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (result.extension, result.content_type, result.source_format) == (".png", "image/png", "jpeg")
    assert output_name("photos/a.jpg", Spec.from_ops(["resize=10x10", "format=png"])) == "photos/a.png"


def test_without_format_the_input_kind_is_kept():
    result = run(["flip"], blank(10, 10, "red", "gif"))
    assert (sniff(result.data), result.content_type) == ("gif", "image/gif")


def test_jpeg_output_of_a_transparent_image_is_flattened_on_white():
    data = blank(10, 10, "transparent", "png")
    assert rgb_at(run(["format=jpeg"], data).data, 5, 5) == (255, 255, 255)


def test_only_the_first_frame_of_an_animation_is_used():
    with Image() as anim:
        for i in range(40):
            with Image(width=12, height=8, background=Color("red" if i == 0 else "blue")) as frame:
                anim.sequence.append(frame)
        data = encode(anim, "gif")
    result = run(["format=png"], data)
    assert size_of(result.data) == (12, 8)
    assert rgb_at(result.data, 3, 3) == RED


# ----------------------------------------------------------------------------------- determinism


def test_random_crop_is_deterministic_and_seeded_by_blob_name():
    data = noise(200, 150)
    first = run(["random-crop=32x32"], data, "set/v1/a.png").data
    again = run(["random-crop=32x32"], data, "set/v1/a.png").data
    assert first == again
    assert size_of(first) == (32, 32)
    others = {run(["random-crop=32x32"], data, f"set/v1/{i}.png").data for i in range(6)}
    assert len(others | {first}) > 1


def test_random_crop_is_seeded_by_the_spec_too():
    data = noise(200, 150)
    a = run(["random-crop=32x32"], data, "x.png").data
    b = run(["random-crop=32x32", "quality=100"], data, "x.png").data
    c = run(["random-crop=32x32", "quality=99"], data, "x.png").data
    assert len({a, b, c}) > 1


def test_random_crop_is_within_the_image_and_clamped():
    assert size_of(run(["random-crop=500x10"], noise(50, 40)).data) == (50, 10)


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif", "bmp", "tiff", "webp"])
def test_output_bytes_do_not_depend_on_the_time(kind):
    data = noise(40, 30)
    ops = ["resize=20x20", "charcoal=1", f"format={kind}"]
    first = run(ops, data).data
    second = int(time.time())
    while int(time.time()) == second:  # PNG's tIME / date chunks have one-second resolution: the next second
        time.sleep(0.01)
    assert run(ops, data).data == first
    if kind == "png":
        assert b"tIME" not in first and b"date:" not in first


def test_tiff_padding_bytes_are_zeroed():
    # 3x3 8-bit gray: a 9-byte strip, so libtiff pads before the directory, via an uninitialised byte.
    data = run(["grayscale", "format=tiff"], blank(3, 3, "rgb(10,20,30)")).data
    gaps = []
    for i in range(len(data)):
        poked = bytearray(data)
        poked[i] ^= 0x5A
        if zero_tiff_padding(bytes(poked)) == data:
            gaps.append(i)
    assert gaps, "expected at least the alignment byte before the directory"
    assert all(data[i] == 0 for i in gaps)
    poked = bytearray(data)
    for i in gaps:
        poked[i] = 0x5A
    assert size_of(bytes(poked)) == (3, 3) and rgb_at(bytes(poked), 1, 1) == rgb_at(data, 1, 1)


def test_random_int_uses_sha256_of_digest_name_and_index():
    ctx = registry_module.OpContext(spec_digest="d", blob_name="n", index=2)
    expected = int.from_bytes(hashlib.sha256(b"d\0n\x002\0x").digest(), "big") % 1000
    assert ctx.random_int(1000, "x") == expected


# --------------------------------------------------------------------------- failures and safety


def test_corrupt_bytes_are_an_image_error():
    good = quadrants(40, 40, "jpeg")
    garbage = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(16))  # fixed, not os.urandom
    for bad in (good[:200], b"\xff\xd8\xff\xe0" + garbage, b"\x89PNG\r\n\x1a\n" + b"garbage" * 20):
        with pytest.raises(ImageError, match=r"could not decode the (JPEG|PNG) image"):
            run(["flip"], bad)


def test_text_and_empty_input_are_image_errors():
    with pytest.raises(ImageError, match=r"not a supported image \(text\)"):
        run(["flip"], b"just some text\nnothing to see\n")
    with pytest.raises(ImageError, match="empty file"):
        run(["flip"], b"")


@pytest.mark.parametrize(
    "payload",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        b"push graphic-context\nviewbox 0 0 10 10\nimage over 0,0 0,0 'text:/etc/passwd'\npop graphic-context\n",
        b'<?xml version="1.0"?><image><read filename="/etc/passwd"/><write filename="/tmp/x.png"/></image>',
        b"%!PS-Adobe-3.0\n/Times findfont\n",
        b"%PDF-1.4\n",
    ],
    ids=["svg", "mvg", "msl", "ps", "pdf"],
)
def test_vector_and_script_payloads_are_refused(payload):
    with pytest.raises(ImageError, match="not a supported image"):
        run(["flip"], payload, "image.svg")


@pytest.mark.parametrize(
    "blob_name",
    ["msl:/tmp/evil.msl", "text:/etc/passwd", "@/etc/passwd", "https://example.com/x.png", "svg:x.svg", "x.png[0]"],
)
def test_blob_names_never_reach_imagemagick(blob_name, tmp_path):
    data = quadrants(30, 20)
    result = run(["flip", "format=png"], data, blob_name)
    assert result.data == run(["flip", "format=png"], data, "plain.png").data
    # And a name pointing at a real file with text content does not read it.
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    with pytest.raises(ImageError, match="not a supported image"):
        run(["flip"], b"hello", f"text:{secret}")


def test_decompression_bomb_fails_fast_with_a_clear_message():
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 100_000  # a few KB that would decode to 400 megapixels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match=r"image is 20000x20000, which exceeds the limits"):
        run(["flip"], bomb)
    # "fast" means refused from the header, before any pixel: no gigabytes allocated
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024


def test_area_bomb_under_the_width_limit_is_refused():
    with pytest.raises(ImageError, match=r"12000x12000, which exceeds the limits"):
        run(["flip"], png_bomb(12000, 12000))


def test_bomb_is_still_refused_by_imagemagick_when_our_header_check_is_bypassed(monkeypatch):
    from transforms import decode

    monkeypatch.setattr(decode, "header_size", lambda data, kind: None)
    bomb = png_bomb(20000, 20000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="limits"):
        run(["flip"], bomb)
    # refused by ImageMagick's policy before the pixels are decoded: no gigabytes allocated
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


def test_time_limit_aborts_one_image_and_the_process_goes_on(monkeypatch):
    from transforms import decode

    data = noise(400, 400)
    charcoal = registry_module.get_operation("charcoal")
    started = []

    def charcoal_started(image, radius, ctx):
        started.append(radius)
        charcoal.function(image, radius, ctx)

    # The limit's clock reads an hour later from the moment charcoal starts, so the limit passes while
    # ImageMagick runs the operation on any machine, loaded or not (a real 0.3 s would assume charcoal is
    # slower than that). What is tested is real: the progress monitor aborts ImageMagick's operation.
    real_clock = decode.time.monotonic
    with monkeypatch.context() as m:
        m.setitem(registry_module._REGISTRY, "charcoal", dataclasses.replace(charcoal, function=charcoal_started))
        m.setattr(decode, "time", types.SimpleNamespace(monotonic=lambda: real_clock() + (3600 if started else 0)))
        transforms.apply_policy(Limits(seconds=0.3))
        try:
            with pytest.raises(ImageError, match=r"longer than the time limit \(0.3 s\)"):
                run(["charcoal=10"], data)
        finally:
            transforms.apply_policy(DEFAULT_LIMITS)
    assert started == [10]
    assert size_of(run(["resize=10x10"], data).data) == (10, 10)


def test_errors_and_results_cross_process_boundaries():
    error = ImageError("a\nmultiline   reason")
    assert str(error) == "a multiline reason"
    assert str(pickle.loads(pickle.dumps(error))) == "a multiline reason"
    spec_error = pickle.loads(pickle.dumps(SpecError("resize: bad")))
    assert isinstance(spec_error, ValueError) and str(spec_error) == "resize: bad"
    result = run(["flip"], blank(5, 5))
    assert pickle.loads(pickle.dumps(result)) == result


# ----------------------------------------------------------------------------------------- policy


def test_policy_file_is_active_in_this_process():
    status = transforms.policy_status()
    assert status is not None
    # Fails if something imported wand before this module's init_worker(): the session would then run
    # without the policy file.
    assert status.policy_file_active, status.detail
    assert status.imagemagick_version.startswith("ImageMagick")
    text = Path(status.policy_file).read_text()
    assert 'domain="coder" rights="none" pattern="*"' in text
    from wand.resource import limits

    assert limits["thread"] == 1
    assert limits["width"] == DEFAULT_LIMITS.width
    assert limits["area"] == DEFAULT_LIMITS.area
    assert limits["disk"] == DEFAULT_LIMITS.disk


def test_policy_does_not_leak_into_the_environment_of_child_processes():
    # Children such as `convert` in fixtures or benchmarks need coders the policy forbids.
    assert (
        "MAGICK_CONFIGURE_PATH" not in os.environ
        or "corpus-transforms-policy" not in os.environ["MAGICK_CONFIGURE_PATH"]
    )
    if shutil.which("convert") is not None:
        out = subprocess.run(["convert", "-size", "2x2", "xc:red", "png:-"], capture_output=True, check=False)
        assert out.returncode == 0 and sniff(out.stdout) == "png"


def test_policy_file_blocks_dangerous_coders_even_when_called_directly():
    # Going around our sniffing on purpose: ImageMagick itself must refuse.
    proc = python(
        """
        import transforms
        status = transforms.init_worker() or transforms.policy_status()
        assert status.policy_file_active, status.detail
        from wand.image import Image
        from wand.exceptions import PolicyError
        refused = []
        for fmt, data in [("svg", b"<svg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/>"),
                          ("mvg", b"viewbox 0 0 1 1"), ("msl", b"<image/>"), ("text", b"hi")]:
            try:
                Image(blob=data, format=fmt)
            except PolicyError:
                refused.append(fmt)
        print(",".join(refused))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "svg,mvg,msl,text"


def test_imagemagick_lists_the_policy_file():
    if shutil.which("convert") is None:
        pytest.skip("ImageMagick's convert is not installed")
    status = transforms.policy_status()
    assert status is not None and status.policy_file
    env = clean_env()
    env["MAGICK_CONFIGURE_PATH"] = str(Path(status.policy_file).parent)
    out = subprocess.run(["convert", "-list", "policy"], capture_output=True, text=True, env=env, check=False)
    assert status.policy_file in out.stdout


def test_importing_and_parsing_does_not_load_imagemagick():
    proc = python(
        """
        import sys, transforms
        spec = transforms.Spec.from_ops(["resize=10x10", "format=png"])
        print(spec.digest, any(m == "wand" or m.startswith("wand.") for m in sys.modules))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "False"


def test_policy_reports_when_wand_was_imported_first():
    proc = python(
        """
        import wand.image, transforms
        status = transforms.apply_policy()
        print(status.policy_file_active, "|", status.detail)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False | wand was imported before")


def test_c_functions_wand_does_not_bind_still_work():
    # The guard of transforms.capi, the one place that binds ImageMagick C functions Wand does not
    # (wand is pinned below 0.8 for it): fails if an upgrade breaks one. Each answers as ImageMagick
    # documents, and Wand's own function objects keep Wand's declarations (none: we never set argtypes).
    proc = python(
        """
        import transforms
        status = transforms.init_worker() or transforms.policy_status()
        assert status.policy_file_active, status.detail
        from transforms import capi, decode
        from wand.api import library, libmagick
        from wand.image import Image
        print(capi.policy_value("corpus-transforms-policy"), capi.policy_value("no-such-policy"))
        print(capi.read_authorized("PNG"), capi.read_authorized("TIFF64"), capi.read_authorized("SVG"))
        with Image(width=4, height=4) as img:
            img.format = "png"
            data = img.make_blob()
        with decode.time_limit(60):
            decode.open_image(data, status.limits)[0].destroy()  # sets the progress monitor
        print(library.MagickSetProgressMonitor.argtypes, libmagick.GetPolicyValue.argtypes,
              libmagick.IsRightsAuthorized.argtypes, libmagick.RelinquishMagickMemory.argtypes)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["1 None", "True True False", "None None None None"]


def test_process_pool_gives_the_same_bytes_with_the_policy_in_each_worker():
    spec = Spec.from_ops(["random-crop=16x16", "grayscale", "format=png"])
    images = [(noise(40, 30), f"set/{i}.png") for i in range(4)]
    with transforms.create_pool(2) as pool:
        futures = [pool.submit(apply_spec, spec.canonical_json(), d, n) for d, n in images]
        results = [f.result() for f in futures]
        status = pool.submit(transforms.policy_status).result()
        with pytest.raises(ImageError, match="not a supported image"):
            pool.submit(apply_spec, spec.canonical_json(), b"text", "x").result()
        with pytest.raises(SpecError):
            pool.submit(apply_spec, '[{"op":"nope","arg":null}]', images[0][0], "x").result()
    assert status is not None and status.policy_file_active and status.limits.threads == 1
    assert [r.data for r in results] == [transforms.transform(spec, d, n).data for d, n in images]


def test_default_limits():
    assert (
        Limits(
            width=16384,
            height=16384,
            area=128_000_000,
            memory=256 * 1024 * 1024,
            map=512 * 1024 * 1024,
            disk=1024 * 1024 * 1024,
            seconds=60.0,
            threads=1,
        )
        == DEFAULT_LIMITS
    )
