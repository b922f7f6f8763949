"""`alexsearch classify`: an image's top-5 classes with their probabilities.

The centre crop goes through what a query runs (index/embed.py: fc7 as indexing
computes it, on numpy on the CPU, so no torch), then fc8 and its softmax
(index/labels.py): the classes `index` stores for the same file. `ten_crop` averages
the softmax over the paper's ten crops as `alexsearch eval` does
(evaluate/classification.py, torch).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

from ..images.decode import ImageError
from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..index import classnames
from ..index.labels import TOP, Classifier, top_classes


@dataclass
class Classification:
    """One image's most probable classes, best first, or why it could not be read."""

    image: str  # the absolute path ("" for bytes)
    classes: list[tuple[str, float]] = field(default_factory=list)  # (name, probability)
    crops: str = "centre"  # or "ten-crop"
    error: str = ""

    def to_dict(self) -> dict:
        """What `alexsearch classify --json` prints for this image."""
        return {
            "image": self.image,
            **({"error": self.error} if self.error else {}),
            "crops": self.crops,
            "classes": [{"label": n, "prob": round(p, 6)} for n, p in self.classes],
        }


def classify_images(
    images,
    weights,
    ten_crop: bool = False,
    device: str = "cpu",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    precision: str = "auto",
    top: int = TOP,
) -> list[Classification]:
    """The `top` most probable classes of each image (paths or the bytes of image
    files) under the checkpoint at `weights` (resolved). An unreadable image gets an
    error instead of classes."""
    from ..weights import checkpoint
    from ..weights.checkpoint_file import Unsupported

    try:
        ckpt = checkpoint.read(weights)
    except Unsupported:
        ckpt = checkpoint.load(weights)
    clf = Classifier.of(ckpt)
    names = [c.name for c in classnames.vocabulary(clf.names, len(clf.names))]
    probs_of = (
        _ten_crop(weights, device, max_megapixels, precision)
        if ten_crop
        else _centre(clf, weights, device, max_megapixels, precision)
    )
    out = []
    for img in images:
        res = Classification("" if isinstance(img, bytes) else os.path.abspath(img))
        res.crops = "ten-crop" if ten_crop else "centre"
        try:
            probs = probs_of(io.BytesIO(img) if isinstance(img, bytes) else res.image)
        except ImageError as e:
            res.error = str(e)
        else:
            cls, p = top_classes(probs[None], top)
            res.classes = [(names[c], float(q)) for c, q in zip(cls[0], p[0], strict=True)]
        out.append(res)
    return out


def _centre(clf: Classifier, weights, device, max_megapixels, precision):
    """Probabilities of the centre crop: fc7 as indexing computes it, then fc8."""
    from ..index.embed import open_embedder

    embedder = open_embedder(weights, device, max_megapixels, precision)
    return lambda src: clf.probabilities(embedder.embed(src)[None])[0]


def _ten_crop(weights, device, max_megapixels, precision):
    """Probabilities averaged over the paper's ten crops, as `alexsearch eval` computes
    them (at fp32 unless `precision` says bf16)."""
    import torch

    from ..data.crops import load_256
    from ..net.devices import resolve_device
    from ..net.precision import configure_torch, resolve_precision
    from ..weights import checkpoint
    from .classification import ten_crop_probs

    configure_torch(benchmark=False)  # one image a call: IEEE fp32, no algorithm search
    dev = resolve_device(device)
    spec = str(precision).strip().lower()
    cpu_auto = spec == "auto" and dev.type == "cpu"  # as a query: fp32 on the CPU
    precision = "fp32" if cpu_auto else resolve_precision(spec, dev.type)
    ckpt = checkpoint.load(weights)
    model = ckpt.build(dev)
    pre = ckpt.preprocess

    def probs(src):
        u8 = load_256(src, max_megapixels, pre)[None]
        with torch.inference_mode():
            return ten_crop_probs(model, u8, pre, dev, precision).mean(1)[0].cpu().numpy()

    return probs
