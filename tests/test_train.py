"""`alexsearch train`: the paper's update rule, learning, exact resume after kill -9, the
two-device plan, DDP with gloo, and bad input. Tiny generated images keep it fast."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import cli as _cli
from helpers import one_line_error
from make_shapes import CLASSES, draw

from alexsearch.data import crops, lighting
from alexsearch.images import folders, preprocess
from alexsearch.net.alexnet import AlexNet
from alexsearch.net.arch import ArchConfig, expected_shapes
from alexsearch.train import config, loop, sgd
from alexsearch.viz import curves
from alexsearch.weights import checkpoint

# exit codes are asserted here, so a non-zero exit does not fail the call itself
cli = partial(_cli, check=False)


def shapes(root: Path, per_class: int, classes=3, seed=0) -> Path:
    """root/<class>/<n>.jpg for the first `classes` shape classes."""
    import random

    rng = random.Random(seed)
    for name, (colour, kind) in list(CLASSES.items())[:classes]:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, colour, rng).save(root / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """2 classes: 2 training and 1 validation image each."""
    root = tmp_path_factory.mktemp("tiny")
    shapes(root / "train", 2, classes=2, seed=0)
    shapes(root / "val", 1, classes=2, seed=1)
    return root


QUICK = ("--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu")


# --------------------------------------------------------------------------- update rule


def test_paper_update_matches_hand_computation_across_lr_drop():
    w0 = torch.tensor([1.0, -2.0, 0.5])
    grads = [
        torch.tensor([0.3, 0.1, -0.2]),
        torch.tensor([-0.1, 0.4, 0.2]),
        torch.tensor([0.2, -0.3, 0.1]),
        torch.tensor([0.05, 0.05, -0.4]),
    ]
    lrs = [0.1, 0.1, 0.01, 0.01]  # a drop after two steps
    m, wd = 0.9, 5e-4

    # The paper: v <- 0.9 v - 0.0005 eps w - eps g ; w <- w + v (by hand, in float64)
    w, v = w0.double().clone(), torch.zeros(3, dtype=torch.float64)
    for g, lr in zip(grads, lrs, strict=True):
        v = m * v - wd * lr * w - lr * g.double()
        w = w + v

    p = torch.nn.Parameter(w0.clone())
    opt = sgd.PaperSGD([p], lr=lrs[0], momentum=m, weight_decay=wd)
    sgd_p = torch.nn.Parameter(w0.clone())
    torch_sgd = torch.optim.SGD([sgd_p], lr=lrs[0], momentum=m, weight_decay=wd)
    for g, lr in zip(grads, lrs, strict=True):
        for o, q in ((opt, p), (torch_sgd, sgd_p)):
            o.param_groups[0]["lr"] = lr
            q.grad = g.clone()
            o.step()
    assert torch.allclose(p.detach().double(), w, atol=1e-6)
    # torch's SGD keeps eps outside the velocity: after the drop it no longer agrees
    assert not torch.allclose(sgd_p.detach().double(), w, atol=1e-4)


def test_plateau_schedule_divides_lr_by_10_after_patience_epochs_without_progress():
    from alexsearch.train.state import TrainState

    state = TrainState(lr=0.01)
    errors = [0.9, 0.8, 0.8, 0.85, 0.7, 0.7, 0.7, 0.7, 0.7]
    lrs, bests = [], []
    for epoch, err in enumerate(errors, 1):
        bests.append(sgd.plateau_step(state, epoch, err, patience=2, drop=10))
        lrs.append(state.lr)
    assert bests == [True, True, False, False, True, False, False, False, False]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    assert state.best == 0.7 and state.best_epoch == 5


# --------------------------------------------------------------------------- learning


def test_a_few_steps_lower_the_loss(tmp_path):
    root = shapes(tmp_path, 1, classes=3)
    _, samples = folders.labelled_folder(root)
    u8 = torch.stack([crops.load_256(p) for p, _ in samples])
    y = torch.tensor([label for _, label in samples])
    stats = lighting.RunningRGBStats()
    stats.update(u8)
    pre = preprocess.Preprocess(mean=(stats.mean() * 255).tolist())
    x = pre.normalize(crops.centre_crop(u8, 224))
    torch.manual_seed(0)
    model = AlexNet(ArchConfig(num_classes=3))
    # the paper init on 0..255 inputs gives large gradients on one repeated batch: small lr
    opt = sgd.PaperSGD(model.parameters(), lr=3e-5)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    before = eval_loss()
    for _ in range(4):  # the same small batch, with dropout, as in training
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.9 * before


# --------------------------------------------------------------------------- runs


def weights_of(run_dir: Path) -> dict:
    return checkpoint.load(run_dir / "last.ckpt").state_dict


def metric_rows(run_dir: Path) -> list[dict]:
    rows = curves.read_metrics(run_dir)
    for r in rows:
        assert set(r) == set(loop.METRIC_KEYS)
    return rows


def same_rows(a: list[dict], b: list[dict]) -> bool:
    timing = {"img_per_s", "seconds"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in a + b]
    return strip[: len(a)] == strip[len(a) :]


def test_kill_9_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny, tmp_path):
    args = (
        "--data",
        tiny,
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--seed",
        "3",
    )
    straight = tmp_path / "straight"
    r = cli("train", *args, "--out", straight, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["epochs_done"] == 2
    rows = metric_rows(straight)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("train_top1_err", "train_top5_err", "val_top1_err", "val_top5_err"):
            assert 0.0 <= row[key] <= 1.0
    run_json = json.loads((straight / "run.json").read_text())
    assert run_json["config"]["batch_size"] == 2 and run_json["classes"] == sorted(
        os.listdir(tiny / "train")
    )
    ckpt = checkpoint.load(straight / "best.ckpt")
    stats = json.loads((straight / "stats.json").read_text())
    assert ckpt.preprocess.mean == stats["mean"] and ckpt.preprocess.pca_eigvec is not None

    # The same run killed with SIGKILL as soon as epoch 1 is on disk, then resumed.
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexsearch", "train", *map(str, args), "--out", str(cut)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None and not (cut / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoint.load(cut / "last.ckpt")  # whatever moment the kill hit, last.ckpt is whole
    r = cli("train", "--resume", cut, "--json")
    assert r.returncode == 0, r.stderr
    a, b = weights_of(straight), weights_of(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert same_rows(metric_rows(straight), metric_rows(cut))


def test_two_device_plan_on_cpu_cpu_trains_like_one_device(tiny, tmp_path):
    def run(device, out):
        cfg = config.TrainConfig(
            data=str(tiny),
            out=str(out),
            epochs=1,
            batch_size=2,
            workers=0,
            device=device,
            dropout=0.0,  # the plans draw dropout masks differently; compare the arithmetic
            lr=1e-4,  # small steps, so rounding differences between the plans stay small
        )
        return loop.run(cfg)

    run("cpu", tmp_path / "one")
    two = run("cpu,cpu", tmp_path / "two")
    assert two.plan == "cpu,cpu" and two.epochs_done == 1
    a, b = weights_of(tmp_path / "one"), weights_of(tmp_path / "two")
    assert {k: tuple(v.shape) for k, v in b.items()} == expected_shapes(ArchConfig(num_classes=2))
    torch.manual_seed(0)
    start = AlexNet(ArchConfig(num_classes=2)).state_dict()
    assert not torch.equal(b["conv1.weight"], start["conv1.weight"])  # it trained
    for k in a:  # same data, same init, same update: the plans agree to rounding
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-3), k


def test_ddp_two_gloo_processes_hold_identical_replicas(tiny, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "alexsearch",
            "train",
            "--data",
            str(tiny),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # only rank 0 prints
    assert summary["plan"] == "ddp x2 cpu"
    prints = summary["replica_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    ckpt = checkpoint.load(out / "last.ckpt")
    assert ckpt.fingerprint == prints[0]
    torch.manual_seed(0)
    start = AlexNet(ArchConfig(num_classes=2)).state_dict()
    assert not torch.equal(ckpt.state_dict["fc8.weight"], start["fc8.weight"])
    assert len(metric_rows(out)) == 1


# --------------------------------------------------------------------------- bad input


def test_missing_folder_no_classes_and_empty_class_are_one_line(tmp_path):
    r = cli("train", "--data", tmp_path / "nope", *QUICK)
    one_line_error(r, "no such folder")
    (tmp_path / "flat").mkdir()
    r = cli("train", "--data", tmp_path / "flat", *QUICK)
    one_line_error(r, "expected")
    (tmp_path / "bare" / "train").mkdir(parents=True)
    (tmp_path / "bare" / "val").mkdir()
    r = cli("train", "--data", tmp_path / "bare", *QUICK)
    one_line_error(r, "no class folders")
    shapes(tmp_path / "hole" / "train", 1, classes=2)
    shapes(tmp_path / "hole" / "val", 1, classes=2)
    (tmp_path / "hole" / "train" / "empty_class").mkdir()
    r = cli("train", "--data", tmp_path / "hole", *QUICK)
    one_line_error(r, "holds no images")
    assert not (tmp_path / "runs").exists()


def test_unreadable_images_are_skipped_counted_and_the_run_is_never_lost(tiny, tmp_path):
    import shutil

    data_dir = tmp_path / "d"
    shutil.copytree(tiny, data_dir)
    cls = sorted(os.listdir(data_dir / "train"))[0]
    (data_dir / "train" / cls / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (data_dir / "val" / cls / "empty.jpg").write_bytes(b"")
    run_dir = tmp_path / "run"
    r = cli("train", "--data", data_dir, "--out", run_dir, *QUICK)
    assert r.returncode == 0, r.stderr
    assert re.search(r"skipped images\W+2\b", r.stdout) and "broken.jpg" in r.stderr
    assert re.search(r"^epochs 1/1: lr 0.01 · train loss [0-9.]+", r.stderr, re.M)  # the record
    r = cli("train", "--resume", run_dir, "--epochs", "2", "--json")  # one epoch more
    assert r.returncode == 0, r.stderr
    assert [row["epoch"] for row in metric_rows(run_dir)] == [1, 2]
    skipped = {Path(p).name for p, _ in json.loads(r.stdout)["skipped"]}
    assert skipped == {"broken.jpg", "empty.jpg"}

    before = (run_dir / "last.ckpt").read_bytes()
    # starting over a run folder, or resuming with the data gone, is refused in one line
    r = cli("train", "--data", data_dir, "--out", run_dir, *QUICK)
    one_line_error(r, "--resume")
    shutil.rmtree(data_dir)
    r = cli("train", "--resume", run_dir, "--epochs", "3")
    one_line_error(r, "no such folder")
    r = cli("train", "--resume", run_dir, "--lr", "0.5")
    one_line_error(r, "cannot change on --resume")
    r = cli("train", "--resume", tmp_path)
    one_line_error(r, "not a run folder")
    assert (run_dir / "last.ckpt").read_bytes() == before
