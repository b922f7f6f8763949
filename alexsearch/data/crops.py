"""The 256 image as a uint8 tensor, and the crops the network sees: the centre, the
paper's ten (four corners, centre, mirrored) and training's random crop with a flip."""

from __future__ import annotations

import torch
from PIL import Image

from ..images.decode import decode
from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..images.geometry import RESIZE, centre_offsets, resize_centre, ten_crop_offsets


def resize_centre_tensor(img: Image.Image, size: int = RESIZE, squash: bool = False):
    """images.geometry.resize_centre as a uint8 tensor (3, s, s)."""
    return torch.from_numpy(resize_centre(img, size, squash)).permute(2, 0, 1)


def load_256(
    path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, size: int = RESIZE, squash: bool = False
):
    """decode + resize_centre: the uint8 (3, 256, 256) every later step starts from."""
    return resize_centre_tensor(decode(path, max_megapixels, draft_to=size), size, squash)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = centre_offsets(x.shape[-1], size)
    return x[..., top : top + size, left : left + size]


def ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 3, S, S) -> (..., 10, 3, size, size): four corners + centre, then their mirrors."""
    crops = [
        x[..., t : t + size, lft : lft + size] for t, lft in ten_crop_offsets(x.shape[-1], size)
    ]
    crops += [c.flip(-1) for c in crops]
    return torch.stack(crops, dim=-4)


def random_crop_flip(x: torch.Tensor, size: int, generator: torch.Generator | None = None):
    """A batch (N, 3, S, S): a random size x size crop and a coin-flip mirror per image."""
    n, _, s, _ = x.shape
    tops = torch.randint(0, s - size + 1, (n,), generator=generator)
    lefts = torch.randint(0, s - size + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty(n, 3, size, size, dtype=x.dtype, device=x.device)
    for i in range(n):
        t, lft = int(tops[i]), int(lefts[i])
        crop = x[i, :, t : t + size, lft : lft + size]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out
