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

from .files import DEFAULT_MAX_MEGAPIXELS, HEIF_EXTENSIONS, RAW_EXTENSIONS
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
    name: str | None = None,
) -> Image.Image:
    """Open any supported image as an RGB PIL image, upright per its EXIF orientation.

    Raises ImageError with a short reason for anything unusable: missing, empty,
    truncated, not an image, or over `max_megapixels` (checked from the header,
    before any pixel is decoded). `draft_to`: let JPEG decoding scale down by a power
    of two as long as both sides stay >= this (None decodes at full size). `name`: the
    file's name when `path` is an open file (its extension marks RAW and HEIF files).
    """
    if name is None:
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
    ext = os.path.splitext(name)[1].lower()
    try:
        if isinstance(path, (str, os.PathLike)) and os.path.getsize(path) == 0:
            raise ImageError("empty file")
        if ext in RAW_EXTENSIONS:
            from .raw import decode_raw

            return to_rgb(decode_raw(path, max_megapixels, draft_to or RESIZE))
        if ext in HEIF_EXTENSIONS:
            _register_heif()
        with warnings.catch_warnings():
            # A damaged file's complaints ("Tag data larger than file") are not the user's
            # business beyond the one reason we report; a bomb warning becomes an error.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(path)
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


_heif = {"registered": False}


def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif), when the first such file comes: its import
    costs what most runs never need."""
    if _heif["registered"]:
        return
    try:
        import pillow_heif
    except ImportError:
        raise ImageError("HEIC/HEIF needs the pillow-heif package") from None
    pillow_heif.register_heif_opener()
    _heif["registered"] = True


def _open(source) -> Image.Image:
    """Image.open; a file Pillow does not know may be a HEIF without its name (an upload):
    try again once pillow-heif is registered."""
    try:
        return Image.open(source)
    except Image.UnidentifiedImageError:
        if _heif["registered"]:
            raise
        try:
            _register_heif()
        except ImageError:
            raise Image.UnidentifiedImageError() from None
        if hasattr(source, "seek"):
            source.seek(0)
        return Image.open(source)


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
