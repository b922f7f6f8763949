"""Import published weights: Caffe's bvlc_alexnet and torchvision's alexnet.

An import turns the published file into our Checkpoint with the conventions the
network was trained with, so the imported model computes what the original does:

* bvlc_alexnet.caffemodel: the paper's two towers as Caffe groups, on BGR pixels
  0..255 minus Caffe's ImageNet mean, a 227 crop, Caffe's LRN (net.arch.CAFFE);
* torchvision's alexnet .pth: the single tower of net.arch.TORCHVISION, on RGB 0..1
  normalised by ImageNet's mean and std, a 224 crop.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

from ..errors import WeightsError
from ..images.preprocess import Preprocess
from ..net.arch import CAFFE, TORCHVISION, expected_shapes
from . import caffemodel
from .checkpoint import FORMAT, Checkpoint, check_fits, save

# Caffe's ILSVRC-2012 mean, (B, G, R) on 0..255: the per-channel average of
# ilsvrc_2012_mean.binaryproto, as Caffe's own examples use it.
CAFFE_MEAN_BGR = [104.007, 116.669, 122.679]
IMAGENET_MEAN_RGB = [0.485, 0.456, 0.406]
IMAGENET_STD_RGB = [0.229, 0.224, 0.225]

CAFFE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# torchvision's alexnet: features.N (conv) and classifier.N (fc) -> our layer names
TORCHVISION_LAYERS = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}


# --------------------------------------------------------------------------- import


def detect(path: Path) -> str:
    """'torch' (a zip or legacy pickle from torch.save) or 'caffemodel'."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a folder, not a weights file") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from None
    if head == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip, or a pickle (protocol 2+)
        return "torch"
    return "caffemodel"


def import_file(
    path: str | os.PathLike, mean: str | os.PathLike | None = None, labels=None
) -> Checkpoint:
    """Either published format -> Checkpoint (the format is read from the file's start)."""
    path = Path(path)
    if detect(path) == "torch":
        if mean is not None:
            raise WeightsError("--mean is for Caffe models; torchvision's alexnet has its own")
        ckpt = import_torchvision(path)
    else:
        ckpt = import_caffemodel(path, mean)
    if labels is not None:
        ckpt.classes = read_labels(labels, ckpt.arch.num_classes)
    return ckpt


def import_to(file, out=None, mean=None, labels=None) -> tuple[Path, Checkpoint]:
    """`alexsearch weights import`: import FILE and write the checkpoint to `out`
    (default: beside FILE as .ckpt, never over FILE). Returns (path, checkpoint)."""
    file = Path(file)
    target = Path(out) if out is not None else default_out(file)
    if target.resolve() == file.resolve():
        raise WeightsError(f"--out {target} is the file being imported; choose another path")
    ckpt = import_file(file, mean, labels)
    save(ckpt, target)
    return target, ckpt


def import_caffemodel(path: str | os.PathLike, mean: str | os.PathLike | None = None):
    """bvlc_alexnet (V1 or V2 layout) -> Checkpoint with the CAFFE architecture."""
    path = Path(path)
    mean_values = _caffe_mean(mean) if mean is not None else list(CAFFE_MEAN_BGR)
    net = caffemodel.read_net(path)
    layers = net.by_name()
    missing = [n for n in CAFFE_LAYERS if n not in layers]
    if missing:
        have = ", ".join(caffemodel.short_name(n) for n in list(layers)[:8]) or "none"
        raise WeightsError(
            f"{path}: not bvlc_alexnet: no weights for {', '.join(missing)} "
            f"(layers with weights: {have})"
        )
    fc8 = layers["fc8"]
    num_classes = fc8.blobs[1].data.size if len(fc8.blobs) == 2 else 0
    if num_classes < 1:
        raise WeightsError(f"{path}: fc8 has no bias, so the number of classes is unknown")
    arch = CAFFE if num_classes == CAFFE.num_classes else replace(CAFFE, num_classes=num_classes)
    want = expected_shapes(arch)
    state = {}
    for name in CAFFE_LAYERS:
        layer = layers[name]
        kind = "Convolution" if name.startswith("conv") else "InnerProduct"
        if layer.type and layer.type != kind and not layer.type.startswith("V1 type"):
            what = caffemodel.short_name(layer.type)
            raise WeightsError(f"{path}: layer {name} is {what}, expected {kind}")
        if len(layer.blobs) != 2:
            raise WeightsError(
                f"{path}: layer {name} holds {len(layer.blobs)} blobs, expected weight and bias"
            )
        for blob, part in zip(layer.blobs, ("weight", "bias"), strict=True):
            key = f"{name}.{part}"
            # Check the shape (a header) before copying anything out of the file.
            state[key] = _fit(blob, want[key], f"{path}: {key}")
    check_fits(arch, state)
    pre = Preprocess(
        input_size=arch.input_size,
        channel_order="BGR",
        scale=255.0,
        mean=mean_values,
        squash=True,  # bvlc_alexnet's data (and mean image) were squashed to 256x256
    )
    meta = {
        "source": "Caffe bvlc_alexnet",
        "imported_from": path.name,
        "format": f"caffemodel ({net.layout} layout)",
        "mean_file": Path(mean).name if mean is not None else "none (Caffe's per-channel mean)",
    }
    return Checkpoint(arch, pre, state, imagenet_classes(num_classes), meta)


