"""A run's start: its checks, its images, then the statistics, model, optimizer and
training state, fresh (mean & PCA, the paper's init, run.json) or from last.ckpt, placed
on the plan's devices, with the loaders that feed it.

Imports torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..data.loader import Images, Shard, default_workers, labelled, loader
from ..images.preprocess import Preprocess
from ..net.alexnet import AlexNet, TwoDeviceAlexNet
from ..net.arch import ArchConfig
from ..progress import Progress
from ..weights import checkpoint
from .config import TrainConfig, TrainError, default_run_dir, find_splits
from .inputs import Inputs, rgb_statistics
from .plan import Plan, autocast_for
from .sgd import PaperSGD
from .state import TrainState, grouped_to_plan, set_rng_state


@dataclass
class Run:
    """What the epochs of a run need, fresh or resumed."""

    run_dir: Path
    classes: list[str]
    train_samples: list  # [(path, label)]
    val_samples: list  # [(path, label)], labels in the training classes' numbering
    arch: ArchConfig
    pre: Preprocess
    net: torch.nn.Module  # holds the parameters
    step_model: torch.nn.Module  # what a step calls: net, or its DDP / compiled wrapper
    opt: PaperSGD
    params: dict[str, torch.nn.Parameter]  # net's, by name
    state: TrainState
    sampler: torch.utils.data.DistributedSampler  # the training order; set_epoch each epoch
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    autocast: Callable  # a fresh autocast context for each training forward
    skipped: dict[str, str]  # unreadable images so far: path -> reason
    inputs: Inputs  # what the network sees, its constants on the plan's devices


def start_or_resume(cfg: TrainConfig, plan: Plan, progress: Progress, resume: bool) -> Run:
    """Everything a run needs before its first (or next) epoch. A fresh run writes
    stats.json and run.json (on the main process); a resumed one restores the weights, the
    velocity, the schedule and the RNG states of RUN_DIR/last.ckpt."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir()
    if cfg.batch_size < 1 or cfg.epochs < 0 or cfg.lr <= 0:
        raise TrainError("--batch-size must be >= 1, --epochs >= 0 and --lr > 0")
    if cfg.batch_size % plan.world:
        raise TrainError(f"--batch-size {cfg.batch_size} must divide among {plan.world} processes")
    if not resume and (run_dir / "last.ckpt").exists():
        raise TrainError(f"{run_dir} already holds a run: continue it with --resume {run_dir}")
    if plan.main and run_dir.is_dir():
        # temporaries of atomic writes a killed run left; one run writes a folder at a time
        for p in run_dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)

    workers = cfg.workers if cfg.workers is not None else default_workers(plan.device)
    train_dir, val_dir = find_splits(cfg)
    classes, train_samples = labelled(train_dir, cfg.limit, cfg.seed)
    val_classes, val_samples = labelled(val_dir, cfg.limit, cfg.seed + 1)
    missing = sorted(set(val_classes) - set(classes))
    if missing:
        raise TrainError(f"{val_dir}: classes not in the training set: {', '.join(missing[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    val_samples = [(p, index[val_classes[y]]) for p, y in val_samples]

    if resume:
        ckpt = checkpoint.load(run_dir / "last.ckpt")
        if ckpt.classes != classes:
            raise TrainError(f"{train_dir}: its classes differ from those of the run in {run_dir}")
        saved = ckpt.extra.get("train")
        if not saved:
            raise TrainError(f"{run_dir / 'last.ckpt'}: holds no training state to resume from")
        state = TrainState.from_dict(saved)
        pre, arch = ckpt.preprocess, ckpt.arch
        model = AlexNet(arch, init=False)
        model.load_state_dict(ckpt.state_dict)
    else:
        arch = ArchConfig(num_classes=len(classes), dropout=cfg.dropout)
        stats = _shared_statistics(cfg, plan, run_dir, train_samples, workers, progress)
        pre = Preprocess(
            mean=stats["mean"], pca_eigval=stats["pca_eigval"], pca_eigvec=stats["pca_eigvec"]
        )
        torch.manual_seed(cfg.seed)
        model = AlexNet(arch)
        state = TrainState(lr=cfg.lr)
        if plan.main:
            _write_run_json(run_dir, cfg, classes, len(train_samples), len(val_samples))

    net, step_model = _place(model, plan, cfg)
    params = dict(net.named_parameters())
    opt = PaperSGD(
        params.values(), lr=state.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    if resume:
        velocity = grouped_to_plan(saved["velocity"], plan.two_towers)
        for name, p in params.items():
            opt.state[p]["velocity"] = velocity[name].to(p.device).clone()
        set_rng_state(saved["rng"])

    per_proc = cfg.batch_size // plan.world
    sampler = torch.utils.data.DistributedSampler(
        Images(train_samples),
        num_replicas=plan.world,
        rank=plan.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
    )
    val_sampler = Shard(len(val_samples), plan.world, plan.rank)
    lanes = dict(pin=plan.cuda, max_megapixels=cfg.max_megapixels, persistent=True)
    return Run(
        run_dir=run_dir,
        classes=classes,
        train_samples=train_samples,
        val_samples=val_samples,
        arch=arch,
        pre=pre,
        net=net,
        step_model=step_model,
        opt=opt,
        params=params,
        state=state,
        sampler=sampler,
        train_loader=loader(train_samples, per_proc, workers, sampler, **lanes),
        val_loader=loader(val_samples, per_proc, workers, val_sampler, **lanes),
        autocast=autocast_for(plan.device, cfg.amp),
        skipped=dict(state.skipped),
        inputs=Inputs(pre, cfg.lighting_std, plan.devices, plan.cuda and cfg.channels_last),
    )


def _shared_statistics(cfg, plan: Plan, run_dir: Path, train_samples, workers, progress) -> dict:
    """The mean & PCA, every process reading its share of the images (so none waits long
    in a collective); the main process writes stats.json and under DDP sends its figures
    to the others, so every replica normalises alike."""
    if plan.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    stats = rgb_statistics(
        train_samples,
        cfg.stats_samples,
        cfg.seed,
        workers,
        progress,
        plan.rank,
        plan.world,
        plan.device,
    )
    if plan.main:
        atomic_write(run_dir / "stats.json", lambda f: f.write(json.dumps(stats).encode()))
    if plan.ddp:
        import torch.distributed as dist

        box = [stats]
        dist.broadcast_object_list(box, src=0)
        stats = box[0]
    return stats


def _place(model: AlexNet, plan: Plan, cfg: TrainConfig):
    """(net, step_model): net holds the parameters; step_model is what the loop calls
    (channels_last on CUDA and torch.compile as the settings say, on either plan)."""
    fmt = torch.channels_last if plan.cuda and cfg.channels_last else torch.contiguous_format
    if plan.two_towers:
        net = TwoDeviceAlexNet(model, plan.devices).to(memory_format=fmt)
        step_model = net
    else:
        net = model.to(plan.device, memory_format=fmt)
        step_model = net
        if plan.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [plan.device.index] if plan.cuda else None
            step_model = DistributedDataParallel(net, device_ids=ids)
    if cfg.compile:
        step_model = torch.compile(step_model)
    return net, step_model


def _write_run_json(run_dir, cfg, classes, n_train, n_val) -> None:
    doc = {
        "config": asdict(cfg),
        "classes": list(classes),
        "train_images": n_train,
        "val_images": n_val,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "torch": torch.__version__,
    }
    atomic_write(run_dir / "run.json", lambda f: f.write(json.dumps(doc, indent=2).encode()))
