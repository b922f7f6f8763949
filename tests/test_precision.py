"""--precision: bf16 fc7 agrees with fp32 per image (cosine >= 0.999) for the paper's net
and an imported Caffe-layout net, through `index`; the manifest records the precision,
`info` shows it, and a query at another precision answers and says so.

bf16 runs on any x86 CPU torch supports (emulated, and slower, without AVX512_BF16 or
AMX), so these run everywhere rather than only where bf16 is native."""

import json
import os
import sqlite3

import numpy as np
import pytest
import torch
from caffe_proto import bvlc_net, bvlc_params, write
from helpers import SHARED, cli, one_line_error
from make_shapes import make

from alexsearch.net import precision
from alexsearch.net.alexnet import AlexNet
from alexsearch.net.arch import PAPER
from alexsearch.weights import checkpoint


def he_scaled_paper_net(path):
    """The paper's network with activations that vary from photo to photo, as trained
    weights do (its own init makes fc7 nearly constant, which would hide any error)."""
    torch.manual_seed(0)
    model = AlexNet(PAPER, init=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, (2 / p[0].numel()) ** 0.5) if name.endswith("weight") else p.uniform_(
                0, 0.1
            )
    ckpt = checkpoint.init_checkpoint(1000)
    ckpt.state_dict = model.state_dict()
    checkpoint.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    make(root / "shapes", per_class=1, seed=8)
    sample = SHARED / "imagenet-sample.tar"
    if sample.exists():  # real photos when there are some
        import tarfile

        with tarfile.open(sample) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".JPEG")][:10]
            tar.extractall(root / "real", members=members, filter="data")
    return root


@pytest.fixture(scope="module", params=["paper", "caffe"])
def weights(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    if request.param == "paper":
        return he_scaled_paper_net(d / "paper.ckpt")
    write(d / "bvlc.caffemodel", bvlc_net(bvlc_params(seed=2), v1=False))
    cli("weights", "import", d / "bvlc.caffemodel", "--out", d / "caffe.ckpt")
    return d / "caffe.ckpt"


def vectors(ix):
    db = sqlite3.connect(ix / "catalogue.sqlite")
    rows = db.execute("SELECT path, vector FROM files WHERE status='ok'")
    return {p: np.frombuffer(v, np.float32) for p, v in rows}


def test_bf16_fc7_agrees_with_fp32_per_image(weights, photos, tmp_path):
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(weights)}
    made = {}
    for p in ("fp32", "bf16"):
        ix = tmp_path / p
        s = json.loads(
            cli("index", photos, "--index", ix, "--precision", p, "--json", env=env).stdout
        )
        assert s["precision"] == p and s["failed"] == []
        assert json.loads((ix / "manifest.json").read_text())["precision"] == p
        assert json.loads(cli("info", "--index", ix, "--json", env=env).stdout)["precision"] == p
        made[p] = vectors(ix)
    assert set(made["fp32"]) == set(made["bf16"]) and len(made["fp32"]) >= 6
    for path, a in made["fp32"].items():
        b = made["bf16"][path]
        assert np.abs(a).std() > 0.05 * np.abs(a).max()  # a descriptor that varies
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos >= 0.999, (path, cos)
        assert not np.array_equal(a, b)  # bf16 really ran


def test_a_query_at_another_precision_answers_and_says_so(photos, tmp_path):
    weights = he_scaled_paper_net(tmp_path / "w.ckpt")
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(weights)}
    ix = tmp_path / "ix"
    cli("index", photos / "shapes", "--index", ix, "--precision", "bf16", env=env)
    q = sorted((photos / "shapes").rglob("*.jpg"))[0]
    res = json.loads(
        cli("query", q, "--index", ix, "--k", "1", "--include-self", "--json", env=env).stdout
    )[0]
    assert (res["precision"], res["index_precision"]) == ("fp32", "bf16")
    assert res["neighbours"][0]["path"] == str(q)  # its own bf16 vector is still nearest
    same = json.loads(
        cli("query", q, "--index", ix, "--precision", "bf16", "--json", env=env).stdout
    )[0]
    assert "precision" not in same  # at the index's own precision nothing needs saying
    # more photos at fp32 later: the index says it holds both
    make(photos / "more", per_class=1, seed=9)
    s = json.loads(
        cli(
            "index",
            photos / "shapes",
            photos / "more",
            "--index",
            ix,
            "--precision",
            "fp32",
            "--json",
            env=env,
        ).stdout
    )
    assert s["precision"] == "bf16+fp32"


def test_auto_takes_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.delenv(precision.PRECISION_ENV)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert precision.resolve_precision("fp32", "cuda") == "fp32"


def test_the_environment_pins_what_auto_takes(monkeypatch, init_ckpt, photos, tmp_path):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setenv(precision.PRECISION_ENV, "fp32")
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("auto", "cuda") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"  # a value named wins
    monkeypatch.setenv(precision.PRECISION_ENV, "BF16")
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt), precision.PRECISION_ENV: "fp8"}
    r = cli("index", photos, "--index", tmp_path / "ix", env=env, check=False)
    one_line_error(r, "$ALEXSEARCH_PRECISION='fp8': choose fp32 or bf16")
    assert not (tmp_path / "ix").exists()


def test_an_unknown_precision_is_one_line(init_ckpt, photos, tmp_path):
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}
    r = cli(
        "index",
        photos / "shapes",
        "--index",
        tmp_path / "ix",
        "--precision",
        "fp16",
        env=env,
        check=False,
    )
    one_line_error(r, "--precision 'fp16': choose from auto, fp32, bf16")
    assert not (tmp_path / "ix").exists()
