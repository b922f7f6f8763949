"""Where a training run computes: one device, two devices (a tower each), or one process
per device under torchrun (DistributedDataParallel); and its bf16 autocast on CUDA.

Imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..net.devices import resolve_device
from .config import TrainError


@dataclass
class Plan:
    """Where the network runs: one device, two devices (a tower each), or DDP."""

    devices: list[torch.device]
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # setup_plan started the process group: teardown ends it
    ddp: bool = False  # under torchrun: DistributedDataParallel and collectives, a world of one too

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
    """torchrun sets RANK/WORLD_SIZE: then data parallelism, one process per device (a
    world of one included: the same DDP wrapper and collectives, on one device).

    A CUDA device becomes the process's current device (so `cuda:1` allocates nothing
    on GPU 0), and torch's CUDA flags are set explicitly (net.precision.configure_torch:
    IEEE fp32, cuDNN benchmark). End it with teardown()."""
    from ..net.precision import configure_torch

    configure_torch(benchmark=True)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        plan = Plan(parse_devices(spec))
        if plan.cuda:
            torch.cuda.set_device(plan.device)
        return plan
    import torch.distributed as dist

    world = int(os.environ["WORLD_SIZE"])
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
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Plan([dev], rank=rank, world=world, owns_group=owns, ddp=True)


def teardown(plan: Plan) -> None:
    """End the process group setup_plan started (every process calls it, also on errors)."""
    if plan.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        plan.owns_group = False


def all_sum(plan: Plan, values: list[float]) -> list[float]:
    if not plan.ddp:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=plan.device)
    dist.all_reduce(t)
    return t.tolist()


def every_process(plan: Plan, value: float) -> list[float]:
    """`value` of every process, by rank (one collective; [value] without DDP)."""
    if not plan.ddp:
        return [value]
    import torch.distributed as dist

    t = torch.zeros(plan.world, dtype=torch.float64, device=plan.device)
    t[plan.rank] = value
    dist.all_reduce(t)
    return t.tolist()


def all_union(plan: Plan, items: dict) -> dict:
    """The union of every process's dict (each process's own entries win on its rank)."""
    if not plan.ddp:
        return dict(items)
    import torch.distributed as dist

    parts = [None] * plan.world
    dist.all_gather_object(parts, dict(items))
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA (the weights and the update stay fp32); nothing on the CPU."""
    from ..net.precision import autocast

    precision = "bf16" if device.type == "cuda" and amp else "fp32"
    return lambda: autocast(device.type, precision)
