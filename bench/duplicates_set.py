"""The labelled duplicate set of bench/duplicates.py, made from real photos.

Originals plus the variants a photo library really sees, mixed flat under random names
with untouched photos as distractors:

- near variants (every transform of each of --near originals): a low-quality re-encode,
  a resize to 40%, a crop of 5-12% off each side, brightness x0.7 or x1.3, a small
  rotation (2-4 degrees, the corners cropped away), a border (6%, white or black), a
  watermark text, and an exact copy;
- similar pairs (--similar originals, the original itself left out): two views of the
  scene a step apart, the left and the right 75% of the photo;
- distractors: the remaining photos, untouched.

labels.json maps each file name to {"original": source photo, "transform": name, "half":
"tune" or "test"} (the half: which originals the defaults may be tuned on).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

NEAR_TRANSFORMS = (
    "reencode", "resize", "crop", "brightness", "rotate", "border", "watermark", "copy",
)  # fmt: skip


def _font(size: int):
    from alexsearch.viz.draw import font

    return font(size)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def variant(raw: bytes, transform: str, rng: random.Random) -> bytes:
    """The bytes of `transform` applied to the photo `raw` (JPEG, as phones save)."""
    if transform == "copy":
        return raw
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB")
    w, h = img.size
    if transform == "reencode":
        return _jpeg(img, rng.choice((10, 15, 20)))
    if transform == "resize":
        return _jpeg(img.resize((max(1, w * 2 // 5), max(1, h * 2 // 5)), Image.LANCZOS), 90)
    if transform == "crop":
        f = [rng.uniform(0.05, 0.12) for _ in range(4)]
        box = (int(w * f[0]), int(h * f[1]), int(w * (1 - f[2])), int(h * (1 - f[3])))
        return _jpeg(img.crop(box), 90)
    if transform == "brightness":
        return _jpeg(ImageEnhance.Brightness(img).enhance(rng.choice((0.7, 1.3))), 90)
    if transform == "rotate":
        angle = rng.choice((-1, 1)) * rng.uniform(2, 4)
        rot = img.rotate(angle, Image.BICUBIC)
        m = 0.06  # the black corners of a 4-degree turn lie within 6% of each side
        return _jpeg(rot.crop((int(w * m), int(h * m), int(w * (1 - m)), int(h * (1 - m)))), 90)
    if transform == "border":
        b = max(1, int(0.06 * max(w, h)))
        return _jpeg(ImageOps.expand(img, b, fill=rng.choice(((255,) * 3, (0,) * 3))), 90)
    if transform == "watermark":
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        f = _font(max(12, h // 9))
        d.text((w // 20, h - h // 5), "© 2024 photo studio", font=f, fill=(255, 255, 255, 170))
        return _jpeg(Image.alpha_composite(img.convert("RGBA"), layer), 90)
    if transform in ("left", "right"):  # a step to the side: the left or right 75%
        x0 = 0 if transform == "left" else w // 4
        return _jpeg(img.crop((x0, 0, x0 + w * 3 // 4, h)), 90)
    raise ValueError(transform)


def make_set(photos: Path, out: Path, near: int, similar: int, seed: int = 0) -> dict:
    """Write the set under out/photos (flat, random names) and out/labels.json; reuse a
    finished one. Returns the labels."""
    labels_file = out / "labels.json"
    if labels_file.exists():
        return json.loads(labels_file.read_text())
    files = sorted(p for p in photos.iterdir() if p.suffix.upper() == ".JPEG")
    rng = random.Random(seed)
    rng.shuffle(files)
    if near + similar > len(files):
        raise SystemExit(f"{photos} has {len(files)} photos: fewer than --near + --similar")
    folder = out / "photos"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    labels: dict[str, dict] = {}

    def put(data: bytes, original: str, transform: str) -> None:
        name = hashlib.sha1(f"{seed}/{original}/{transform}".encode()).hexdigest()[:12]
        (folder / f"{name}.jpg").write_bytes(data)
        half = "tune" if int(hashlib.sha1(original.encode()).hexdigest(), 16) % 2 else "test"
        labels[f"{name}.jpg"] = {"original": original, "transform": transform, "half": half}

    for i, src in enumerate(files):
        raw = src.read_bytes()
        if i < near:
            put(raw, src.name, "original")
            for t in NEAR_TRANSFORMS:
                put(variant(raw, t, rng), src.name, t)
        elif i < near + similar:
            for t in ("left", "right"):
                put(variant(raw, t, rng), src.name, t)
        else:
            put(raw, src.name, "distractor")
    labels_file.write_text(json.dumps(labels, indent=1))
    return labels
