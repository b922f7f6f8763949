"""A longer fuzz run of the caffemodel reader than the test suite's, and its speed.

    python bench/fuzz_caffemodel.py [--seconds 60] [--seed 0] [--no-speed]

Fuzz: the mutations of tests/test_caffemodel_fuzz.py (truncation, bit flips, hostile
lengths, splices, random bytes), drawn from a seeded RNG for --seconds; prints how many
inputs parsed, how many were refused with CaffemodelError, and stops at the first other
exception, saving the input to fuzz-failure.bin.

Speed: parses a full-size synthetic bvlc_alexnet (V1, 61M floats, ~244 MB) and prints the
time beside the baseline of reading the same file into a numpy array (np.fromfile), the
least any reader must do.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from caffe_proto import bvlc_net, bvlc_params, key, varint, write  # noqa: E402
from test_caffemodel_fuzz import SEEDS  # noqa: E402

from alexsearch.weights import caffemodel  # noqa: E402
from alexsearch.weights.caffemodel import CaffemodelError  # noqa: E402


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["truncate", "flip", "hostile", "splice", "random", "stack"])
    if kind == "truncate":
        return bytes(data[: rng.randint(0, len(data))])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "hostile":
        field = rng.choice([1, 2, 5, 6, 7, 8, 100])
        claim = rng.choice([2**31, 2**32 + 5, 2**63, 2**64 - 1, len(data) + rng.randint(1, 9)])
        junk = (
            key(field, 2) + varint(claim) if rng.random() < 0.7 else b"\xff" * rng.randint(10, 20)
        )
        pos = rng.randint(0, len(data))
        return bytes(data[:pos]) + junk + bytes(data[pos:])
    if kind == "splice":
        a, b = sorted(rng.randint(0, len(data)) for _ in range(2))
        return bytes(data[:a]) + rng.randbytes(rng.randint(0, 32)) + bytes(data[b:])
    if kind == "stack":  # several mutations on top of each other
        for _ in range(rng.randint(2, 4)):
            data = bytearray(mutate(rng, bytes(data)) or b"\x00")
        return bytes(data)
    return rng.randbytes(rng.randint(0, 2048))


def fuzz(seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    counts = {"parsed": 0, "refused": 0}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        data = mutate(rng, rng.choice(SEEDS))
        for read in (caffemodel.read_net, caffemodel.read_mean):
            try:
                got = read(data)
            except CaffemodelError as e:
                assert "\n" not in str(e)
                counts["refused"] += 1
                continue
            except Exception:
                Path("fuzz-failure.bin").write_bytes(data)
                print(f"{read.__name__} raised on the input saved to fuzz-failure.bin:")
                raise
            if isinstance(got, caffemodel.Blob):
                blobs = [got]
            else:
                blobs = [b for la in got.layers for b in la.blobs]
            for b in blobs:
                assert b.data.size == math.prod(b.shape)
            counts["parsed"] += 1
    total = counts["parsed"] + counts["refused"]
    print(
        f"fuzz: {total} reads in {seconds:.0f} s ({total / seconds:.0f}/s): "
        f"{counts['parsed']} parsed consistently, {counts['refused']} refused with "
        "CaffemodelError, no other exception"
    )


def speed() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bvlc_alexnet.caffemodel"
        write(path, bvlc_net(bvlc_params(0), v1=True))
        size = os.path.getsize(path)
        base, ours = [], []
        for _ in range(3):  # interleaved, so a noisy neighbour hits both alike
            t = time.perf_counter()
            np.fromfile(path, np.uint8)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            n = caffemodel.read_net(path)
            ours.append(time.perf_counter() - t)
        floats = sum(b.data.size for la in n.layers for b in la.blobs)
        b, o = min(base), min(ours)
        print(
            f"speed: {size / 1e6:.0f} MB, {floats / 1e6:.1f}M floats: read_net {o:.2f} s "
            f"({size / o / 1e6:.0f} MB/s) vs np.fromfile of the same file {b:.2f} s "
            f"({size / b / 1e6:.0f} MB/s); best of 3"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    fuzz(args.seconds, args.seed)
    if not args.no_speed:
        speed()


if __name__ == "__main__":
    main()
