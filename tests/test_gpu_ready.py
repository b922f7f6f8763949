"""The CUDA paths' defects, shown on the CPU: the batched crops, the constants kept on
the device and the counters read every READ_EVERY steps, the loaders, the explicit CUDA
flags and set_device, LRN under bf16 autocast, validation at eval's precision, the
two-tower plan's input and compile, DDP (rank-mixed seeds, validation counted once,
skipped files from every process, the process group ended, a NaN reported on all), and
GPU JPEG decoding's routing with the decoder injected. tests/test_cuda.py runs the rest
on a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SAFETY_TIMEOUT
from make_shapes import CLASSES, draw
from PIL import Image

from alexsearch.data import crops, loader
from alexsearch.evaluate import classification
from alexsearch.images.preprocess import Preprocess
from alexsearch.index import decoding, extract, gpu_decode
from alexsearch.net import alexnet
from alexsearch.net.arch import PAPER
from alexsearch.progress import silent
from alexsearch.train import config, epoch, inputs, loop, plan, start

ROOT = Path(__file__).resolve().parents[1]


def shapes(root: Path, per_class: int, classes=2, seed=0, size=64) -> Path:
    import random

    rng = random.Random(seed)
    for name, (colour, kind) in list(CLASSES.items())[:classes]:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, colour, rng).resize((size, size)).save(root / name / f"{i:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 classes: 5 training and 2 validation images each."""
    root = tmp_path_factory.mktemp("d")
    shapes(root / "train", 5, seed=0)
    shapes(root / "val", 2, seed=1)
    return root


def a_config(data, tmp_path, **kw) -> config.TrainConfig:
    """One CPU epoch of the tiny set; `kw` overrides any setting."""
    settings = dict(epochs=1, batch_size=1, workers=0, device="cpu", lr=1e-5)
    return config.TrainConfig(data=str(data), out=str(tmp_path / "run"), **{**settings, **kw})


def a_run(data, tmp_path, **kw):
    cfg = a_config(data, tmp_path, **kw)
    p = plan.setup_plan(cfg.device)
    return cfg, p, start.start_or_resume(cfg, p, silent, False)


# --------------------------------------------------------------------------- crops


def test_batched_crops_equal_the_per_image_loop():
    x = torch.randint(0, 256, (7, 3, 20, 20), dtype=torch.uint8)
    got = crops.random_crop_flip(x, 12, torch.Generator().manual_seed(5))
    tops, lefts, flips = crops.crop_draws(7, 20, 12, torch.Generator().manual_seed(5))
    assert flips.any() and not flips.all()
    for i in range(7):  # what the per-image loop cut
        t, lft = int(tops[i]), int(lefts[i])
        want = x[i, :, t : t + 12, lft : lft + 12]
        assert torch.equal(got[i], want.flip(-1) if flips[i] else want)


def test_inputs_keep_their_constants_on_the_device(monkeypatch):
    pre = Preprocess(
        mean=[120.0, 110.0, 100.0],
        pca_eigval=[0.2, 0.02, 0.01],
        pca_eigvec=torch.linalg.qr(torch.randn(3, 3))[0].tolist(),
    )
    cpu = torch.device("cpu")
    inp = inputs.Inputs(pre, 0.1, [cpu])
    u8 = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    ref = inputs.augment(u8, pre, torch.Generator().manual_seed(1), 0.1, cpu)
    made = []
    for name in ("tensor", "as_tensor", "from_numpy"):
        real = getattr(torch, name)
        monkeypatch.setattr(
            torch, name, lambda *a, _r=real, _n=name, **k: made.append(_n) or _r(*a, **k)
        )
    x = inp.augment(u8, torch.Generator().manual_seed(1), [cpu])
    inp.augment(u8, torch.Generator().manual_seed(2), [cpu])
    assert made == []  # no constant is made (and sent to the device) per step
    assert torch.allclose(x, ref)
    # the paper's lighting: the same shift for every pixel of an image, 0 mean over draws
    plain = pre.normalize(crops.random_crop_flip(u8, 224, torch.Generator().manual_seed(1)))
    shift = (x - plain).flatten(2)
    assert torch.allclose(shift, shift[..., :1].expand_as(shift), atol=1e-4)


