"""fc7 with numpy alone: the network a query runs, so a cold `alexsearch query` never
imports torch.

Importing torch takes ~2.5 s on the 2-core dev machine, more than everything else a
query does together (bench/query_latency.py). A query embeds a few images, where
numpy's BLAS matrix products (an im2col per convolution) take ~0.04 s an image. The
arithmetic is the one-device plan of net/alexnet.py in float32, so vectors equal
torch's to float rounding (tests/test_numpy_net.py); the index's vectors still come
from torch.

`NumpyNet.of` takes a checkpoint from weights/checkpoint.read, the reader and validator
the torch path uses too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..images.geometry import centre_offsets
from ..images.preprocess import Preprocess
from .arch import ArchConfig, LRNConfig


@dataclass
class NumpyNet:
    arch: ArchConfig
    preprocess: Preprocess
    params: dict[str, np.ndarray]
    fingerprint: str

    @classmethod
    def of(cls, ckpt) -> NumpyNet:
        """The network of a checkpoint read without torch (weights.checkpoint.read)."""
        # float64 or float16 weights compute in float32, as the torch network does
        params = {k: np.asarray(v, np.float32) for k, v in ckpt.state_dict.items()}
        return cls(ckpt.arch, ckpt.preprocess, params, ckpt.fingerprint)

    def features(self, x: np.ndarray) -> np.ndarray:
        """fc7 after its ReLU for a float32 batch (n, 3, s, s), as AlexNet.features."""
        cfg, p = self.arch, self.params
        groups = cfg.conv_groups()
        x = _relu(_conv(x, p["conv1.weight"], p["conv1.bias"], 4, cfg.conv1_padding, 1))
        x = _max_pool(_lrn(x, cfg.lrn, cfg.towers))
        x = _relu(_conv(x, p["conv2.weight"], p["conv2.bias"], 1, 2, groups[1]))
        x = _max_pool(_lrn(x, cfg.lrn, cfg.towers))
        for name, g in (("conv3", groups[2]), ("conv4", groups[3]), ("conv5", groups[4])):
            x = _relu(_conv(x, p[f"{name}.weight"], p[f"{name}.bias"], 1, 1, g))
        x = _max_pool(x)
        if cfg.adaptive_pool:
            x = _adaptive_avg_pool(x, 6)
        x = x.reshape(len(x), -1)
        x = _relu(x @ p["fc6.weight"].T + p["fc6.bias"])
        return _relu(x @ p["fc7.weight"].T + p["fc7.bias"])

    def embed(self, path: str, max_megapixels: float) -> np.ndarray:
        """fc7 of one image file, preprocessed as indexing does (ImageError if unusable)."""
        pre = self.preprocess
        u8 = pre.photo_256(path, max_megapixels)
        top, left = centre_offsets(pre.resize, pre.input_size)
        crop = u8[top : top + pre.input_size, left : left + pre.input_size].transpose(2, 0, 1)
        return self.features(pre.normalize_array(crop)[None])[0]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


def _conv(x, w, b, stride: int, pad: int, groups: int) -> np.ndarray:
    """Grouped 2-d convolution as im2col + one matrix product per group."""
    n = len(x)
    out_ch, in_per_group, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    oh, ow = windows.shape[2:4]
    out_per_group = out_ch // groups
    out = np.empty((n, oh, ow, out_ch), np.float32)
    for g in range(groups):
        cols = windows[:, g * in_per_group : (g + 1) * in_per_group]  # n, c, oh, ow, kh, kw
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1)
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        out[..., rows] = (cols @ w[rows].reshape(out_per_group, -1).T).reshape(n, oh, ow, -1)
    out += b
    return out.transpose(0, 3, 1, 2)


def _lrn(x: np.ndarray, cfg: LRNConfig | None, towers: int) -> np.ndarray:
    """model.local_response_norm: b = a / (k + alpha * window sum of a^2) ** beta."""
    if cfg is None:
        return x
    g = towers if cfg.per_tower else 1
    n, c, h, w = x.shape
    a = x.reshape(n, g, c // g, h, w)
    half = cfg.size // 2
    sq = np.pad(a * a, ((0, 0), (0, 0), (half, cfg.size - 1 - half), (0, 0), (0, 0)))
    window = sum(sq[:, :, i : i + c // g] for i in range(cfg.size))
    denom = window * np.float32(cfg.effective_alpha) + np.float32(cfg.k)
    return (a * denom ** np.float32(-cfg.beta)).reshape(n, c, h, w)


def _max_pool(x: np.ndarray) -> np.ndarray:
    """Overlapping max-pooling: 3x3 windows, stride 2 (the paper's z=3, s=2), as the
    elementwise maximum of the 9 strided views: ~20x faster than reducing a window view
    (7.4 -> 0.3 ms for conv1's output, a quarter of a query's forward)."""
    n, c, h, w = x.shape
    oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    out = x[:, :, : 2 * oh - 1 : 2, : 2 * ow - 1 : 2].copy()
    for i in range(3):
        for j in range(3):
            if i or j:
                np.maximum(out, x[:, :, i : i + 2 * oh - 1 : 2, j : j + 2 * ow - 1 : 2], out=out)
    return out


def _adaptive_avg_pool(x: np.ndarray, size: int) -> np.ndarray:
    """torch's adaptive_avg_pool2d: bin i covers [floor(i*H/size), ceil((i+1)*H/size))."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    out = np.empty((n, c, size, size), np.float32)
    for i in range(size):
        r0, r1 = i * h // size, -(-(i + 1) * h // size)
        for j in range(size):
            c0, c1 = j * w // size, -(-(j + 1) * w // size)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out
