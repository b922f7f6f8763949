"""Generated hostile inputs, each with what the CLI must make of it.

- `photo_bytes()`: a small photo's bytes in any format PIL writes (seeds for the fuzzers).
- `png_claiming()` / `gif_claiming()` / `tiff_claiming()` / `webp_claiming()`: headers that
  claim huge images (decompression bombs) over almost no data.
- `bad_images()`: a hostile image corpus (truncated, bombs, wrong names, links, FIFOs...).
- `tiny_network()` / `tiny_checkpoint()`: a narrow network, and a valid checkpoint of it
  (for corrupting, and for fast loads).
- `bad_checkpoints()`: damaged and hostile checkpoints, pickled code included.
"""

from __future__ import annotations

import io
import os
import random
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(w: int, h: int) -> bytes:
    """A valid-looking PNG header that claims w x h, with almost no pixel data."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def gif_claiming(w: int, h: int) -> bytes:
    """A GIF whose screen and first frame claim w x h, with a few bytes of LZW data."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", w, h, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, w, h, 0)
        + b"\x02\x02\x44\x01\x00\x3b"
    )


def tiff_claiming(w: int, h: int) -> bytes:
    """A little-endian baseline TIFF claiming w x h 8-bit grey, with 8 bytes of strip."""
    entries = [
        (256, 4, 1, w),  # ImageWidth (LONG)
        (257, 4, 1, h),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: BlackIsZero
        (273, 4, 1, 8),  # StripOffsets: right after the header
        (278, 4, 1, h),  # RowsPerStrip
        (279, 4, 1, 8),  # StripByteCounts
    ]
    ifd_at = 16
    head = b"II*\x00" + struct.pack("<I", ifd_at) + b"\x00" * 8
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HI", value, 0)[:4] if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    return head + ifd + b"\x00\x00\x00\x00"


