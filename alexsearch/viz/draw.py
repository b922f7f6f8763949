"""Drawing with Pillow, shared by every picture: the palette, fonts, text that fits, and
a photo's tile (as the network sees it, else its stored thumbnail, else a cross)."""

from __future__ import annotations

import colorsys
import math

from PIL import Image, ImageDraw, ImageFont, ImageOps

WHITE = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)
MUTED = (120, 120, 120)

# Tableau's categorical palette (matplotlib's tab10/tab20 order): distinguishable, familiar.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip


def font(size: int = 12) -> ImageFont.ImageFont:
    """DejaVu Sans when the system has it, else Pillow's built-in font."""
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def colour(i: int) -> tuple[int, int, int]:
    """The i-th category colour: the palette, then golden-ratio hues beyond it."""
    if i < len(PALETTE):
        return PALETTE[i]
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def text_width(draw: ImageDraw.ImageDraw, text: str, f) -> int:
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=f)
    return int(x1 - x0)


def fit_text(draw, text: str, f, width: int) -> str:
    """`text` shortened with an ellipsis in the middle until it fits `width` pixels."""
    if text_width(draw, text, f) <= width:
        return text
    keep = len(text)
    while keep > 3:
        keep -= 1
        short = text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
        if text_width(draw, short, f) <= width:
            return short
    return "…"


def load_tile(path: str, size: int, thumb: bytes | None = None) -> Image.Image | None:
    """`path` centre-cropped to size x size (as the network sees it), else the stored 32x32
    thumbnail upscaled, else None."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale, fast
            im = ImageOps.exif_transpose(im).convert("RGB")
            return ImageOps.fit(im, (size, size), Image.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError):
        pass
    if thumb:
        side = int(round(math.sqrt(len(thumb) / 3)))
        small = Image.frombytes("RGB", (side, side), thumb)
        return small.resize((size, size), Image.BILINEAR)
    return None


def missing_tile(size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), (200, 200, 200))
    d = ImageDraw.Draw(tile)
    d.line((0, 0, size, size), fill=(150, 150, 150), width=2)
    d.line((0, size, size, 0), fill=(150, 150, 150), width=2)
    return tile
