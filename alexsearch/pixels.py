"""Pixels without torch: decoding, the paper's geometry, and the input convention.

decode (any format and mode to RGB, EXIF-aware, bomb-guarded) -> short side to 256,
centre 256x256 (uint8) -> ``Preprocess``: float, channel order, minus the mean.
data.py builds the torch side (crops, augmentation, statistics) on these; a query
uses them alone, so it never pays torch's ~2 s import (see numpy_net.py).

Decoding uses PIL with JPEG draft mode (the DCT scales a large photo down by 1/2, 1/4
or 1/8 while decoding, never below the 256 we need): measured faster than full
decode + resize and than torchvision.io.decode_jpeg on the CPU.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .imagefiles import DEFAULT_MAX_MEGAPIXELS

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
    squash: resize both sides to `resize`, ignoring the aspect ratio, as Caffe's
    convert_imageset made bvlc_alexnet's data and mean image; False is the paper's
    short side to `resize`, then the centre square.
    """

    input_size: int = 224
    resize: int = RESIZE
    channel_order: str = "RGB"
    scale: float = 255.0
    mean: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list | None = None
    pca_eigval: list | None = None
    pca_eigvec: list | None = None
    squash: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(**d)

    def signature(self) -> str:
        """A short hash of what decides the network input (not the PCA lighting, which
        only training uses): an index refuses vectors made with other preprocessing, as
        the same weights fed other pixels give other vectors."""
        h = hashlib.sha256()
        h.update(repr((self.input_size, self.resize, self.channel_order, self.squash)).encode())
        h.update(repr((float(self.scale), self.std)).encode())
        h.update(np.asarray(self.mean, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]

    def geometry(self) -> str:
        """The resize and crop in words, for `info` and `weights import`."""
        r, c = self.resize, self.input_size
        if self.squash:
            return f"squash to {r}x{r}, aspect ignored (crops {c})"
        return f"short side to {r}, centre {r}x{r} (crops {c})"

    def mean_array(self, size: int, offsets: tuple[int, int] | None = None) -> np.ndarray:
        """The mean as float32 (3, 1, 1), or a mean image's (3, size, size) window at
        `offsets` in the 256 image (None: centred)."""
        m = np.asarray(self.mean, dtype=np.float32)
        if m.ndim == 1:
            return m.reshape(3, 1, 1)
        if m.shape[-1] == size:
            return m
        top, left = offsets if offsets is not None else centre_offsets(m.shape[-1], size)
        return m[:, top : top + size, left : left + size]

    def normalize(self, u8, offsets: tuple[int, int] | None = None):
        """uint8 RGB torch tensor (..., 3, s, s) -> float network input.

        `offsets`: where this crop sits in the 256 image, so a mean image is cropped
        with it (None means centred).
        """
        import torch  # here, not at the top: the query path runs without torch

        x = u8.float()
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        x = x - torch.from_numpy(self.mean_array(x.shape[-1], offsets)).to(x.device)
        if self.std is not None:
            x = x / torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x

    def normalize_array(self, u8: np.ndarray) -> np.ndarray:
        """normalize() for one uint8 RGB numpy crop (3, s, s), centred: float32."""
        x = u8.astype(np.float32)
        if self.scale != 255.0:
            x *= np.float32(self.scale / 255.0)
        if self.channel_order == "BGR":
            x = x[::-1]
        x = x - self.mean_array(x.shape[-1])
        if self.std is not None:
            x /= np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray(x)


def centre_offsets(big: int, small: int) -> tuple[int, int]:
    """(top, left) of a centred small x small window in a big x big image."""
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
