"""Keep freed memory for reuse instead of handing it back to the kernel.

glibc's malloc serves every block over its mmap threshold (at most 32 MB) with a fresh
mmap and unmaps it on free, so each batch of the network (activations of 20-150 MB)
page-faults and zeroes its memory again: on a 2-core CPU, a fifth of the forward's
time went to the kernel (bench/index_throughput.py, "choices"). Raising the threshold
and the trim threshold keeps those blocks in the heap, reused batch after batch; the
process keeps its peak (~1.3 GB at batch 128) until it exits, as a batch job may.
Only glibc has mallopt; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed


@lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True when they took."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP))
