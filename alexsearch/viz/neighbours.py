"""Each query beside its nearest indexed photos, one row per query: the paper's Fig. 4."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import UserError
from .draw import INK, MUTED, WHITE, fit_text, font, load_tile, missing_tile


def neighbour_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, float]]]], tile: int = 128
) -> Image.Image:
    """One row per query: the query (framed), a gap, then its neighbours nearest first, each
    captioned with its distance and file name. Files that cannot be read show a cross."""
    if not rows:
        raise UserError("no query could be searched: nothing to draw")
    k = max((len(n) for _, n in rows), default=0)
    pad, sep, cap = 6, 18, 34
    f, fb = font(11), font(12)
    width = pad * 2 + sep + (k + 1) * tile + k * pad
    height = pad + len(rows) * (tile + cap + pad)
    img = Image.new("RGB", (width, height), WHITE)
    d = ImageDraw.Draw(img)
    for r, (query, hits) in enumerate(rows):
        y = pad + r * (tile + cap + pad)
        cells = [(query, None)] + list(hits)
        for c, (path, dist) in enumerate(cells):
            x = pad + c * (tile + pad) + (sep if c else 0)
            t = load_tile(path, tile) or missing_tile(tile)
            img.paste(t, (x, y))
            if c == 0:
                d.rectangle(
                    (x - 3, y - 3, x + tile + 2, y + tile + 2), outline=(214, 39, 40), width=3
                )
                first = "query"
            else:
                first = f"{c}. d = {dist:.3f}"
            d.text((x, y + tile + 4), first, fill=INK, font=fb)
            parts = Path(path).parts[-2:]  # the folder tells 000.jpg from 000.jpg
            name = fit_text(d, "/".join(parts), f, tile)
            d.text((x, y + tile + 19), name, fill=MUTED, font=f)
    return img
