"""How pixels become network input (``Preprocess``): stored in every checkpoint with the
weights, recorded (as a signature) in every index."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from .decode import decode
from .files import DEFAULT_MAX_MEGAPIXELS
from .geometry import RESIZE, centre_offsets, resize_centre, resize_like_torchvision


@dataclass(frozen=True)
class Preprocess:
    """How pixels become network input; stored in every checkpoint with the weights.

    scale: pixel values run 0..scale (255 for the paper and Caffe, 1 for torchvision).
    mean: per-channel (3 values) or a mean image (3 x 256 x 256), on that scale, in
    ``channel_order``. std: per-channel divisor or None (the paper uses none).
    pca_eigval / pca_eigvec: the RGB covariance of the training set on the [0, 1]
    scale (eigenvalues, and eigenvectors as columns), for the paper's PCA lighting.
    squash: resize both sides to `resize`, ignoring the aspect ratio, as Caffe's
    convert_imageset made bvlc_alexnet's data and mean image; False is the paper's
    short side to `resize`, then the centre square.
    torchvision_geometry: torchvision's Resize + CenterCrop pixels (no JPEG draft
    decoding), for checkpoints imported from torchvision.
    """

    input_size: int = 224
    resize: int = RESIZE
    channel_order: str = "RGB"
    scale: float = 255.0
    mean: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list | None = None
    pca_eigval: list | None = None
    pca_eigvec: list | None = None
    squash: bool = False
    torchvision_geometry: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(**d)

    def signature(self) -> str:
        """A short hash of what decides the network input (not the PCA lighting, which
        only training uses): an index refuses vectors made with other preprocessing, as
        the same weights fed other pixels give other vectors."""
        h = hashlib.sha256()
        h.update(repr((self.input_size, self.resize, self.channel_order, self.squash)).encode())
        h.update(repr((float(self.scale), self.std)).encode())
        h.update(np.asarray(self.mean, dtype=np.float32).tobytes())
        if self.torchvision_geometry:  # only then: older signatures stay as they were
            h.update(b"torchvision geometry")
        return h.hexdigest()[:16]

    def geometry(self) -> str:
        """The resize and crop in words, for `info` and `weights import`."""
        r, c = self.resize, self.input_size
        if self.squash:
            return f"squash to {r}x{r}, aspect ignored (crops {c})"
        if self.torchvision_geometry:
            return f"torchvision's Resize({r}) of the whole photo, CenterCrop({c})"
        return f"short side to {r}, centre {r}x{r} (crops {c})"

    def photo_256(
        self, source, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, name: str | None = None
    ) -> np.ndarray:
        """A photo (a path, or an open binary file named `name`) as the uint8
        (256, 256, 3) image every later step crops from, in this convention's geometry
        (ImageError if unusable)."""
        if self.torchvision_geometry:  # torchvision decodes at full size
            img = decode(source, max_megapixels, draft_to=None, name=name)
            return resize_like_torchvision(img, self.resize, self.input_size)
        img = decode(source, max_megapixels, draft_to=self.resize, name=name)
        return resize_centre(img, self.resize, self.squash)

    def mean_array(self, size: int, offsets: tuple[int, int] | None = None) -> np.ndarray:
        """The mean as float32 (3, 1, 1), or a mean image's (3, size, size) window at
        `offsets` in the 256 image (None: centred)."""
        m = np.asarray(self.mean, dtype=np.float32)
        if m.ndim == 1:
            return m.reshape(3, 1, 1)
        if m.shape[-1] == size:
            return m
        top, left = offsets if offsets is not None else centre_offsets(m.shape[-1], size)
        return m[:, top : top + size, left : left + size]

    def normalize(self, u8, offsets: tuple[int, int] | None = None):
        """uint8 RGB torch tensor (..., 3, s, s) -> float network input.

        `offsets`: where this crop sits in the 256 image, so a mean image is cropped
        with it (None means centred).
        """
        import torch  # here, not at the top: the query path runs without torch

        x = u8.float()
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        x = x - torch.from_numpy(self.mean_array(x.shape[-1], offsets)).to(x.device)
        if self.std is not None:
            x = x / torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x

    def normalize_array(self, u8: np.ndarray) -> np.ndarray:
        """normalize() for one uint8 RGB numpy crop (3, s, s), centred: float32."""
        x = u8.astype(np.float32)
        if self.scale != 255.0:
            x *= np.float32(self.scale / 255.0)
        if self.channel_order == "BGR":
            x = x[::-1]
        x = x - self.mean_array(x.shape[-1])
        if self.std is not None:
            x /= np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray(x)
