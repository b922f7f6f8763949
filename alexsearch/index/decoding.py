"""From a file to what indexing stores and feeds the network, without torch: the bytes
read once (hashed for move detection), decoded, the uint8 centre crop in the
checkpoint's geometry, and a 32x32 thumbnail; or the reason the file cannot be used.

`DecodeAhead` runs this on threads ahead of the consumer, in input order: reading,
hashing (hashlib), decoding and resizing (Pillow) release the GIL, so the threads fill
the cores while the network's threads wait on memory, and they start before torch is
even imported. One thread per core measured fastest on 2 cores, in fp32 and bf16,
beside one thread, decoding between batches, and DataLoader worker processes
(bench/index_throughput.py, "pipelines").
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..images.decode import ImageError
from ..images.files import file_digest
from ..images.geometry import centre_offsets
from ..images.preprocess import Preprocess

THUMB = 32  # the thumbnail's side: the pixel-space baseline of `eval retrieval`


def decode_threads() -> int:
    """Decode threads beside the network on a CPU: one per core (see the module's note)."""
    return max(1, os.cpu_count() or 1)


@dataclass
class Decoded:
    path: str
    crop: np.ndarray | None  # uint8 (3, s, s), the network's centre crop; None: failed
    reason: str = ""
    digest: str = ""
    thumb: bytes = b""  # 32x32 RGB uint8


def decode_file(path: str, pre: Preprocess, max_megapixels: float) -> Decoded:
    """One file; a file that cannot be used comes back with its reason, never raises."""
    digest = ""
    try:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ImageError(e.strerror or type(e).__name__) from None
        digest = file_digest(raw)
        if not raw:
            raise ImageError("empty file")
        u8 = pre.photo_256(io.BytesIO(raw), max_megapixels, name=path)  # (256, 256, 3)
        top, left = centre_offsets(u8.shape[0], pre.input_size)
        s = pre.input_size
        crop = np.ascontiguousarray(u8[top : top + s, left : left + s].transpose(2, 0, 1))
        return Decoded(path, crop, "", digest, thumbnail(u8))
    except ImageError as e:
        return Decoded(path, None, str(e), digest)


def thumbnail(u8: np.ndarray) -> bytes:
    """The 256 image averaged over 8x8 blocks to 32x32 RGB (Pillow's box reduction, a
    tenth of the time of the same mean in numpy; it rounds halves up)."""
    h, w, _ = u8.shape
    img = Image.fromarray(u8)
    if h % THUMB or w % THUMB or h != w:
        return np.asarray(img.resize((THUMB, THUMB), Image.BOX)).tobytes()
    return img.reduce(h // THUMB).tobytes()


class DecodeAhead:
    """decode_file of every path, yielded in order, worked on `threads` threads from the
    moment it is made (0 threads: each file when it is asked for), with at most `ahead`
    files decoded or in flight. Close it (or use it as a context manager) to drop what
    is still queued."""

    def __init__(self, paths, pre: Preprocess, max_megapixels: float, threads: int, ahead=96):
        self._work = lambda p: decode_file(p, pre, max_megapixels)
        self._todo = iter(paths)
        self._pending: deque = deque()
        self._ahead = max(1, ahead)
        self._pool = ThreadPoolExecutor(threads, "decode") if threads > 0 else None
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and len(self._pending) < self._ahead:
            p = next(self._todo, None)
            if p is None:
                return
            self._pending.append(self._pool.submit(self._work, p))

    def __iter__(self) -> Iterator[Decoded]:
        if self._pool is None:
            for p in self._todo:
                yield self._work(p)
            return
        while self._pending:
            item = self._pending.popleft().result()
            self._fill()
            yield item

    def close(self) -> None:
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> DecodeAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
