"""Camera RAW files (.dng .cr2 .cr3 .nef .arw .raf .orf .rw2) through rawpy (LibRaw):
the embedded JPEG preview when it is at least the size the network needs (fast, and the
camera's own rendering), else a half-size demosaic; upright either way."""

from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager

from PIL import Image, ImageOps

from .decode import ImageError

# LibRaw's `flip` -> the PIL transpose that makes the picture upright
_UPRIGHT = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,
    6: Image.Transpose.ROTATE_270,
}


def decode_raw(source, max_megapixels: float, target: int) -> Image.Image:
    try:
        import rawpy
    except ImportError:
        raise ImageError("RAW photos need the rawpy package") from None
    if isinstance(source, os.PathLike):
        source = os.fspath(source)  # rawpy takes a str path or an open file
    try:
        with _libraw_quiet(), rawpy.imread(source) as raw:
            w, h = raw.sizes.width, raw.sizes.height
            if w * h > max_megapixels * 1e6:
                raise ImageError(
                    f"{w}x{h} is {w * h / 1e6:.0f} megapixels, over the "
                    f"{max_megapixels:g} megapixel cap (--max-megapixels)"
                )
            preview = _preview(raw, rawpy, target)
            if preview is not None:
                if preview.getexif().get(0x0112, 1) != 1:
                    return ImageOps.exif_transpose(preview)
                turn = _UPRIGHT.get(raw.sizes.flip)
                return preview.transpose(turn) if turn is not None else preview
            # no usable preview: demosaic at half size (LibRaw turns it upright itself)
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            return Image.fromarray(rgb)
    except ImageError:
        raise
    except rawpy.LibRawError as e:
        raise ImageError(f"cannot decode RAW: {type(e).__name__}") from None


_LIBRAW = threading.Lock()


@contextmanager
def _libraw_quiet():
    """LibRaw prints its complaints about a damaged file ("Unexpected end of file") on
    file descriptor 2 itself; the one reason we record says it already. RAW files are
    decoded one at a time so that only LibRaw's writes go to /dev/null."""
    with _LIBRAW:
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


def _preview(raw, rawpy, target: int) -> Image.Image | None:
    """The embedded JPEG preview, decoded, if its short side reaches `target`."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    img = Image.open(io.BytesIO(thumb.data))
    if min(img.size) < target:
        return None
    img.draft("RGB", (target, target))
    img.load()
    return img
