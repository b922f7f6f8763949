"""What shapes the network: the architecture record stored in every checkpoint.

Plain data and arithmetic, no torch: the torch-free query path (numpy_net.py) reads a
checkpoint's architecture and checks its tensors' shapes with this module alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_NAMES = ("fc6", "fc7", "fc8")


@dataclass(frozen=True)
class LRNConfig:
    """b = a / (k + alpha' * sum_{window of `size` channels} a^2) ** beta.

    The paper: k=2, alpha=1e-4 applied to the plain sum (alpha' = alpha), beta=0.75,
    size=5, within each tower. Caffe and torch divide alpha by size (``alpha_over_size``)
    and Caffe's bvlc_alexnet normalises across all channels of both groups.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0
    alpha_over_size: bool = False
    per_tower: bool = True

    @property
    def effective_alpha(self) -> float:
        return self.alpha / self.size if self.alpha_over_size else self.alpha


@dataclass(frozen=True)
class ArchConfig:
    """Everything that shapes the network; stored in every checkpoint."""

    num_classes: int = 1000
    towers: int = 2  # 2: the paper's two GPUs as groups; 1: a single tower (torchvision)
    conv_channels: tuple[int, ...] = (96, 256, 384, 384, 256)
    fc_units: tuple[int, int] = (4096, 4096)
    conv1_padding: int = 2  # 2 for a 224 input (paper, torchvision); 0 for Caffe's 227
    input_size: int = 224
    lrn: LRNConfig | None = field(default_factory=LRNConfig)  # None: no LRN (torchvision)
    adaptive_pool: bool = False  # torchvision's AdaptiveAvgPool2d((6, 6)) before fc6
    dropout: float = 0.5
    name: str = "krizhevsky2012"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["conv_channels"] = list(self.conv_channels)
        d["fc_units"] = list(self.fc_units)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ArchConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("lrn") is not None:
            d["lrn"] = LRNConfig(**d["lrn"])
        for key in ("conv_channels", "fc_units"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    # Which convolutions see only their own tower (the paper's Fig. 2).
    def conv_groups(self) -> tuple[int, ...]:
        t = self.towers
        return (t, t, 1, t, t)

    def spatial_sizes(self) -> tuple[int, int, int, int]:
        """Feature-map sizes after conv1, pool1, pool2, pool5 (55, 27, 13, 6 for 224)."""
        s1 = (self.input_size + 2 * self.conv1_padding - 11) // 4 + 1
        p1 = (s1 - 3) // 2 + 1
        p2 = (p1 - 3) // 2 + 1
        p5 = (p2 - 3) // 2 + 1
        return s1, p1, p2, p5


PAPER = ArchConfig()
# Caffe's bvlc_alexnet: the same towers, a 227 crop without padding, Caffe's LRN.
CAFFE = ArchConfig(
    conv1_padding=0,
    input_size=227,
    lrn=LRNConfig(k=1.0, alpha_over_size=True, per_tower=False),
    name="caffe-bvlc-alexnet",
)
# torchvision's alexnet: Krizhevsky's "one weird trick" single tower, no LRN.
TORCHVISION = ArchConfig(
    towers=1,
    conv_channels=(64, 192, 384, 256, 256),
    lrn=None,
    adaptive_pool=True,
    name="torchvision-alexnet",
)


def expected_shapes(cfg: ArchConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the network `cfg` describes (Caffe-compatible grouped layout)."""
    c = (3, *cfg.conv_channels)
    kernels = (11, 5, 3, 3, 3)
    shapes = {}
    for i, (name, groups) in enumerate(zip(CONV_NAMES, cfg.conv_groups(), strict=True)):
        groups = groups if i else 1  # conv1: each tower sees all three colour channels
        shapes[f"{name}.weight"] = (c[i + 1], c[i] // groups, kernels[i], kernels[i])
        shapes[f"{name}.bias"] = (c[i + 1],)
    pool5 = 6 if cfg.adaptive_pool else cfg.spatial_sizes()[3]
    fc_in = (c[5] * pool5 * pool5, *cfg.fc_units)
    fc_out = (*cfg.fc_units, cfg.num_classes)
    for name, n_in, n_out in zip(FC_NAMES, fc_in, fc_out, strict=True):
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)
    return shapes
