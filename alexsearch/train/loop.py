"""The paper's training recipe: SGD with its own momentum/decay update, a plateau schedule,
atomic checkpoints and exact resume, on a CPU, one GPU, two GPUs (a tower each) or many
(DistributedDataParallel under torchrun).

Data order and augmentation are functions of (seed, epoch) only, so a run resumed from
``last.ckpt`` repeats exactly what an uninterrupted run would have done: the sampler is
``DistributedSampler`` (seeded, ``set_epoch``), and the random crops, flips, PCA lighting
and dropout draw from generators reseeded at every epoch start.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import atomic_write
from ..data.crops import centre_crop, random_crop_flip
from ..data.lighting import RunningRGBStats, pca_lighting
from ..data.loader import Images, labelled, loader
from ..evaluate.classification import topk_wrong
from ..images.preprocess import Preprocess
from ..net.alexnet import AlexNet, TwoDeviceAlexNet
from ..net.arch import ArchConfig
from ..progress import Progress, silent
from ..weights import checkpoint as weights
from .config import TrainConfig, TrainError, default_run_dir, find_splits
from .plan import Plan, all_sum, autocast_for, setup_plan
from .sgd import PaperSGD, plateau_step
from .state import epoch_seed, grouped_to_plan, plan_to_grouped, rng_state, set_rng_state

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


def rgb_statistics(samples, cap: int, seed: int, workers: int, progress=None) -> dict:
    """Mean (0..255 scale) and PCA of the RGB covariance ([0, 1] scale) over <= cap images."""
    if cap and len(samples) > cap:
        samples = random.Random(seed).sample(samples, cap)
    stats = RunningRGBStats()
    done = 0
    for u8, _, _ in loader(samples, 64, workers):
        if len(u8):
            stats.update(u8)
        done += 64
        if progress:
            progress("mean & PCA", min(done, len(samples)), len(samples))
    if stats.n == 0:
        raise TrainError("no readable training image to compute the mean from")
    val, vec = stats.eig()
    return {
        "mean": (stats.mean() * 255.0).float().tolist(),
        "pca_eigval": val.tolist(),
        "pca_eigvec": vec.tolist(),
        "images": len(samples),
    }


def augment(u8, pre: Preprocess, gen: torch.Generator, lighting_std: float, device):
    """The paper's training input: random 224 crop + flip, minus the mean, PCA lighting.

    Crops stay uint8 until after the crop (less to convert); this is exact because a
    training run's mean is per channel.
    """
    u8 = u8.to(device, non_blocking=True)
    x = pre.normalize(random_crop_flip(u8, pre.input_size, gen))
    if pre.pca_eigval is not None and lighting_std > 0:
        # pca_lighting works on the [0, 1] scale; our input is on the 0..255 scale
        eigval = torch.as_tensor(pre.pca_eigval) * pre.scale
        x = pca_lighting(x, eigval, torch.as_tensor(pre.pca_eigvec), lighting_std, gen)
    return x


def centre_input(u8, pre: Preprocess, device):
    u8 = u8.to(device, non_blocking=True)
    return pre.normalize(centre_crop(u8, pre.input_size))


# --------------------------------------------------------------------------- devices


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


# --------------------------------------------------------------------------- the run


def run(cfg: TrainConfig, progress: Progress | None = None, resume: bool = False) -> TrainResult:
    """Train (or continue, with resume=True and cfg.out the run folder) and return a summary.

    progress: "mean & PCA" (images), "epoch E/N" (batches, with loss and img_per_s), then
    "epochs" (epochs done, with the epoch's metrics row as figures)."""
    t_start = time.perf_counter()
    plan = setup_plan(cfg.device)
    report = progress if progress is not None and plan.main else silent
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
    train_dir, val_dir = find_splits(cfg)
    classes, train_samples = labelled(train_dir, cfg.limit, cfg.seed)
    val_classes, val_samples = labelled(val_dir, cfg.limit, cfg.seed + 1)
    missing = sorted(set(val_classes) - set(classes))
    if missing:
        raise TrainError(f"{val_dir}: classes not in the training set: {', '.join(missing[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    val_samples = [(p, index[val_classes[y]]) for p, y in val_samples]
    arch = ArchConfig(num_classes=len(classes), dropout=cfg.dropout)

    # ---- statistics, model, optimizer: fresh or from last.ckpt
    if resume:
        ckpt = weights.load(run_dir / "last.ckpt")
        if ckpt.classes != classes:
            raise TrainError(f"{train_dir}: its classes differ from those of the run in {run_dir}")
        state = ckpt.extra.get("train")
        if not state:
            raise TrainError(f"{run_dir / 'last.ckpt'}: holds no training state to resume from")
        pre, arch = ckpt.preprocess, ckpt.arch
        model = AlexNet(arch, init=False)
        model.load_state_dict(ckpt.state_dict)
    else:
        stats = None
        if plan.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            stats = rgb_statistics(train_samples, cfg.stats_samples, cfg.seed, cfg.workers, report)
            atomic_write(run_dir / "stats.json", lambda f: f.write(json.dumps(stats).encode()))
        if plan.world > 1:
            import torch.distributed as dist

            box = [stats]
            dist.broadcast_object_list(box, src=0)
            stats = box[0]
        pre = Preprocess(
            mean=stats["mean"], pca_eigval=stats["pca_eigval"], pca_eigvec=stats["pca_eigvec"]
        )
        torch.manual_seed(cfg.seed)
        model = AlexNet(arch)
        state = {
            "epoch": 0,
            "lr": cfg.lr,
            "best": None,
            "best_epoch": None,
            "since_best": 0,
            "history": [],
            "skipped": [],
        }
        if plan.main:
            _write_run_json(run_dir, cfg, classes, len(train_samples), len(val_samples))

    net, step_model = _place(model, plan, cfg)
    params = dict(net.named_parameters())
    opt = PaperSGD(
        params.values(), lr=state["lr"], momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    if resume:
        velocity = grouped_to_plan(state["velocity"], plan.two_towers)
        for name, p in params.items():
            opt.state[p]["velocity"] = velocity[name].to(p.device).clone()
        set_rng_state(state["rng"])
        if plan.main:
            _write_metrics(run_dir, state["history"])  # rows past last.ckpt were not kept

    # ---- the epochs
    per_proc = cfg.batch_size // plan.world
    sampler = torch.utils.data.DistributedSampler(
        Images(train_samples),
        num_replicas=plan.world,
        rank=plan.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=False,
    )
    val_sampler = torch.utils.data.DistributedSampler(
        Images(val_samples), num_replicas=plan.world, rank=plan.rank, shuffle=False
    )
    train_loader = loader(
        train_samples, per_proc, cfg.workers, sampler, plan.cuda, cfg.max_megapixels
    )
    val_loader = loader(
        val_samples, per_proc, cfg.workers, val_sampler, plan.cuda, cfg.max_megapixels
    )
    skipped = {p: r for p, r in state.get("skipped", [])}
    autocast = autocast_for(plan.device, cfg.amp)

    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)  # dropout
        gen = torch.Generator().manual_seed(seed + 1)  # crops, flips, lighting
        sampler.set_epoch(epoch)
        for g in opt.param_groups:
            g["lr"] = state["lr"]
        stage, batches, batch = f"epoch {epoch}/{cfg.epochs}", len(train_loader), 0
        report(stage, 0, batches, lr=state["lr"])
        step_model.train()
        loss_sum = wrong1 = wrong5 = seen = 0.0
        t_train = time.perf_counter()
        for u8, labels, bad in train_loader:
            skipped.update(bad)
            if len(labels) == 0 and plan.world == 1:
                continue
            if len(labels):
                x = augment(u8, pre, gen, cfg.lighting_std, plan.device)
                labels = labels.to(plan.device, non_blocking=True)
                weight = 1.0
            else:  # DDP: every process must join every step, so take one with zero weight
                x = torch.zeros(1, 3, pre.input_size, pre.input_size, device=plan.device)
                labels = torch.zeros(1, dtype=torch.long, device=plan.device)
                weight = 0.0
            if plan.cuda and cfg.channels_last and not plan.two_towers:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), labels) * weight
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if weight:
                n = len(labels)
                w1, w5 = topk_wrong(logits.detach().float(), labels)
                loss_sum += float(loss.detach()) * n
                wrong1, wrong5, seen = wrong1 + w1, wrong5 + w5, seen + n
                rate = seen * plan.world / max(time.perf_counter() - t_train, 1e-9)
                batch += 1
                report(stage, batch, batches, loss=loss_sum / seen, img_per_s=rate)
                if not math.isfinite(float(loss.detach())):
                    raise TrainError(
                        f"epoch {epoch}: the loss became {float(loss)}; lower --lr and start again"
                    )
        train_seconds = time.perf_counter() - t_train
        loss_sum, wrong1, wrong5, seen = all_sum(plan, [loss_sum, wrong1, wrong5, seen])

        v1, v5, vn = _validate(step_model, val_loader, pre, plan, autocast, skipped)
        v1, v5, vn = all_sum(plan, [v1, v5, vn])
        if seen == 0 or vn == 0:
            raise TrainError(f"epoch {epoch}: no readable image in the training or val set")
        row = {
            "epoch": epoch,
            "lr": state["lr"],
            "train_loss": loss_sum / seen,
            "train_top1_err": wrong1 / seen,
            "train_top5_err": wrong5 / seen,
            "val_top1_err": v1 / vn,
            "val_top5_err": v5 / vn,
            "img_per_s": seen / max(train_seconds, 1e-9),
            "seconds": time.perf_counter() - t0,
        }
        # ---- the plateau schedule
        improved = plateau_step(state, epoch, row["val_top1_err"], cfg.patience, cfg.lr_drop)
        state["epoch"] = epoch
        state["history"].append(row)
        state["skipped"] = sorted(skipped.items())
        if plan.main:
            _save(run_dir, net, plan, arch, pre, classes, cfg, state, opt, params, improved)
        report("epochs", epoch, cfg.epochs, **{k: v for k, v in row.items() if k != "epoch"})

    final = net.grouped_state_dict() if plan.two_towers else net.state_dict()
    prints = [weights.fingerprint(final)]
    if plan.world > 1:  # every replica says what it holds, so a divergence is visible
        import torch.distributed as dist

        prints = [None] * plan.world
        dist.all_gather_object(prints, weights.fingerprint(final))
    hist = state["history"]
    best = next((r for r in hist if r["epoch"] == state["best_epoch"]), None)
    desc = (
        f"ddp x{plan.world} {plan.device}"
        if plan.world > 1
        else ",".join(str(d) for d in plan.devices)
    )
    return TrainResult(
        run_dir=str(run_dir),
        epochs_done=state["epoch"],
        best_epoch=state["best_epoch"],
        best_val_top1_err=best["val_top1_err"] if best else None,
        best_val_top5_err=best["val_top5_err"] if best else None,
        last=hist[-1] if hist else None,
        lr=state["lr"],
        seconds=time.perf_counter() - t_start,
        train_images=len(train_samples),
        val_images=len(val_samples),
        classes=len(classes),
        plan=desc,
        skipped=sorted(skipped.items()),
        rank=plan.rank,
        fingerprint=prints[0],
        replica_fingerprints=prints,
    )


