"""`alexsearch eval`: top-1/top-5 error, centre crop and the paper's ten-crop average."""

import json
from functools import partial
from pathlib import Path

import helpers
import pytest
import torch
from make_shapes import CLASSES, draw

from alexsearch.data import crops
from alexsearch.evaluate import classification
from alexsearch.images import folders, preprocess
from alexsearch.weights import checkpoint

cli = partial(helpers.cli, check=False)

NAMES = list(CLASSES)  # 6 shape classes, sorted differently from their folder order below


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One image for each of the 6 classes, under DIR/val (eval takes DIR/val when present)."""
    import random

    root = tmp_path_factory.mktemp("evalset")
    rng = random.Random(5)
    for name, (colour, kind) in CLASSES.items():
        (root / "val" / name).mkdir(parents=True)
        draw(kind, colour, rng).save(root / "val" / name / "0.jpg", quality=90)
    return root


def planted(tmp_path: Path, order: list[str]) -> Path:
    """A checkpoint that ranks the classes in `order`, whatever the image: fc8 is all zero
    but its bias, so every crop's softmax is the same."""
    classes = sorted(NAMES, reverse=True)  # not the folder's order: mapping must use names
    ckpt = checkpoint.init_checkpoint(len(classes), seed=0, classes=classes)
    ckpt.state_dict["fc8.weight"].zero_()
    bias = torch.zeros(len(classes))
    for rank, name in enumerate(order):
        bias[classes.index(name)] = 10.0 - rank
    ckpt.state_dict["fc8.bias"].copy_(bias)
    path = tmp_path / "planted.ckpt"
    checkpoint.save(ckpt, path)
    return path


def test_planted_fc8_gives_the_known_errors(folder, tmp_path):
    order = [
        "orange_stars",
        "red_circles",
        "blue_squares",
        "green_triangles",
        "purple_rings",
        "yellow_stripes",
    ]  # the last one is outside the top 5
    args = ("eval", "--data", folder, "--weights", planted(tmp_path, order), "--device", "cpu")
    r = cli(*args, "--workers", "0", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["images"] == 6 and res["mapping"] == "by name"
    for which in ("centre", "ten_crop"):
        assert res[which]["top1_err"] == pytest.approx(5 / 6)  # only orange_stars is right
        assert res[which]["top5_err"] == pytest.approx(1 / 6)  # only yellow_stripes is missed
    r = cli(*args, "--workers", "0")
    assert r.returncode == 0 and "ten-crop" in r.stdout and "0.8333" in r.stdout


def test_ten_crop_average_matches_a_direct_computation(folder, init_ckpt, tmp_path):
    ckpt = checkpoint.load(init_ckpt)
    ckpt.classes = NAMES + [f"other_{i}" for i in range(ckpt.arch.num_classes - len(NAMES))]
    # a mean image, so a wrong crop offset would also be caught
    ckpt.preprocess = preprocess.Preprocess(mean=(torch.rand(3, 256, 256) * 255).tolist())
    model = ckpt.build("cpu")
    _, samples = folders.labelled_folder(folder / "val")
    samples = samples[:3]
    u8 = torch.stack([crops.load_256(p) for p, _ in samples])
    probs = classification.ten_crop_probs(model, u8, ckpt.preprocess, "cpu")

    mean = torch.as_tensor(ckpt.preprocess.mean)
    for i in range(len(samples)):
        direct = []
        for mirror in (False, True):
            for top, left in [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]:
                x = u8[i, :, top : top + 224, left : left + 224].float()
                x = x - mean[:, top : top + 224, left : left + 224]
                if mirror:
                    x = x.flip(-1)
                with torch.no_grad():
                    direct.append(torch.softmax(model(x[None]), 1)[0])
        direct = torch.stack(direct)
        assert torch.allclose(probs[i], direct, atol=1e-5)
        assert torch.allclose(probs[i].mean(0), direct.mean(0), atol=1e-6)


def test_mismatched_classes_are_one_line(folder, tmp_path):
    ckpt = checkpoint.init_checkpoint(4, seed=0)  # 4 unnamed classes against 6 folders
    path = tmp_path / "four.ckpt"
    checkpoint.save(ckpt, path)
    r = cli("eval", "--data", folder, "--weights", path, "--device", "cpu", "--workers", "0")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "6 classes" in lines[0], r.stderr
    r = cli("eval", "--data", tmp_path / "missing", "--weights", path)
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr


def test_class_mapping_rules():
    assert classification.class_mapping(["b", "a"], ["a", "b", "c"], 3) == ([1, 0], "by name")
    idx, how = classification.class_mapping(["x", "y"], ["class_0", "class_1"], 2)
    assert idx == [0, 1] and how.startswith("by sorted order")


def test_eval_feeds_a_squash_checkpoint_squashed_photos(tmp_path, monkeypatch, capsys):
    """A checkpoint made from Caffe's bvlc_alexnet (Preprocess.squash) is evaluated on
    photos squashed to 256x256, as it was trained; the paper's own on centre squares."""
    import numpy as np
    from PIL import Image

    from alexsearch.cli.app import main

    for name, size in (("wide", (390, 150)), ("tall", (120, 300))):
        (tmp_path / "val" / name).mkdir(parents=True)
        yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
        rgb = np.stack([xx % 256, yy % 256, (xx // 20 + yy // 20) % 2 * 255], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "val" / name / "0.png")
    _, samples = folders.labelled_folder(tmp_path / "val")
    fed = []
    real = classification.ten_crop_probs
    monkeypatch.setattr(
        classification,
        "ten_crop_probs",
        lambda model, u8, *a: fed.append(u8) or real(model, u8, *a),
    )
    for squash in (True, False):
        ckpt = checkpoint.init_checkpoint(2, seed=0, classes=["tall", "wide"])
        ckpt.preprocess = preprocess.Preprocess(mean=[120.0] * 3, squash=squash)
        checkpoint.save(ckpt, tmp_path / "net.ckpt")
        fed.clear()
        main(["eval", "--data", str(tmp_path), "--weights", str(tmp_path / "net.ckpt"),
              "--device", "cpu", "--workers", "0", "--json"])  # fmt: skip
        assert json.loads(capsys.readouterr().out)["images"] == 2
        want = torch.stack(
            [crops.load_256(p, pre=preprocess.Preprocess(squash=squash)) for p, _ in samples]
        )
        other = torch.stack(
            [crops.load_256(p, pre=preprocess.Preprocess(squash=not squash)) for p, _ in samples]
        )
        assert torch.equal(torch.cat(fed), want) and not torch.equal(want, other)
