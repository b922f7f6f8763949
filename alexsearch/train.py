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
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data, weights
from .atomic import atomic_write
from .errors import UserError
from .extract import resolve_device
from .imagefiles import DEFAULT_MAX_MEGAPIXELS
from .model import AlexNet, ArchConfig, TwoDeviceAlexNet

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


class TrainError(UserError):
    """A training run that cannot start or continue, with a one-line reason."""


# --------------------------------------------------------------------------- optimizer


class PaperSGD(torch.optim.Optimizer):
    """The paper's update (section 5): v <- m*v - wd*lr*w - lr*dL/dw ;  w <- w + v.

    torch.optim.SGD keeps the learning rate outside the velocity (v <- m*v + g + wd*w;
    w <- w - lr*v), which is the same only while lr is constant: after a drop, the
    paper's velocity still carries the old, larger steps and decays them by m.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay=5e-4):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            grads = [p.grad for p in ps]
            vs = []
            for p in ps:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                vs.append(state["velocity"])
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            torch._foreach_mul_(vs, m)
            if wd:
                torch._foreach_add_(vs, ps, alpha=-wd * lr)
            torch._foreach_add_(vs, grads, alpha=-lr)
            torch._foreach_add_(ps, vs)
        return loss


# --------------------------------------------------------------------------- settings


@dataclass
class TrainConfig:
    """Every setting of a run; written to RUN_DIR/run.json. Defaults are the paper's."""

    data: str = ""
    val: str | None = None
    out: str | None = None
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 90
    patience: int = 3  # epochs without a better val top-1 error before lr /= 10
    lr_drop: float = 10.0
    dropout: float = 0.5
    lighting_std: float = 0.1
    workers: int = 2
    limit: int | None = None  # images per split, for quick runs
    seed: int = 0
    device: str = "auto"
    stats_samples: int = 10000
    compile: bool = False
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    channels_last: bool = True  # on CUDA
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    # Settings a resumed run may change; the others define the run and stay fixed.
    RESUMABLE = ("epochs", "patience", "workers", "device", "compile", "amp", "channels_last")


# --------------------------------------------------------------------------- data


def find_splits(cfg: TrainConfig) -> tuple[Path, Path]:
    root = Path(cfg.data)
    if not root.is_dir():
        raise TrainError(f"{root}: no such folder")
    if cfg.val:
        return (root / "train" if (root / "train").is_dir() else root), Path(cfg.val)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / "train", root / "val"
    raise TrainError(
        f"{root}: expected {root}/train and {root}/val in the ImageFolder layout "
        "(<split>/<class>/<image>), or give the validation folder with --val"
    )


def labelled(root: Path, limit: int | None, seed: int) -> tuple[list[str], list]:
    try:
        classes, samples = data.labelled_folder(root)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if limit is not None and limit < len(samples):
        # A random (seeded) subset keeps every class represented in a quick run.
        rng = random.Random(seed)
        samples = sorted(rng.sample(samples, limit), key=lambda s: (s[1], s[0]))
    return classes, samples


class Images(torch.utils.data.Dataset):
    """(path, label) -> uint8 (3, 256, 256); an unreadable file comes back as its reason."""

    def __init__(
        self, samples, resize: int = data.RESIZE, max_megapixels: float = 100.0, squash=False
    ):
        self.samples = samples
        self.resize = resize
        self.max_megapixels = max_megapixels
        self.squash = squash

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            u8 = data.load_256(path, self.max_megapixels, self.resize, self.squash)
            return u8, label, path, ""
        except data.ImageError as e:
            return None, label, path, str(e)


def collate(items):
    """Stack the readable images; list the unreadable ones as (path, reason)."""
    ok = [it for it in items if it[0] is not None]
    bad = [(it[2], it[3]) for it in items if it[0] is None]
    if not ok:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    return torch.stack([it[0] for it in ok]), torch.tensor([it[1] for it in ok]), bad


