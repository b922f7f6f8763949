"""One query image to fc7, as indexing computed it, with the identity of the weights.

On the CPU the network runs on numpy (net/numpy_net.py) whenever the checkpoint is one
that path reads, so a query never imports torch (~2.5 s on a 2-core machine); on a GPU,
or for a checkpoint the numpy reader leaves to torch, it runs on torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..images.preprocess import Preprocess
from ..net.precision import resolve_precision

ImageSource = str | os.PathLike | BinaryIO  # a path, or an open binary file


@dataclass
class Embedder:
    """fc7 of one image (`embed` raises images.decode.ImageError for an unusable one)."""

    embed: Callable[[ImageSource], np.ndarray]
    fingerprint: str
    preprocess: Preprocess
    weights: Path  # resolved
    backend: str  # "numpy" or "torch"
    precision: str = "fp32"  # what fc7 is computed in: "fp32" or "bf16"


def open_embedder(
    weights: Path,
    device: str = "cpu",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    precision: str = "auto",
) -> Embedder:
    """The embedder of the checkpoint at `weights` (already resolved) on `device`.

    precision "auto" is fp32 on the CPU (the torch-free path, whose vectors agree with
    a bf16 index's within its tolerance) and bf16 on a GPU."""
    weights = Path(weights)
    cpu = str(device).strip().lower() == "cpu"
    if str(precision).strip().lower() == "auto":
        precision = "fp32" if cpu else "auto"
    if cpu and resolve_precision(precision, "cpu") == "fp32":
        from ..net.numpy_net import NumpyNet
        from ..weights import checkpoint
        from ..weights.checkpoint_file import Unsupported

        try:  # a damaged or malformed file stops here with its one-line reason
            net = NumpyNet.of(checkpoint.read(weights))
        except Unsupported:  # beyond the torch-free reader: torch's loader takes it
            net = None
        if net is not None:
            return Embedder(
                lambda src: net.embed(src, max_megapixels),
                net.fingerprint,
                net.preprocess,
                weights.resolve(),
                "numpy",
            )
    from ..net.devices import resolve_device
    from ..net.precision import configure_torch
    from ..weights import checkpoint
    from .extract import extract_one

    configure_torch(benchmark=False)  # one image a call: IEEE fp32, no algorithm search
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev.type)
    ckpt = checkpoint.load(weights)
    model = ckpt.build(dev)
    pre = ckpt.preprocess

    def embed(src: ImageSource) -> np.ndarray:
        return extract_one(model, pre, src, max_megapixels, dev, precision)

    return Embedder(embed, ckpt.fingerprint, pre, weights.resolve(), "torch", precision)
