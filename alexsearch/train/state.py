"""What a run saves to resume exactly: the schedule's state (TrainState), the random
generators' states, the per-epoch seed, and the optimizer's velocity in the one-device
layout whichever plan ran.

Imports torch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..net.alexnet import to_grouped, to_towers


@dataclass(kw_only=True)
class TrainState:
    """Where a run stands after `epoch` epochs; checkpoints keep it as last.ckpt's
    extra["train"], beside the velocity and the RNG states."""

    epoch: int = 0  # epochs done
    lr: float  # the learning rate of the next epoch
    best: float | None = None  # the best val top-1 error so far
    best_epoch: int | None = None
    since_best: int = 0  # epochs since best, or since the last lr drop
    history: list[dict] = field(default_factory=list)  # the metrics rows, one per epoch
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable (path, reason)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        """The state in a checkpoint's extra["train"] (its other keys are not state)."""
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def plan_to_grouped(named: dict, two_towers: bool) -> dict:
    """Tensors named after the running plan -> the one-device layout (CPU)."""
    if two_towers:
        return to_grouped(named)
    return {k: v.detach().cpu() for k, v in named.items()}


def grouped_to_plan(grouped: dict, two_towers: bool) -> dict:
    """The inverse of plan_to_grouped."""
    return to_towers(grouped) if two_towers else dict(grouped)


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


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of an epoch's augmentation and dropout on DDP process `rank` (rank 0's is
    the one-process run's)."""
    base = (seed * 1_000_003 + epoch * 7919) % (2**62)
    return base if rank == 0 else (base ^ (rank * 0x9E3779B97F4A7C15)) % (2**62)
