"""Published weights: caffemodels (V1, V2) and torchvision state dicts imported through the
CLI compute what Caffe and torchvision compute; fetch checks its bytes and fails fast."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from caffe_proto import (
    BVLC_SHAPES,
    blob,
    bvlc_net,
    bvlc_params,
    encode,
    layer,
    ld,
    net,
    write,
)
from helpers import SHARED, cli, one_line_error, run_in_process
from PIL import Image

from alexsearch import errors
from alexsearch.data import crops
from alexsearch.data.crops import centre_crop
from alexsearch.index import catalogue, extract
from alexsearch.net.arch import CAFFE, TORCHVISION
from alexsearch.weights import caffemodel, checkpoint, fetch, importers, locations
from alexsearch.weights.caffemodel import CaffemodelError

CAFFE_MEAN = torch.tensor([104.007, 116.669, 122.679], dtype=torch.float64)  # B, G, R


@pytest.fixture(scope="module")
def images():
    """Two photos as our pipeline carries them: uint8 RGB 3x256x256."""
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=g)


# --------------------------------------------------------------------------- Caffe


def caffe_lrn(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's LRN (ACROSS_CHANNELS): x / (k + alpha/n * sum over n channels of x^2)^beta."""
    c = x.shape[1]
    sq = F.pad(x * x, (0, 0, 0, 0, n // 2, n // 2))
    window = sum(sq[:, i : i + c] for i in range(n))
    return x / (k + alpha / n * window) ** beta


def caffe_forward(params, bgr):
    """bvlc_alexnet's deploy net, as Caffe runs it (float64): returns (fc7, fc8)."""
    p = {
        k: (torch.from_numpy(w).double(), torch.from_numpy(b).double())
        for k, (w, b) in params.items()
    }

    def pool(x):
        return F.max_pool2d(x, 3, 2, ceil_mode=True)  # Caffe rounds pooled sizes up

    x = pool(caffe_lrn(F.relu(F.conv2d(bgr, *p["conv1"], stride=4))))
    x = pool(caffe_lrn(F.relu(F.conv2d(x, *p["conv2"], padding=2, groups=2))))
    x = F.relu(F.conv2d(x, *p["conv3"], padding=1))
    x = F.relu(F.conv2d(x, *p["conv4"], padding=1, groups=2))
    x = pool(F.relu(F.conv2d(x, *p["conv5"], padding=1, groups=2)))
    x = F.relu(F.linear(x.flatten(1), *p["fc6"]))
    fc7 = F.relu(F.linear(x, *p["fc7"]))
    return fc7, F.linear(fc7, *p["fc8"])


def caffe_input(u8, mean_bgr):
    """Caffe's data layer: the 227 centre crop of the 256 image, BGR, minus the mean."""
    o = (256 - 227) // 2
    bgr = u8[:, [2, 1, 0], o : o + 227, o : o + 227].double()
    if mean_bgr.ndim == 3:
        mean_bgr = mean_bgr[:, o : o + 227, o : o + 227]
    else:
        mean_bgr = mean_bgr.view(3, 1, 1)
    return bgr - mean_bgr


def ours(ckpt, u8):
    pre = ckpt.preprocess
    x = pre.normalize(centre_crop(u8, pre.input_size))
    model = ckpt.build()
    with torch.no_grad():
        fc7 = model.features(x)
        return fc7, model.fc8(fc7)


def assert_close(got, want):
    got, want = got.double(), want.double()
    scale = want.abs().max().item()
    assert scale > 1.0  # the activations are not all zero: the comparison means something
    assert (got - want).abs().max().item() <= 1e-4 * scale


@pytest.fixture(scope="module")
def params():
    return bvlc_params(seed=0)


@pytest.fixture(scope="module")
def caffe_files(params, tmp_path_factory):
    d = tmp_path_factory.mktemp("caffe")
    write(d / "bvlc_v1.caffemodel", bvlc_net(params, v1=True))
    write(d / "bvlc_v2.caffemodel", bvlc_net(params, v1=False))
    return d


def test_v1_caffemodel_computes_what_caffe_computes(caffe_files, params, images, tmp_path, capsys):
    src = caffe_files / "bvlc_v1.caffemodel"
    cli("weights", "import", src, "--out", tmp_path / "v1.ckpt")
    ckpt = checkpoint.load(tmp_path / "v1.ckpt")
    assert ckpt.arch == CAFFE
    pre = ckpt.preprocess
    assert (pre.channel_order, pre.scale, pre.input_size) == ("BGR", 255.0, 227)
    assert pre.mean == [104.007, 116.669, 122.679]  # B, G, R: Preprocess.mean is in BGR
    assert ckpt.classes == list(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    assert ckpt.classes[0] == "tench"
    fc7, logits = ours(ckpt, images)
    ref7, ref8 = caffe_forward(params, caffe_input(images, CAFFE_MEAN))
    assert_close(fc7, ref7)
    assert_close(logits, ref8)
    assert (logits.argmax(1) == ref8.argmax(1)).all()

    info = json.loads(
        run_in_process(capsys, "info", "--weights", tmp_path / "v1.ckpt", "--json").stdout
    )
    assert info["architecture"] == "caffe-bvlc-alexnet" and info["towers"] == 2
    assert info["source"] == "Caffe bvlc_alexnet" and "V1" in info["format"]
    assert info["parameters"] == 60_965_224  # the paper's count


def test_v2_caffemodel_with_mean_file_and_labels(caffe_files, params, images, tmp_path, capsys):
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 255, (3, 256, 256)).astype(np.float32)  # BGR, as Caffe stores it
    write(tmp_path / "mean.binaryproto", blob(mean))
    names = [f"thing {i}" for i in range(1000)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    src = caffe_files / "bvlc_v2.caffemodel"
    run_in_process(
        capsys, "weights", "import", src, "--out", tmp_path / "v2.ckpt",
        "--mean", tmp_path / "mean.binaryproto", "--labels", tmp_path / "labels.txt",
    )  # fmt: skip
    ckpt = checkpoint.load(tmp_path / "v2.ckpt")
    assert ckpt.classes == names
    assert ckpt.meta["format"] == "caffemodel (V2 layout)"
    fc7, logits = ours(ckpt, images)
    ref7, ref8 = caffe_forward(params, caffe_input(images, torch.from_numpy(mean).double()))
    assert_close(fc7, ref7)
    assert_close(logits, ref8)
    # the mean image matters: with Caffe's per-channel mean the answer differs
    other7, _ = caffe_forward(params, caffe_input(images, CAFFE_MEAN))
    assert (other7 - fc7.double()).abs().max() > 1e-2 * other7.abs().max()


def test_caffe_imports_squash_photos_to_256_as_bvlc_alexnet_was_trained(
    caffe_files, params, tmp_path, capsys
):
    """bvlc_alexnet's images and mean were squashed to 256x256 (convert_imageset), not cut
    to the paper's centre square: every path that embeds a photo does what Caffe did."""
    from PIL import Image

    from alexsearch.net import numpy_net

    ckpt_path = tmp_path / "v1.ckpt"
    run_in_process(
        capsys, "weights", "import", caffe_files / "bvlc_v1.caffemodel", "--out", ckpt_path
    )
    info = json.loads(run_in_process(capsys, "info", "--weights", ckpt_path, "--json").stdout)
    assert info["geometry"].startswith("squash to 256x256")
    photos = tmp_path / "photos"
    photos.mkdir()
    yy, xx = np.mgrid[0:150, 0:390]  # wide, so squash and centre square see different pixels
    rgb = np.stack([xx * 255 // 389, yy * 255 // 149, (xx // 30 + yy // 30) % 2 * 255], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(photos / "wide.png")

    squashed = np.asarray(Image.open(photos / "wide.png").resize((256, 256), Image.BILINEAR))
    u8 = torch.from_numpy(squashed.copy()).permute(2, 0, 1)[None]
    want, _ = caffe_forward(params, caffe_input(u8, CAFFE_MEAN))
    square = crops.load_256(photos / "wide.png")[None]  # the paper's geometry
    paper, _ = caffe_forward(params, caffe_input(square, CAFFE_MEAN))
    assert (paper - want).abs().max() > 0.05 * want.abs().max()  # the geometry shows

    # indexing (the decode workers), query's torch path, query's numpy path
    index = tmp_path / "ix"
    cli("index", photos, "--index", index, "--weights", ckpt_path, "--device", "cpu")
    cat = catalogue.Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        indexed = cat.vector_of(cat.id_of(str((photos / "wide.png").resolve())))
    finally:
        cat.close()
    assert_close(torch.from_numpy(indexed.copy())[None], want)
    described = json.loads(run_in_process(capsys, "info", "--index", index, "--json").stdout)
    assert described["geometry"] == info["geometry"]
    ckpt = checkpoint.load(ckpt_path)
    got = extract.extract_one(ckpt.build(), ckpt.preprocess, str(photos / "wide.png"), 100.0)
    assert_close(torch.from_numpy(got)[None], want)
    net = numpy_net.NumpyNet.of(checkpoint.read(ckpt_path))
    assert_close(torch.from_numpy(net.embed(str(photos / "wide.png"), 100.0))[None], want)

    # The same weights with other pixels make other vectors: the index refuses them.
    square_ckpt = tmp_path / "square.ckpt"
    checkpoint.save(replace(ckpt, preprocess=replace(ckpt.preprocess, squash=False)), square_ckpt)
    mean_ckpt = tmp_path / "mean.ckpt"
    checkpoint.save(replace(ckpt, preprocess=replace(ckpt.preprocess, mean=[0.0] * 3)), mean_ckpt)

    def published():  # the manifest and the snapshot it names, byte for byte
        return {p.name: p.read_bytes() for p in index.glob("[mv]*")}

    before = published()
    for other, what in ((square_ckpt, "squash to 256x256"), (mean_ckpt, "mean")):
        assert checkpoint.load(other).fingerprint == ckpt.fingerprint
        for device in ("cpu", "auto"):  # query's numpy path and its torch path
            r = cli("query", photos / "wide.png", "--index", index, "--weights", other,
                    "--device", device, check=False)  # fmt: skip
            one_line_error(r, "other preprocessing", what)
        r = cli("index", photos, "--index", index, "--weights", other, check=False)
        one_line_error(r, "other preprocessing", what)
    assert published() == before
    cli("query", photos / "wide.png", "--index", index, "--weights", ckpt_path)


def test_default_output_sits_beside_the_input_and_never_replaces_it(caffe_files, tmp_path, capsys):
    assert importers.default_out(tmp_path / "a.caffemodel") == tmp_path / "a.ckpt"
    assert importers.default_out(tmp_path / "a.ckpt") == tmp_path / "a.alexsearch.ckpt"
    src = caffe_files / "bvlc_v1.caffemodel"
    before = src.stat().st_size
    r = run_in_process(capsys, "weights", "import", src, "--out", src, check=False)
    one_line_error(r, "being imported")
    assert src.stat().st_size == before


# --------------------------------------------------------------------------- torchvision


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    torch.manual_seed(5)
    model = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp("tv") / "alexnet-owt-test.pth"
    # the published file predates torch's zip format: write the legacy one
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    return model, path


def test_torchvision_state_dict_computes_what_torchvision_computes(
    torchvision_file, images, tmp_path, capsys
):
    model, src = torchvision_file
    r = run_in_process(capsys, "weights", "import", src, "--out", tmp_path / "tv.ckpt", "--json")
    assert json.loads(r.stdout)["architecture"] == "torchvision-alexnet"
    ckpt = checkpoint.load(tmp_path / "tv.ckpt")
    assert ckpt.arch == TORCHVISION and ckpt.preprocess.input_size == 224
    fc7, logits = ours(ckpt, images)
    # torchvision's own pipeline: centre crop 224, to [0, 1], normalise with ImageNet's stats
    x = centre_crop(images, 224).float() / 255
    x = torchvision.transforms.functional.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        ref8 = model(x)
        ref7 = model.classifier[:6](torch.flatten(model.avgpool(model.features(x)), 1))
    assert_close(fc7 * 1e3, ref7 * 1e3)  # untrained torchvision init: small activations
    assert_close(logits * 1e3, ref8 * 1e3)
    assert len(ckpt.classes) == 1000 and ckpt.classes[-1] == "toilet tissue"
    r = run_in_process(
        capsys, "weights", "import", tmp_path / "tv.ckpt", "--out", tmp_path / "x", check=False
    )
    one_line_error(r, "already an alexsearch checkpoint; use it with --weights")
    r = run_in_process(
        capsys, "weights", "import", src, "--labels", tmp_path / "l.txt", check=False
    )
    one_line_error(r, "no such labels file")
    (tmp_path / "l.txt").write_text("a\nb\n")
    r = run_in_process(
        capsys, "weights", "import", src, "--labels", tmp_path / "l.txt", check=False
    )
    one_line_error(r, "2 labels, but the network has 1000 classes")
    r = run_in_process(capsys, "weights", "import", src, "--mean", tmp_path / "l.txt", check=False)
    one_line_error(r, "--mean is for Caffe models")


def test_other_state_dicts(torchvision_file, tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    r = run_in_process(capsys, "weights", "import", tmp_path / "resnet.pth", check=False)
    one_line_error(r, "not torchvision's alexnet: unexpected 'bn1.bias")
    torch.save({1: torch.zeros(1)}, tmp_path / "odd.pth")
    r = run_in_process(capsys, "weights", "import", tmp_path / "odd.pth", check=False)
    one_line_error(r, "not a state dict")
    # another number of classes is fine (fc8 says how many); zip format as torch saves today
    sd = torchvision_file[0].state_dict()
    sd["classifier.6.weight"], sd["classifier.6.bias"] = torch.ones(10, 4096), torch.zeros(10)
    torch.save(sd, tmp_path / "ten.pth")
    ckpt = importers.import_file(tmp_path / "ten.pth")
    assert ckpt.arch.num_classes == 10 and ckpt.classes[0] == "class_0"
    assert torch.equal(ckpt.state_dict["conv5.weight"], sd["features.10.weight"])


def test_class_names_are_torchvisions():
    want = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert importers.imagenet_classes(1000) == list(want)


# --------------------------------------------------------------------------- bad caffemodels


def small_params(**override):
    shapes = {**BVLC_SHAPES, "fc6": (8, 9216), "fc7": (8, 8), "fc8": (3, 8)}
    shapes.update(override)
    return bvlc_params(1, shapes)


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda p: bvlc_net({k: v for k, v in p.items() if k != "conv3"}, True),
         ["no weights for conv3"]),
        (lambda p: bvlc_net(p, True), ["fc6.weight has shape 1x1x8x9216, expected 4096x9216"]),
        (lambda p: encode(bvlc_net(p, True))[:-7], ["not a readable caffemodel", "claims"]),
        (lambda p: b"name: 'AlexNet'\nlayer {\n", ["text prototxt"]),
        (lambda p: b"", ["empty file"]),
        (lambda p: net([layer("evil\nname", "ReLU", [blob(p["fc8"][1])], True)], True),
         ["no weights for conv1", "'evil\\nname'"]),
    ],
)  # fmt: skip
def test_bad_caffemodels_get_one_clear_line(tmp_path, make, fragments, capsys):
    data = make(small_params())
    path = tmp_path / "bad.caffemodel"
    write(path, data if isinstance(data, list) else [data])
    r = run_in_process(capsys, "weights", "import", path, check=False)
    one_line_error(r, str(path), *fragments)
    assert not (tmp_path / "bad.ckpt").exists()


def test_shapes_are_checked_before_anything_is_copied(tmp_path):
    # conv2 with ungrouped shapes (256x96x5x5): a different network, named in the message
    p = small_params()
    p["conv2"] = bvlc_params(2, {"conv2": (256, 96, 5, 5)})["conv2"]
    write(tmp_path / "ungrouped.caffemodel", bvlc_net(p, v1=False))
    with pytest.raises(errors.WeightsError, match=r"conv2.weight has shape 256x96x5x5, expected"):
        importers.import_caffemodel(tmp_path / "ungrouped.caffemodel")


def test_reader_handles_unpacked_and_double_data_and_checks_counts():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    unpacked = layer("a", "InnerProduct", [blob(w, legacy=False, packed=False)], v1=False)
    # BlobShape (2,) with double_data [8] = (0.5, 1.5), packed
    doubles = ld(7, ld(1, b"\x02")) + ld(8, np.array([0.5, 1.5], "<f8").tobytes())
    n = caffemodel.read_net(encode(net([unpacked, layer("b", "Data", [doubles], v1=False)], False)))
    assert n.layout == "V2" and [la.name for la in n.layers] == ["a", "b"]
    assert np.array_equal(n.layers[0].blobs[0].array(), w)
    assert n.layers[0].blobs[0].shape == (2, 3)
    assert np.array_equal(n.layers[1].blobs[0].array(), [0.5, 1.5])
    short = layer("c", "InnerProduct", [blob(w, legacy=False, shape=(2, 4))], v1=False)
    with pytest.raises(CaffemodelError, match=r"blob holds 6 values but its shape 2x4 needs 8"):
        caffemodel.read_net(encode(net([short], False)))


def test_mean_file_must_be_3x256x256(tmp_path):
    write(tmp_path / "m.binaryproto", blob(np.zeros((3, 224, 224), np.float32)))
    with pytest.raises(errors.WeightsError, match=r"mean image has shape 1x3x224x224"):
        importers.import_caffemodel(tmp_path / "nothing.caffemodel", tmp_path / "m.binaryproto")


# --------------------------------------------------------------------------- fetch


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/served; yields its base URL."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_fetch_offline_fails_at_once_naming_the_url_and_the_place(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/bvlc_alexnet.caffemodel"
    env = {"ALEXSEARCH_HOME": str(tmp_path / "home"), "ALEXSEARCH_FETCH_URL_BVLC": url}
    r = cli("weights", "fetch", "bvlc", env={**os.environ, **env}, check=False)
    want = str(tmp_path / "home" / "downloads" / "bvlc_alexnet.caffemodel")
    one_line_error(r, f"cannot download {url}", want, "weights fetch bvlc", "weights import")
    assert list((tmp_path / "home" / "downloads").iterdir()) == []
    r = run_in_process(capsys, "weights", "fetch", "alexnet2", check=False)
    one_line_error(r, "choose from bvlc, torchvision")


def test_fetch_refuses_a_wrong_checksum_and_keeps_nothing(tmp_path, server, capsys, monkeypatch):
    root, base = server
    (root / "bvlc_alexnet.caffemodel").write_bytes(b"not the published file" * 1000)
    monkeypatch.setenv("ALEXSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALEXSEARCH_FETCH_URL_BVLC", f"{base}/bvlc_alexnet.caffemodel")
    r = run_in_process(capsys, "weights", "fetch", "bvlc", check=False)
    one_line_error(r, "refused", "9116a64c0fbe4459d18f4bb6b56d647b63920377", "nothing was kept")
    assert list((tmp_path / "home").rglob("*")) == [tmp_path / "home" / "downloads"]


def test_fetch_downloads_verifies_imports_and_becomes_the_default(
    tmp_path, server, torchvision_file, monkeypatch
):
    import hashlib

    root, base = server
    _, pth = torchvision_file
    (root / "alexnet.pth").symlink_to(pth)
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    src = fetch.Source("tvtest", f"{base}/alexnet.pth", "sha256", digest[:8], "a.pth", "test")
    monkeypatch.setenv("ALEXSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ALEXSEARCH_WEIGHTS", raising=False)
    with pytest.raises(errors.WeightsError, match="no weights given"):
        locations.resolve(None)
    seen = []
    path, ckpt = fetch.fetch(src, lambda *a, **figures: seen.append(a))
    mb = -(-pth.stat().st_size // 2**20)
    assert seen[0] == ("downloading a.pth (MB)", 0, mb) and seen[-1] == (seen[0][0], mb, mb)
    assert path == tmp_path / "home" / "weights" / "tvtest.ckpt"
    assert checkpoint.load(path).fingerprint == ckpt.fingerprint
    assert ckpt.meta["sha256"] == digest[:8]
    # the default of index and query, after --weights, $ALEXSEARCH_WEIGHTS and an index's own
    assert locations.resolve(None) == path.resolve()
    assert locations.resolve(tmp_path / "x.ckpt") == tmp_path / "x.ckpt"
    assert locations.resolve(None, recorded=str(pth)) == pth
    monkeypatch.setenv("ALEXSEARCH_WEIGHTS", str(tmp_path / "env.ckpt"))
    assert locations.resolve(None) == tmp_path / "env.ckpt"
    # fetching again uses the verified download already there: no network needed
    (root / "alexnet.pth").unlink()
    again, _ = fetch.fetch(src)
    assert again == path
    # a damaged download is refused, not imported
    (tmp_path / "home" / "downloads" / "a.pth").write_bytes(b"junk")
    with pytest.raises(errors.WeightsError, match="delete it and fetch again"):
        fetch.fetch(src)


def _photos_of_many_shapes(root):
    """Photos whose sizes make torchvision's rounding and the paper's exact grid differ:
    landscape, portrait, odd sizes, a short side under 256; PNG, so every decoder agrees."""
    rng = np.random.default_rng(11)
    root.mkdir()
    for w, h in ((500, 375), (375, 500), (641, 427), (333, 601), (300, 200), (257, 1001)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // w, yy * 255 // h, (xx * yy) % 251], -1).astype(np.int16)
        noise = rng.integers(-40, 40, (h, w, 3))
        rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"{w}x{h}.png")
    return sorted(root.iterdir())


def test_a_torchvision_import_sees_the_pixels_torchvisions_transforms_make(
    torchvision_file, tmp_path, capsys
):
    """`index` of a torchvision import stores the fc7 torchvision's own model computes on
    torchvision's own transforms (Resize(256) of the whole photo, CenterCrop(224))."""

    import alexsearch
    from alexsearch.images.preprocess import Preprocess

    model, src = torchvision_file
    run_in_process(capsys, "weights", "import", src, "--out", tmp_path / "tv.ckpt")
    photos = _photos_of_many_shapes(tmp_path / "photos")
    sample = SHARED / "imagenet-sample.tar"
    if sample.exists():  # real photos, JPEG: torchvision decodes them at full size too
        import tarfile

        with tarfile.open(sample) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".JPEG")][:6]
            tar.extractall(tmp_path / "real", members=members, filter="data")
        photos += sorted((tmp_path / "real").rglob("*.JPEG"))
    tv = torchvision.transforms
    to_pixels = tv.Compose([tv.Resize(256), tv.CenterCrop(224)])
    to_input = tv.Compose(
        [to_pixels, tv.ToTensor(), tv.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    pre = checkpoint.load(tmp_path / "tv.ckpt").preprocess
    assert pre.torchvision_geometry and "CenterCrop(224)" in pre.geometry()
    paper = Preprocess()
    drift = 0
    for p in photos:
        want = np.asarray(to_pixels(Image.open(p).convert("RGB")))
        got = pre.photo_256(p)[16:240, 16:240]
        np.testing.assert_array_equal(got, want)  # the same pixels, exactly
        drift = max(drift, np.abs(paper.photo_256(p)[16:240, 16:240] - want.astype(int)).max())
    assert drift > 0  # the paper's own grid does see other pixels on these photos
    ix = tmp_path / "ix"
    alexsearch.build_index(tmp_path, index=ix, weights=tmp_path / "tv.ckpt", workers=0)
    with alexsearch.open_index(ix, weights=tmp_path / "tv.ckpt") as index:
        for p in photos:
            me = index.query(p, k=1, include_self=True)[0].hits[0]
            stored = torch.from_numpy(index.vector(me.id).copy())
            with torch.no_grad():
                x = to_input(Image.open(p).convert("RGB"))[None]
                ref = model.classifier[:6](torch.flatten(model.avgpool(model.features(x)), 1))
            assert_close(stored[None] * 1e3, ref * 1e3)