def _place(model: AlexNet, plan: Plan, cfg: TrainConfig):
    """(net, step_model): net holds the parameters; step_model is what the loop calls."""
    if plan.two_towers:
        net = TwoDeviceAlexNet(model, plan.devices)
        return net, net
    net = model.to(plan.device)
    if plan.cuda and cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    step_model = net
    if plan.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [plan.device.index] if plan.cuda else None
        step_model = DistributedDataParallel(net, device_ids=ids)
    if cfg.compile:
        step_model = torch.compile(step_model)
    return net, step_model


@torch.no_grad()
def _validate(model, val_loader, pre, plan, autocast, skipped) -> tuple[int, int, int]:
    model.eval()
    w1 = w5 = n = 0
    for u8, labels, bad in val_loader:
        skipped.update(bad)
        if len(labels) == 0:
            continue
        x = centre_input(u8, pre, plan.device)
        if plan.cuda and not plan.two_towers:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x).float()
        a, b = topk_wrong(logits, labels.to(logits.device))
        w1, w5, n = w1 + a, w5 + b, n + len(labels)
    return w1, w5, n


def _save(run_dir, net, plan, arch, pre, classes, cfg, state, opt, params, improved) -> None:
    """best.ckpt first, then last.ckpt, then metrics.jsonl: a kill between any two of them
    resumes from the previous last.ckpt and redoes this epoch identically."""
    sd = net.grouped_state_dict() if plan.two_towers else net.state_dict()
    meta = {
        "source": "alexsearch train",
        "run": str(run_dir),
        "epoch": state["epoch"],
        "val_top1_err": state["history"][-1]["val_top1_err"],
        "val_top5_err": state["history"][-1]["val_top5_err"],
        "seed": cfg.seed,
    }
    if improved:
        weights.save(
            weights.Checkpoint(arch, pre, sd, list(classes), dict(meta)), run_dir / "best.ckpt"
        )
    velocity = {
        name: opt.state[p]["velocity"] for name, p in params.items() if "velocity" in opt.state[p]
    }
    train_state = {
        **state,
        "velocity": plan_to_grouped(velocity, plan.two_towers),
        "rng": rng_state(),
    }
    weights.save(
        weights.Checkpoint(arch, pre, sd, list(classes), meta, extra={"train": train_state}),
        run_dir / "last.ckpt",
    )
    _write_metrics(run_dir, state["history"])


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps({k: row[k] for k in METRIC_KEYS}) + "\n" for row in history)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))


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
