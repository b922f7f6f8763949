"""Reading an indexed photo's own file, by catalogue id only, never from outside the
folders that were indexed.

A catalogued path is read only when its real location (every symlink resolved, at the
moment of reading) lies inside the real location of a folder (or is a file) that
indexing was asked for; a catalogue older than that record allows only paths that
resolve to themselves. Formats browsers do not show (HEIC, camera RAW, TIFF) are
decoded and sent as JPEG.
"""

from __future__ import annotations

import io
import os
import stat

from ..errors import OutsideError

# what a browser shows as is, and the media type it is sent with
BROWSER_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".avif": "image/avif",
}


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def checked_real_path(path: str, roots: list[str]) -> str:
    """The real path of catalogued `path`, refused (OutsideError) when it resolves outside
    every one of `roots` (abs paths as indexing recorded them), or, with no roots recorded,
    when it is not its own real path."""
    real = os.path.realpath(path)
    allowed = [os.path.realpath(r) for r in roots] if roots else [os.path.abspath(path)]
    if not any(_inside(real, r) for r in allowed):
        raise OutsideError(f"{path} resolves outside the indexed folders: not served")
    return real


def read_original(path: str, roots: list[str], max_megapixels: float) -> tuple[bytes, str]:
    """(bytes, media type) of the indexed file at `path` (see checked_real_path).
    OSError when it cannot be read now; images.decode.ImageError when a format the
    browser cannot show fails to decode."""
    real = checked_real_path(path, roots)
    # O_NOFOLLOW: the last component cannot have become a symlink since it was checked
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OutsideError(f"{path} is not a regular file: not served")
        data = f.read()
    ext = os.path.splitext(path)[1].lower()
    if ext in BROWSER_TYPES:
        return data, BROWSER_TYPES[ext]
    from ..images.decode import decode

    img = decode(io.BytesIO(data), max_megapixels, draft_to=None, name=path)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), "image/jpeg"
