"""Which files are images and their content digests, without the heavy image stack.

Kept free of torch and PIL so that a re-index with nothing changed starts fast.
"""

import hashlib
import os

HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})  # phones' photos (pillow-heif)
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"})
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
    | HEIF_EXTENSIONS
    | RAW_EXTENSIONS
)
DEFAULT_MAX_MEGAPIXELS = 100.0


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_raw_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in RAW_EXTENSIONS


def file_digest(raw: bytes) -> str:
    """Content digest used to recognise moved and renamed files."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return file_digest(f.read())
