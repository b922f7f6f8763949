"""Batches of labelled photos for training and evaluation: the labelled folder (optionally
a seeded subset), a Dataset of uint8 256 images that reports unreadable files instead of
failing, and the DataLoader over it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from ..errors import UserError
from ..images.decode import ImageError
from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..images.folders import labelled_folder
from ..images.preprocess import Preprocess
from .crops import load_256


def labelled(root: Path, limit: int | None, seed: int) -> tuple[list[str], list]:
    try:
        classes, samples = labelled_folder(root)
    except ValueError as e:
        raise UserError(str(e)) from None
    if limit is not None and limit < len(samples):
        # A random (seeded) subset keeps every class represented in a quick run.
        rng = random.Random(seed)
        samples = sorted(rng.sample(samples, limit), key=lambda s: (s[1], s[0]))
    return classes, samples


class Images(torch.utils.data.Dataset):
    """(path, label) -> uint8 (3, 256, 256); an unreadable file comes back as its reason."""

    def __init__(
        self,
        samples,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        pre: Preprocess | None = None,  # whose geometry (None: the paper's)
    ):
        self.samples = samples
        self.max_megapixels = max_megapixels
        self.pre = pre

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            u8 = load_256(path, self.max_megapixels, self.pre)
            return u8, label, path, ""
        except ImageError as e:
            return None, label, path, str(e)


def collate(items):
    """Stack the readable images; list the unreadable ones as (path, reason)."""
    ok = [it for it in items if it[0] is not None]
    bad = [(it[2], it[3]) for it in items if it[0] is None]
    if not ok:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    return torch.stack([it[0] for it in ok]), torch.tensor([it[1] for it in ok]), bad


def default_workers(device) -> int:
    """Decode processes for training and evaluation: a GPU needs a process per core (up
    to 8) to stay busy; a CPU keeps its cores for the network and takes 2."""
    cores = os.cpu_count() or 1
    kind = getattr(device, "type", str(device).split(":")[0])
    return min(8, cores) if kind == "cuda" else min(2, cores)


class Shard(torch.utils.data.Sampler):
    """Process `rank`'s share of n items for evaluation: every `world`-th from `rank`,
    each item in exactly one share (DistributedSampler pads the shares to equal length by
    repeating items, which would count them twice in an error rate)."""

    def __init__(self, n: int, world: int, rank: int):
        self.indices = range(rank, n, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader(
    samples,
    batch_size,
    workers,
    sampler=None,
    pin=False,
    max_megapixels=DEFAULT_MAX_MEGAPIXELS,
    pre: Preprocess | None = None,
    persistent: bool = False,
):
    """Batches (uint8 (N, 3, 256, 256), labels, [(path, reason)] unreadable) in `workers`
    processes; `persistent` keeps them from one pass (epoch) to the next; `pin` puts the
    batches in pinned memory for asynchronous copies to a GPU."""
    return torch.utils.data.DataLoader(
        Images(samples, max_megapixels=max_megapixels, pre=pre),
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=bool(persistent and workers),
        prefetch_factor=4 if workers else None,
    )
