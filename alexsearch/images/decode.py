"""Any image file to an upright 8-bit RGB PIL image, or one clear reason why not.

Decoding uses PIL with JPEG draft mode (the DCT scales a large photo down by 1/2, 1/4
or 1/8 while decoding, never below the 256 we need): measured faster than full
decode + resize and than torchvision.io.decode_jpeg on the CPU.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .files import DEFAULT_MAX_MEGAPIXELS
from .geometry import RESIZE

# A truncated file is an error to report, not something to pad with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We enforce our own cap (max_megapixels) before decoding; PIL's global one would turn a
# large-but-allowed photo into an error that names PIL instead of our option.
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An image that cannot be used, with a reason fit for a one-line report."""


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
