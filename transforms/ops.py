"""The built-in operations. Each is one function changing a `wand.image.Image` in place, plus its
`@operation` registration (name, argument type, help).

wand is only imported lazily inside functions that need its classes: importing this module (to parse
specs) must not load ImageMagick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.args import CropBox, CropGeometry, Geometry, ImageFormat, Number, Numbers, ResizeGeometry, size_arg
from transforms.errors import ImageError
from transforms.registry import OpContext, operation

if TYPE_CHECKING:
    from wand.image import Image


@operation("resize", ResizeGeometry(), help="resize to an ImageMagick geometry")
def resize(image: Image, geometry: Geometry, ctx: OpContext) -> None:
    width, height = geometry.target_size(image.width, image.height)
    ctx.check_size(width, height, f"resize={geometry}")
    if (width, height) != image.size:
        image.resize(width, height)


@operation("thumbnail", ResizeGeometry(), help="resize for a thumbnail (faster, drops profiles)")
def thumbnail(image: Image, geometry: Geometry, ctx: OpContext) -> None:
    width, height = geometry.target_size(image.width, image.height)
    ctx.check_size(width, height, f"thumbnail={geometry}")
    image.thumbnail(width, height)


def _crop(image: Image, x: int, y: int, width: int, height: int) -> None:
    image.crop(left=x, top=y, width=width, height=height)
    # Drop the virtual canvas offset the crop leaves behind, or PNG/GIF would record it (+repage).
    image.reset_coords()


@operation("crop", CropGeometry(), help="cut out WxH at +X+Y, or centred without an offset")
def crop(image: Image, box: CropBox, ctx: OpContext) -> None:
    if box.x is None or box.y is None:
        width, height = min(box.width, image.width), min(box.height, image.height)
        x, y = (image.width - width) // 2, (image.height - height) // 2
    else:
        if box.x >= image.width or box.y >= image.height:
            raise ImageError(f"crop={box} lies outside the {image.width}x{image.height} image")
        # Like ImageMagick, a region reaching past the edge is clipped to the image.
        x, y = box.x, box.y
        width, height = min(box.width, image.width - x), min(box.height, image.height - y)
    _crop(image, x, y, width, height)


@operation("random-crop", size_arg(), help="cut out WxH at a place fixed by the spec and the blob name")
def random_crop(image: Image, box: CropBox, ctx: OpContext) -> None:
    # An image smaller than the box in one dimension keeps that whole dimension, like `crop`.
    width, height = min(box.width, image.width), min(box.height, image.height)
    x = ctx.random_int(image.width - width + 1, "x")
    y = ctx.random_int(image.height - height + 1, "y")
    _crop(image, x, y, width, height)


@operation("flip", help="mirror vertically (top becomes bottom)")
def flip(image: Image, _arg: None, ctx: OpContext) -> None:
    image.flip()


@operation("flop", help="mirror horizontally (left becomes right)")
def flop(image: Image, _arg: None, ctx: OpContext) -> None:
    image.flop()


@operation("rotate", Number("DEG", -360, 360), help="rotate clockwise by DEG degrees")
def rotate(image: Image, degrees: float, ctx: OpContext) -> None:
    if degrees % 360 == 0:
        return
    if degrees % 90 != 0:
        # Only non-right angles grow the canvas; bound it before ImageMagick allocates it.
        import math

        rad = math.radians(degrees)
        c, s = abs(math.cos(rad)), abs(math.sin(rad))
        ctx.check_size(
            math.ceil(image.width * c + image.height * s),
            math.ceil(image.width * s + image.height * c),
            f"rotate={degrees:g}",
        )
    image.rotate(degrees)


@operation("auto-orient", help="turn the pixels upright according to the EXIF orientation")
def auto_orient(image: Image, _arg: None, ctx: OpContext) -> None:
    image.auto_orient()


@operation("grayscale", help="convert to grayscale")
def grayscale(image: Image, _arg: None, ctx: OpContext) -> None:
    image.transform_colorspace("gray")


@operation("charcoal", Number("RADIUS", 0, 50), help="charcoal drawing effect (sigma 1, as convert)")
def charcoal(image: Image, radius: float, ctx: OpContext) -> None:
    image.charcoal(radius=radius, sigma=1.0)


@operation("blur", Number("SIGMA", 0, 100, low_open=True), help="Gaussian blur")
def blur(image: Image, sigma: float, ctx: OpContext) -> None:
    image.blur(radius=0, sigma=sigma)  # radius 0: ImageMagick picks one to fit sigma


@operation("sharpen", Number("SIGMA", 0, 100, low_open=True), help="sharpen")
def sharpen(image: Image, sigma: float, ctx: OpContext) -> None:
    image.sharpen(radius=0, sigma=sigma)


@operation(
    "modulate",
    Numbers(
        "B,S,H",
        (Number("B", 0, 1000), Number("S", 0, 1000), Number("H", 0, 200)),
        defaults=(100, 100, 100),
    ),
    help="brightness, saturation and hue in percent (100 = unchanged)",
)
def modulate(image: Image, bsh: tuple[float, float, float], ctx: OpContext) -> None:
    image.modulate(*bsh)


@operation(
    "brightness-contrast",
    Numbers("B,C", (Number("B", -100, 100), Number("C", -100, 100)), defaults=(0, 0), separators=",x"),
    help="change brightness and contrast (-100..100, 0 = unchanged)",
)
def brightness_contrast(image: Image, bc: tuple[float, float], ctx: OpContext) -> None:
    image.brightness_contrast(*bc)


@operation("strip", help="remove profiles and comments (EXIF, ICC, ...)")
def strip(image: Image, _arg: None, ctx: OpContext) -> None:
    image.strip()


@operation("quality", Number("Q", 1, 100, integer=True), help="encoder quality 1-100", unique=True)
def quality(image: Image, q: int, ctx: OpContext) -> None:
    ctx.quality = q  # applied when encoding, wherever the op stands in the spec


@operation("format", ImageFormat(), help="output format (the file extension follows it)", unique=True)
def format_(image: Image, kind: str, ctx: OpContext) -> None:
    ctx.output_format = kind  # applied when encoding, wherever the op stands in the spec
