"""The paper's training run: start (or resume), then epoch by epoch train, validate, step
the plateau schedule and save atomic checkpoints, on a CPU, one GPU, two GPUs (a tower
each) or many (DistributedDataParallel under torchrun).

What an epoch saves is enough to redo the next one exactly (train/state.py), and its
randomness depends on (seed, epoch) only (train/epoch.py), so a run resumed from
``last.ckpt`` ends with the weights of an uninterrupted run.

Imports torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write
from ..progress import Progress, silent
from ..weights import checkpoint
from .config import TrainConfig, TrainError
from .epoch import train_one_epoch, validate
from .plan import Plan, all_union, setup_plan, teardown
from .sgd import plateau_step
from .start import Run, start_or_resume
from .state import plan_to_grouped, rng_state

METRIC_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_top1_err",
    "train_top5_err",
    "val_top1_err",
    "val_top5_err",
    "img_per_s",
    "seconds",
)


@dataclass
class TrainResult:
    run_dir: str
    epochs_done: int
    best_epoch: int | None
    best_val_top1_err: float | None
    best_val_top5_err: float | None
    last: dict | None
    lr: float
    seconds: float
    train_images: int
    val_images: int
    classes: int
    plan: str
    skipped: list = field(default_factory=list)  # [(path, reason)] of unreadable images
    rank: int = 0
    fingerprint: str = ""  # of the final weights (last.ckpt's)
    replica_fingerprints: list = field(default_factory=list)  # one per DDP process


def run(cfg: TrainConfig, progress: Progress | None = None, resume: bool = False) -> TrainResult:
    """Train (or continue, with resume=True and cfg.out the run folder) and return a summary.

    progress: "mean & PCA" (images), or "resumed after epoch"; then "epoch E/N" (batches,
    with lr, loss and img_per_s) and "epochs" (with the epoch's metrics row as figures).
    Under torchrun the process group it started is ended on the way out, errors included."""
    t_start = time.perf_counter()
    plan = setup_plan(cfg.device)
    try:
        return _run(cfg, plan, progress, resume, t_start)
    finally:
        teardown(plan)


def _run(cfg: TrainConfig, plan: Plan, progress, resume: bool, t_start: float) -> TrainResult:
    report = progress if progress is not None and plan.main else silent
    r = start_or_resume(cfg, plan, report, resume)
    if resume and plan.main:
        # last.ckpt's history is the record: a kill may have come before metrics.jsonl
        write_metrics(r.run_dir, r.state.history)
        report("resumed after epoch", r.state.epoch, cfg.epochs)
    state = r.state
    while state.epoch < cfg.epochs:
        epoch = state.epoch + 1
        t0 = time.perf_counter()
        sums = train_one_epoch(r, cfg, plan, epoch, report)
        v1, v5, vn = validate(r, plan)
        if sums.seen == 0 or vn == 0:
            raise TrainError(f"epoch {epoch}: no readable image in the training or val set")
        r.skipped = all_union(plan, r.skipped)  # whichever process met them
        row = {
            "epoch": epoch,
            "lr": state.lr,
            "train_loss": sums.loss / sums.seen,
            "train_top1_err": sums.wrong1 / sums.seen,
            "train_top5_err": sums.wrong5 / sums.seen,
            "val_top1_err": v1 / vn,
            "val_top5_err": v5 / vn,
            "img_per_s": sums.seen / max(sums.seconds, 1e-9),
            "seconds": time.perf_counter() - t0,
        }
        improved = plateau_step(state, epoch, row["val_top1_err"], cfg.patience, cfg.lr_drop)
        state.epoch = epoch
        state.history.append(row)
        state.skipped = sorted(r.skipped.items())
        if plan.main:
            save(r, plan, cfg, improved)
        report("epochs", epoch, cfg.epochs, **{k: v for k, v in row.items() if k != "epoch"})
    return _result(r, plan, t_start)


def save(run: Run, plan: Plan, cfg: TrainConfig, improved: bool) -> None:
    """best.ckpt (if `improved`) first, then last.ckpt, then metrics.jsonl: a kill between
    any two of them resumes from the previous last.ckpt and redoes this epoch identically."""
    sd = _weights(run, plan)
    state = run.state
    meta = {
        "source": "alexsearch train",
        "run": str(run.run_dir),
        "epoch": state.epoch,
        "val_top1_err": state.history[-1]["val_top1_err"],
        "val_top5_err": state.history[-1]["val_top5_err"],
        "seed": cfg.seed,
    }
    classes = list(run.classes)
    if improved:
        best = checkpoint.Checkpoint(run.arch, run.pre, sd, classes, dict(meta))
        checkpoint.save(best, run.run_dir / "best.ckpt")
    velocity = {
        name: run.opt.state[p]["velocity"]
        for name, p in run.params.items()
        if "velocity" in run.opt.state[p]
    }
    train = {
        **state.to_dict(),
        "velocity": plan_to_grouped(velocity, plan.two_towers),
        "rng": rng_state(),
    }
    last = checkpoint.Checkpoint(run.arch, run.pre, sd, classes, meta, extra={"train": train})
    checkpoint.save(last, run.run_dir / "last.ckpt")
    write_metrics(run.run_dir, state.history)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """RUN_DIR/metrics.jsonl: one METRIC_KEYS row a line, written whole."""
    text = "".join(json.dumps({k: row[k] for k in METRIC_KEYS}) + "\n" for row in history)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))


def _weights(run: Run, plan: Plan) -> dict:
    """The network's weights in the one-device layout, whichever plan holds them."""
    return run.net.grouped_state_dict() if plan.two_towers else run.net.state_dict()


def _result(run: Run, plan: Plan, t_start: float) -> TrainResult:
    final = checkpoint.fingerprint(_weights(run, plan))
    prints = [final]
    if plan.ddp:  # every replica says what it holds, so a divergence is visible
        import torch.distributed as dist

        prints = [None] * plan.world
        dist.all_gather_object(prints, final)
    state = run.state
    best = next((row for row in state.history if row["epoch"] == state.best_epoch), None)
    desc = (
        f"ddp x{plan.world} {plan.device}" if plan.ddp else ",".join(str(d) for d in plan.devices)
    )
    return TrainResult(
        run_dir=str(run.run_dir),
        epochs_done=state.epoch,
        best_epoch=state.best_epoch,
        best_val_top1_err=best["val_top1_err"] if best else None,
        best_val_top5_err=best["val_top5_err"] if best else None,
        last=state.history[-1] if state.history else None,
        lr=state.lr,
        seconds=time.perf_counter() - t_start,
        train_images=len(run.train_samples),
        val_images=len(run.val_samples),
        classes=len(run.classes),
        plan=desc,
        skipped=sorted(run.skipped.items()),
        rank=plan.rank,
        fingerprint=prints[0],
        replica_fingerprints=prints,
    )
