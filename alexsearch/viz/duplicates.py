"""Groups of duplicates, one row each, the keep first (framed), each member captioned
with its tier or distance and its file name: `alexsearch duplicates --grid`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import UserError
from .draw import INK, MUTED, WHITE, fit_text, font, load_tile, missing_tile


def duplicate_grid(groups, tile: int = 128, max_rows: int = 200) -> Image.Image:
    """groups: duplicates.Group (tier, keep, files with the keep first). At most
    `max_rows` groups are drawn (a picture of thousands of rows helps nobody)."""
    groups = list(groups)[:max_rows]
    if not groups:
        raise UserError("no duplicates found: nothing to draw")
    k = max(len(g.files) for g in groups)
    pad, cap = 6, 34
    f, fb = font(11), font(12)
    width = pad + k * (tile + pad)
    height = pad + len(groups) * (tile + cap + pad)
    img = Image.new("RGB", (width, height), WHITE)
    d = ImageDraw.Draw(img)
    for r, g in enumerate(groups):
        y = pad + r * (tile + cap + pad)
        for c, m in enumerate(g.files):
            x = pad + c * (tile + pad)
            img.paste(load_tile(m.path, tile) or missing_tile(tile), (x, y))
            if m.path == g.keep:
                d.rectangle(
                    (x - 3, y - 3, x + tile + 2, y + tile + 2), outline=(44, 160, 44), width=3
                )
                first = f"keep · {g.tier}"
            elif g.tier == "exact":
                first = "same bytes"
            else:
                first = f"d = {m.distance:.3f} · {m.hash_distance} b"
            d.text((x, y + tile + 4), fit_text(d, first, fb, tile), fill=INK, font=fb)
            name = fit_text(d, "/".join(Path(m.path).parts[-2:]), f, tile)
            d.text((x, y + tile + 19), name, fill=MUTED, font=f)
    return img
