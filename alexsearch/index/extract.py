"""Batched fc7 extraction for lists of image files.

Files are decoded ahead of the network (decoding.py): on a thread per core of this
process by default on a CPU, filling the time the network's own threads wait on memory
(measured faster on 2 cores than decoding between batches or in worker processes:
bench/index_throughput.py), or in `workers` DataLoader processes (the default with a
GPU, which needs them all to stay busy). The network runs in batches, channels_last, in
fp32 or bf16 autocast (the index's precision), with torch's CUDA flags set explicitly
(net.precision.configure_torch: fp32 is IEEE, no TF32). The worker processes stack each
batch's crops in their collate and the batch is pinned, so the copy to a GPU is
asynchronous; with `gpu_jpeg` (a bf16 index on CUDA) they only read and hash JPEGs, and
the GPU decodes them (gpu_decode.py). A file that cannot be decoded comes back with its
reason instead of a vector; it never stops a run.

Imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..data.crops import centre_crop, load_256
from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..images.preprocess import Preprocess
from ..net.memory import reuse_freed_memory
from . import BATCH
from .decoding import DecodeAhead, Decoded, decode_file, decode_threads
from .gpu_decode import Encoded, decode_batch, nvjpeg, read_for_gpu


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
    def __init__(self, paths: list[str], pre: Preprocess, max_megapixels: float, gpu_jpeg=False):
        self.paths, self.pre, self.max_megapixels = paths, pre, max_megapixels
        self.read = read_for_gpu if gpu_jpeg else decode_file

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded | Encoded:
        return self.read(self.paths[i], self.pre, self.max_megapixels)


@dataclass
class Batch:
    """A batch as the worker processes hand it over: every item in order (crops left
    out), and the CPU-decoded crops stacked (uint8 (k, 3, s, s), None when none)."""

    items: list  # Decoded (crop=None) or Encoded
    crops: torch.Tensor | None
    decoded: list[int]  # positions in items of the rows of crops

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls this
        if self.crops is not None:
            self.crops = self.crops.pin_memory()
        return self


def collate(items: list) -> Batch:
    """Stack the decoded crops in the worker (one array, not one per image), keep the
    rest as it is."""
    decoded = [i for i, d in enumerate(items) if isinstance(d, Decoded) and d.crop is not None]
    crops = None
    if decoded:
        crops = torch.from_numpy(np.stack([items[i].crop for i in decoded]))
        for i in decoded:
            items[i].crop = None
    return Batch(items, crops, decoded)


@contextmanager
def decoding(
    paths: list[str],
    pre: Preprocess,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    workers: int = 0,
    threads: int | None = None,
    batch_size: int = BATCH,
    gpu_jpeg: bool = False,
    pin: bool | None = None,
):
    """The decoded files, in order: Batches of `batch_size` from `workers` processes
    (pinned when `pin`, None: when CUDA is there), else single files from `threads`
    threads (None: decode_threads()) that start at once, before the network is ready.
    gpu_jpeg: JPEGs are only read and hashed (gpu_decode.read_for_gpu), for the GPU."""
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            _Files(paths, pre, max_megapixels, gpu_jpeg),
            batch_size=batch_size,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=torch.cuda.is_available() if pin is None else pin,
            prefetch_factor=4,
        )
        yield iter(loader)
        return
    if gpu_jpeg:
        yield (read_for_gpu(p, pre, max_megapixels) for p in paths)
        return
    with DecodeAhead(
        paths, pre, max_megapixels, decode_threads() if threads is None else threads
    ) as d:
        yield d


def extract(
    model: torch.nn.Module,
    pre: Preprocess,
    items: Iterable,
    batch_size: int = BATCH,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
    jpeg_decoder=None,
) -> Iterator[list[Extracted]]:
    """Yield one list of results per batch of `items` (decoding's: Batches as they come,
    single files in batches of `batch_size`), in their order. Encoded JPEGs go to
    `jpeg_decoder` (None: nvJPEG on `device`), a batch at a time."""
    from ..net.precision import configure_torch

    configure_torch(benchmark=True)
    reuse_freed_memory()  # batches reuse their memory instead of page-faulting it anew
    device = torch.device(device)
    fmt = torch.channels_last
    model = model.to(device, memory_format=fmt).eval()
    decoder = jpeg_decoder
    batch: list = []
    with torch.inference_mode():
        for item in items:
            if isinstance(item, Batch):
                if batch:
                    yield _forward(model, pre, Batch(batch, None, []), device, precision, decoder)
                    batch = []
                if decoder is None and any(isinstance(d, Encoded) for d in item.items):
                    decoder = nvjpeg(device)
                yield _forward(model, pre, item, device, precision, decoder)
                continue
            if decoder is None and isinstance(item, Encoded):
                decoder = nvjpeg(device)
            batch.append(item)
            if len(batch) == batch_size:
                yield _forward(model, pre, Batch(batch, None, []), device, precision, decoder)
                batch = []
        if batch:
            yield _forward(model, pre, Batch(batch, None, []), device, precision, decoder)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for precision "bf16" (the weights stay fp32), nothing for "fp32"."""
    from ..net.precision import autocast as _autocast

    return _autocast(torch.device(device).type, precision)


def _forward(model, pre: Preprocess, b: Batch, device, precision, decoder) -> list[Extracted]:
    items = list(b.items)
    parts, rows = [], []  # uint8 crops on the device, and the item positions they hold
    if b.crops is not None:
        parts.append(b.crops.to(device, non_blocking=True))
        rows += b.decoded
    cpu = [i for i, d in enumerate(items) if isinstance(d, Decoded) and d.crop is not None]
    if cpu:  # decoded on this process's threads
        x = torch.from_numpy(np.stack([items[i].crop for i in cpu]))
        if device.type == "cuda":
            x = x.pin_memory()  # so the copy overlaps the work before it
        parts.append(x.to(device, non_blocking=True))
        rows += cpu
    enc = [i for i, d in enumerate(items) if isinstance(d, Encoded)]
    if enc:
        done, crops, thumbs, refused = decode_batch([items[i] for i in enc], pre, decoder, device)
        where = {id(items[i]): i for i in enc}
        for e, t in zip(done, thumbs, strict=True):
            items[where[id(e)]] = Decoded(e.path, None, "", e.digest, t)
        if crops is not None:
            parts.append(crops)
            rows += [where[id(e)] for e in done]
        fallback = []
        for e in refused:  # the CPU decoder takes it, or says why it cannot be used
            i = where[id(e)]
            items[i] = decode_file(e.path, pre, e.max_megapixels or DEFAULT_MAX_MEGAPIXELS)
            if items[i].crop is not None:
                fallback.append(i)
        if fallback:
            parts.append(torch.from_numpy(np.stack([items[i].crop for i in fallback])).to(device))
            rows += fallback
    vectors = {}
    if parts:
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        x = pre.normalize(x).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            feats = model.features(x)
        feats = feats.float().cpu().numpy()
        vectors = {i: feats[j] for j, i in enumerate(rows)}
    return [
        Extracted(d.path, vectors.get(i), d.reason, d.digest, d.thumb) for i, d in enumerate(items)
    ]


def extract_one(
    model, pre: Preprocess, path, max_megapixels: float, device="cpu", precision="fp32"
) -> np.ndarray:
    """fc7 of one image (raises ImageError when it cannot be decoded)."""
    u8 = load_256(path, max_megapixels, pre)
    x = pre.normalize(centre_crop(u8, pre.input_size))[None].to(device)
    with torch.inference_mode(), autocast(torch.device(device), precision):
        return model.features(x).float().cpu().numpy()[0]