def test_a_step_waits_for_the_device_only_every_read_every_steps(data, tmp_path, monkeypatch):
    cfg, p, run = a_run(data, tmp_path)
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _r=real, _n=name: reads.append(_n) or _r(self, *a)
        )
    monkeypatch.setattr(epoch, "READ_EVERY", 4)
    figures = []
    sums = epoch.train_one_epoch(run, cfg, p, 1, lambda s, d, t, **f: figures.append(f))
    monkeypatch.undo()
    assert sums.seen == 10  # 10 steps
    # reads at steps 4 and 8 and the epoch's end, beside the loader's two of the epoch
    # (its worker seed, the sampler's order); a read a step would be 10 more at least
    assert len(reads) <= 2 + 10 // 4 + 1, reads
    assert [f for f in figures if "loss" in f][0]["loss"] > 0


# --------------------------------------------------------------------------- flags, devices


def test_entry_points_set_the_cuda_flags_explicitly(paper_model, tmp_path):
    def spoil():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = False

    def assert_set():
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark

    spoil()
    plan.setup_plan("cpu")  # training
    assert_set()
    spoil()
    list(extract.extract(paper_model, Preprocess(), []))  # indexing
    assert_set()
    spoil()
    root = shapes(tmp_path / "ev", 1)
    from alexsearch.weights import checkpoint

    classification.classify(checkpoint.init_checkpoint(2, seed=0), root, workers=0)
    assert_set()


def test_cuda_1_becomes_the_current_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    p = plan.setup_plan("cuda:1")
    assert p.devices == [torch.device("cuda:1")] and calls == [torch.device("cuda:1")]


