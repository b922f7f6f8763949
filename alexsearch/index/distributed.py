"""`alexsearch index` under torchrun: one shard a rank, then one index.

    torchrun --nproc_per_node=K -m alexsearch index PHOTOS --index OUT

torchrun's RANK and WORLD_SIZE choose the shard: rank I indexes shard I/K of the photos
(shards.py) into OUT/shards/rank-I-of-K, an ordinary incremental index, on its own GPU
(LOCAL_RANK: the GPU of this machine) when CUDA is there, on the CPU otherwise. The
ranks meet (all_gather_object, a barrier that also tells each what the others did);
rank 0 merges the K shards into OUT (merge.py) and alone returns the summary; the
others return None. For an IVF kind, rank 0 first learns one training on a sample
(OUT/training, training.py) that every shard adds to, unless --trained names one. The
ranks exchange only these few Python objects, so they meet over gloo (TCP) on every
machine: NCCL would carry them through the GPUs for nothing.

A rank killed midway leaves the shards of the others complete and its own with what it
committed; running the same command again extracts only what is missing (each shard is
incremental) and merges. Multi-node works the same with torchrun's rendezvous flags, if
OUT is on storage every node sees: rank 0 reads the other ranks' shards from its own
OUT. Each rank writes a file named by a fresh random token into its shard folder
(TOKEN) and sends the token to the others; rank 0 must find every rank's there, before
anyone extracts and again before it merges, else every rank stops with one line naming
the folders it cannot see. A token proves the folder is the one the rank wrote in this
run, whatever each node calls OUT (mount points differ) and whatever an old copy holds;
comparing the path strings proves neither. Named by the token, a run's file is never
replaced by another run's (a second run started on the same OUT by mistake fails on the
shards' locks, and must not make the first fail its check); each rank removes its own
when the run ends.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from ..errors import UserError

# How long ranks wait for each other at the barrier: shards of a large collection finish
# hours apart (torch's default, 30 minutes, would end the fastest ranks first).
BARRIER_TIMEOUT = timedelta(days=7)
SUMMED = ("added", "updated", "moved", "deleted", "unchanged", "extracted", "reused")
# In each shard folder while a run lasts: a file named by the token of the rank that
# writes there (holding its host's name). Neither a photo (it is under OUT, not PHOTOS)
# nor part of an index: merge reads only the manifest and catalogue of a shard, so
# `alexsearch merge OUT/shards/rank-*` by hand ignores it.
TOKEN = ".torchrun-{}"


def under_torchrun() -> bool:
    """torchrun (or another launcher following its convention) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def shard_dir(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / "shards" / f"rank-{rank}-of-{world}"


def rank_device(device: str) -> str:
    """--device for this rank: one GPU per rank, the LOCAL_RANK-th of its own machine
    (RANK counts the ranks of every node, so it would name GPUs another node has)."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", 0))  # torchrun sets it; else one a node
    spec = str(device).strip().lower()
    if spec == "cpu" or not torch.cuda.is_available():
        if spec.startswith("cuda"):
            raise UserError(f"--device {spec}: CUDA is not available on this machine")
        return "cpu"
    if spec not in ("auto", "cuda"):
        raise UserError(f"--device {spec}: under torchrun each rank takes its own GPU; use cuda")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(
            f"LOCAL_RANK {local_rank} on {socket.gethostname()}, which has {count} GPU(s): "
            f"start one process per GPU (torchrun --nproc_per_node={count})"
        )
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def write_token(out_dir: Path, rank: int, world: int) -> str:
    """A fresh random token, as a file in this rank's shard folder (made if new): what
    rank 0 must find there to know it sees the folder this rank writes."""
    from ..atomic import atomic_write

    token = secrets.token_hex(16)
    path = shard_dir(out_dir, rank, world) / TOKEN.format(token)
    atomic_write(path, lambda f: f.write(socket.gethostname().encode()))
    return token


def drop_token(out_dir: Path, rank: int, world: int, token: str | None) -> None:
    """Remove this rank's token file (a rank killed leaves its own: a few bytes, harmless)."""
    if token:
        try:
            (shard_dir(out_dir, rank, world) / TOKEN.format(token)).unlink(missing_ok=True)
        except OSError:
            pass


def unseen_shards(out_dir: Path, tokens: list[str], again_after: float = 2.0) -> list[int]:
    """The ranks whose token file this process does not find in their shard folder under
    out_dir: folders it cannot see (not there, or an old copy). The folders are listed,
    not probed by name, and those missing are listed once more after `again_after`
    seconds: a network file system's client may answer a lookup by name from a cache of
    what the folder held a moment ago."""
    world = len(tokens)

    def found(r: int) -> bool:
        try:
            return TOKEN.format(tokens[r]) in os.listdir(shard_dir(out_dir, r, world))
        except OSError:
            return False

    missing = [r for r in range(world) if not found(r)]
    if missing and again_after:
        time.sleep(again_after)
        missing = [r for r in missing if not found(r)]
    return missing


def not_shared(out_dir: Path, ranks: list[int], hosts: list[str], merging: bool) -> str:
    """The line every rank stops with when rank 0 cannot see the shard folders of `ranks`
    (merging: the shards are built, only the merge is left to do by hand)."""
    world = len(hosts)
    names = ", ".join(f"rank {r} on {hosts[r]}" for r in ranks[:4])
    names += f" and {len(ranks) - 4} more" if len(ranks) > 4 else ""
    folder = str(shard_dir(out_dir, ranks[0], world)) + (", ..." if len(ranks) > 1 else "")
    plural = "folders" if len(ranks) > 1 else "folder"
    if merging:
        todo = (
            f"or copy {out_dir}/shards/* to one machine and run `alexsearch merge "
            f"{out_dir}/shards/rank-*-of-{world} --index {out_dir}` there"
        )
    else:
        todo = (
            "or index each machine's part with `alexsearch index PHOTOS --shard I/N` "
            "and `alexsearch merge` the shards on one"
        )
    return (
        f"rank 0 on {hosts[0]} cannot see the shard {plural} of {names} ({folder}: missing "
        f"or an old copy): --index {out_dir} must be on storage every node shares; put it "
        f"there, {todo}"
    )


def build(roots: list[Path], out_dir: Path, device: str = "auto", **kw):
    """Index shard RANK of WORLD_SIZE under out_dir/shards, meet, merge on rank 0.
    `kw`: build.run's other settings. Returns rank 0's summary, None on other ranks."""
    import torch.distributed as dist

    from . import build as build_mod
    from . import merge

    t0 = time.perf_counter()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    owns = not dist.is_initialized()
    if owns:  # first, so that whatever fails next is told to every rank
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    token = None
    try:
        dev = error = None
        try:
            dev = rank_device(device)
            token = write_token(out_dir, rank, world)
        except UserError as e:
            error = str(e)
        peers = _meet(rank, world, (token, socket.gethostname()), error)
        tokens, hosts = [t for t, _ in peers], [h for _, h in peers]
        _agree(_visible(rank, out_dir, tokens, hosts, merging=False))

        kw = _train_first(rank, world, roots, out_dir, dev, kw)
        mine, error = None, None
        try:
            mine = build_mod.run(roots, shard_dir(out_dir, rank, world), device=dev,
                                 shard=(rank, world), **kw)  # fmt: skip
        except UserError as e:
            error = str(e)
        outcomes = _meet(rank, world, mine, error)
        result = [None, ""]
        if rank == 0:
            try:
                # the folders as they are now, the ones merged (storage may have changed)
                problem = _visible(rank, out_dir, tokens, hosts, merging=True)
                if problem:
                    raise UserError(problem)
                dirs = [shard_dir(out_dir, r, world) for r in range(world)]
                merged = merge.merge(dirs, out_dir, wait=kw.get("wait", False),
                                     max_memory=kw.get("max_memory"))  # fmt: skip
                result[0] = _summary(out_dir, outcomes, merged, t0)
            except UserError as e:
                result[1] = str(e)
        dist.broadcast_object_list(result, src=0)  # the others wait for the merge
        if result[1]:
            raise UserError(result[1] if rank == 0 else f"rank 0's merge failed: {result[1]}")
        return result[0] if rank == 0 else None
    finally:
        drop_token(out_dir, rank, world, token)  # after rank 0's last look (the broadcasts)
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def _visible(rank: int, out_dir: Path, tokens, hosts, merging: bool) -> str:
    """On rank 0: the error line if it cannot see every rank's shard folder, else ""."""
    if rank != 0:
        return ""
    missing = unseen_shards(out_dir, tokens)
    return not_shared(out_dir, missing, hosts, merging) if missing else ""


def training_dir(out_dir: Path) -> Path:
    return out_dir / "training"


def _train_first(rank: int, world: int, roots, out_dir: Path, device, kw: dict) -> dict:
    """build.run's settings for the shards. An IVF kind without --trained: rank 0 first
    learns one training for all into OUT/training (`index --train-only` on a sample,
    training.py; incremental, so a rerun learns nothing again) while the others wait,
    and every shard adds to it, so the merge joins their lists without training."""
    from . import build as build_mod
    from .training import IVF_KINDS

    if kw.get("kind") not in IVF_KINDS or kw.get("trained") is not None:
        return {k: v for k, v in kw.items() if k != "sample"}
    error = None
    if rank == 0:
        try:
            build_mod.run(roots, training_dir(out_dir), device=device, train_only=True,
                          **{k: v for k, v in kw.items() if k != "trained"})  # fmt: skip
        except UserError as e:
            error = str(e)
    _meet(rank, world, None, error)  # the others wait for it, and hear if it failed
    return {**{k: v for k, v in kw.items() if k != "sample"}, "trained": training_dir(out_dir)}


def _meet(rank: int, world: int, value, error: str | None) -> list:
    """Every rank's `value` (all_gather_object), or every rank stops with the first
    rank's `error` (one line)."""
    import torch.distributed as dist

    got = [None] * world
    dist.all_gather_object(got, (value, error))
    failed = [(r, e) for r, (_, e) in enumerate(got) if e]
    if failed:
        r, e = failed[0]
        raise UserError(e if r == rank else f"rank {r} of {world} failed: {e}")
    return [v for v, _ in got]


def _agree(problem: str) -> None:
    """Every rank stops with rank 0's `problem`, if it has one."""
    import torch.distributed as dist

    said = [problem]
    dist.broadcast_object_list(said, src=0)
    if said[0]:
        raise UserError(said[0])


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
        training=merged.training,
    )
    s.seconds = time.perf_counter() - t0
    return s
