"""`alexsearch viz`: kernels (Fig. 3), neighbour grids (Fig. 4), t-SNE maps, training curves."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from helpers import cli, one_line_error
from make_shapes import make
from PIL import Image

from alexsearch.errors import UserError
from alexsearch.viz import curves, draw, kernels, neighbours, tsne
from alexsearch.weights import checkpoint

RED, BLUE = (255, 0, 0), (0, 0, 255)


def colours(img: Image.Image) -> set:
    return {tuple(int(v) for v in px) for px in np.asarray(img.convert("RGB")).reshape(-1, 3)}


def tile_pixels(img: Image.Image, box) -> set:
    return colours(img.crop(box))


# --------------------------------------------------------------------------- kernels


def _planted(tmp_path, channel_order="RGB"):
    """A checkpoint whose tower-2 kernel 5 (conv1 output 53) is pure red and whose tower-1
    kernel 5 is pure blue, in the checkpoint's own channel order."""
    ckpt = checkpoint.init_checkpoint(10, seed=3)
    w = ckpt.state_dict["conv1.weight"]
    r, b = (2, 0) if channel_order == "BGR" else (0, 2)
    w[53].zero_()
    w[53, r] = 0.02
    w[5].zero_()
    w[5, b] = 0.05
    ckpt.preprocess = dataclasses.replace(ckpt.preprocess, channel_order=channel_order)
    path = tmp_path / f"planted-{channel_order}.ckpt"
    checkpoint.save(ckpt, path)
    return path


def test_kernel_picture_through_the_cli_shows_the_planted_kernel_in_tower_2(tmp_path):
    ck = _planted(tmp_path)
    out = tmp_path / "pics" / "kernels.png"
    r = cli("viz", "kernels", "--weights", ck, "--out", out)
    assert str(out) in r.stdout
    img = Image.open(out).convert("RGB")
    # 2 towers x (6 rows x 8 cols) of 11x11 kernels at 5x: 55-px tiles, 2-px gaps,
    # 8-px margins, a 14-px gap between the towers
    assert img.size == (8 + 8 * 55 + 7 * 2 + 8, 8 + 2 * (6 * 55 + 5 * 2) + 14 + 8)
    # tower 2's sixth kernel: second block, row 0, col 5
    y_tower2 = 8 + 6 * 55 + 5 * 2 + 14
    box53 = (8 + 5 * 57, y_tower2, 8 + 5 * 57 + 55, y_tower2 + 55)
    assert kernels.kernel_layout(np.zeros((96, 11, 11, 3)), 2).box(53) == box53
    assert tile_pixels(img, box53) == {RED}
    box5 = (8 + 5 * 57, 8, 8 + 5 * 57 + 55, 8 + 55)
    assert tile_pixels(img, box5) == {BLUE}  # tower 1's kernel 5 is the other plant
    assert len(tile_pixels(img, (8, 8, 63, 63))) > 50  # random kernels: many colours
    # gaps: between tiles and between the towers, the background shows
    assert tile_pixels(img, (63, 8, 65, 63)) == {(255, 255, 255)}
    assert tile_pixels(img, (8, y_tower2 - 14, img.width - 8, y_tower2)) == {(255, 255, 255)}


def test_caffe_bgr_kernels_are_shown_in_rgb(tmp_path):
    img = kernels.kernels_picture(checkpoint.load(_planted(tmp_path, "BGR")))
    assert tile_pixels(img, kernels.kernel_layout(np.zeros((96, 11, 11, 3)), 2).box(53)) == {RED}


def test_single_tower_net_is_one_block_and_each_tile_is_stretched_on_its_own():
    k = np.random.default_rng(0).normal(0, 1, (64, 11, 11, 3))
    k[7] *= 1000  # one loud kernel must not wash out the others
    img = kernels.kernel_grid(k, towers=1, scale=3)
    lay = kernels.kernel_layout(k, 1, 3)
    assert (lay.towers, lay.rows, lay.cols) == (1, 8, 8)
    assert img.size == (8 + 8 * 33 + 7 * 2 + 8, 8 + 8 * 33 + 7 * 2 + 8)
    for i in (0, 7, 63):
        px = np.asarray(img.crop(lay.box(i)))
        assert px.min() == 0 and px.max() == 255  # the full range in every tile
    flat = kernels.kernel_grid(np.zeros((4, 11, 11, 3)), towers=1)
    assert tile_pixels(flat, kernels.kernel_layout(np.zeros((4, 11, 11, 3)), 1).box(3)) == {
        (128, 128, 128)
    }


def test_checkpoint_without_conv1_gets_one_clear_line(tmp_path):
    ckpt = checkpoint.init_checkpoint(10)
    del ckpt.state_dict["conv1.weight"]
    checkpoint.save(ckpt, tmp_path / "noconv1.ckpt")
    r = cli(
        "viz",
        "kernels",
        "--weights",
        tmp_path / "noconv1.ckpt",
        "--out",
        tmp_path / "k.png",
        check=False,
    )
    one_line_error(r, "conv1.weight")
    assert not (tmp_path / "k.png").exists()
    with pytest.raises(UserError, match="no conv1.weight"):
        kernels.conv1_kernels({})
    with pytest.raises(UserError, match="shape 96x1x11x11"):
        kernels.conv1_kernels({"conv1.weight": torch.zeros(96, 1, 11, 11)})


