"""The first-layer kernels as RGB tiles, tower 1 above tower 2: the paper's Fig. 3.

`KernelLayout.box` says where each kernel's tile is, so a caller (or a test) can find
what was drawn where without reading pixels back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import UserError
from .draw import WHITE


@dataclass(frozen=True)
class KernelLayout:
    """Where each conv1 kernel's tile sits: towers stacked, each a block of rows x cols."""

    n: int
    towers: int
    size: int  # kernel side (11)
    scale: int = 5
    cols: int = 8
    gap: int = 2
    tower_gap: int = 14
    margin: int = 8

    @property
    def per_tower(self) -> int:
        return self.n // self.towers

    @property
    def rows(self) -> int:
        return math.ceil(self.per_tower / self.cols)

    @property
    def tile(self) -> int:
        return self.size * self.scale

    def block_height(self) -> int:
        return self.rows * self.tile + (self.rows - 1) * self.gap

    def image_size(self) -> tuple[int, int]:
        w = 2 * self.margin + self.cols * self.tile + (self.cols - 1) * self.gap
        h = 2 * self.margin + self.towers * self.block_height()
        return w, h + (self.towers - 1) * self.tower_gap

    def box(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive, of kernel `index` (output channel of conv1)."""
        tower, j = divmod(index, self.per_tower)
        r, c = divmod(j, self.cols)
        x0 = self.margin + c * (self.tile + self.gap)
        y0 = (
            self.margin
            + tower * (self.block_height() + self.tower_gap)
            + r * (self.tile + self.gap)
        )
        return x0, y0, x0 + self.tile, y0 + self.tile


def conv1_kernels(state_dict: dict, channel_order: str = "RGB") -> np.ndarray:
    """conv1's kernels as (n, k, k, 3) float RGB; a clear error when there are none."""
    w = state_dict.get("conv1.weight")
    if w is None:
        raise UserError("the checkpoint has no conv1.weight: nothing to draw")
    shape = tuple(w.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[0] < 1:
        raise UserError(
            f"conv1.weight has shape {'x'.join(map(str, shape))}; expected N x 3 x K x K "
            "(RGB kernels)"
        )
    if hasattr(w, "detach"):  # torch's tensor; the torch-free reader gives numpy arrays
        w = w.detach().float().cpu().numpy()
    k = np.asarray(w, np.float32).transpose(0, 2, 3, 1)  # n, k, k, channels
    if channel_order.upper() == "BGR":  # Caffe-imported weights see BGR input
        k = k[..., ::-1]
    return np.ascontiguousarray(k)


def stretch(kernel: np.ndarray) -> np.ndarray:
    """One tile's contrast stretch to 0..255 over all its channels (a flat kernel: grey)."""
    lo, hi = float(kernel.min()), float(kernel.max())
    if hi - lo < 1e-12:
        return np.full(kernel.shape, 128, np.uint8)
    return np.round((kernel - lo) / (hi - lo) * 255).astype(np.uint8)


def kernel_layout(kernels: np.ndarray, towers: int, scale: int = 5) -> KernelLayout:
    n = len(kernels)
    towers = towers if towers > 1 and n % towers == 0 else 1
    return KernelLayout(n=n, towers=towers, size=kernels.shape[1], scale=scale)


def kernel_grid(kernels: np.ndarray, towers: int = 2, scale: int = 5) -> Image.Image:
    """The paper's Fig. 3: each kernel a contrast-stretched RGB tile, nearest-neighbour
    upscaled; tower 1's kernels in the upper block, tower 2's below, a gap between."""
    lay = kernel_layout(kernels, towers, scale)
    img = Image.new("RGB", lay.image_size(), WHITE)
    for i, k in enumerate(kernels):
        tile = Image.fromarray(stretch(k), "RGB").resize((lay.tile, lay.tile), Image.NEAREST)
        img.paste(tile, lay.box(i)[:2])
    return img


def kernels_picture(ckpt, scale: int = 5) -> Image.Image:
    """kernel_grid of a loaded weights.Checkpoint, towers and channel order taken from it."""
    k = conv1_kernels(ckpt.state_dict, ckpt.preprocess.channel_order)
    return kernel_grid(k, ckpt.arch.towers, scale)


def kernels_of_weights(weights=None, scale: int = 5) -> Image.Image:
    """kernels_picture of the weights the policy names (--weights, $ALEXSEARCH_WEIGHTS,
    the fetched default)."""
    from ..weights import checkpoint, locations

    return kernels_picture(checkpoint.load(locations.resolve(weights)), scale)