def webp_claiming(w: int, h: int) -> bytes:
    """An extended WebP (VP8X) whose canvas claims w x h (max 16384), without image data."""
    vp8x = bytes([0, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def photo_bytes(fmt: str, seed: int = 0, size=(96, 72), **save) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[:, : size[0] // 2] //= 3  # some structure, so the JPEG is not all noise
    img = Image.fromarray(arr)
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


# What each generated file must become: "ok" (indexed), "failed" (a catalogue row with
# a reason), or "not indexed" (not a regular image file: skipped or reported, never a row).
def bad_images(root: Path, seed: int = 0) -> dict[str, str]:
    """Write a hostile image corpus under root; returns {relative path: expectation}."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    exp: dict[str, str] = {}

    def put(rel: str, data: bytes, expect: str):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        exp[rel] = expect

    jpg = photo_bytes("JPEG", seed)
    png = photo_bytes("PNG", seed)
    gif = photo_bytes("GIF", seed)
    put("good.jpg", jpg, "ok")
    put("zero.jpg", b"", "failed")
    put("zero.png", b"", "failed")
    for name, data in (("jpg", jpg), ("png", png), ("gif", gif)):
        for frac in (0.02, 0.3, 0.7):
            put(
                f"truncated_{int(frac * 100)}.{name}",
                data[: max(1, int(len(data) * frac))],
                "failed",
            )
    put("text.jpg", b"this is not a picture\n" * 20, "failed")
    put("html.png", b"<html><body>404</body></html>", "failed")
    put("png_named.jpg", png, "ok")  # wrong extension, good content
    put("jpeg_named.gif", jpg, "ok")
    put("random_bytes.webp", rng.randbytes(5000), "failed")
    put("bomb_header.png", png_claiming(100_000, 100_000), "failed")
    put("bomb_wide.png", png_claiming(2**31 - 1, 1), "failed")
    put("bomb.gif", gif_claiming(65535, 65535), "failed")
    put("bomb.tif", tiff_claiming(200_000, 200_000), "failed")
    put("bomb.webp", webp_claiming(16384, 16384), "failed")
    # a real compression bomb under the megapixel cap: 64 MP of zeros in ~70 kB
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG", optimize=False)
    put("inflates_to_64mp.png", buf.getvalue(), "ok")
    put("thin_1x20000.png", _png(Image.new("RGB", (1, 20000), (200, 10, 10))), "ok")
    put("one_pixel.png", _png(Image.new("RGB", (1, 1), (1, 2, 3))), "ok")
    flipped = bytearray(jpg)
    for _ in range(8):
        flipped[rng.randrange(200, len(flipped))] ^= 0xFF
    put("bitflipped.jpg", bytes(flipped), "either")
    put("unicode ünï cødé 写真 🐱.jpg", jpg, "ok")
    put("  leading and trailing spaces  .jpg", jpg, "ok")
    put("new\nline.jpg", jpg, "ok")
    put("semi;colon 'quote\" $dollar.jpg", jpg, "ok")
    deep = "/".join(["d"] * 200)
    put(f"{deep}/deep.jpg", jpg, "ok")
    # not regular image files: never a row, never a hang
    os.symlink("self.jpg", root / "self.jpg")  # ELOOP
    exp["self.jpg"] = "not indexed"
    os.symlink("nowhere.jpg", root / "dangling.jpg")
    exp["dangling.jpg"] = "not indexed"
    os.symlink(".", root / "d" / "loop")  # a folder loop
    os.symlink(root, root / "d" / "d" / "back_to_root")
    os.mkfifo(root / "fifo.jpg")  # opening it would block forever
    exp["fifo.jpg"] = "not indexed"
    (root / "folder.jpg").mkdir()
    exp["folder.jpg"] = "not indexed"
    unreadable = root / "unreadable.jpg"
    unreadable.write_bytes(jpg)
    unreadable.chmod(0)
    # root reads anything: the file is then simply ok
    exp["unreadable.jpg"] = "ok" if os.geteuid() == 0 else "failed"
    return exp


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- hostile weights


def tiny_network():
    """A narrow AlexNet (8..16 channels, fc 32), seeded: the same code paths, millisecond
    loads and forwards."""
    import torch

    from alexsearch.net.alexnet import AlexNet
    from alexsearch.net.arch import ArchConfig

    torch.manual_seed(0)
    arch = ArchConfig(num_classes=3, conv_channels=(8, 16, 16, 16, 16), fc_units=(32, 32))
    return AlexNet(arch)


def tiny_checkpoint(path: Path) -> Path:
    """A valid checkpoint of a narrow network (a few hundred kB), for corrupting."""
    from alexsearch.weights import checkpoint

    net = tiny_network()
    ckpt = checkpoint.Checkpoint(
        arch=net.cfg,
        preprocess=checkpoint.paper_preprocess(),
        state_dict=net.state_dict(),
        classes=["a", "b", "c"],
    )
    checkpoint.save(ckpt, path)
    return path


class _Evil:
    """Unpickling this calls open(marker, 'w'): a file that must never appear."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_payload(good: Path, out: Path, change) -> None:
    import torch

    payload = torch.load(good, weights_only=True)
    change(payload)
    with open(out, "wb") as f:
        torch.save(payload, f)


def bad_checkpoints(root: Path, marker: Path, seed: int = 0, flips: int = 12) -> dict[str, str]:
    """Write damaged and hostile checkpoints under root; {name: what the error must say}."""
    import pickle

    import torch

    root.mkdir(parents=True, exist_ok=True)
    good = tiny_checkpoint(root / "good.ckpt")
    raw = good.read_bytes()
    rng = random.Random(seed)
    exp: dict[str, str] = {}

    def put(name, data, says):
        (root / name).write_bytes(data)
        exp[name] = says

    put("empty.ckpt", b"", "not a checkpoint")
    put("truncated_10b.ckpt", raw[:10], "not a checkpoint")
    put("truncated_half.ckpt", raw[: len(raw) // 2], "checkpoint")
    put("truncated_last_byte.ckpt", raw[:-1], "checkpoint")
    put("text.ckpt", b"hello\n", "not a checkpoint")
    for i in range(flips):
        b = bytearray(raw)
        # flip in the first 90% (tensor data and pickle), not the zip's trailing directory
        b[rng.randrange(0, int(len(b) * 0.9))] ^= 1 << rng.randrange(8)
        put(f"bitflip_{i}.ckpt", bytes(b), "")
    # pickled code, as a legacy pickle and inside a torch zip
    put("legacy_pickle_code.ckpt", pickle.dumps(_Evil(str(marker))), "not a checkpoint")
    with open(root / "zip_pickle_code.ckpt", "wb") as f:
        torch.save({"format": "alexsearch-checkpoint", "evil": _Evil(str(marker))}, f)
    exp["zip_pickle_code.ckpt"] = "pickled"

    def shape_mismatch(p):
        p["state_dict"]["fc8.weight"] = torch.zeros(7, 32)

    def wrong_config(p):
        p["arch"]["fc_units"] = [64, 64]

    def nan_weights(p):
        p["state_dict"]["fc7.weight"][0, 0] = float("nan")

    def int_weights(p):
        k = next(iter(p["state_dict"]))
        p["state_dict"][k] = p["state_dict"][k].to(torch.int32)

    def negative_config(p):
        p["arch"]["conv_channels"] = [-8, 16, 16, 16, 16]

    def unknown_arch_key(p):
        p["arch"]["wings"] = 2

    def not_tensors(p):
        p["state_dict"] = {"a": 1}

    def newer_version(p):
        p["version"] = 99

    def torchvision_dict(p):
        p.clear()
        p["features.0.weight"] = torch.zeros(1)

    def missing_preprocess(p):
        del p["preprocess"]

    for fn, says in (
        (shape_mismatch, "shape"),
        (wrong_config, "shape"),
        (nan_weights, "nan"),
        (int_weights, "not floating point"),
        (negative_config, ""),
        (unknown_arch_key, "unknown"),
        (not_tensors, "tensors"),
        (newer_version, "newer"),
        (torchvision_dict, "weights import"),
        (missing_preprocess, "malformed"),
    ):
        name = f"{fn.__name__}.ckpt"
        _rewrite_payload(good, root / name, fn)
        exp[name] = says
    # a zip that is no checkpoint, and one whose member is compressed
    with zipfile.ZipFile(root / "plain.zip.ckpt", "w") as z:
        z.writestr("hello.txt", "hi")
    exp["plain.zip.ckpt"] = "checkpoint"
    with zipfile.ZipFile(root / "deflate_bomb.ckpt", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 * 1024 * 1024))
    exp["deflate_bomb.ckpt"] = "compressed"
    os.mkdir(root / "folder.ckpt")
    exp["folder.ckpt"] = "folder"
    exp["missing.ckpt"] = "no such"
    return exp
