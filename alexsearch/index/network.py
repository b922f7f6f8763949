"""The network an indexing run extracts fc7 with, made in two steps so that decoding can
start before torch is imported (~2.5 s on a 2-core machine, a fifth of a cold run of
1,000 photos): `open_network` reads and checks the weights without torch (their
fingerprint and preprocessing decide what to extract and whether the index takes them),
and `Network.model()` builds the torch network on its device when it is first needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..net.precision import resolve_precision
from ..weights.checkpoint import Checkpoint

LAYER = "fc7"


@dataclass
class Network:
    ckpt: Checkpoint  # as read: numpy arrays, or torch tensors for what only torch reads
    weights: Path  # resolved
    device_spec: str  # a --device value
    precision: str  # "fp32" or "bf16"
    _built: dict = field(default_factory=dict, repr=False)

    @property
    def fingerprint(self) -> str:
        return self.ckpt.fingerprint

    @property
    def preprocess(self):
        return self.ckpt.preprocess

    @property
    def dimension(self) -> int:
        return int(self.ckpt.arch.fc_units[-1])  # fc7's width: 4096 in the paper

    def device(self):
        """The torch device (torch is imported here, if not before)."""
        if "device" not in self._built:
            from ..net.devices import resolve_device

            self._built["device"] = resolve_device(self.device_spec)
        return self._built["device"]

    def model(self):
        """The torch network in eval mode on its device, built once."""
        if "model" not in self._built:
            self._built["model"] = self.ckpt.build(self.device())
        return self._built["model"]


def open_network(weights, recorded: str | None, device: str, precision: str) -> Network:
    """The weights the policy names (locations.resolve), read and validated, for `device`
    at `precision`. A --device value that may name a GPU is checked now (importing
    torch); "cpu", and "auto" on a machine without an NVIDIA device, wait for torch."""
    from ..weights import checkpoint, locations
    from ..weights.checkpoint_file import Unsupported

    path = locations.resolve(weights, recorded)
    try:
        ckpt = checkpoint.read(path)
    except Unsupported:  # beyond the torch-free reader
        ckpt = checkpoint.load(path)
    spec = str(device).strip().lower()
    net = Network(ckpt, path.resolve(), spec, "fp32")
    if spec == "cpu" or (spec == "auto" and not _maybe_gpu()):
        net.device_spec = "cpu"
        net.precision = resolve_precision(precision, "cpu")
    else:
        net.precision = resolve_precision(precision, net.device().type)
    return net


def _maybe_gpu() -> bool:
    """Could torch find a CUDA device here? Only where the NVIDIA driver made its nodes."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")
