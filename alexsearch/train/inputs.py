"""What the network sees in training: the mean and PCA of the training images' RGB, the
paper's augmented input (random crop, flip, PCA lighting), and the validation centre crop.

Imports torch.
"""

from __future__ import annotations

import random

import torch

from ..data.crops import centre_crop, random_crop_flip
from ..data.lighting import RunningRGBStats, pca_lighting
from ..data.loader import loader
from ..images.preprocess import Preprocess
from ..progress import Progress
from .config import TrainError


def rgb_statistics(samples, cap: int, seed: int, workers: int, progress: Progress) -> dict:
    """Mean (0..255 scale) and PCA of the RGB covariance ([0, 1] scale) over <= cap images;
    progress: "mean & PCA" (images)."""
    if cap and len(samples) > cap:
        samples = random.Random(seed).sample(samples, cap)
    stats = RunningRGBStats()
    done = 0
    for u8, _, _ in loader(samples, 64, workers):
        if len(u8):
            stats.update(u8)
        done += 64
        progress("mean & PCA", min(done, len(samples)), len(samples))
    if stats.n == 0:
        raise TrainError("no readable training image to compute the mean from")
    val, vec = stats.eig()
    return {
        "mean": (stats.mean() * 255.0).float().tolist(),
        "pca_eigval": val.tolist(),
        "pca_eigvec": vec.tolist(),
        "images": len(samples),
    }


def augment(u8, pre: Preprocess, gen: torch.Generator, lighting_std: float, device):
    """The paper's training input: random 224 crop + flip, minus the mean, PCA lighting.

    Crops stay uint8 until after the crop (less to convert); this is exact because a
    training run's mean is per channel.
    """
    u8 = u8.to(device, non_blocking=True)
    x = pre.normalize(random_crop_flip(u8, pre.input_size, gen))
    if pre.pca_eigval is not None and lighting_std > 0:
        # pca_lighting works on the [0, 1] scale; our input is on the 0..255 scale
        eigval = torch.as_tensor(pre.pca_eigval) * pre.scale
        x = pca_lighting(x, eigval, torch.as_tensor(pre.pca_eigvec), lighting_std, gen)
    return x


def centre_input(u8, pre: Preprocess, device):
    """The validation input: the centre 224 crop, minus the mean."""
    u8 = u8.to(device, non_blocking=True)
    return pre.normalize(centre_crop(u8, pre.input_size))
