"""One epoch of a run: the training pass (the paper's augmented inputs, one PaperSGD step
a batch) and the centre-crop validation pass, each summed over the processes.

Data order and augmentation are functions of (seed, epoch, rank) only: the sampler takes
``set_epoch`` and the crops, flips, lighting and dropout draw from generators reseeded here
at the epoch's start, with each DDP process's rank mixed in (so process r's image i is not
augmented like process 0's), so a resumed run repeats exactly what an uninterrupted one
did.

A step never waits for the device: the loss and the top-1/top-5 counters add up on it
and are read every READ_EVERY steps (the progress figures and the check for a loss that
is not finite, which under DDP every process makes together, so each stops with the
same message).

Imports torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..evaluate.classification import logits as eval_logits
from ..evaluate.classification import wrong_counts
from ..progress import Progress
from .config import TrainConfig, TrainError
from .plan import Plan, all_sum, every_process
from .start import Run
from .state import epoch_seed

READ_EVERY = 50  # steps between reads of the counters on the device (each read waits)


@dataclass
class TrainSums:
    """An epoch's training pass, summed over the processes (seconds: this process's)."""

    loss: float  # sum of the per-image losses
    wrong1: float  # images whose label is not the top-1 prediction
    wrong5: float  # ... not among the top 5
    seen: float  # images trained on
    seconds: float


def _check_finite(plan: Plan, epoch: int, loss_sum: float) -> None:
    """Stop every process, with one message, once any process's loss is not finite."""
    sums = every_process(plan, loss_sum)
    bad = [r for r, v in enumerate(sums) if not math.isfinite(v)]
    if bad:
        where = f" on process {', '.join(map(str, bad))}" if plan.world > 1 else ""
        raise TrainError(
            f"epoch {epoch}: the loss became {sums[bad[0]]}{where}; lower --lr and start again"
        )


def train_one_epoch(
    run: Run, cfg: TrainConfig, plan: Plan, epoch: int, progress: Progress
) -> TrainSums:
    """Epoch `epoch` of training at run.state.lr; progress: f"epoch {epoch}/{cfg.epochs}"
    (batches, with lr, then img_per_s, and the loss every READ_EVERY steps). Unreadable
    images go to run.skipped."""
    seed = epoch_seed(cfg.seed, epoch, plan.rank)
    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed + 1)  # crops, flips, lighting
    run.sampler.set_epoch(epoch)
    for g in run.opt.param_groups:
        g["lr"] = run.state.lr
    stage, batches, batch = f"epoch {epoch}/{cfg.epochs}", len(run.train_loader), 0
    progress(stage, 0, batches, lr=run.state.lr)
    run.step_model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=plan.device)  # loss, wrong1, wrong5
    seen, step, shown = 0, 0, {}
    t_train = time.perf_counter()
    for u8, labels, bad in run.train_loader:
        run.skipped.update(bad)
        if len(labels) == 0 and not plan.ddp:
            continue
        if len(labels):
            x = run.inputs.augment(u8, gen, plan.devices)
            labels = labels.to(plan.device, non_blocking=True)
            weight = 1.0
        else:  # DDP: every process must join every step, so take one with zero weight
            size = run.pre.input_size
            x = torch.zeros(1, 3, size, size, device=plan.device)
            labels = torch.zeros(1, dtype=torch.long, device=plan.device)
            weight = 0.0
        with run.autocast():
            logits = run.step_model(x)
            loss = F.cross_entropy(logits.float(), labels) * weight
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        step += 1
        if weight:
            n = len(labels)
            with torch.no_grad():
                counts = wrong_counts(logits.detach().float(), labels)
                sums += torch.cat([(loss.detach() * n).view(1), counts]).double()
            seen, batch = seen + n, batch + 1
        if step % READ_EVERY == 0:
            loss_sum = sums[0].item()
            _check_finite(plan, epoch, loss_sum)
            shown = {"loss": loss_sum / max(seen, 1)}
        rate = seen * plan.world / max(time.perf_counter() - t_train, 1e-9)
        progress(stage, batch, batches, **shown, img_per_s=rate)
    loss_sum, wrong1, wrong5 = sums.tolist()
    _check_finite(plan, epoch, loss_sum)
    seconds = time.perf_counter() - t_train
    loss_sum, wrong1, wrong5, seen = all_sum(plan, [loss_sum, wrong1, wrong5, seen])
    return TrainSums(loss_sum, wrong1, wrong5, seen, seconds)


@torch.no_grad()
def validate(run: Run, plan: Plan) -> tuple[float, float, float]:
    """(wrong top-1, wrong top-5, images) of the centre crops of the validation set, summed
    over the processes (each image counted once), computed as `alexsearch eval` computes
    its centre-crop error (evaluate.classification.logits: IEEE fp32, channels_last on
    CUDA), whatever the training step's autocast. Unreadable images go to run.skipped."""
    run.step_model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=plan.device)
    n = 0
    for u8, labels, bad in run.val_loader:
        run.skipped.update(bad)
        if len(labels) == 0:
            continue
        x = run.inputs.centre(u8, plan.devices)
        if plan.two_towers:
            with torch.autocast(plan.device.type, enabled=False):
                out = run.step_model(x).float()
        else:
            out = eval_logits(run.step_model, x, "fp32")
        counts += wrong_counts(out, labels.to(out.device, non_blocking=True)).double()
        n += len(labels)
    w1, w5 = counts.tolist()
    w1, w5, n = all_sum(plan, [w1, w5, n])
    return w1, w5, n