def test_loaders_keep_their_workers_and_take_the_devices_count(data, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert loader.default_workers(torch.device("cuda")) == 8
    assert loader.default_workers(torch.device("cpu")) == 2
    monkeypatch.undo()
    cfg = config.TrainConfig(data=str(data), out=str(tmp_path / "r"), device="cpu")
    assert cfg.workers is None  # not given: the device's default
    p = plan.setup_plan("cpu")
    run = start.start_or_resume(cfg, p, silent, False)
    for ld in (run.train_loader, run.val_loader):
        assert ld.num_workers == loader.default_workers(torch.device("cpu"))
        assert ld.persistent_workers == (ld.num_workers > 0)


# --------------------------------------------------------------------------- precision


def test_lrn_under_bf16_autocast_is_fp32_cast_back_in_training_and_eval():
    torch.manual_seed(0)
    x = (torch.randn(2, 96, 13, 13) * 30).relu().bfloat16()
    want = alexnet.local_response_norm(x.float(), PAPER.lrn, 2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        evaluated = alexnet.local_response_norm(x, PAPER.lrn, 2)
        xt = x.clone().requires_grad_()
        trained = alexnet.local_response_norm(xt, PAPER.lrn, 2)
    assert evaluated.dtype == trained.dtype == torch.bfloat16
    assert torch.equal(evaluated, want) and torch.equal(trained.detach(), want)
    trained.sum().backward()
    assert xt.grad is not None and xt.grad.dtype == torch.bfloat16


def test_validation_runs_as_eval_does_whatever_the_training_autocast(data, tmp_path):
    cfg, p, run = a_run(data, tmp_path)
    run.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # a bf16 step
    seen = []
    run.step_model.register_forward_pre_hook(
        lambda m, a: seen.append(torch.is_autocast_enabled("cpu"))
    )
    epoch.train_one_epoch(run, cfg, p, 1, silent)
    assert seen and all(seen)
    seen.clear()
    epoch.validate(run, p)
    assert seen and not any(seen)


def test_best_checkpoints_validation_error_is_evals(data, tmp_path):
    cfg = a_config(data, tmp_path, batch_size=2, lr=1e-4)
    result = loop.run(cfg)
    from alexsearch.weights import checkpoint

    ev = classification.classify(
        checkpoint.load(tmp_path / "run" / "best.ckpt"), data / "val", workers=0
    )
    assert ev.centre_top1_err == result.best_val_top1_err
    assert ev.centre_top5_err == result.best_val_top5_err


# --------------------------------------------------------------------------- two towers


def test_two_tower_plan_compiles_and_sends_tower_1_uint8(data, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(m) or m)
    finished = []
    real = inputs.Inputs.finish
    monkeypatch.setattr(
        inputs.Inputs,
        "finish",
        lambda self, c8, alpha, dev: finished.append(c8.dtype) or real(self, c8, alpha, dev),
    )
    exchanges = []
    real_x = alexnet.TwoDeviceAlexNet._exchange
    monkeypatch.setattr(
        alexnet.TwoDeviceAlexNet,
        "_exchange",
        lambda self, parts: exchanges.append(1) or real_x(self, parts),
    )
    cfg, p, run = a_run(data, tmp_path, batch_size=5, device="cpu,cpu", compile=True, limit=5)
    assert compiled == [run.net] and isinstance(run.net, alexnet.TwoDeviceAlexNet)
    sums = epoch.train_one_epoch(run, cfg, p, 1, silent)
    assert sums.seen == 5
    # one step: the uint8 crops finished on each tower's device; three exchanges (conv3,
    # fc6, fc7's inputs), fc7's halves gathered on the first device only
    assert finished == [torch.uint8, torch.uint8] and len(exchanges) == 3


# --------------------------------------------------------------------------- DDP


def test_validation_shards_count_every_image_once():
    for n, world in ((5, 2), (7, 3), (1, 2)):
        got = sorted(i for r in range(world) for i in loader.Shard(n, world, r))
        assert got == list(range(n))


def torchrun(tmp_path, data, *extra, procs=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            str(ROOT / "tests" / "ddp_probe.py"),
            str(tmp_path),
            str(data),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=SAFETY_TIMEOUT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(procs)]


def test_ddp_ranks_augment_differently_count_once_gather_skips_and_end(data, tmp_path):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(data, d)
    cls = sorted(os.listdir(d / "train"))
    for k, name in enumerate(("bad_a.jpg", "bad_b.jpg", "bad_c.jpg", "bad_d.jpg")):
        (d / "train" / cls[k % 2] / name).write_bytes(b"\xff\xd8\xff not a jpeg")
    (d / "val" / cls[0] / "bad_v.jpg").write_bytes(b"")
    r0, r1 = torchrun(tmp_path, d)
    assert r0["error"] is None and r1["error"] is None and r0["plan"] == "ddp x2 cpu"
    assert r0["draws"] and r0["draws"] != r1["draws"]  # their own crops and flips
    assert r0["dropout_seeds"][0] != r1["dropout_seeds"][0]  # and dropout masks
    assert r0["val_images"] == r1["val_images"] == [4]  # 5 val files, 1 unreadable, none twice
    every = ["bad_a.jpg", "bad_b.jpg", "bad_c.jpg", "bad_d.jpg", "bad_v.jpg"]
    assert r0["skipped"] == r1["skipped"] == every  # whichever process met them
    assert r0["group_ended"] and r1["group_ended"]


def test_a_nan_on_one_process_stops_all_with_its_message(data, tmp_path):
    r0, r1 = torchrun(tmp_path, data, "--nan-rank", "1")
    assert r0["error"] == r1["error"] and "the loss became nan" in r0["error"]
    assert "process" in r0["error"] and "1" in r0["error"].split("process")[1]
    assert r0["group_ended"] and r1["group_ended"]


def test_ddp_with_a_world_of_one_is_ddp(data, tmp_path):
    (r0,) = torchrun(tmp_path, data, procs=1)
    assert r0["error"] is None and r0["plan"] == "ddp x1 cpu" and r0["group_ended"]


# --------------------------------------------------------------------------- extraction


def photo(path: Path, size=(96, 64), mode="RGB", orientation=None):
    rng = np.random.default_rng(len(str(path)))
    base = np.zeros((size[1], size[0], 3), np.uint8)
    base[: size[1] // 2, : size[0] // 3] = (230, 40, 40)  # an asymmetric picture
    base[size[1] // 2 :, size[0] // 2 :] = (40, 60, 220)
    base = np.clip(base.astype(int) + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(base).convert(mode)
    kw = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    img.save(path, **kw)
    return path


def test_workers_stack_each_batch_in_their_collate(tmp_path):
    paths = [str(photo(tmp_path / f"{i}.jpg")) for i in range(5)]
    (tmp_path / "bad.jpg").write_bytes(b"")
    paths.insert(2, str(tmp_path / "bad.jpg"))
    pre = Preprocess()
    with extract.decoding(paths, pre, workers=1, batch_size=4) as items:
        assert items._pin_memory == torch.cuda.is_available()  # pinned only for a GPU
        batches = list(items)
    assert [len(b.items) for b in batches] == [4, 2]
    assert batches[0].crops.shape == (3, 3, 224, 224) and batches[0].decoded == [0, 1, 3]
    assert all(d.crop is None for b in batches for d in b.items)  # one array a batch
    want = decoding.decode_file(paths[3], pre, 100)
    assert np.array_equal(batches[0].crops[2].numpy(), want.crop)


def test_gpu_jpeg_routing_with_the_decoder_injected(paper_model, tmp_path):
    from torchvision.io import ImageReadMode, decode_jpeg

    files = {
        "rgb": photo(tmp_path / "rgb.jpg"),
        "grey": photo(tmp_path / "grey.jpg", mode="L"),
        "turned": photo(tmp_path / "turned.jpg", orientation=6),
        "refused": photo(tmp_path / "refused.jpg"),  # the GPU decoder fails on it
        "png": photo(tmp_path / "p.png"),
        "cmyk": photo(tmp_path / "cmyk.jpg", mode="CMYK"),
    }
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    files["broken"] = tmp_path / "broken.jpg"
    refused = files["refused"].read_bytes()
    sent = []

    def decoder(datas):
        for d in datas:
            b = bytes(d.numpy())
            if b == refused:
                raise RuntimeError("nvjpeg: unsupported")
        sent.extend(bytes(d.numpy()) for d in datas)
        return decode_jpeg(datas, mode=ImageReadMode.RGB)

    pre = Preprocess()
    items = [gpu_decode.read_for_gpu(str(p), pre, 100) for p in files.values()]
    kinds = {Path(i.path).stem: type(i).__name__ for i in items}
    assert kinds == {
        "rgb": "Encoded",
        "grey": "Encoded",
        "turned": "Encoded",
        "refused": "Encoded",
        "p": "Decoded",
        "cmyk": "Decoded",
        "broken": "Decoded",
    }
    out = [r for b in extract.extract(paper_model, pre, items, 8, jpeg_decoder=decoder) for r in b]
    by = {Path(r.path).stem: r for r in out}
    assert {files[k].read_bytes() for k in ("rgb", "grey", "turned")} == set(sent)
    assert by["broken"].vector is None and by["broken"].reason
    for k in ("rgb", "grey", "turned", "refused", "p", "cmyk"):
        assert by[k].vector is not None and by[k].reason == "" and len(by[k].thumb) == 32 * 32 * 3
        assert (
            by[k].digest
            == decoding.decode_file(str(files[k if k != "p" else "png"]), pre, 100).digest
        )
    # the GPU path's pixels are the CPU decoder's to a few levels, upright included
    for k in ("rgb", "grey", "turned"):
        e = next(i for i in items if Path(i.path).stem == k)
        _, c, thumbs, _ = gpu_decode.decode_batch([e], pre, decoder, torch.device("cpu"))
        cpu = decoding.decode_file(str(files[k]), pre, 100)
        diff = np.abs(c[0].numpy().astype(int) - cpu.crop.astype(int))
        assert diff.mean() < 4, (k, diff.mean())
        t = np.abs(
            np.frombuffer(thumbs[0], np.uint8).astype(int) - np.frombuffer(cpu.thumb, np.uint8)
        )
        assert t.mean() < 4


def test_gpu_jpeg_only_for_a_bf16_index_on_cuda_in_the_papers_geometry():
    pre = Preprocess()
    assert gpu_decode.gpu_jpeg_wanted(pre, "cuda", "bf16")
    assert not gpu_decode.gpu_jpeg_wanted(pre, "cuda", "fp32")  # fp32: the CPU's pixels
    assert not gpu_decode.gpu_jpeg_wanted(pre, "cpu", "bf16")
    assert not gpu_decode.gpu_jpeg_wanted(Preprocess(squash=True), "cuda", "bf16")


# --------------------------------------------------------------------------- bench/gpu.sh


def test_gpu_sh_dry_run_prints_its_steps_and_checks_them():
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=SAFETY_TIMEOUT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for step in (
        "cuda tests",
        "train throughput",
        "index throughput",
        "two towers",
        "cifar10 train",
        "eval",
        "eval retrieval",
    ):
        assert f"step {step}" in r.stdout, step
    assert "dry run: every command parses" in r.stdout
