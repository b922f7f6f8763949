"""Images in, network inputs out: one definition for training, evaluation, indexing, query.

pixels.py decodes and applies the paper's geometry (short side to 256, centre 256x256,
uint8) without torch; here the torch side: crop 224 (centre, random, or the ten crops),
augmentation, the training set's statistics, labelled folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from . import pixels
from .imagefiles import DEFAULT_MAX_MEGAPIXELS, IMAGE_EXTENSIONS, is_image_name  # noqa: F401
from .pixels import RESIZE, ImageError, Preprocess, centre_offsets, decode, to_rgb  # noqa: F401

# --------------------------------------------------------------------------- geometry


def resize_centre(img: Image.Image, size: int = RESIZE, squash: bool = False) -> torch.Tensor:
    """pixels.resize_centre as a uint8 tensor (3, s, s)."""
    return torch.from_numpy(pixels.resize_centre(img, size, squash)).permute(2, 0, 1)


def load_256(
    path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, size: int = RESIZE, squash: bool = False
):
    """decode + resize_centre: the uint8 (3, 256, 256) every later step starts from."""
    return resize_centre(decode(path, max_megapixels, draft_to=size), size, squash)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = centre_offsets(x.shape[-1], size)
    return x[..., top : top + size, left : left + size]


def ten_crop_offsets(full: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the four corners and the centre, in the paper's order."""
    e = full - size
    c = e // 2
    return [(0, 0), (0, e), (e, 0), (e, e), (c, c)]


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


# --------------------------------------------------------------------------- statistics


def pca_lighting(
    x01: torch.Tensor,
    eigval: torch.Tensor,
    eigvec: torch.Tensor,
    std: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The paper's colour augmentation on a float batch (N, 3, H, W) in [0, 1] RGB.

    To every pixel of image n add sum_i alpha_{n,i} * lambda_i * p_i, with p_i, lambda_i
    the eigenvectors (columns of `eigvec`) and eigenvalues of the training set's 3x3 RGB
    covariance and alpha_{n,i} ~ N(0, std), drawn once per image. Everything is on the
    [0, 1] scale; callers on the 0..255 scale multiply the shift by 255.
    """
    n = x01.shape[0]
    alpha = torch.randn(n, 3, generator=generator).to(x01.device) * std
    shift = (alpha * eigval.to(x01.device)) @ eigvec.to(x01.device).T  # (n, 3)
    return x01 + shift.view(n, 3, 1, 1).to(x01.dtype)


class RunningRGBStats:
    """Per-channel mean and 3x3 RGB covariance over many uint8 images, on [0, 1]."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = torch.zeros(3, dtype=torch.float64)
        self.outer = torch.zeros(3, 3, dtype=torch.float64)

    def update(self, u8: torch.Tensor) -> None:
        px = u8.reshape(-1, 3, u8.shape[-2] * u8.shape[-1]).permute(1, 0, 2).reshape(3, -1)
        px = px.double() / 255.0
        self.n += px.shape[1]
        self.sum += px.sum(1)
        self.outer += px @ px.T

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        return self.outer / self.n - torch.outer(m, m)

    def eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (descending) and eigenvectors as columns."""
        val, vec = torch.linalg.eigh(self.covariance())
        order = val.argsort(descending=True)
        return val[order].float(), vec[:, order].float()


# --------------------------------------------------------------------------- folders


def labelled_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """The ImageFolder layout: root/<class>/**/<image>. Returns (classes, [(path, label)]).

    Raises ValueError with a clear reason when the folder is missing, has no class
    folders, or a class folder holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    samples = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
        if not found:
            raise ValueError(f"{root / cls}: class folder holds no images")
        samples += [(p, label) for p in found]
    return classes, samples
