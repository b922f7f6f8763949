"""Search by label (issue 16, part 2): each photo's top-5 classes in the catalogue,
`query --label WORD`, `query IMAGE --label WORD`, `classify`, and an index made before
labels backfilled from its stored fc7 without decoding a photo.

The checkpoint's fc8 is planted so that the classes are known: the row of each shape
class is photo 000 of that class (its fc7 less the photos' mean, made unit length), so
that photo's top class is its own (Cauchy-Schwarz); two classes can never be in a top-5.
"""

import json
import os
import shutil
import sqlite3
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from make_shapes import CLASSES, make

import alexsearch
from alexsearch.errors import UserError
from alexsearch.net.numpy_net import NumpyNet
from alexsearch.weights import checkpoint

SHAPES = list(CLASSES)  # red_circles, blue_squares, green_triangles, ...
NAMES = [
    "n02123045 tabby, tabby cat",  # red_circles
    "n02123159 tiger cat",  # blue_squares
    "n02099601 golden retriever",  # green_triangles
    "n02110958 pug, pug-dog",  # yellow_stripes
    "n07697537 hotdog, hot dog, red hot",  # purple_rings
    "n03792782 mountain bike, all-terrain bike, off-roader",  # orange_stars
    "n01440764 tench, Tinca tinca",  # never in a top-5
    "n01443537 goldfish, Carassius auratus",  # never in a top-5
]
SHOWN = ["tabby", "tiger cat", "golden retriever", "pug", "hotdog", "mountain bike",
         "tench", "goldfish"]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(photos folder, planted checkpoint, fc8 weight, fc8 bias)."""
    root = tmp_path_factory.mktemp("labels")
    photos = root / "photos"
    make(photos, per_class=2, seed=4)
    ckpt = checkpoint.init_checkpoint(len(NAMES), seed=1, classes=NAMES)
    weight, bias = plant_fc8(ckpt, root / "base.ckpt", photos)
    return photos, _saved(ckpt, root / "planted.ckpt"), weight, bias


def plant_fc8(ckpt, base: Path, photos: Path):
    """Plant ckpt's fc8 (saved once at `base` to embed with): class c's row is photo 000
    of shape c (its fc7 less their mean), so that photo's top class is its own; the
    classes past the shapes never reach a top-5. Returns (weight, bias)."""
    net = NumpyNet.of(checkpoint.read(_saved(ckpt, base)))
    fc7 = np.stack([net.embed(str(photos / s / "000.jpg"), 100) for s in SHAPES])
    mean = fc7.mean(0)
    rows = fc7 - mean
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    weight = np.zeros((len(NAMES), fc7.shape[1]), np.float32)
    weight[: len(SHAPES)] = rows / norms * (4.0 / np.median(norms))
    bias = -(weight @ mean)
    bias[len(SHAPES) :] = -1e4
    ckpt.state_dict["fc8.weight"].copy_(torch.from_numpy(weight))
    ckpt.state_dict["fc8.bias"].copy_(torch.from_numpy(bias.astype(np.float32)))
    return weight, bias


def _saved(ckpt, path: Path) -> Path:
    checkpoint.save(ckpt, path)
    return path


def expected_top5(fc7: np.ndarray, weight, bias) -> list[tuple[str, float]]:
    """The top-5 of one fc7 vector, computed here in float64."""
    z = weight.astype(np.float64) @ fc7.astype(np.float64) + bias
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:5]
    return [(SHOWN[c], float(p[c])) for c in order]


@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
    photos, planted, _, _ = setup
    ix = tmp_path_factory.mktemp("labels-ix") / "ix"
    summary = alexsearch.build_index(photos, index=ix, weights=planted, device="cpu", workers=0)
    assert summary.added == 12 and summary.labelled == 12 and not summary.labels_note
    return ix


def _all_labels(ix_dir) -> dict[str, list[tuple[str, float]]]:
    with alexsearch.open_index(ix_dir) as ix:
        out = {}
        for path, i in _ids(ix_dir).items():
            out[path] = [(d["label"], d["prob"]) for d in ix.labels(i)]
        return out


def _ids(ix_dir) -> dict[str, int]:
    db = sqlite3.connect(Path(ix_dir) / "catalogue.sqlite")
    try:
        return dict(db.execute("SELECT path, id FROM files WHERE status='ok'"))
    finally:
        db.close()


def _expected_all(ix_dir, weight, bias) -> dict[str, list[tuple[str, float]]]:
    with alexsearch.open_index(ix_dir) as ix:
        return {p: expected_top5(ix.vector(i), weight, bias) for p, i in _ids(ix_dir).items()}


def _same_labels(got, want) -> None:
    assert got.keys() == want.keys()
    for path in want:
        assert [n for n, _ in got[path]] == [n for n, _ in want[path]], path
        np.testing.assert_allclose([p for _, p in got[path]], [p for _, p in want[path]],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip


def test_index_stores_each_photos_top5_from_fc8(setup, built):
    photos, _, weight, bias = setup
    got = _all_labels(built)
    _same_labels(got, _expected_all(built, weight, bias))
    for shape, name in zip(SHAPES, SHOWN, strict=False):
        assert got[str(photos / shape / "000.jpg")][0][0] == name  # the planted prototype
    # the classes fc8 can never rank high are in no photo's top-5
    assert not {"tench", "goldfish"} & {n for top in got.values() for n, _ in top}


def _label_order(built, weight, bias, classes: set[str], min_prob=0.0) -> list[str]:
    """The photos whose expected top-5 holds one of `classes` at min_prob or more, most
    probable first (ties by catalogue id, as the catalogue orders them)."""
    ids = _ids(built)
    rows = []
    for path, top in _expected_all(built, weight, bias).items():
        ps = [p for n, p in top if n in classes and p >= min_prob]
        if ps:
            rows.append((-max(ps), ids[path], path))
    return [path for _, _, path in sorted(rows)]


def test_query_label_through_the_cli_and_the_api(setup, built, capsys):
    _, _, weight, bias = setup
    run = lambda *a, **kw: helpers.run_in_process(capsys, "query", "--index", built, *a, **kw)  # noqa: E731
    printed = json.loads(run("--label", "tabby", "--json").stdout)
    with alexsearch.open_index(built) as ix:
        assert ix.query_label("tabby").to_dict() == printed
    assert printed["classes"] == ["tabby"] and printed["unlabelled"] == 0
    want = _label_order(built, weight, bias, {"tabby"})
    assert [p["path"] for p in printed["photos"]] == want
    assert [p["rank"] for p in printed["photos"]] == list(range(1, len(want) + 1))
    assert all(p["label"] == "tabby" for p in printed["photos"])
    # synonyms, the synset id, spelling and case name the same class
    for word in ("tabby cat", "n02123045", "Tabby_Cat"):
        assert json.loads(run("--label", word, "--json").stdout)["photos"] == printed["photos"]
    # the last word of a name: "cat" is the tabby and the tiger cat
    cats = json.loads(run("--label", "cat", "--json").stdout)
    assert cats["classes"] == ["tabby", "tiger cat"]
    assert [p["path"] for p in cats["photos"]] == _label_order(
        built, weight, bias, {"tabby", "tiger cat"}
    )
    # --min-prob and --k
    strict = json.loads(run("--label", "tabby", "--min-prob", "0.3", "--json").stdout)
    assert [p["path"] for p in strict["photos"]] == _label_order(
        built, weight, bias, {"tabby"}, 0.3
    )
    assert 0 < len(strict["photos"]) < len(want) and all(p["prob"] >= 0.3 for p in strict["photos"])
    two = run("--label", "tabby", "--k", "2", "--paths").stdout.split()
    assert two == want[:2]
    plain = run("--label", "tabby", "--k", "2").stdout.splitlines()
    assert plain[0] == "# label tabby: tabby" and plain[1].split("\t")[2:] == ["tabby", want[0]]


def test_query_image_restricted_to_a_label(setup, built, capsys):
    photos, _, weight, bias = setup
    q = photos / "red_circles" / "000.jpg"
    cats = set(_label_order(built, weight, bias, {"tabby", "tiger cat"}, 0.05)) - {str(q)}
    with alexsearch.open_index(built) as ix:
        everything = ix.query(q, k=50)[0]
        res = ix.query(q, k=3, label="cat", min_prob=0.05)[0]
    want = [h for h in everything.hits if h.path in cats][:3]
    assert len(cats) > 3 and len(everything.hits) == 11
    assert [h.path for h in res.hits] == [h.path for h in want]
    np.testing.assert_allclose([h.distance for h in res.hits], [h.distance for h in want],
                               rtol=1e-4)  # fmt: skip
    assert all(h.label in ("tabby", "tiger cat") and h.prob >= 0.05 for h in res.hits)
    printed = helpers.run_in_process(
        capsys, "query", q, "--index", built, "--k", "3", "--label", "cat", "--min-prob", "0.05",
        "--json",
    ).stdout  # fmt: skip
    assert json.loads(printed) == [res.to_dict()]
    assert {"label", "prob"} <= set(json.loads(printed)[0]["neighbours"][0])


def test_a_word_that_names_no_class_gets_the_closest_names(setup, built, capsys):
    photos, planted, _, _ = setup
    r = helpers.cli("query", "--index", built, "--label", "tabbby", check=False)
    line = helpers.one_line_error(r, "no class matches 'tabbby'", "closest: tabby")
    assert len(line) < 200
    # with an image too, refused before the network is loaded
    r = helpers.run_in_process(
        capsys, "query", photos / "red_circles" / "000.jpg", "--index", built, "--label", "dgo",
        check=False,
    )  # fmt: skip
    helpers.one_line_error(r, "no class matches 'dgo'; closest:")
    r = helpers.run_in_process(capsys, "query", "--index", built, "--label", "cat", "--binary",
                               check=False)  # fmt: skip
    helpers.one_line_error(r, "--label alone lists photos")
    with alexsearch.open_index(built) as ix:
        with pytest.raises(UserError, match="no class matches 'goldfsh'; closest: goldfish"):
            ix.query_label("goldfsh")
        assert ix.query_label("goldfish").hits == []  # a class, in no photo's top-5
        with pytest.raises(UserError, match="not with --binary"):
            ix.query(photos / "red_circles" / "000.jpg", label="cat", binary=True)


def _make_old(ix_dir: Path) -> None:
    """The catalogue as an index made before labels left it."""
    db = sqlite3.connect(ix_dir / "catalogue.sqlite")
    db.executescript(
        "DROP TRIGGER labels_of_deleted; DROP TRIGGER labels_of_new_vector;"
        " DROP TABLE labels; DELETE FROM meta WHERE key='classes';"
    )
    db.commit()
    db.close()


def test_an_old_index_is_labelled_on_its_next_run_without_decoding(setup, built, tmp_path):
    photos, _, weight, bias = setup
    shutil.copytree(photos, tmp_path / "photos")
    photos = tmp_path / "photos"
    old = tmp_path / "ix"
    shutil.copytree(built, old)
    # the catalogue's paths are the original photos': re-point them at the copies
    db = sqlite3.connect(old / "catalogue.sqlite")
    db.execute("UPDATE files SET path = replace(path, ?, ?)", (str(setup[0]), str(photos)))
    db.execute("UPDATE meta SET value = replace(value, ?, ?) WHERE key='roots'",
               (str(setup[0]), str(photos)))  # fmt: skip
    db.commit()
    db.close()
    _make_old(old)
    with alexsearch.open_index(old) as ix:
        assert ix.info()["labels"].startswith("none yet")
    r = helpers.cli("query", "--index", old, "--label", "tabby", check=False)
    helpers.one_line_error(r, "no labels yet", "alexsearch index")
    # every photo's bytes replaced by garbage of the same size and mtime: a decode would fail
    for p in photos.rglob("*.jpg"):
        st = p.stat()
        p.write_bytes(b"\0" * st.st_size)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    env = {k: v for k, v in os.environ.items() if k != "ALEXSEARCH_WEIGHTS"}
    r = helpers.cli("index", photos, "--index", old, "--json", env=env)  # the index's weights
    summary = json.loads(r.stdout)
    assert summary["labelled"] == 12 and summary["extracted"] == 0 and summary["failed"] == []
    assert summary["unchanged"] == 12 and summary["total_ok"] == 12 and not summary["labels_note"]
    _same_labels(_all_labels(old), _expected_all(old, weight, bias))
    with alexsearch.open_index(old) as ix:
        assert ix.info()["labels"] == "top-5 of 8 classes for 12 of 12 files"
    again = json.loads(helpers.cli("index", photos, "--index", old, "--json", env=env).stdout)
    assert again["labelled"] == 0
    printed = json.loads(helpers.cli("query", "--index", old, "--label", "tabby", "--json").stdout)
    assert [p["path"] for p in printed["photos"]] == _label_order(old, weight, bias, {"tabby"})


def test_changed_and_deleted_photos_keep_their_labels_in_step(setup, tmp_path):
    photos, planted, weight, bias = setup
    shutil.copytree(photos, tmp_path / "photos")
    photos = tmp_path / "photos"
    ix = tmp_path / "ix"
    alexsearch.build_index(photos, index=ix, weights=planted, device="cpu", workers=0)
    changed = photos / "red_circles" / "001.jpg"
    changed.write_bytes((photos / "orange_stars" / "000.jpg").read_bytes())  # now a star
    (photos / "blue_squares" / "001.jpg").unlink()
    summary = alexsearch.build_index(photos, index=ix, weights=planted, device="cpu", workers=0)
    assert summary.updated == 1 and summary.deleted == 1 and summary.labelled == 1
    got = _all_labels(ix)
    _same_labels(got, _expected_all(ix, weight, bias))
    assert got[str(changed)][0][0] == "mountain bike"  # the star's prototype's class
    with alexsearch.open_index(ix) as opened:
        paths = {h.path for h in opened.query_label("tiger cat", k=50).hits}
    assert str(photos / "blue_squares" / "001.jpg") not in paths
    db = sqlite3.connect(ix / "catalogue.sqlite")
    orphans = db.execute("SELECT COUNT(*) FROM labels WHERE file_id NOT IN (SELECT id FROM files)")
    assert orphans.fetchone()[0] == 0
    db.close()


def test_classify_gives_the_classes_the_index_stores(setup, built, capsys):
    photos, planted, _, _ = setup
    imgs = [photos / "orange_stars" / "000.jpg", photos / "green_triangles" / "001.jpg"]
    r = helpers.run_in_process(capsys, "classify", *imgs, "--weights", planted, "--json")
    printed = json.loads(r.stdout)
    assert printed == [c.to_dict() for c in alexsearch.classify(imgs, weights=planted)]
    stored = _all_labels(built)
    for img, res in zip(imgs, printed, strict=True):
        assert res["crops"] == "centre" and res["image"] == str(img)
        want = stored[str(img)]
        assert [c["label"] for c in res["classes"]] == [n for n, _ in want]
        np.testing.assert_allclose([c["prob"] for c in res["classes"]], [p for _, p in want],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
    assert printed[0]["classes"][0]["label"] == "mountain bike"
    plain = helpers.run_in_process(capsys, "classify", imgs[0], "--weights", planted).stdout
    assert plain.splitlines()[0] == f"# image {imgs[0]}" and "mountain bike" in plain


def test_classify_ten_crop_is_the_papers_average(setup, tmp_path, capsys):
    from alexsearch.data.crops import load_256
    from alexsearch.evaluate.classification import ten_crop_probs

    photos, planted, _, _ = setup
    img = photos / "yellow_stripes" / "001.jpg"
    r = helpers.run_in_process(capsys, "classify", img, "--weights", planted, "--ten-crop",
                               "--json")  # fmt: skip
    res = json.loads(r.stdout)[0]
    ckpt = checkpoint.load(planted)
    probs = ten_crop_probs(ckpt.build("cpu"), load_256(img, 100, ckpt.preprocess)[None],
                           ckpt.preprocess, "cpu")[0].mean(0)  # fmt: skip
    top = torch.topk(probs, 5)
    assert res["crops"] == "ten-crop"
    assert [c["label"] for c in res["classes"]] == [SHOWN[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([c["prob"] for c in res["classes"]], top.values.tolist(),
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    # unreadable images: an error each, the others classified, exit 2
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    r = helpers.run_in_process(capsys, "classify", img, tmp_path / "broken.jpg", "--weights",
                               planted, "--json", check=False)  # fmt: skip
    assert r.returncode == 2 and "broken.jpg" in r.stderr
    good, bad = json.loads(r.stdout)
    assert good["classes"] and bad["classes"] == [] and "not a recognised image" in bad["error"]


def test_a_checkpoint_without_names_says_class_n(setup, tmp_path):
    photos, planted, _, _ = setup
    ckpt = checkpoint.load(planted)
    ckpt.classes = []
    unnamed = _saved(ckpt, tmp_path / "unnamed.ckpt")
    res = alexsearch.classify(photos / "orange_stars" / "000.jpg", weights=unnamed)[0]
    assert res.classes[0][0] == "class 5"
    ix = tmp_path / "ix"
    alexsearch.build_index(photos / "orange_stars", index=ix, weights=unnamed, workers=0)
    with alexsearch.open_index(ix) as opened:
        found = opened.query_label("class 5")
        assert found.classes == ["class 5"] and len(found.hits) == 2
        with pytest.raises(UserError, match="between 0 and 1"):
            opened.query_label("class 5", min_prob=2)


def test_the_server_answers_by_label(setup, built):
    from starlette.testclient import TestClient

    from alexsearch.serve.app import create_app

    photos, planted, _, _ = setup
    q = photos / "red_circles" / "000.jpg"
    with alexsearch.open_index(built, weights=planted) as ix:
        with TestClient(create_app(ix), base_url="http://127.0.0.1:8000") as c:
            r = c.get("/api/label", params={"word": "tabby cat", "k": 4, "min_prob": 0.01})
            assert r.status_code == 200
            assert r.json() == ix.query_label("tabby cat", 4, 0.01).to_dict()
            r = c.get("/api/label", params={"word": "tabbby"})
            assert r.status_code == 400 and "closest: tabby" in r.json()["error"]
            assert c.get("/api/label", params={"word": "cat", "min_prob": 7}).status_code == 400
            file_id = _ids(built)[str(q)]
            r = c.post("/api/query", json={"id": file_id, "k": 3, "label": "cat"})
            assert r.status_code == 200
            by_path = ix.query(q, k=3, label="cat")[0].to_dict()["neighbours"]  # re-embedded
            got = r.json()["neighbours"]
            assert [(h["path"], h["label"]) for h in got] == [
                (h["path"], h["label"]) for h in by_path
            ]
            np.testing.assert_allclose([h["distance"] for h in got],
                                       [h["distance"] for h in by_path], rtol=1e-4)  # fmt: skip
            r = c.post("/api/query", files={"image": q.read_bytes()}, data={"label": "cat"})
            assert r.status_code == 200 and all(h["label"] for h in r.json()["neighbours"])
