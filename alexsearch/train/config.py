"""The settings of a training run (run.json), where its data and its folder are, and which
settings a resumed run may change.

Does not import torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import UserError
from ..images.files import DEFAULT_MAX_MEGAPIXELS


class TrainError(UserError):
    """A training run that cannot start or continue, with a one-line reason."""


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
    workers: int | None = None  # decode processes (None: data.loader.default_workers)
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


def settings(data, val, out, resume, given: dict) -> TrainConfig:
    """The settings of `alexsearch train`: a resumed run's own (with the changes it
    allows), or the paper's defaults with the options given (None: not given)."""
    if resume is not None:
        cfg = resume_config(Path(resume), given)
        if data is not None and str(data) != cfg.data:
            cfg.data = str(data)  # the same images moved elsewhere
        return cfg
    if data is None:
        raise TrainError("give --data DIR (with train/ and val/) or --resume RUN_DIR")
    cfg = TrainConfig(data=str(data), val=str(val) if val else None)
    cfg.out = str(out or default_run_dir())
    for key, value in given.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg
