"""JPEG decoding on the GPU for `index --device cuda` at bf16: the files are read and
hashed on the CPU (their headers checked there too), then each batch's bytes go to
nvJPEG in one call (`torchvision.io.decode_jpeg(device="cuda")`) and are turned upright,
resized (short side to 256, bilinear with antialiasing, as Pillow's) and cropped on the
GPU. What nvJPEG cannot take (not a JPEG, CMYK, progressive files it refuses, damaged
bytes, other geometries than the paper's) is decoded on the CPU as everywhere else
(index.decoding), so every file still gets its vector or its reason.

The pixels are not bit for bit the CPU's (another IDCT, no JPEG draft scaling): fc7
agrees within the tolerance of a bf16 index (net.precision), which is why fp32 indexes
keep the CPU's decoder. Imports torch when a batch is decoded.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..images.files import file_digest
from ..images.preprocess import Preprocess
from .decoding import THUMB, Decoded, decode_file

JPEG_MAGIC = b"\xff\xd8\xff"
ORIENTATION = 0x0112  # the EXIF tag


@dataclass
class Encoded:
    """A JPEG read and hashed on the CPU, for the GPU to decode."""

    path: str
    data: bytes
    digest: str
    orientation: int = 1  # EXIF 1..8
    max_megapixels: float = 0.0  # for the CPU decoder, should the GPU's refuse it


def gpu_jpeg_wanted(pre: Preprocess, device_type: str, precision: str) -> bool:
    """GPU decoding where it pays and its pixels are acceptable: a CUDA device, a bf16
    index, the paper's geometry (short side to 256, centre square)."""
    return (
        device_type == "cuda"
        and precision == "bf16"
        and not pre.squash
        and not pre.torchvision_geometry
    )


def read_for_gpu(path: str, pre: Preprocess, max_megapixels: float) -> Decoded | Encoded:
    """An Encoded JPEG the GPU can take (baseline or progressive, RGB or grey, within
    `max_megapixels`), else the file decoded on the CPU (decode_file, with its reason
    when it cannot be used)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return decode_file(path, pre, max_megapixels)
    if not raw.startswith(JPEG_MAGIC):
        return decode_file(path, pre, max_megapixels)
    try:
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as img:  # the header only
            w, h = img.size
            ok = img.mode in ("RGB", "L") and w * h <= max_megapixels * 1e6
            orientation = int(img.getexif().get(ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - anything wrong with it: the CPU decoder says what
        ok, orientation = False, 1
    if not ok or not 1 <= orientation <= 8:
        return decode_file(path, pre, max_megapixels)
    return Encoded(path, raw, file_digest(raw), orientation, max_megapixels)


def nvjpeg(device) -> Callable[[list], list]:
    """The batch decoder: uint8 byte tensors -> uint8 RGB (3, H, W) tensors on `device`."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 points image decoding to torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    def decode(datas: list) -> list:
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)

    return decode


def upright(x, orientation: int):
    """(3, H, W) as Pillow's ImageOps.exif_transpose turns it for an EXIF orientation."""
    import torch

    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1, -2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(x, -1, (-2, -1))
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(x, 1, (-2, -1))
    return x


def photo_256(x, size: int = 256):
    """uint8 (3, H, W) upright -> uint8 (3, size, size): short side to `size`, centre."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    y = F.interpolate(
        x[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
    )[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    y = y[:, top : top + size, left : left + size]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def decode_batch(
    items: list[Encoded], pre: Preprocess, decoder: Callable[[list], list], device
) -> tuple[list[Encoded], object, list[bytes], list[Encoded]]:
    """(decoded items, their uint8 centre crops (k, 3, s, s) on `device` or None, their
    32x32 thumbnails, items the decoder refused). One decoder call for the batch; when it
    fails, one a file, so a damaged file costs only itself."""
    import torch
    import torch.nn.functional as F

    datas = [torch.frombuffer(bytearray(e.data), dtype=torch.uint8) for e in items]
    try:
        images = list(decoder(datas))
        done = list(items)
        refused: list[Encoded] = []
    except Exception:  # noqa: BLE001 - some file of the batch: find which
        images, done, refused = [], [], []
        for e, d in zip(items, datas, strict=True):
            try:
                images.append(decoder([d])[0])
                done.append(e)
            except Exception:  # noqa: BLE001
                refused.append(e)
    if not done:
        return [], None, [], refused
    s, r = pre.input_size, pre.resize
    big = torch.stack(
        [
            photo_256(upright(im.to(device), e.orientation), r)
            for im, e in zip(images, done, strict=True)
        ]
    )
    top = (r - s) // 2
    crops = big[:, :, top : top + s, top : top + s]
    k = r // THUMB if r % THUMB == 0 else None
    if k:
        thumbs = F.avg_pool2d(big.float(), k).round_().to(torch.uint8)
    else:
        thumbs = (
            F.interpolate(big.float(), size=(THUMB, THUMB), mode="area").round_().to(torch.uint8)
        )
    thumbs = thumbs.permute(0, 2, 3, 1).cpu().numpy()  # (k, 32, 32, 3)
    return done, crops, [np.ascontiguousarray(t).tobytes() for t in thumbs], refused
