"""The paper's geometry on uint8 pixels: short side to 256, the centre 256x256, and where
the 224 crops sit in it (centre, the ten crops of evaluation)."""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE = 256


def centre_offsets(big: int, small: int) -> tuple[int, int]:
    """(top, left) of a centred small x small window in a big x big image."""
    o = (big - small) // 2
    return o, o


def resize_centre(img: Image.Image, size: int = RESIZE, squash: bool = False) -> np.ndarray:
    """The paper's geometry: short side to `size`, centre `size` x `size`, uint8 (s, s, 3).

    squash: the whole image to `size` x `size` instead (Caffe's; see Preprocess.squash).
    """
    if squash:
        return np.array(img.resize((size, size), Image.BILINEAR, reducing_gap=None), np.uint8)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    # Resize only the centre region we keep (box= in source coordinates): cheaper.
    box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
    img = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
    return np.array(img, dtype=np.uint8)


def resize_like_torchvision(img: Image.Image, size: int = RESIZE, crop: int = 224) -> np.ndarray:
    """torchvision's Resize(size) then CenterCrop(crop), as the size x size window whose
    centred crop x crop is exactly torchvision's crop, uint8 (s, s, 3).

    torchvision resizes the whole photo to an integer size (the long side truncated:
    341 for 500x375, so 500/341 source pixels a pixel, not 375/256) and rounds the crop's
    offset; resize_centre's exact 256/short-side grid drifts from it by a fraction of a
    pixel. Checkpoints imported from torchvision are fed these pixels."""
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), Image.BILINEAR)  # what torchvision's Resize calls on a PIL image
    half = (size - crop) // 2
    top = int(round((nh - crop) / 2.0)) - half
    left = int(round((nw - crop) / 2.0)) - half
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def ten_crop_offsets(full: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the four corners and the centre, in the paper's order."""
    e = full - size
    c = e // 2
    return [(0, 0), (0, e), (e, 0), (e, e), (c, c)]
