"""Which files are images and their content digests, without the heavy image stack.

Kept free of torch and PIL so that a re-index with nothing changed starts fast.
"""

import hashlib
import os

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
DEFAULT_MAX_MEGAPIXELS = 100.0


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def file_digest(raw: bytes) -> str:
    """Content digest used to recognise moved and renamed files."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return file_digest(f.read())
