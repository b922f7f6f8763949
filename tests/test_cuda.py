"""The CUDA paths on a real GPU (each test skips without one): the two-tower plan as
cuda:0,cuda:0, NCCL DDP with a world of one, an fp32 index on CUDA against the CPU's
query path, a bf16 index decoded on the GPU, pinned extraction batches, LRN under CUDA
autocast, and a training epoch that only waits for the GPU at its reads.
bench/gpu.sh runs them with the figures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SAFETY_TIMEOUT
from test_gpu_ready import photo, shapes

import alexsearch
from alexsearch.progress import silent

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("d")
    shapes(root / "train", 8, seed=0)
    shapes(root / "val", 3, seed=1)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i in range(6):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        photo(
            root / f"c{i % 2}" / f"{i}.jpg",
            size=(300 + 20 * i, 260),
            orientation=6 if i == 3 else None,
        )
    photo(root / "c0" / "p.png")
    return root


def test_two_tower_plan_on_one_gpu(data, tmp_path):
    from alexsearch.train import config, epoch, plan, start

    cfg = config.TrainConfig(
        data=str(data),
        out=str(tmp_path / "r"),
        epochs=1,
        batch_size=4,
        workers=0,
        device="cuda:0,cuda:0",
        lr=1e-4,
    )
    p = plan.setup_plan(cfg.device)
    run = start.start_or_resume(cfg, p, silent, False)
    w = run.net.towers[1].conv2.weight
    assert w.is_cuda and w.is_contiguous(memory_format=torch.channels_last)
    sums = epoch.train_one_epoch(run, cfg, p, 1, silent)
    assert sums.seen == 16 and np.isfinite(sums.loss)
    v1, v5, n = epoch.validate(run, p)
    assert n == 6


def test_nccl_ddp_with_a_world_of_one(data, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "-m",
            "alexsearch",
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cuda",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["plan"] == "ddp x1 cuda:0"


def test_fp32_index_on_cuda_is_the_cpu_query_paths(photos, tmp_path, init_ckpt):
    ix = tmp_path / "ix"
    s = alexsearch.build_index(photos, index=ix, weights=init_ckpt, device="cuda", precision="fp32")
    assert s.precision == "fp32" and s.total_ok == 7
    with alexsearch.open_index(ix, device="cpu") as index:  # numpy, IEEE fp32
        for q in sorted(photos.rglob("*.jpg")):
            hit = index.query(str(q), k=1, include_self=True)[0].hits[0]
            assert hit.path == str(q) and hit.distance < 1e-3


def test_bf16_index_decoded_on_the_gpu(photos, tmp_path, init_ckpt, monkeypatch):
    from alexsearch.index import extract

    on_gpu = []
    real = extract.decode_batch
    monkeypatch.setattr(
        extract, "decode_batch", lambda items, *a: on_gpu.extend(items) or real(items, *a)
    )
    ix = tmp_path / "ix"
    s = alexsearch.build_index(photos, index=ix, weights=init_ckpt, device="cuda", precision="bf16")
    assert s.precision == "bf16" and s.total_ok == 7
    assert sorted(Path(e.path).name for e in on_gpu) == [f"{i}.jpg" for i in range(6)]
    from alexsearch.index.embed import open_embedder

    embed = open_embedder(init_ckpt, "cpu").embed  # numpy, IEEE fp32, the CPU's decoder
    with alexsearch.open_index(ix, device="cpu") as index:
        for q in sorted(photos.rglob("*.jpg")):
            hits = index.query(str(q), k=7, include_self=True)[0].hits
            v = index.vector(next(h.id for h in hits if h.path == str(q)))
            cpu = embed(str(q))
            cos = float(v @ cpu / np.linalg.norm(v) / np.linalg.norm(cpu))
            rel = float(np.linalg.norm(v - cpu) / np.linalg.norm(cpu))
            assert cos > 0.99 and rel < 0.02, (q, cos, rel)  # bf16 alone: ~0.0025


def test_extraction_batches_are_pinned(photos):
    from alexsearch.images.preprocess import Preprocess
    from alexsearch.index import extract

    paths = [str(p) for p in sorted(photos.rglob("*.*"))]
    with extract.decoding(paths, Preprocess(), workers=1, batch_size=4) as items:
        batch = next(iter(items))
    assert batch.crops is not None and batch.crops.is_pinned()


def test_lrn_under_cuda_autocast_is_bf16_in_training_and_eval():
    from alexsearch.net import alexnet
    from alexsearch.net.arch import PAPER

    x = (torch.randn(2, 96, 27, 27, device="cuda") * 30).relu()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        conv = torch.nn.functional.conv2d(x, torch.eye(96, device="cuda").view(96, 96, 1, 1))
        ev = alexnet.local_response_norm(conv, PAPER.lrn, 2)
        tr = alexnet.local_response_norm(conv.detach().requires_grad_(), PAPER.lrn, 2)
    assert ev.dtype == tr.dtype == torch.bfloat16 and torch.equal(ev, tr.detach())


def test_a_training_epoch_waits_only_at_its_reads(data, tmp_path, monkeypatch):
    from alexsearch.train import config, epoch, plan, start

    cfg = config.TrainConfig(
        data=str(data),
        out=str(tmp_path / "r"),
        epochs=1,
        batch_size=2,
        workers=0,
        device="cuda",
        lr=1e-4,
    )
    p = plan.setup_plan(cfg.device)
    run = start.start_or_resume(cfg, p, silent, False)
    epoch.train_one_epoch(run, cfg, p, 1, silent)  # warm-up: cuDNN's benchmark, allocations
    monkeypatch.setattr(epoch, "READ_EVERY", 1000)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            epoch.train_one_epoch(run, cfg, p, 2, silent)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 3, [str(w.message) for w in syncs]  # the epoch's end reads
