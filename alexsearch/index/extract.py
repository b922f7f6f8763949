"""Batched fc7 extraction for lists of image files.

Files are decoded ahead of the network (decoding.py): on a thread per core of this
process by default on a CPU, filling the time the network's own threads wait on memory
(measured faster on 2 cores than decoding between batches or in worker processes:
bench/index_throughput.py), or in `workers` DataLoader processes (the default with a
GPU, which needs them all to stay busy). The network runs in
batches, channels_last, in fp32 or bf16 autocast (the index's precision). A file that
cannot be decoded comes back with its reason instead of a vector; it never stops a run.

Imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..data.crops import centre_crop, load_256
from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..images.preprocess import Preprocess
from ..net.memory import reuse_freed_memory
from . import BATCH
from .decoding import DecodeAhead, Decoded, decode_file, decode_threads


@dataclass
class Extracted:
    path: str
    vector: np.ndarray | None  # float32 (dim,), None when the file failed
    reason: str = ""
    digest: str = ""
    thumb: bytes = b""  # 32x32 RGB uint8, the pixel-space baseline of `eval retrieval`


def default_workers(device: torch.device) -> int:
    """Decode processes: a GPU needs them all to stay busy; on a CPU, none (threads)."""
    cores = os.cpu_count() or 1
    return min(8, cores) if device.type == "cuda" else 0


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], pre: Preprocess, max_megapixels: float):
        self.paths, self.pre, self.max_megapixels = paths, pre, max_megapixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        return decode_file(self.paths[i], self.pre, self.max_megapixels)


def _as_is(item):
    return item


@contextmanager
def decoding(
    paths: list[str],
    pre: Preprocess,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    workers: int = 0,
    threads: int | None = None,
):
    """The decoded files, in order: from `workers` processes, else from `threads` threads
    (None: decode_threads()) that start at once, before the network is ready."""
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            _Files(paths, pre, max_megapixels),
            batch_size=None,
            collate_fn=_as_is,  # Decoded as it is: no conversion to tensors
            num_workers=workers,
            prefetch_factor=16,
        )
        yield iter(loader)
        return
    with DecodeAhead(
        paths, pre, max_megapixels, decode_threads() if threads is None else threads
    ) as d:
        yield d


def extract(
    model: torch.nn.Module,
    pre: Preprocess,
    items: Iterable[Decoded],
    batch_size: int = BATCH,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
) -> Iterator[list[Extracted]]:
    """Yield one list of results per batch of `items` (decoding's), in their order."""
    reuse_freed_memory()  # batches reuse their memory instead of page-faulting it anew
    fmt = torch.channels_last
    model = model.to(device, memory_format=fmt).eval()
    batch: list[Decoded] = []
    with torch.inference_mode():
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                yield _forward(model, pre, batch, device, precision)
                batch = []
        if batch:
            yield _forward(model, pre, batch, device, precision)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for precision "bf16" (the weights stay fp32), nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _forward(model, pre: Preprocess, batch: list[Decoded], device, precision) -> list[Extracted]:
    ok = [d for d in batch if d.crop is not None]
    vectors = {}
    if ok:
        x = torch.from_numpy(np.stack([d.crop for d in ok]))
        if device.type == "cuda":
            x = x.pin_memory()  # so the copy below overlaps the work before it
        x = x.to(device, non_blocking=True)
        x = pre.normalize(x).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            feats = model.features(x)
        feats = feats.float().cpu().numpy()
        vectors = {id(d): feats[j] for j, d in enumerate(ok)}
    return [Extracted(d.path, vectors.get(id(d)), d.reason, d.digest, d.thumb) for d in batch]


def extract_one(
    model, pre: Preprocess, path, max_megapixels: float, device="cpu", precision="fp32"
) -> np.ndarray:
    """fc7 of one image (raises ImageError when it cannot be decoded)."""
    u8 = load_256(path, max_megapixels, pre)
    x = pre.normalize(centre_crop(u8, pre.input_size))[None].to(device)
    with torch.inference_mode(), autocast(torch.device(device), precision):
        return model.features(x).float().cpu().numpy()[0]