def _fit(blob: caffemodel.Blob, want: tuple[int, ...], where: str):
    """The blob's array in `want`'s shape; Caffe pads shapes with leading ones (1x1x1xN)."""
    shape = blob.shape
    lead = len(shape) - len(want)
    if lead < 0 or any(d != 1 for d in shape[:lead]) or tuple(shape[lead:]) != tuple(want):
        raise WeightsError(
            f"{where} has shape {'x'.join(map(str, shape))}, expected "
            f"{'x'.join(map(str, want))} (is this bvlc_alexnet?)"
        )
    return blob.array().reshape(want)


def _caffe_mean(path: str | os.PathLike) -> list:
    """A mean .binaryproto: 3x256x256 on 0..255 in BGR, as Caffe's data layer subtracts it."""
    blob = caffemodel.read_mean(path)
    arr = _fit(blob, (3, 256, 256), f"{path}: the mean image")
    return arr.tolist()


def import_torchvision(path: str | os.PathLike) -> Checkpoint:
    """torchvision's alexnet state dict (features.N / classifier.N) -> Checkpoint."""
    import torch

    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path}: refused: it holds pickled Python objects beyond tensors and plain "
            "containers, and alexsearch never runs pickled code"
        ) from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: not a readable PyTorch file ({msg})") from None
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        raise WeightsError(f"{path}: already an alexsearch checkpoint; use it with --weights")
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    if raw and all(str(k).startswith("module.") for k in raw):  # saved from DataParallel
        raw = {k[len("module.") :]: v for k, v in raw.items()}
    unknown = sorted(k for k in raw if k.rsplit(".", 1)[0] not in TORCHVISION_LAYERS)
    if unknown:
        raise WeightsError(
            f"{path}: not torchvision's alexnet: unexpected {', '.join(unknown[:3])!r}"
        )
    state = {}
    for key, value in raw.items():
        prefix, part = key.rsplit(".", 1)
        state[f"{TORCHVISION_LAYERS[prefix]}.{part}"] = value.float().contiguous()
    fc8 = state.get("fc8.weight")
    num_classes = fc8.shape[0] if fc8 is not None and fc8.ndim == 2 else TORCHVISION.num_classes
    arch = TORCHVISION if num_classes == 1000 else replace(TORCHVISION, num_classes=num_classes)
    try:
        check_fits(arch, state)
    except WeightsError as e:
        raise WeightsError(f"{path}: not torchvision's alexnet: {e}") from None
    pre = Preprocess(
        input_size=arch.input_size,
        channel_order="RGB",
        scale=1.0,
        mean=list(IMAGENET_MEAN_RGB),
        std=list(IMAGENET_STD_RGB),
        torchvision_geometry=True,  # the pixels torchvision's transforms make
    )
    meta = {"source": "torchvision alexnet", "imported_from": path.name, "format": "state dict"}
    return Checkpoint(arch, pre, state, imagenet_classes(num_classes), meta)


def imagenet_classes(num_classes: int) -> list[str]:
    """ILSVRC-2012's class names in the usual (synset) order for a 1000-class network, from
    torchvision; class_0.. otherwise."""
    if num_classes != 1000:
        return [f"class_{i}" for i in range(num_classes)]
    return _torchvision_categories()


def _torchvision_categories() -> list[str]:
    """``AlexNet_Weights.IMAGENET1K_V1.meta["categories"]``, read without importing
    torchvision when its list sits where it always has (torchvision/models/_meta.py):
    importing torchvision takes seconds (it loads every model and op), this takes ms.
    A test checks that both give the same list."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    try:
        source = Path(spec.origin).parent.joinpath("models", "_meta.py").read_text("utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", "") == "_IMAGENET_CATEGORIES" for t in node.targets
            ):
                names = ast.literal_eval(node.value)
                if len(names) == 1000 and all(isinstance(n, str) for n in names):
                    return list(names)
    except (AttributeError, OSError, SyntaxError, TypeError, ValueError):
        pass
    from torchvision.models import AlexNet_Weights

    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def read_labels(path: str | os.PathLike, num_classes: int) -> list[str]:
    """One class name per line (blank lines at the end ignored); as many as fc8 has outputs."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: cannot read labels ({e})") from None
    names = [line.strip() for line in text.rstrip("\n\r ").splitlines()]
    if len(names) != num_classes:
        raise WeightsError(
            f"{path}: {len(names)} labels, but the network has {num_classes} classes"
        )
    return names


def default_out(path: str | os.PathLike) -> Path:
    """Where `weights import FILE` writes without --out: beside FILE, as .ckpt, never FILE."""
    path = Path(path)
    out = path.with_suffix(".ckpt")
    return out if out != path else path.with_suffix(".alexsearch.ckpt")