def loader(
    samples, batch_size, workers, sampler=None, pin=False, max_megapixels=100.0, squash=False
):
    return torch.utils.data.DataLoader(
        Images(samples, max_megapixels=max_megapixels, squash=squash),
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def rgb_statistics(samples, cap: int, seed: int, workers: int, progress=None) -> dict:
    """Mean (0..255 scale) and PCA of the RGB covariance ([0, 1] scale) over <= cap images."""
    if cap and len(samples) > cap:
        samples = random.Random(seed).sample(samples, cap)
    stats = data.RunningRGBStats()
    done = 0
    for u8, _, _ in loader(samples, 64, workers):
        if len(u8):
            stats.update(u8)
        done += 64
        if progress:
            progress(min(done, len(samples)), len(samples))
    if stats.n == 0:
        raise TrainError("no readable training image to compute the mean from")
    val, vec = stats.eig()
    return {
        "mean": (stats.mean() * 255.0).float().tolist(),
        "pca_eigval": val.tolist(),
        "pca_eigvec": vec.tolist(),
        "images": len(samples),
    }


def augment(u8, pre: data.Preprocess, gen: torch.Generator, lighting_std: float, device):
    """The paper's training input: random 224 crop + flip, minus the mean, PCA lighting.

    Crops stay uint8 until after the crop (less to convert); this is exact because a
    training run's mean is per channel.
    """
    u8 = u8.to(device, non_blocking=True)
    x = pre.normalize(data.random_crop_flip(u8, pre.input_size, gen))
    if pre.pca_eigval is not None and lighting_std > 0:
        # pca_lighting works on the [0, 1] scale; our input is on the 0..255 scale
        eigval = torch.as_tensor(pre.pca_eigval) * pre.scale
        x = data.pca_lighting(x, eigval, torch.as_tensor(pre.pca_eigvec), lighting_std, gen)
    return x


def centre_input(u8, pre: data.Preprocess, device):
    u8 = u8.to(device, non_blocking=True)
    return pre.normalize(data.centre_crop(u8, pre.input_size))


def topk_wrong(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """How many labels are outside the top-1 and the top-5 (top-min(5, C)) predictions."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels.view(-1, 1)
    return int((~hit[:, 0]).sum()), int((~hit.any(1)).sum())


# --------------------------------------------------------------------------- devices


@dataclass
class Plan:
    """Where the network runs: one device, two devices (a tower each), or DDP."""

    devices: list[torch.device]
    rank: int = 0
    world: int = 1

    @property
    def device(self) -> torch.device:
        return self.devices[0]

    @property
    def two_towers(self) -> bool:
        return len(self.devices) == 2

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def main(self) -> bool:
        return self.rank == 0


def parse_devices(spec: str) -> list[torch.device]:
    """One device, or two (a tower each) separated by a comma."""
    parts = [s for s in spec.split(",") if s.strip()] or ["auto"]
    if len(parts) > 2:
        raise TrainError("--device: at most two devices (one tower each); for more use torchrun")
    return [resolve_device(p) for p in parts]


def setup_plan(spec: str) -> Plan:
    """torchrun sets RANK/WORLD_SIZE: then data parallelism, one process per device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Plan(parse_devices(spec))
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    want_cuda = spec != "cpu" and torch.cuda.is_available()
    if "," in spec:
        raise TrainError("under torchrun each process takes one device; drop the comma")
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Plan([dev], rank=rank, world=world)


def _all_sum(plan: Plan, values: list[float]) -> list[float]:
    if plan.world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=plan.device)
    dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------- state


def _grouped(named: dict, two_towers: bool) -> dict:
    """Tensors named after the running plan -> the one-device layout (CPU)."""
    if not two_towers:
        return {k: v.detach().cpu() for k, v in named.items()}
    out = {}
    for name in TwoDeviceAlexNet.LAYERS:
        for kind in ("weight", "bias"):
            parts = [named[f"towers.{t}.{name}.{kind}"].detach().cpu() for t in (0, 1)]
            out[f"{name}.{kind}"] = torch.cat(parts, 0)
    out["fc8.weight"] = named["fc8.weight"].detach().cpu()
    out["fc8.bias"] = named["fc8.bias"].detach().cpu()
    return out


def _ungrouped(grouped: dict, two_towers: bool) -> dict:
    """The inverse of _grouped: split each layer's output rows between the towers."""
    if not two_towers:
        return dict(grouped)
    out = {"fc8.weight": grouped["fc8.weight"], "fc8.bias": grouped["fc8.bias"]}
    for name in TwoDeviceAlexNet.LAYERS:
        for kind in ("weight", "bias"):
            for t, part in enumerate(grouped[f"{name}.{kind}"].chunk(2, 0)):
                out[f"towers.{t}.{name}.{kind}"] = part
    return out


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**62)


# --------------------------------------------------------------------------- progress