# --------------------------------------------------------------------------- neighbour grid


def test_neighbour_grid_layout_and_tiles(tmp_path):
    colours = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200), "d": (220, 220, 0)}
    for name, c in colours.items():
        Image.new("RGB", (300, 200), c).save(tmp_path / f"{name}.png")
    p = {n: str(tmp_path / f"{n}.png") for n in colours}
    rows = [
        (p["a"], [(p["b"], 0.5), (p["c"], 0.75), (str(tmp_path / "gone.jpg"), 0.9)]),
        (p["d"], [(p["a"], 1.25)]),
    ]
    img = neighbours.neighbour_grid(rows, tile=64)
    pad, sep, cap = 6, 18, 34
    assert img.size == (2 * pad + sep + 4 * 64 + 3 * pad, pad + 2 * (64 + cap + pad))

    def tile(r, c):
        x = pad + c * (64 + pad) + (sep if c else 0)
        y = pad + r * (64 + cap + pad)
        return tile_pixels(img, (x + 4, y + 4, x + 60, y + 60))

    assert tile(0, 0) == {colours["a"]} and tile(0, 1) == {colours["b"]}
    assert tile(0, 2) == {colours["c"]} and tile(1, 1) == {colours["a"]}
    assert tile(1, 0) == {colours["d"]}
    assert (150, 150, 150) in tile(0, 3) and colours["c"] not in tile(0, 3)  # missing: a cross
    assert tile(1, 2) == {(255, 255, 255)}  # row 2 has one neighbour only


@pytest.fixture(scope="module")
def indexed(init_ckpt, tmp_path_factory):
    """A 12-image index of generated shapes, built through the CLI."""
    root = tmp_path_factory.mktemp("vizix")
    make(root / "photos", per_class=2, seed=4)
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}
    ix = root / "ix"
    cli("index", root / "photos", "--index", ix, "--workers", "0", "--json", env=env)
    return env, root / "photos", ix


def test_viz_neighbors_draws_what_query_finds(indexed, tmp_path):
    env, photos, ix = indexed
    qs = [photos / "red_circles" / "000.jpg", photos / "blue_squares" / "001.jpg"]
    out = tmp_path / "grid.png"
    cli("viz", "neighbors", *qs, "--index", ix, "--k", "3", "--out", out, env=env)
    img = Image.open(out).convert("RGB")
    assert img.size == neighbours.neighbour_grid([(str(qs[0]), [("x", 0)] * 3)] * 2).size
    found = json.loads(cli("query", *qs, "--index", ix, "--k", "3", "--json", env=env).stdout)
    pad, sep, cap, t = 6, 18, 34, 128
    for r, res in enumerate(found):
        for c, hit in enumerate(res["neighbours"], 1):
            x, y = pad + c * (t + pad) + sep, pad + r * (t + cap + pad)
            want = np.asarray(draw.load_tile(hit["path"], t), np.int16)
            got = np.asarray(img.crop((x, y, x + t, y + t)), np.int16)
            assert np.abs(got - want).max() <= 1  # the very neighbour query reported


def test_viz_commands_without_an_index_say_so(tmp_path, init_ckpt):
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}
    none = tmp_path / "none"
    r = cli("viz", "tsne", "--index", none, "--out", tmp_path / "m.png", env=env, check=False)
    one_line_error(r, f"no index at {none}")
    Image.new("RGB", (40, 40)).save(tmp_path / "q.png")
    r = cli(
        "viz", "neighbors", tmp_path / "q.png", "--index", none, "--out", tmp_path / "g.png",
        env=env, check=False,
    )  # fmt: skip
    one_line_error(r, f"no index at {none}")
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "g.png").exists()


# --------------------------------------------------------------------------- t-SNE


