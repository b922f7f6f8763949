"""One epoch of a run: the training pass (the paper's augmented inputs, one PaperSGD step
a batch) and the centre-crop validation pass, each summed over the processes.

Data order and augmentation are functions of (seed, epoch) only: the sampler takes
``set_epoch`` and the crops, flips, lighting and dropout draw from generators reseeded here
at the epoch's start, so a resumed run repeats exactly what an uninterrupted one did.

Imports torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..evaluate.classification import topk_wrong
from ..progress import Progress
from .config import TrainConfig, TrainError
from .inputs import augment, centre_input
from .plan import Plan, all_sum
from .start import Run
from .state import epoch_seed


@dataclass
class TrainSums:
    """An epoch's training pass, summed over the processes (seconds: this process's)."""

    loss: float  # sum of the per-image losses
    wrong1: float  # images whose label is not the top-1 prediction
    wrong5: float  # ... not among the top 5
    seen: float  # images trained on
    seconds: float


def train_one_epoch(
    run: Run, cfg: TrainConfig, plan: Plan, epoch: int, progress: Progress
) -> TrainSums:
    """Epoch `epoch` of training at run.state.lr; progress: f"epoch {epoch}/{cfg.epochs}"
    (batches, with lr, then loss and img_per_s). Unreadable images go to run.skipped."""
    seed = epoch_seed(cfg.seed, epoch)
    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed + 1)  # crops, flips, lighting
    run.sampler.set_epoch(epoch)
    for g in run.opt.param_groups:
        g["lr"] = run.state.lr
    stage, batches, batch = f"epoch {epoch}/{cfg.epochs}", len(run.train_loader), 0
    progress(stage, 0, batches, lr=run.state.lr)
    run.step_model.train()
    loss_sum = wrong1 = wrong5 = seen = 0.0
    t_train = time.perf_counter()
    for u8, labels, bad in run.train_loader:
        run.skipped.update(bad)
        if len(labels) == 0 and plan.world == 1:
            continue
        if len(labels):
            x = augment(u8, run.pre, gen, cfg.lighting_std, plan.device)
            labels = labels.to(plan.device, non_blocking=True)
            weight = 1.0
        else:  # DDP: every process must join every step, so take one with zero weight
            size = run.pre.input_size
            x = torch.zeros(1, 3, size, size, device=plan.device)
            labels = torch.zeros(1, dtype=torch.long, device=plan.device)
            weight = 0.0
        if plan.cuda and cfg.channels_last and not plan.two_towers:
            x = x.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            logits = run.step_model(x)
            loss = F.cross_entropy(logits.float(), labels) * weight
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if weight:
            n = len(labels)
            w1, w5 = topk_wrong(logits.detach().float(), labels)
            loss_sum += float(loss.detach()) * n
            wrong1, wrong5, seen = wrong1 + w1, wrong5 + w5, seen + n
            rate = seen * plan.world / max(time.perf_counter() - t_train, 1e-9)
            batch += 1
            progress(stage, batch, batches, loss=loss_sum / seen, img_per_s=rate)
            if not math.isfinite(float(loss.detach())):
                raise TrainError(
                    f"epoch {epoch}: the loss became {float(loss)}; lower --lr and start again"
                )
    seconds = time.perf_counter() - t_train
    loss_sum, wrong1, wrong5, seen = all_sum(plan, [loss_sum, wrong1, wrong5, seen])
    return TrainSums(loss_sum, wrong1, wrong5, seen, seconds)


@torch.no_grad()
def validate(run: Run, plan: Plan) -> tuple[float, float, float]:
    """(wrong top-1, wrong top-5, images) of the centre crops of the validation set, summed
    over the processes. Unreadable images go to run.skipped."""
    run.step_model.eval()
    w1 = w5 = n = 0
    for u8, labels, bad in run.val_loader:
        run.skipped.update(bad)
        if len(labels) == 0:
            continue
        x = centre_input(u8, run.pre, plan.device)
        if plan.cuda and not plan.two_towers:
            x = x.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            logits = run.step_model(x).float()
        a, b = topk_wrong(logits, labels.to(logits.device))
        w1, w5, n = w1 + a, w5 + b, n + len(labels)
    w1, w5, n = all_sum(plan, [w1, w5, n])
    return w1, w5, n
