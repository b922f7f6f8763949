"""The 256 image as a uint8 tensor, and the crops the network sees: the centre, the
paper's ten (four corners, centre, mirrored) and training's random crop with a flip."""

from __future__ import annotations

import torch

from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..images.geometry import centre_offsets, ten_crop_offsets
from ..images.preprocess import Preprocess


def load_256(source, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, pre: Preprocess | None = None):
    """Preprocess.photo_256 as a uint8 tensor (3, 256, 256): what every later step crops
    from (the paper's geometry unless `pre` says otherwise)."""
    u8 = (pre or Preprocess()).photo_256(source, max_megapixels)
    return torch.from_numpy(u8).permute(2, 0, 1)


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