class Reporter:
    """What a run tells its watcher; the CLI draws it with rich, tests ignore it."""

    def stats(self, done: int, total: int) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, batches: int, lr: float) -> None: ...

    def batch(self, done: int, loss: float, img_per_s: float) -> None: ...

    def validating(self, batches: int) -> None: ...

    def epoch_end(self, row: dict) -> None: ...

    def note(self, text: str) -> None: ...


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


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def resume_config(run_dir: Path, overrides: dict) -> TrainConfig:
    path = run_dir / "run.json"
    if not (run_dir / "last.ckpt").exists() or not path.exists():
        raise TrainError(f"{run_dir}: not a run folder to resume (no run.json and last.ckpt)")
    try:
        saved = json.loads(path.read_text())["config"]
    except (ValueError, KeyError, OSError) as e:
        raise TrainError(f"{path}: unreadable ({e})") from None
    cfg = TrainConfig.from_dict(saved)
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in TrainConfig.RESUMABLE and value != getattr(cfg, key):
            raise TrainError(
                f"--{key.replace('_', '-')} cannot change on --resume (the run used "
                f"{getattr(cfg, key)!r}); only {', '.join(TrainConfig.RESUMABLE)} may"
            )
        setattr(cfg, key, value)
    cfg.out = str(run_dir)
    return cfg


def run(cfg: TrainConfig, reporter: Reporter | None = None, resume: bool = False) -> TrainResult:
    """Train (or continue, with resume=True and cfg.out the run folder) and return a summary."""
    rep = reporter or Reporter()
    t_start = time.perf_counter()
    plan = setup_plan(cfg.device)
    if not plan.main:
        rep = Reporter()
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
        rep.note(f"resuming {run_dir} after epoch {state['epoch']}")
    else:
        stats = None
        if plan.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            stats = rgb_statistics(
                train_samples, cfg.stats_samples, cfg.seed, cfg.workers, rep.stats
            )
            atomic_write(run_dir / "stats.json", lambda f: f.write(json.dumps(stats).encode()))
        if plan.world > 1:
            import torch.distributed as dist

            box = [stats]
            dist.broadcast_object_list(box, src=0)
            stats = box[0]
        pre = data.Preprocess(
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
        velocity = _ungrouped(state["velocity"], plan.two_towers)
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
        rep.epoch_start(epoch, cfg.epochs, len(train_loader), state["lr"])
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
                rep.batch(int(seen), loss_sum / seen, rate)
                if not math.isfinite(float(loss.detach())):
                    raise TrainError(
                        f"epoch {epoch}: the loss became {float(loss)}; lower --lr and start again"
                    )
        train_seconds = time.perf_counter() - t_train
        loss_sum, wrong1, wrong5, seen = _all_sum(plan, [loss_sum, wrong1, wrong5, seen])

        rep.validating(len(val_loader))
        v1, v5, vn = _validate(step_model, val_loader, pre, plan, autocast, skipped)
        v1, v5, vn = _all_sum(plan, [v1, v5, vn])
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
        lr_before = state["lr"]
        improved = plateau_step(state, epoch, row["val_top1_err"], cfg.patience, cfg.lr_drop)
        dropped = (
            ""
            if state["lr"] == lr_before
            else (f"val error stopped improving: lr -> {state['lr']:g}")
        )
        state["epoch"] = epoch
        state["history"].append(row)
        state["skipped"] = sorted(skipped.items())
        if plan.main:
            _save(run_dir, net, plan, arch, pre, classes, cfg, state, opt, params, improved)
        rep.epoch_end(row)
        if dropped:
            rep.note(dropped)

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


def plateau_step(state: dict, epoch: int, val_err: float, patience: int, drop: float) -> bool:
    """The paper's schedule: divide lr by `drop` once the validation error has not improved
    for `patience` epochs. Updates `state` (lr, best, best_epoch, since_best); returns
    whether this epoch is the best so far."""
    if state["best"] is None or val_err < state["best"]:
        state.update(best=val_err, best_epoch=epoch, since_best=0)
        return True
    state["since_best"] += 1
    if state["since_best"] >= patience:
        state["lr"] /= drop
        state["since_best"] = 0
    return False


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


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA (the weights and the update stay fp32); nothing on the CPU."""
    if device.type == "cuda" and amp:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext


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
    train_state = {**state, "velocity": _grouped(velocity, plan.two_towers), "rng": rng_state()}
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


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
