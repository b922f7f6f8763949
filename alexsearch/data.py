"""Images in, network inputs out: one definition for training, evaluation, indexing, query.

decode (any format and mode to RGB, EXIF-aware, bomb-guarded)
  -> the paper's geometry: short side to 256, centre 256x256, as uint8 (3, 256, 256)
  -> crop 224 (centre, random, or the ten crops) -> float, channel order, minus the mean.

Decoding uses PIL with JPEG draft mode (the DCT scales a large photo down by 1/2, 1/4
or 1/8 while decoding, never below the 256 we need): measured faster than full
decode + resize and than torchvision.io.decode_jpeg on the CPU (bench/decode.py).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from .imagefiles import DEFAULT_MAX_MEGAPIXELS, IMAGE_EXTENSIONS, is_image_name  # noqa: F401

RESIZE = 256

# A truncated file is an error to report, not something to pad with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We enforce our own cap (max_megapixels) before decoding; PIL's global one would turn a
# large-but-allowed photo into an error that names PIL instead of our option.
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An image that cannot be used, with a reason fit for a one-line report."""


@dataclass(frozen=True)
class Preprocess:
    """How pixels become network input; stored in every checkpoint with the weights.

    scale: pixel values run 0..scale (255 for the paper and Caffe, 1 for torchvision).
    mean: per-channel (3 values) or a mean image (3 x 256 x 256), on that scale, in
    ``channel_order``. std: per-channel divisor or None (the paper uses none).
    pca_eigval / pca_eigvec: the RGB covariance of the training set on the [0, 1]
    scale (eigenvalues, and eigenvectors as columns), for the paper's PCA lighting.
    """

    input_size: int = 224
    resize: int = RESIZE
    channel_order: str = "RGB"
    scale: float = 255.0
    mean: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list | None = None
    pca_eigval: list | None = None
    pca_eigvec: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(**d)

    def mean_tensor(self) -> torch.Tensor:
        m = torch.as_tensor(self.mean, dtype=torch.float32)
        return m.view(3, 1, 1) if m.ndim == 1 else m

    def normalize(self, u8: torch.Tensor, offsets: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 RGB (..., 3, s, s) -> float network input.

        `offsets`: where this crop sits in the 256 image, so a mean image is cropped
        with it (None means centred).
        """
        x = u8.float()
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        mean = self.mean_tensor().to(x.device)
        if mean.shape[-1] > 1 and mean.shape[-1] != x.shape[-1]:
            s = x.shape[-1]
            top, left = offsets if offsets is not None else _centre(mean.shape[-1], s)
            mean = mean[:, top : top + s, left : left + s]
        x = x - mean
        if self.std is not None:
            x = x / torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x


def _centre(big: int, small: int) -> tuple[int, int]:
    o = (big - small) // 2
    return o, o


# --------------------------------------------------------------------------- decoding


def decode(
    path: str | os.PathLike | io.BufferedIOBase,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    draft_to: int | None = RESIZE,
) -> Image.Image:
    """Open any supported image as an RGB PIL image, upright per its EXIF orientation.

    Raises ImageError with a short reason for anything unusable: missing, empty,
    truncated, not an image, or over `max_megapixels` (checked from the header,
    before any pixel is decoded). `draft_to`: let JPEG decoding scale down by a power
    of two as long as both sides stay >= this (None decodes at full size).
    """
    try:
        if isinstance(path, (str, os.PathLike)) and os.path.getsize(path) == 0:
            raise ImageError("empty file")
        with warnings.catch_warnings():
            # A damaged file's complaints ("Tag data larger than file") are not the user's
            # business beyond the one reason we report; a bomb warning becomes an error.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > max_megapixels * 1e6:
                raise ImageError(
                    f"{w}x{h} is {w * h / 1e6:.0f} megapixels, over the "
                    f"{max_megapixels:g} megapixel cap (--max-megapixels)"
                )
            if draft_to and img.format == "JPEG":
                img.draft("RGB", (draft_to, draft_to))
            img.load()  # the first frame for GIF/animated WebP, page 1 for TIFF
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"cannot decode: {_short(e)}") from None
    except Exception as e:  # a hostile file must never take the run down
        raise ImageError(f"cannot decode: {type(e).__name__}: {_short(e)}") from None


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:200]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("PA", "LA", "RGBA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# --------------------------------------------------------------------------- geometry


def resize_centre(img: Image.Image, size: int = RESIZE) -> torch.Tensor:
    """The paper's geometry: short side to `size`, centre `size` x `size`, uint8 (3, s, s)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    # Resize only the centre region we keep (box= in source coordinates): cheaper.
    box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
    img = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_256(path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, size: int = RESIZE):
    """decode + resize_centre: the uint8 (3, 256, 256) every later step starts from."""
    return resize_centre(decode(path, max_megapixels, draft_to=size), size)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = _centre(x.shape[-1], size)
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
