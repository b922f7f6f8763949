"""Planted duplicates made with Pillow: a few distinct photo-like images and their copies
as a library collects them (exact copy, low-quality re-encode, resize, small crop)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def photo(seed: int, size=(400, 300)) -> Image.Image:
    """A smooth random scene with a few shapes: distinct per seed, like a photo to pHash."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize(size, Image.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 60), rng.integers(0, size[1] - 60)
        s = int(rng.integers(30, 90))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x, y, x + s, y + s), fill=fill)
    return img


def jpeg(img: Image.Image, path: Path, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    path.write_bytes(buf.getvalue())
    return path


def make_library(root: Path, originals: int = 6) -> dict[str, list[Path]]:
    """root/originals/pNN.jpg, plus for photo 0: an exact copy, a re-encode at quality 20,
    a 50% resize and a 5% crop under root/copies/. Returns {"originals": [...],
    "copy": [...], "reencode": [...], "resize": [...], "crop": [...]}."""
    out: dict[str, list[Path]] = {"originals": []}
    for i in range(originals):
        out["originals"].append(jpeg(photo(100 + i), root / "originals" / f"p{i:02d}.jpg"))
    src = Image.open(out["originals"][0]).convert("RGB")
    w, h = src.size
    copies = root / "copies"
    copies.mkdir(parents=True, exist_ok=True)
    out["copy"] = [copies / "p00 copy.jpg"]
    shutil.copyfile(out["originals"][0], out["copy"][0])
    out["reencode"] = [jpeg(src, copies / "p00_q20.jpg", 20)]
    out["resize"] = [jpeg(src.resize((w // 2, h // 2), Image.LANCZOS), copies / "p00_small.jpg")]
    box = (w // 20, h // 20, w - w // 20, h - h // 20)
    out["crop"] = [jpeg(src.crop(box), copies / "p00_crop.jpg")]
    return out
