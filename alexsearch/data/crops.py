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


def crop_draws(n: int, side: int, size: int, generator: torch.Generator | None = None):
    """The random part of training's crops, drawn on the CPU (so a run's draws are the
    same on every device): (tops, lefts, flips) for n images of side `side`."""
    tops = torch.randint(0, side - size + 1, (n,), generator=generator)
    lefts = torch.randint(0, side - size + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return tops, lefts, flips


def gather_crops(x: torch.Tensor, tops, lefts, flips, size: int) -> torch.Tensor:
    """x (N, C, S, S) -> (N, C, size, size): image i's window at (tops[i], lefts[i]),
    mirrored where flips[i], as one gather (a few kernels whatever N; tops, lefts and
    flips on x's device)."""
    n, c = x.shape[:2]
    steps = torch.arange(size, device=x.device)
    rows = tops.view(n, 1) + steps  # (n, size)
    cols = torch.where(
        flips.view(n, 1), lefts.view(n, 1) + (size - 1) - steps, lefts.view(n, 1) + steps
    )
    i = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    ch = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return x[i, ch, rows.view(n, 1, size, 1), cols.view(n, 1, 1, size)]


def random_crop_flip(x: torch.Tensor, size: int, generator: torch.Generator | None = None):
    """A batch (N, 3, S, S): a random size x size crop and a coin-flip mirror per image,
    drawn on the CPU (crop_draws) and cut on x's device in one gather."""
    tops, lefts, flips = crop_draws(x.shape[0], x.shape[-1], size, generator)
    draws = torch.stack([tops, lefts, flips.long()])
    if x.device.type == "cuda":  # one small asynchronous copy, not a blocking one
        draws = draws.pin_memory()
    tops, lefts, flips = draws.to(x.device, non_blocking=True).unbind(0)
    return gather_crops(x, tops, lefts, flips.bool(), size)
