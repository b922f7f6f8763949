"""Classification error of a checkpoint on a labelled folder: top-1 and top-5, of the
centre crop and of the paper's average of the softmax over ten crops."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.crops import ten_crop
from ..data.loader import labelled, loader
from ..errors import UserError
from ..progress import Progress


@dataclass
class ClassificationResult:
    images: int
    centre_top1_err: float
    centre_top5_err: float
    ten_crop_top1_err: float
    ten_crop_top5_err: float
    folder: str
    mapping: str  # how folder classes were matched to the checkpoint's ("by name", ...)
    skipped: list = field(default_factory=list)  # [(path, reason)]

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "images": self.images,
            "centre": {"top1_err": self.centre_top1_err, "top5_err": self.centre_top5_err},
            "ten_crop": {"top1_err": self.ten_crop_top1_err, "top5_err": self.ten_crop_top5_err},
            "mapping": self.mapping,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def class_mapping(folder_classes: list[str], ckpt_classes: list[str], num_outputs: int):
    """(folder label -> network output index, how). By name when every folder class is one
    of the checkpoint's; otherwise by sorted order when the counts agree; else refuse."""
    if folder_classes and all(c in ckpt_classes for c in folder_classes):
        where = {c: i for i, c in enumerate(ckpt_classes)}
        return [where[c] for c in folder_classes], "by name"
    if len(folder_classes) == num_outputs:
        return list(range(num_outputs)), (
            "by sorted order (the folder's class names are not the checkpoint's)"
        )
    raise UserError(
        f"the folder has {len(folder_classes)} classes and the checkpoint "
        f"{num_outputs}, and the names do not match (e.g. folder class "
        f"{next(c for c in folder_classes if c not in ckpt_classes)!r}): cannot tell which "
        "output is which class"
    )


def eval_folder(root) -> Path:
    """DIR, or DIR/val when DIR holds a val/ split."""
    root = Path(root)
    return root / "val" if (root / "val").is_dir() else root


def ten_crop_probs(model, u8, pre, device, precision: str = "fp32") -> torch.Tensor:
    """Softmax of the ten crops of each uint8 256 image: (N, 10, classes), crop 4 the centre."""
    # Subtract the mean before cropping, so a mean image is cropped with each crop.
    crops = ten_crop(pre.normalize(u8.to(device, non_blocking=True)), pre.input_size)
    n = crops.shape[0]
    x = crops.reshape(n * 10, *crops.shape[2:])  # (N * 10, 3, s, s)
    return torch.softmax(logits(model, x, precision), dim=1).view(n, 10, -1)


CENTRE = 4  # index of the unmirrored centre crop in data.crops.ten_crop's order


def classify(
    ckpt,
    root,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "cpu",
    limit: int | None = None,
    progress: Progress | None = None,
    precision: str = "fp32",
) -> ClassificationResult:
    """Top-1/top-5 error of a checkpoint on a labelled folder, centre crop and ten-crop,
    computed at `precision` ("fp32" or "bf16"; net.precision) as training validates."""
    from ..net.precision import configure_torch

    configure_torch(benchmark=True)
    device = torch.device(device)
    folder = eval_folder(root)
    classes, samples = labelled(folder, limit, seed=0)
    to_output, how = class_mapping(classes, ckpt.classes, ckpt.arch.num_classes)
    samples = [(p, to_output[y]) for p, y in samples]
    model = ckpt.build(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    c1 = c5 = t1 = t5 = n = 0
    skipped = []
    batches = loader(samples, batch_size, workers, pin=device.type == "cuda", pre=ckpt.preprocess)
    for b, (u8, labels, bad) in enumerate(batches):
        skipped += bad
        if len(labels):
            probs = ten_crop_probs(model, u8, ckpt.preprocess, device, precision).cpu()
            a, z = topk_wrong(probs[:, CENTRE], labels)
            c1, c5 = c1 + a, c5 + z
            a, z = topk_wrong(probs.mean(1), labels)
            t1, t5, n = t1 + a, t5 + z, n + len(labels)
        if progress:
            progress("evaluating", min((b + 1) * batch_size, len(samples)), len(samples))
    if n == 0:
        raise UserError(f"{folder}: no readable image to evaluate")
    return ClassificationResult(
        images=n,
        centre_top1_err=c1 / n,
        centre_top5_err=c5 / n,
        ten_crop_top1_err=t1 / n,
        ten_crop_top5_err=t5 / n,
        folder=str(folder),
        mapping=how,
        skipped=skipped,
    )


def wrong_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(labels outside the top-1, outside the top-5 (top-min(5, C))) as a tensor on
    logits' device: no wait for the device (topk_wrong reads it)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels.view(-1, 1)
    return torch.stack([(~hit[:, 0]).sum(), (~hit.any(1)).sum()])


def topk_wrong(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many labels are outside the top-1 and the top-5 (top-min(5, C)) predictions."""
    a, b = wrong_counts(logits, labels).tolist()
    return int(a), int(b)


def logits(model, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """The network's float32 outputs for a float batch as evaluation computes them, in
    `alexsearch eval` and in training's validation alike: at `precision` ("fp32": IEEE,
    torch's flags set by net.precision.configure_torch; "bf16": autocast), channels_last
    on CUDA."""
    from ..net.precision import autocast

    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(x.device.type, precision):
        return model(x).float()


def evaluate_weights(
    weights,
    root,
    batch_size=32,
    workers=None,
    device="auto",
    limit=None,
    progress=None,
    precision="fp32",
) -> ClassificationResult:
    """classify() with the weights the policy names (--weights, $ALEXSEARCH_WEIGHTS, the
    fetched default) on the device a --device value names, at a --precision value
    (auto: bf16 on a GPU); workers None: the device's default (data.loader)."""
    from ..data.loader import default_workers
    from ..net.devices import resolve_device
    from ..net.precision import resolve_precision
    from ..weights import checkpoint, locations

    dev = resolve_device(device)
    precision = resolve_precision(precision, dev.type)
    workers = default_workers(dev) if workers is None else workers
    ckpt = checkpoint.load(locations.resolve(weights))
    return classify(ckpt, root, batch_size, workers, dev, limit, progress, precision)
