"""The network of Krizhevsky, Sutskever & Hinton (NIPS 2012), as a configurable module.

One parameter layout (Caffe-compatible grouped shapes, e.g. conv2.weight 256x48x5x5)
and two execution plans over it:

* ``AlexNet``: one device, the two towers are grouped convolutions (groups=2);
* ``TwoDeviceAlexNet``: a tower per device, exchanging activations only where the
  paper does (before conv3 and before each fully-connected layer).

Other conventions (Caffe's LRN and 227 crop, torchvision's single tower) are
``ArchConfig`` values, not forks of this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch import CONV_NAMES, FC_NAMES, PAPER, ArchConfig, LRNConfig


def local_response_norm(x: torch.Tensor, cfg: LRNConfig, groups: int = 1) -> torch.Tensor:
    """Cross-channel LRN, each of `groups` channel blocks normalised on its own.

    torch's ``nn.LocalResponseNorm`` pads and runs ``avg_pool3d`` over x^2 for the
    whole batch: about two thirds of this network's CPU forward time. Here the window
    sum is `size` shifted slice additions over a zero-padded channel axis, done one
    image at a time on CPU so that the dozen elementwise passes stay in cache, and
    written in x's memory format so that the max-pool after it keeps oneDNN's
    channels_last fast path (see bench/forward.py). The power uses rsqrt for beta=0.75
    (t^-0.75 = t^-0.5 * t^-0.25), cheaper than a general pow.

    A half-precision x (bf16 autocast) is normalised in float32 and cast back, in
    training and in evaluation alike: a sum of 5 squares and a power are where bf16's
    8-bit mantissa would show, and autocast alone would treat the two passes differently
    (its fp32 list has pow, which only the training formula calls).
    """
    if x.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast(x.device.type, enabled=False):
            if x.device.type != "cpu" or x.shape[0] == 1 or x.requires_grad:
                return local_response_norm(x.float(), cfg, groups).to(x.dtype)
            # one image at a time, so its float32 copy stays in cache: 2-2.5x faster than
            # converting the whole batch first (bench/forward.py --lrn-bf16), same numbers
            out = torch.empty_like(x)
            for i in range(x.shape[0]):
                out[i : i + 1] = local_response_norm(x[i : i + 1].float(), cfg, groups)
            return out
    g = groups if cfg.per_tower else 1
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    if torch.is_grad_enabled() and x.requires_grad:
        return _lrn_autograd(x, cfg, g)
    if x.device.type != "cpu" or x.shape[0] == 1:
        return _lrn_block(x, cfg, g, torch.empty_like(x))
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        _lrn_block(x[i : i + 1], cfg, g, out[i : i + 1])
    return out


def _lrn_autograd(x: torch.Tensor, cfg: LRNConfig, groups: int) -> torch.Tensor:
    """The same formula out of place, for training (autograd keeps its intermediates)."""
    n, c, h, w = x.shape
    sq = (x * x).reshape(n, groups, c // groups, h, w)
    half = cfg.size // 2
    padded = F.pad(sq, (0, 0, 0, 0, half, cfg.size - 1 - half))
    window = sum(padded.narrow(2, i, c // groups) for i in range(cfg.size))
    denom = window.reshape(n, c, h, w) * cfg.effective_alpha + cfg.k
    return x * denom.pow(-cfg.beta)


def _lrn_block(x: torch.Tensor, cfg: LRNConfig, groups: int, out: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    cg = c // groups
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # channels are the innermost axis: view as (n, h, w, groups, cg)
        def view(t):
            return t.permute(0, 2, 3, 1).reshape(n, h, w, groups, cg)

        axis = 4
    else:

        def view(t):
            return t.reshape(n, groups, cg, h, w)

        axis = 2
    a = view(x)
    alpha = cfg.effective_alpha
    # denom[i] = k + alpha * sum of a[i + d]^2 for d in [-half, size - 1 - half], within
    # the block; addcmul reads the shifted a directly, so no squared copy is kept.
    denom = (a * a).mul_(alpha).add_(cfg.k)
    half = cfg.size // 2
    for d in range(-half, cfg.size - half):
        if d == 0:
            continue
        lo, hi = (0, d) if d > 0 else (-d, 0)
        src = a.narrow(axis, hi, cg - abs(d))
        denom.narrow(axis, lo, cg - abs(d)).addcmul_(src, src, value=alpha)
    if cfg.beta == 0.75:
        r = denom.rsqrt_()
        denom = r.mul_(r.sqrt())
    else:
        denom = denom.pow_(-cfg.beta)
    torch.mul(denom, a, out=view(out))  # out is dense in x's layout, so view() is a view
    return out


def init_paper_(model: nn.Module) -> None:
    """The paper's init: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7."""
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
    for name in CONV_NAMES + FC_NAMES:
        layer = getattr(model, name)
        nn.init.normal_(layer.weight, 0.0, 0.01)
        nn.init.constant_(layer.bias, 1.0 if name in ones else 0.0)


