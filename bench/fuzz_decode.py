"""Longer fuzz of the image decode path than CI runs (tests/robustness/test_fuzz.py).

Mutates small JPEG/PNG/GIF/BMP/WebP/TIFF files (bit flips, overwrites, cuts, inserts,
duplicated runs, extreme header sizes) for a time budget and feeds each to
alexsearch.data.decode + resize_centre. Anything other than decode.ImageError is a bug: its
input is saved under --out for a reproducer. Prints the rate beside the baseline of
decoding the unmutated files in the same run, and the outcomes.

    python bench/fuzz_decode.py [--seconds 120] [--seed 0] [--out fuzz-failures]
"""

from __future__ import annotations

import argparse
import io
import random
import re
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from alexsearch.images import decode, geometry

FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
MAX_MP = 2.0


def seeds() -> dict[str, bytes]:
    out = {}
    for i, fmt in enumerate(FORMATS):
        rng = np.random.default_rng(i)
        arr = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        arr[:, :20] //= 3
        img = Image.fromarray(arr)
        buf = io.BytesIO()
        (img.convert("P") if fmt == "GIF" else img).save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


def mutate(raw: bytes, rng: random.Random) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        if not b:
            break
        i = rng.randrange(len(b))
        op = rng.choice(("flip", "set", "cut", "insert", "dup", "big"))
        if op == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif op == "set":
            b[i] = rng.randrange(256)
        elif op == "cut":
            del b[i : i + rng.randint(1, 64)]
        elif op == "insert":
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif op == "dup":
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 128)]
        else:
            k = min(i, 60)
            b[k : k + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"))
    return bytes(b)


def decode_once(raw: bytes) -> str:
    try:
        img = decode.decode(io.BytesIO(raw), max_megapixels=MAX_MP)
        geometry.resize_centre(img)
        return "decoded"
    except decode.ImageError as e:
        return "ImageError: " + re.sub(r"\d+", "N", str(e))[:60]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"))
    args = ap.parse_args()
    files = seeds()

    t0, n = time.perf_counter(), 0  # baseline: the unmutated files
    while time.perf_counter() - t0 < min(5.0, args.seconds / 10):
        for raw in files.values():
            assert decode_once(raw) == "decoded"
            n += 1
    base_rate = n / (time.perf_counter() - t0)

    rng = random.Random(args.seed)
    outcomes: Counter = Counter()
    bugs = 0
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        fmt = rng.choice(FORMATS)
        raw = mutate(files[fmt], rng)
        n += 1
        try:
            outcomes[decode_once(raw)] += 1
        except Exception as e:  # the property broken: save a reproducer
            bugs += 1
            args.out.mkdir(parents=True, exist_ok=True)
            name = args.out / f"{fmt.lower()}-{n}.bin"
            name.write_bytes(raw)
            outcomes[f"BUG {type(e).__name__}"] += 1
            print(f"BUG on {name}:\n{traceback.format_exc(limit=3)}")
    rate = n / (time.perf_counter() - t0)
    print(f"mutated inputs tried: {n} in {args.seconds:.0f} s ({rate:.0f}/s)")
    print(f"baseline, unmutated files decoded: {base_rate:.0f}/s")
    for k, v in outcomes.most_common(15):
        print(f"  {v:7d}  {k}")
    print(f"exceptions other than ImageError: {bugs}")
    raise SystemExit(1 if bugs else 0)


if __name__ == "__main__":
    main()
