"""Which arithmetic the network runs in, chosen by what the machine has.

fp32, or bf16 autocast (the weights stay fp32; convolutions and matrix products take
bf16 inputs): ~1.4x faster than fp32 for this network on CPUs with native bf16
(AVX512_BF16 or AMX) and on GPUs, with fc7 within cosine 0.999 of fp32 per image
(tests/test_precision.py); on other CPUs bf16 is emulated and slower, so `auto` keeps
fp32 there. $ALEXSEARCH_PRECISION (fp32 or bf16), where set, is what `auto` takes
instead, on every machine: a user (or a test suite) that wants the same vectors from
every machine pins it once. Torch-free: the CPU's flags come from /proc/cpuinfo.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISION_ENV = "ALEXSEARCH_PRECISION"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo has none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)


def resolve_precision(spec: str, device_type: str) -> str:
    """A --precision value for a device type ("cpu" or "cuda"): "fp32" or "bf16"."""
    spec = str(spec).strip().lower()
    if spec not in PRECISIONS:
        raise UserError(f"--precision {spec!r}: choose from {', '.join(PRECISIONS)}")
    if spec != "auto":
        return spec
    pinned = os.environ.get(PRECISION_ENV, "").strip().lower()
    if pinned:
        if pinned not in ("fp32", "bf16"):
            raise UserError(f"${PRECISION_ENV}={pinned!r}: choose fp32 or bf16")
        return pinned
    return "bf16" if device_type == "cuda" or native_bf16() else "fp32"


def combined(a: str, b: str) -> str:
    """The precision of an index holding vectors made at `a` and at `b` ("bf16+fp32")."""
    parts = set(a.split("+")) | set(b.split("+"))
    return "+".join(sorted(parts))