class AlexNet(nn.Module):
    """One-device plan: towers as grouped convolutions (Caffe-compatible shapes)."""

    def __init__(self, cfg: ArchConfig = PAPER, init: bool = True):
        super().__init__()
        self.cfg = cfg
        c = cfg.conv_channels
        g = cfg.conv_groups()
        self.conv1 = nn.Conv2d(3, c[0], 11, stride=4, padding=cfg.conv1_padding, groups=1)
        self.conv2 = nn.Conv2d(c[0], c[1], 5, padding=2, groups=g[1])
        self.conv3 = nn.Conv2d(c[1], c[2], 3, padding=1, groups=g[2])
        self.conv4 = nn.Conv2d(c[2], c[3], 3, padding=1, groups=g[3])
        self.conv5 = nn.Conv2d(c[3], c[4], 3, padding=1, groups=g[4])
        pool5 = cfg.spatial_sizes()[3] if not cfg.adaptive_pool else 6
        self.fc6 = nn.Linear(c[4] * pool5 * pool5, cfg.fc_units[0])
        self.fc7 = nn.Linear(cfg.fc_units[0], cfg.fc_units[1])
        self.fc8 = nn.Linear(cfg.fc_units[1], cfg.num_classes)
        if init:
            init_paper_(self)

    def _lrn(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.lrn is None:
            return x
        return local_response_norm(x, self.cfg.lrn, self.cfg.towers)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """pool5 activations, flattened (the input of fc6)."""
        # In-place ReLU: each conv output is fresh and conv backward does not need it.
        x = F.max_pool2d(self._lrn(F.relu_(self.conv1(x))), 3, 2)
        x = F.max_pool2d(self._lrn(F.relu_(self.conv2(x))), 3, 2)
        x = F.relu_(self.conv3(x))
        x = F.relu_(self.conv4(x))
        x = F.max_pool2d(F.relu_(self.conv5(x)), 3, 2)
        if self.cfg.adaptive_pool:
            x = F.adaptive_avg_pool2d(x, (6, 6))
        return torch.flatten(x, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 after its ReLU: the 4096-d image descriptor."""
        p = self.cfg.dropout
        x = self.conv_features(x)
        x = F.relu(self.fc6(F.dropout(x, p, self.training)))
        return F.relu(self.fc7(F.dropout(x, p, self.training)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.features(x))


TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def to_grouped(named: dict) -> dict:
    """Tensors named as in TwoDeviceAlexNet (towers.T.layer.kind, fc8.kind) -> the
    one-device layout (layer.kind, tower 0's rows first), on the CPU."""
    out = {}
    for name in TOWER_LAYERS:
        for kind in ("weight", "bias"):
            parts = [named[f"towers.{t}.{name}.{kind}"].detach().cpu() for t in (0, 1)]
            out[f"{name}.{kind}"] = torch.cat(parts, 0)
    out["fc8.weight"] = named["fc8.weight"].detach().cpu()
    out["fc8.bias"] = named["fc8.bias"].detach().cpu()
    return out


def to_towers(grouped: dict) -> dict:
    """The inverse of to_grouped: each layer's output rows split between the towers."""
    out = {"fc8.weight": grouped["fc8.weight"], "fc8.bias": grouped["fc8.bias"]}
    for name in TOWER_LAYERS:
        for kind in ("weight", "bias"):
            for t, part in enumerate(grouped[f"{name}.{kind}"].chunk(2, 0)):
                out[f"towers.{t}.{name}.{kind}"] = part
    return out


def _tower_layer(layer: nn.Module, towers: int) -> nn.Module:
    """An empty layer shaped as one tower's share of `layer`: its output rows (with all
    their inputs)."""
    rows = layer.weight.shape[0] // towers
    if isinstance(layer, nn.Conv2d):
        groups = max(layer.groups // towers, 1)
        return nn.Conv2d(
            layer.weight.shape[1] * groups,
            rows,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            groups=groups,
        )
    return nn.Linear(layer.in_features, rows)


class TwoDeviceAlexNet(nn.Module):
    """Two-device plan: tower t's parameters live on devices[t] (the paper's two GPUs).

    The towers exchange activations only before conv3 and before fc6 and fc7; fc7's
    halves meet on the first device, where fc8 runs. The input is one tensor (copied to
    each device) or a list of one per device (training sends tower 1 its uint8 crops and
    normalises them there). ``grouped_state_dict`` gives back the one-device layout, so
    checkpoints are the same whichever plan trained them.
    """

    def __init__(self, model: AlexNet, devices: list[torch.device | str]):
        super().__init__()
        if model.cfg.towers != 2 or len(devices) != 2:
            raise ValueError("the two-device plan needs a two-tower model and two devices")
        self.cfg = model.cfg
        self.devices = [torch.device(d) for d in devices]
        self.towers = nn.ModuleList()
        for _ in self.devices:
            tower = nn.Module()
            for name in TOWER_LAYERS:
                setattr(tower, name, _tower_layer(getattr(model, name), 2))
            self.towers.append(tower)
        self.fc8 = _tower_layer(model.fc8, 1)
        self.load_state_dict(to_towers(model.state_dict()))
        for tower, dev in zip(self.towers, self.devices, strict=True):
            tower.to(dev)
        self.fc8.to(self.devices[0])

    def _lrn(self, x: torch.Tensor) -> torch.Tensor:
        # Within one tower, per-tower LRN is LRN over all of its channels.
        lrn = self.cfg.lrn
        if lrn is None:
            return x
        if not lrn.per_tower:
            raise ValueError("cross-tower LRN cannot run a tower per device")
        return local_response_norm(x, lrn, 1)

    def _exchange(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each device gets both towers' activations, tower 0's channels first."""
        return [torch.cat([p.to(dev) for p in parts], 1) for dev in self.devices]

    def _fc_inputs(self, x) -> list[torch.Tensor]:
        p = self.cfg.dropout
        xs = list(x) if isinstance(x, (list, tuple)) else [x] * len(self.devices)
        per_tower = []
        for tower, dev, xt in zip(self.towers, self.devices, xs, strict=True):
            a = F.max_pool2d(self._lrn(F.relu(tower.conv1(xt.to(dev)))), 3, 2)
            per_tower.append(F.max_pool2d(self._lrn(F.relu(tower.conv2(a))), 3, 2))
        both = self._exchange(per_tower)
        pooled = []
        for tower, inp in zip(self.towers, both, strict=True):
            a = F.relu(tower.conv4(F.relu(tower.conv3(inp))))
            pooled.append(F.max_pool2d(F.relu(tower.conv5(a)), 3, 2))
        flat = [torch.flatten(t, 1) for t in self._exchange(pooled)]
        fc6 = [
            F.relu(tower.fc6(F.dropout(f, p, self.training)))
            for tower, f in zip(self.towers, flat, strict=True)
        ]
        fc6 = self._exchange(fc6)
        return [
            F.relu(tower.fc7(F.dropout(f, p, self.training)))
            for tower, f in zip(self.towers, fc6, strict=True)
        ]

    def features(self, x) -> torch.Tensor:
        """fc7 on the first device (tower 0's units first)."""
        return torch.cat([f.to(self.devices[0]) for f in self._fc_inputs(x)], 1)

    def forward(self, x) -> torch.Tensor:
        return self.fc8(self.features(x))

    def grouped_state_dict(self) -> dict[str, torch.Tensor]:
        """The one-device (Caffe-compatible) layout, on the CPU."""
        return to_grouped(self.state_dict())

    def to_alexnet(self) -> AlexNet:
        model = AlexNet(self.cfg, init=False)
        model.load_state_dict(self.grouped_state_dict())
        return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
