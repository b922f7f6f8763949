"""`alexsearch index` under torchrun: one shard a rank, then one index.

    torchrun --nproc_per_node=K -m alexsearch index PHOTOS --index OUT

torchrun's RANK and WORLD_SIZE choose the shard: rank I indexes shard I/K of the photos
(shards.py) into OUT/shards/rank-I-of-K, an ordinary incremental index, on its own GPU
(LOCAL_RANK) when CUDA is there, on the CPU otherwise (gloo). The ranks meet
(all_gather_object, a barrier that also tells each what the others did); rank 0 merges
the K shards into OUT (merge.py) and alone returns the summary; the others return None.

A rank killed midway leaves the shards of the others complete and its own with what it
committed; running the same command again extracts only what is missing (each shard is
incremental) and merges. Multi-node works the same with torchrun's rendezvous flags.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from ..errors import UserError

# How long ranks wait for each other at the barrier: shards of a large collection finish
# hours apart (torch's default, 30 minutes, would end the fastest ranks first).
BARRIER_TIMEOUT = timedelta(days=7)
SUMMED = ("added", "updated", "moved", "deleted", "unchanged", "extracted")


def under_torchrun() -> bool:
    """torchrun (or another launcher following its convention) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def shard_dir(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / "shards" / f"rank-{rank}-of-{world}"


def rank_device(device: str, local_rank: int) -> tuple[str, bool]:
    """(--device for this rank, whether it is a GPU): one GPU per rank, by LOCAL_RANK."""
    import torch

    spec = str(device).strip().lower()
    if spec == "cpu" or not torch.cuda.is_available():
        if spec.startswith("cuda"):
            raise UserError(f"--device {spec}: CUDA is not available on this machine")
        return "cpu", False
    if spec not in ("auto", "cuda"):
        raise UserError(f"--device {spec}: under torchrun each rank takes its own GPU; use cuda")
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}", True


def build(roots: list[Path], out_dir: Path, device: str = "auto", **kw):
    """Index shard RANK of WORLD_SIZE under out_dir/shards, meet, merge on rank 0.
    `kw`: build.run's other settings. Returns rank 0's summary, None on other ranks."""
    import torch.distributed as dist

    from . import build as build_mod
    from . import merge

    t0 = time.perf_counter()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev, cuda = rank_device(device, local)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    try:
        mine, error = None, None
        try:
            mine = build_mod.run(roots, shard_dir(out_dir, rank, world), device=dev,
                                 shard=(rank, world), **kw)  # fmt: skip
        except UserError as e:
            error = str(e)
        outcomes = [None] * world
        dist.all_gather_object(outcomes, (mine, error))
        failed = [(r, e) for r, (_, e) in enumerate(outcomes) if e]
        if failed:
            r, e = failed[0]
            raise UserError(e if r == rank else f"rank {r} of {world} failed: {e}")
        result = [None, ""]
        if rank == 0:
            try:
                dirs = [shard_dir(out_dir, r, world) for r in range(world)]
                merged = merge.merge(dirs, out_dir, wait=kw.get("wait", False),
                                     max_memory=kw.get("max_memory"))  # fmt: skip
                result[0] = _summary(out_dir, [s for s, _ in outcomes], merged, t0)
            except UserError as e:
                result[1] = str(e)
        dist.broadcast_object_list(result, src=0)  # the others wait for the merge
        if result[1]:
            raise UserError(result[1] if rank == 0 else f"rank 0's merge failed: {result[1]}")
        return result[0] if rank == 0 else None
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def _summary(out_dir: Path, shards: list, merged, t0: float):
    """The run's summary: what the shards did to the photos, summed, and the merged
    index's totals and settings."""
    from .build import IndexSummary

    s = IndexSummary(index_dir=str(out_dir))
    for name in SUMMED:
        setattr(s, name, sum(getattr(x, name) for x in shards))
    s.failed = [f for x in shards for f in x.failed]
    s.skipped = shards[0].skipped
    s.images_per_s = sum(x.images_per_s for x in shards)
    s = replace(
        s,
        total_ok=merged.total_ok,
        total_failed=merged.total_failed,
        kind=merged.kind,
        fingerprint=merged.fingerprint,
        weights=merged.weights,
        precision=merged.precision,
        space=merged.space,
        shard=f"merged from {len(shards)} ranks",
    )
    s.seconds = time.perf_counter() - t0
    return s