def _clusters(n_per=60, k=3, dim=100, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 20, (k, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("method", tsne.TSNE_METHODS)
def test_tsne_keeps_well_separated_clusters_apart(method):
    x, labels = _clusters()
    seen = []
    y = tsne.tsne_2d(tsne.pca50(x), method, progress=lambda *a: seen.append(a))
    assert y.shape == (len(x), 2)
    centroids = np.stack([y[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(y[labels == c] - centroids[c], axis=1).max() for c in range(3))
    gaps = [np.linalg.norm(centroids[a] - centroids[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > 2 * spread  # every cluster lies well clear of the others
    assert seen[-1][1] == seen[-1][2]  # progress reached its end


def test_tsne_of_a_tiny_set_and_a_too_tiny_set():
    x, _ = _clusters(n_per=2, k=2)
    assert tsne.tsne_2d(x, "opentsne").shape == (4, 2)
    with pytest.raises(UserError, match="at least 4"):
        tsne.tsne_2d(x[:3])


@pytest.mark.parametrize("exact_up_to", [10_000, 0])  # linear assignment, then greedy
def test_snap_to_grid_gives_distinct_cells_that_keep_the_layout(exact_up_to):
    rng = np.random.default_rng(1)
    corners = np.array([[0, 0], [10, 0], [0, 10], [10, 10]])  # (x, y); y up
    pts = np.concatenate([c + rng.normal(0, 0.5, (16, 2)) for c in corners])
    cells = tsne.snap_to_grid(pts, 8, exact_up_to=exact_up_to)
    assert len(set(cells.tolist())) == len(pts) and cells.min() >= 0 and cells.max() < 64
    rows, cols = np.divmod(cells, 8)
    for q, (cx, cy) in enumerate(corners):
        r, c = rows[q * 16 : (q + 1) * 16], cols[q * 16 : (q + 1) * 16]
        assert ((c >= 4) == (cx > 0)).all()  # right half for x = 10
        assert ((r < 4) == (cy > 0)).all()  # top half for y = 10


def test_viz_tsne_scatter_json_and_thumbnails(indexed, tmp_path):
    env, photos, ix = indexed
    out = tmp_path / "map.png"
    r = cli("viz", "tsne", "--index", ix, "--out", out, "--json", "--size", "400", env=env)
    pts = json.loads(r.stdout)
    assert len(pts) == 12 and {os.path.dirname(p["path"]) for p in pts} == {
        str(d) for d in photos.iterdir()
    }
    img = Image.open(out).convert("RGB")
    assert img.size == (400 + 230, 400 + 24)
    # the legend lists each folder's colour: six labels, six palette colours in the picture
    seen = colours(img)
    assert all(draw.colour(i) in seen for i in range(6))
    thumbs = tmp_path / "thumbs.png"
    cli("viz", "tsne", "--index", ix, "--out", thumbs, "--thumbnails", "--tile", "40", env=env)
    assert Image.open(thumbs).size == (4 * 40, 4 * 40)  # 12 images: a 4x4 grid


def test_scatter_legend_counts_and_many_labels():
    coords = np.random.default_rng(0).normal(size=(90, 2))
    labels = [f"class{i % 45}" for i in range(90)]
    img = tsne.scatter(coords, labels, size=300)
    assert img.width == 530 and img.height >= 22 * 40  # the legend caps at 40 rows


# --------------------------------------------------------------------------- curves


def _metrics(run):
    run.mkdir()
    rows = [
        {"epoch": e, "lr": 0.01 / 10 ** ((e - 1) // 2), "train_loss": 2.0 / e,
         "train_top1_err": 0.8 / e, "train_top5_err": 0.5 / e,
         "val_top1_err": 0.85 / e ** 0.5, "val_top5_err": 0.6 / e ** 0.5,
         "img_per_s": 100.0, "seconds": 10.0}
        for e in range(1, 7)
    ]  # fmt: skip
    del rows[2]["val_top1_err"], rows[2]["val_top5_err"]  # an epoch without validation
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "{not json")
    lines.append(json.dumps({**rows[-1], "val_top1_err": 0.1}))  # a resumed run rewrote 6
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_curves_from_a_small_metrics_file(tmp_path):
    run = tmp_path / "run"
    _metrics(run)
    rows = curves.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["val_top1_err"] == 0.1
    out = tmp_path / "curves.png"
    r = cli("viz", "curves", run, "--out", out)
    assert str(out) in r.stdout
    img = Image.open(out).convert("RGB")
    assert img.size == (1100, 460)
    err_panel = colours(img.crop((70, 70, 600, 400)))
    lr_panel = colours(img.crop((720, 70, 1070, 400)))
    assert draw.PALETTE[0] in err_panel and draw.PALETTE[1] in err_panel  # top-1, top-5
    assert draw.PALETTE[2] in lr_panel and draw.PALETTE[2] not in err_panel
    # the learning rate falls 0.01 -> 0.001 -> 0.0001 (two epochs each): on a log axis the
    # three plateaus are evenly spaced, each a decade below the last
    green = np.all(np.asarray(img) == draw.PALETTE[2], axis=2)

    def level(epoch):  # the line's height midway along a plateau
        x = round(720 + (epoch - 1) / 5 * 350)
        ys = np.nonzero(green[70:400, x])[0]
        assert len(ys), epoch
        return ys.mean()

    a, b, c = level(1.5), level(3.5), level(5.5)
    assert b - a > 100 and abs((b - a) - (c - b)) <= 3


def test_curves_bad_input_gets_one_clear_line(tmp_path):
    r = cli("viz", "curves", tmp_path / "nope", "--out", tmp_path / "c.png", check=False)
    one_line_error(r, "no such run folder")
    (tmp_path / "empty").mkdir()
    r = cli("viz", "curves", tmp_path / "empty", "--out", tmp_path / "c.png", check=False)
    one_line_error(r, "no metrics.jsonl")
    (tmp_path / "empty" / "metrics.jsonl").write_text("\n{broken\n")
    r = cli("viz", "curves", tmp_path / "empty", "--out", tmp_path / "c.png", check=False)
    one_line_error(r, "no epochs")
    assert not (tmp_path / "c.png").exists()
