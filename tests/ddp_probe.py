"""A DDP training run under torchrun that reports what each process did, for
tests/test_gpu_ready.py: python -m torch.distributed.run --nproc_per_node=2
tests/ddp_probe.py OUT_DIR DATA_DIR [--nan-rank R] [--device cpu]

Each process writes OUT_DIR/rank<R>.json: its crop draws and dropout seeds, the
validation image count it took part in, its result's skipped files, whether the process
group was ended, and the error message it stopped with (if any)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexsearch.data import crops
from alexsearch.train import config, epoch, loop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("data")
    ap.add_argument("--nan-rank", type=int, default=-1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    rank = int(os.environ["RANK"])
    seen = {"draws": [], "dropout_seeds": [], "val_images": [], "error": None}

    real_draws = crops.crop_draws

    def draws(*args, **kw):
        t, lft, f = real_draws(*args, **kw)
        seen["draws"].append([t.tolist(), lft.tolist(), f.tolist()])
        seen["dropout_seeds"].append(torch.initial_seed())
        return t, lft, f

    crops.crop_draws = draws
    real_validate = loop.validate

    def validate(run, plan):
        w1, w5, n = real_validate(run, plan)
        seen["val_images"].append(n)
        return w1, w5, n

    loop.validate = validate
    if rank == a.nan_rank:
        real_ce = F.cross_entropy

        def nan_loss(*args, **kw):
            return real_ce(*args, **kw) * float("nan")

        epoch.F.cross_entropy = nan_loss
    cfg = config.TrainConfig(
        data=a.data,
        out=str(Path(a.out) / "run"),
        epochs=1,
        batch_size=2,
        workers=0,
        device=a.device,
        lr=1e-4,
    )
    try:
        result = loop.run(cfg)
        seen["skipped"] = sorted(Path(p).name for p, _ in result.skipped)
        seen["plan"] = result.plan
    except config.TrainError as e:
        seen["error"] = str(e)
    seen["group_ended"] = not dist.is_initialized()
    (Path(a.out) / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
