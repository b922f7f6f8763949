"""The paper's optimisation: its own SGD update with momentum and weight decay, and the
plateau schedule (divide the learning rate by 10 when validation error stops improving).

Imports torch.
"""

from __future__ import annotations

import torch

from .state import TrainState


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


def plateau_step(state: TrainState, epoch: int, val_err: float, patience: int, drop: float) -> bool:
    """The paper's schedule: divide lr by `drop` once the validation error has not improved
    for `patience` epochs. Updates `state` (lr, best, best_epoch, since_best); returns
    whether this epoch is the best so far."""
    if state.best is None or val_err < state.best:
        state.best, state.best_epoch, state.since_best = val_err, epoch, 0
        return True
    state.since_best += 1
    if state.since_best >= patience:
        state.lr /= drop
        state.since_best = 0
    return False
