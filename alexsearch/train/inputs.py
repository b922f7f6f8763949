"""What the network sees in training: the mean and PCA of the training images' RGB, the
paper's augmented input (random crop, flip, PCA lighting), and the validation centre crop.

`Inputs` places its constants (the mean, the lighting's basis) on the device once, draws
its random numbers on the CPU (the same draws on every device) and sends them in small
asynchronous copies, so a step never waits on the host.

Imports torch.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..data.crops import centre_crop, random_crop_flip
from ..data.lighting import RunningRGBStats
from ..data.loader import loader
from ..images.preprocess import Preprocess
from ..progress import Progress
from .config import TrainError


def rgb_statistics(
    samples, cap: int, seed: int, workers: int, progress: Progress, rank=0, world=1, device="cpu"
) -> dict:
    """Mean (0..255 scale) and PCA of the RGB covariance ([0, 1] scale) over <= cap images;
    progress: "mean & PCA" (images). Under DDP (world > 1) each process reads its share
    of the images and the sums are added up, so no process waits for one doing all."""
    if cap and len(samples) > cap:
        samples = random.Random(seed).sample(samples, cap)
    mine = samples[rank::world]
    stats = RunningRGBStats()
    done = 0
    for u8, _, _ in loader(mine, 64, workers):
        if len(u8):
            stats.update(u8)
        done += 64
        progress("mean & PCA", min(done * world, len(samples)), len(samples))
    if world > 1:
        stats.all_reduce(device)
    if stats.n == 0:
        raise TrainError("no readable training image to compute the mean from")
    val, vec = stats.eig()
    return {
        "mean": (stats.mean() * 255.0).float().tolist(),
        "pca_eigval": val.tolist(),
        "pca_eigvec": vec.tolist(),
        "images": len(samples),
    }


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device` without blocking the host (pinned first on CUDA)."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class Inputs:
    """The paper's training input and the validation input for one run's preprocessing.

    augment(u8) = finish(*crops(u8)): the uint8 random 224 crops and flips cut on the
    first device, then on each device the float input (minus the mean, plus the PCA
    lighting). Crops stay uint8 until after the crop (a quarter of the bytes to move, and
    exact: a training run's mean is per channel); the two-tower plan sends tower 1 the
    uint8 crops and finishes them there.
    """

    def __init__(self, pre: Preprocess, lighting_std: float, devices, channels_last=False):
        self.pre, self.std, self.channels_last = pre, lighting_std, channels_last
        self.size = pre.input_size
        self.lighting = pre.pca_eigval is not None and lighting_std > 0
        self._mean = np.asarray(pre.mean, dtype=np.float32)
        self._const: dict[torch.device, tuple] = {}
        for d in devices:
            self.constants(torch.device(d))

    def constants(self, device: torch.device) -> tuple:
        """(mean (3, 1, 1) or None for a mean image, lighting basis (3, 3) or None) on
        `device`, made once."""
        if device not in self._const:
            mean = None
            if self._mean.ndim == 1:
                mean = torch.from_numpy(self._mean.reshape(3, 1, 1)).to(device)
            basis = None
            if self.lighting:
                # shift = (alpha * lambda) @ P^T = alpha @ (lambda[:, None] * P^T), on the
                # [0, 1] scale; our input is on the 0..scale one
                val = torch.tensor(self.pre.pca_eigval, dtype=torch.float32) * self.pre.scale
                vec = torch.tensor(self.pre.pca_eigvec, dtype=torch.float32)
                basis = (val.view(3, 1) * vec.T).to(device)
            self._const[device] = (mean, basis)
        return self._const[device]

    def crops(self, u8: torch.Tensor, gen: torch.Generator, device: torch.device):
        """(uint8 random crops with flips on `device`, lighting draws alpha (N, 3) or None)."""
        c8 = random_crop_flip(u8.to(device, non_blocking=True), self.size, gen)
        alpha = None
        if self.lighting:
            alpha = _to(torch.randn(len(u8), 3, generator=gen) * self.std, device)
        return c8, alpha

    def finish(self, c8: torch.Tensor, alpha, device: torch.device) -> torch.Tensor:
        """uint8 crops (and lighting draws) -> the float network input on `device`."""
        c8 = c8.to(device, non_blocking=True)
        mean, basis = self.constants(device)
        if mean is None:  # a mean image (not a training run's own): the general path
            x = self.pre.normalize(c8)
        else:
            x = c8.float()
            if self.pre.scale != 255.0:
                x = x * (self.pre.scale / 255.0)
            if self.pre.channel_order == "BGR":
                x = x.flip(-3)
            x = x - mean
            if self.pre.std is not None:
                x = x / torch.tensor(self.pre.std, device=device).view(3, 1, 1)
        if alpha is not None:
            shift = alpha.to(device, non_blocking=True) @ basis
            x = x + shift.view(-1, 3, 1, 1)
        if self.channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def augment(self, u8, gen: torch.Generator, devices) -> torch.Tensor | list:
        """The training input: one tensor for one device, one per device for two."""
        c8, alpha = self.crops(u8, gen, devices[0])
        if len(devices) == 1:
            return self.finish(c8, alpha, devices[0])
        return [self.finish(c8, alpha, d) for d in devices]

    def centre(self, u8, devices) -> torch.Tensor | list:
        """The validation input, the centre 224 crop minus the mean (per device for two)."""
        c8 = centre_crop(u8.to(devices[0], non_blocking=True), self.size)
        if len(devices) == 1:
            return self.finish(c8, None, devices[0])
        return [self.finish(c8, None, d) for d in devices]


def augment(u8, pre: Preprocess, gen: torch.Generator, lighting_std: float, device):
    """The paper's training input on one device (Inputs.augment; bench and tests)."""
    device = torch.device(device)
    return Inputs(pre, lighting_std, [device]).augment(u8, gen, [device])


def centre_input(u8, pre: Preprocess, device):
    """The validation input: the centre 224 crop, minus the mean."""
    device = torch.device(device)
    return Inputs(pre, 0.0, [device]).centre(u8, [device])
