"""The torch-free query path: checkpoint_file reads what torch.save wrote, numpy_net
computes what AlexNet.features computes, and `alexsearch query` runs without torch."""

import json
import mmap
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from helpers import cli
from make_shapes import make
from PIL import Image

from alexsearch import errors
from alexsearch.images import preprocess
from alexsearch.index.embed import open_embedder
from alexsearch.net import numpy_net
from alexsearch.net.alexnet import AlexNet
from alexsearch.net.arch import CAFFE, PAPER, TORCHVISION, ArchConfig, expected_shapes
from alexsearch.weights import checkpoint, checkpoint_file


def trained_like(arch, seed=0):
    """He-scaled random weights: activations that vary from image to image, as a trained
    net's do (the paper's init makes fc7 nearly constant, which would hide errors)."""
    torch.manual_seed(seed)
    model = AlexNet(arch, init=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.normal_(0, (2 / p[0].numel()) ** 0.5)
            else:
                p.uniform_(0, 0.1)
    return model


PREPROCESS = {
    # the paper's: RGB 0..255 minus a per-channel mean
    "paper": lambda size: preprocess.Preprocess(input_size=size, mean=[123.7, 116.8, 103.9]),
    # Caffe's: BGR minus a mean image
    "caffe": lambda size: preprocess.Preprocess(
        input_size=size,
        channel_order="BGR",
        mean=(np.random.RandomState(1).rand(3, 256, 256) * 255).astype(np.float32).tolist(),
    ),
    # torchvision's: RGB 0..1, mean and std
    "torchvision": lambda size: preprocess.Preprocess(
        input_size=size, scale=1.0, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    ),
}


@pytest.mark.parametrize(
    "arch, pre",
    [(PAPER, "paper"), (CAFFE, "caffe"), (TORCHVISION, "torchvision"), (PAPER, "torchvision")],
    ids=["paper", "caffe", "torchvision", "paper-net-torchvision-pixels"],
)
def test_numpy_fc7_equals_torch_fc7_from_an_image_file(arch, pre, tmp_path):
    path = tmp_path / "net.ckpt"
    model = trained_like(arch)
    ckpt = checkpoint.Checkpoint(arch, PREPROCESS[pre](arch.input_size), model.state_dict())
    checkpoint.save(ckpt, path)
    net = numpy_net.NumpyNet.of(checkpoint.read(path))
    assert net.fingerprint == checkpoint.load(path).fingerprint
    make(tmp_path / "photos", per_class=1, seed=3)
    from alexsearch.index.extract import extract_one

    for img in sorted((tmp_path / "photos").rglob("*.jpg"))[:3]:
        want = extract_one(
            checkpoint.load(path).build(), checkpoint.load(path).preprocess, str(img), 100
        )
        got = net.embed(str(img), 100)
        assert got.dtype == np.float32 and got.shape == want.shape
        scale = np.abs(want).max()
        assert scale > 1 and np.abs(want).std() > 0.05 * scale  # a descriptor that varies
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


def test_adaptive_pool_on_a_size_that_is_not_six():
    """torchvision's AdaptiveAvgPool2d((6, 6)) on a 256 input (pool5 is 7x7)."""
    arch = ArchConfig(**{**TORCHVISION.to_dict(), "input_size": 256, "lrn": None})
    model = trained_like(arch).eval()
    net = numpy_net.NumpyNet(
        arch, preprocess.Preprocess(), {k: v.numpy() for k, v in model.state_dict().items()}, ""
    )
    x = np.random.RandomState(0).randn(2, 3, 256, 256).astype(np.float32)
    with torch.inference_mode():
        want = model.features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.features(x), want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("arch", [PAPER, CAFFE, TORCHVISION, ArchConfig(num_classes=10)])
def test_expected_shapes_match_the_built_network(arch):
    with torch.device("meta"):
        built = AlexNet(arch, init=False)
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == expected_shapes(arch)


def test_reader_returns_what_torch_load_returns(tmp_path):
    payload = {
        "a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": [torch.tensor([1, 2], dtype=torch.int64), torch.zeros(0), 7, "x", None],
        "c": torch.arange(6, dtype=torch.uint8),
        "t": torch.arange(12, dtype=torch.float64).reshape(3, 4).t(),  # not contiguous
    }
    torch.save(payload, tmp_path / "f.pt")
    got = checkpoint_file.read(tmp_path / "f.pt")
    np.testing.assert_array_equal(got["a"], payload["a"].numpy())
    assert got["b"][0].dtype == np.int64 and got["b"][0].tolist() == [1, 2]
    assert got["b"][1].shape == (0,) and got["b"][2:] == [7, "x", None]
    np.testing.assert_array_equal(got["c"], np.arange(6, dtype=np.uint8))
    np.testing.assert_array_equal(got["t"], payload["t"].numpy())
    base = got["a"]
    while not isinstance(base, memoryview):  # through numpy's views to the buffer
        base = base.base
    assert isinstance(base.obj, mmap.mmap)  # a view of the file, not a copy
    on_disk = (tmp_path / "f.pt").read_bytes()
    got["a"][0, 0] = 99.0  # the map is private: a write stays in this process
    assert (tmp_path / "f.pt").read_bytes() == on_disk


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_reader_never_runs_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "alexsearch-checkpoint", "x": _Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(checkpoint_file.Unsupported):
        checkpoint_file.read(tmp_path / "evil.ckpt")
    with pytest.raises(checkpoint_file.Unsupported):  # the numpy path hands it to torch...
        checkpoint.read(tmp_path / "evil.ckpt")
    with pytest.raises(errors.WeightsError, match="never runs pickled code"):  # ...which refuses
        open_embedder(tmp_path / "evil.ckpt", "cpu")
    assert not (tmp_path / "pwned").exists()


def test_one_reader_for_both_paths_and_torch_only_for_what_it_does_not_know(
    init_ckpt, tmp_path, monkeypatch
):
    # a flipped bit inside a tensor: the CRC check catches it, on either path, one line
    raw = bytearray(init_ckpt.read_bytes())
    with zipfile.ZipFile(init_ckpt) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw[info.header_offset + 30 + len(info.filename) + 100] ^= 0x10
    bad = tmp_path / "flipped.ckpt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(checkpoint_file.ArchiveError, match="fails its checksum"):
        checkpoint_file.check_archive(bad)
    for device in ("cpu", "auto"):  # numpy path, torch path
        with pytest.raises(errors.WeightsError, match="fails its checksum"):
            open_embedder(bad, device)
    # float64 weights: the numpy path computes them in float32, as torch does
    ck = checkpoint.load(init_ckpt)
    ck.state_dict = {k: v.double() for k, v in ck.state_dict.items()}
    checkpoint.save(ck, tmp_path / "f64.ckpt")
    embedder = open_embedder(tmp_path / "f64.ckpt", "cpu", 100)
    assert embedder.backend == "numpy"
    assert embedder.fingerprint == checkpoint.load(tmp_path / "f64.ckpt").fingerprint
    img = tmp_path / "x.png"
    Image.new("RGB", (300, 260), (200, 30, 40)).save(img)
    want = open_embedder(init_ckpt, "auto").embed(str(img))
    np.testing.assert_allclose(embedder.embed(str(img)), want, atol=2e-5 * np.abs(want).max())
    # bfloat16 storages are beyond the torch-free reader: torch's loader takes them
    ck.state_dict = {k: v.bfloat16() for k, v in ck.state_dict.items()}
    checkpoint.save(ck, tmp_path / "bf16.ckpt")
    with pytest.raises(checkpoint_file.Unsupported):
        checkpoint.read(tmp_path / "bf16.ckpt")
    assert open_embedder(tmp_path / "bf16.ckpt", "cpu").backend == "torch"
    # not a checkpoint at all: the same line from either path
    (tmp_path / "junk.ckpt").write_bytes(pickle.dumps({"a": 1}))
    for device in ("cpu", "auto"):
        with pytest.raises(errors.WeightsError, match="not a PyTorch zip archive"):
            open_embedder(tmp_path / "junk.ckpt", device)

    # a fault inside the numpy path is not papered over by a silent, slower torch query
    def broken(*a, **k):
        raise RuntimeError("a bug in the reader")

    monkeypatch.setattr(checkpoint_file, "read", broken)
    with pytest.raises(RuntimeError, match="a bug in the reader"):
        open_embedder(init_ckpt, "cpu")


def test_query_runs_without_importing_torch_and_answers_as_torch_does(init_ckpt, tmp_path):
    photos = tmp_path / "photos"
    make(photos, per_class=2, seed=5)
    ckpt = tmp_path / "net.ckpt"
    checkpoint.save(
        checkpoint.Checkpoint(PAPER, PREPROCESS["paper"](224), trained_like(PAPER).state_dict()),
        ckpt,
    )
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(ckpt)}
    ix = tmp_path / "ix"
    cli("index", photos, "--index", ix, "--workers", "0", env=env)
    q = sorted(photos.rglob("*.jpg"))[0]
    probe = (
        "import sys, json\n"
        "from alexsearch.cli import app as cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n"
    )
    args = ["query", str(q), "--index", str(ix), "--k", "3", "--json"]
    r = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True,
                       text=True, check=True)  # fmt: skip
    out = r.stdout.strip().splitlines()
    assert json.loads(out[-1]) == []  # no torch module was imported
    hits = json.loads("\n".join(out[:-1]))[0]["neighbours"]
    # the same query through torch (--device auto takes torch's path on any machine)
    r = cli(*args, "--device", "auto", env=env)
    torch_hits = json.loads(r.stdout)[0]["neighbours"]
    assert [h["path"] for h in hits] == [h["path"] for h in torch_hits]
    for a, b in zip(hits, torch_hits, strict=True):
        assert a["distance"] == pytest.approx(b["distance"], rel=1e-4)
    # the pictures of a query take the same torch-free path (the README's promise)
    for args in (
        ["query", str(q), "--index", str(ix), "--k", "3", "--grid", str(tmp_path / "a.png")],
        [
            "viz",
            "neighbors",
            str(q),
            "--index",
            str(ix),
            "--k",
            "3",
            "--out",
            str(tmp_path / "b.png"),
        ],
    ):
        r = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True,
                           text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1]) == [], args
    assert Image.open(tmp_path / "a.png").size == Image.open(tmp_path / "b.png").size
