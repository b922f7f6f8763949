"""Generate a small labelled image set procedurally (no download): shapes/<class>/<n>.jpg.

Each class is a shape in a colour family on a noisy background, drawn at random
positions, sizes and rotations, so a class is visually coherent but no two images match.

    python scripts/make_shapes.py OUT_DIR [--per-class 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = {
    "red_circles": ((210, 40, 40), "circle"),
    "blue_squares": ((40, 70, 210), "square"),
    "green_triangles": ((40, 170, 60), "triangle"),
    "yellow_stripes": ((230, 200, 40), "stripes"),
    "purple_rings": ((140, 50, 170), "ring"),
    "orange_stars": ((240, 130, 30), "star"),
}


def _jitter(rgb, rng, amount=30):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def draw(kind: str, colour, rng: random.Random, size=(320, 240)) -> Image.Image:
    w, h = size
    bg = tuple(rng.randint(170, 250) for _ in range(3))
    img = Image.effect_noise(size, 24).convert("RGB")
    img = Image.blend(Image.new("RGB", size, bg), img, 0.25)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):
        r = rng.randint(30, 80)
        cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
        fill = _jitter(colour, rng)
        if kind == "circle":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == "ring":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(6, r // 4))
        elif kind == "square":
            a = rng.uniform(0, math.pi / 2)
            pts = [
                (cx + r * math.cos(a + k * math.pi / 2), cy + r * math.sin(a + k * math.pi / 2))
                for k in range(4)
            ]
            d.polygon(pts, fill=fill)
        elif kind == "triangle":
            a = rng.uniform(0, 2 * math.pi)
            pts = [
                (
                    cx + r * math.cos(a + k * 2 * math.pi / 3),
                    cy + r * math.sin(a + k * 2 * math.pi / 3),
                )
                for k in range(3)
            ]
            d.polygon(pts, fill=fill)
        elif kind == "star":
            a = rng.uniform(0, 2 * math.pi)
            pts = [
                (
                    cx + (r if k % 2 == 0 else r // 2.5) * math.cos(a + k * math.pi / 5),
                    cy + (r if k % 2 == 0 else r // 2.5) * math.sin(a + k * math.pi / 5),
                )
                for k in range(10)
            ]
            d.polygon(pts, fill=fill)
        elif kind == "stripes":
            step = rng.randint(14, 30)
            for x in range(-h, w, step * 2):
                d.polygon([(x, 0), (x + step, 0), (x + step + h, h), (x + h, h)], fill=fill)
            break
    return img.filter(ImageFilter.GaussianBlur(0.6))


def make(out: Path, per_class: int = 12, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for name, (colour, kind) in CLASSES.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = out / name / f"{i:03d}.jpg"
            draw(kind, colour, rng).save(p, quality=90)
            paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    paths = make(a.out, a.per_class, a.seed)
    print(f"wrote {len(paths)} images in {len(CLASSES)} classes under {a.out}")


if __name__ == "__main__":
    main()
