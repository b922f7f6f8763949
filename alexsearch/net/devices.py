"""Which device a --device value means, refused in one line when this machine lacks it."""

from __future__ import annotations

import torch

from ..errors import UserError


def resolve_device(name: str | torch.device) -> torch.device:
    """One --device value: `auto` takes the GPU when there is one; a device this machine
    lacks is a UserError, not torch's error from deep inside the first forward."""
    spec = str(name).strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if d.type not in ("cpu", "cuda"):
        raise UserError(f"--device {d}: only cpu and cuda devices are supported")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise UserError(f"--device {d}: only {torch.cuda.device_count()} GPU(s) here")
    return d
