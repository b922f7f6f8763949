"""`alexsearch eval retrieval`: leave-one-out precision@k / mAP, parent folder as label."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, one_line_error
from make_shapes import make

from alexsearch.evaluate import retrieval
from alexsearch.images.preprocess import Preprocess
from alexsearch.index import build, catalogue, manifest

KEYS = {"precision@1", "precision@6", "precision@10", "mAP"}


def planted_index(ix: Path, files: dict[str, tuple[float, int]]) -> None:
    """An index whose fc7 vectors are x * e0 and whose thumbnails are one grey level,
    so every neighbour ranking is known in advance."""
    ix.mkdir()
    cat = catalogue.Catalogue(ix / "catalogue.sqlite")
    for path, (x, grey) in files.items():
        vec = np.zeros(4096, np.float32)
        vec[0] = x
        cat.put(path, 1, 1, path, vec, bytes([grey]) * 3072)
    cat.commit()
    new = manifest.Manifest.new("planted", Path("none"), "fc7", 4096, Preprocess())
    build.publish(ix, cat, new, "flat")
    cat.close()


def test_known_answer(tmp_path):
    ix = tmp_path / "ix"
    # fc7: a1 a2 . b1 . . . . . . b2 on a line; pixels: a1 . b1 b2 . a2 by grey level
    planted_index(
        ix,
        {
            "/p/a/1.jpg": (0.0, 0),
            "/p/a/2.jpg": (1.0, 200),
            "/p/b/1.jpg": (3.0, 100),
            "/p/b/2.jpg": (10.0, 110),
            "/p/c/1.jpg": (50.0, 250),  # alone in its folder: never a query
        },
    )
    r = cli("eval", "retrieval", "--index", ix, "--json")
    res = json.loads(r.stdout)
    assert (res["files"], res["labels"], res["queries"], res["left_out_single"]) == (5, 3, 4, 1)
    fc7, pixels, cosine = res["rows"]  # too few files to learn a whitened space
    assert (cosine["method"], cosine["space"]) == ("fc7 cosine", "cosine")
    # fc7 rankings (relevant = same folder): a1 [a2 b1 b2 c1] -> 1; a2 [a1 b1 b2 c1] -> 1;
    # b1 [a2 a1 b2 c1] -> third; b2 [b1 a2 a1 c1] -> first
    assert fc7["precision@1"] == pytest.approx(3 / 4)
    assert fc7["precision@6"] == pytest.approx(1 / 6)
    assert fc7["precision@10"] == pytest.approx(1 / 10)
    assert fc7["mAP"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)
    # pixel rankings: a1 [b1 b2 a2 ..] -> third; a2 [c1 b2 b1 a1] -> fourth;
    # b1 [b2 ..] and b2 [b1 ..] -> first
    assert pixels["precision@1"] == pytest.approx(2 / 4)
    assert pixels["mAP"] == pytest.approx((1 / 3 + 1 / 4 + 1 + 1) / 4)
    assert fc7["bytes_per_image"] == 16384 and pixels["bytes_per_image"] == 3072

    # the library gives the same figures
    def figures(rows):
        return [{k: v for k, v in r.items() if k != "query_ms"} for r in rows]

    assert figures(retrieval.retrieval(ix)["rows"]) == figures(res["rows"])
    # and a sample of queries is a subset of the same leave-one-out
    sampled = retrieval.retrieval(ix, max_queries=2, seed=1)
    assert sampled["sampled"] and sampled["queries"] == 2


def test_scores_of_a_ranking():
    labels = np.array([0, 0, 1, 0, 1])
    order = np.array([[2, 1, 4, 3]])  # query 0: wrong, right, wrong, right
    s = retrieval.ranking_scores(order, labels, np.array([0]))[0]
    assert s[0] == 0 and s[1] == pytest.approx(2 / 6)
    assert s[-1] == pytest.approx((1 / 2 + 2 / 4) / 2)


@pytest.fixture(scope="module")
def env(init_ckpt):
    return {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}


def test_generated_index_with_binary_rows(env, tmp_path):
    make(tmp_path / "photos", per_class=3, seed=2)
    ix = tmp_path / "ix"
    cli("index", tmp_path / "photos", "--index", ix, "--workers", "1", env=env)
    args = ("eval", "retrieval", "--index", ix)
    res = json.loads(cli(*args, "--json", "--binary", "--epochs", "2", "--rerank", "17").stdout)
    assert res["files"] == 18 and res["labels"] == 6 and res["queries"] == 18
    methods = [r["method"] for r in res["rows"]]
    assert methods[:2] == ["fc7 float, L2", "pixels 32x32, L2"]
    codes = [r for r in res["rows"] if r.get("bits")]
    assert [r.get("bits") for r in codes] == [32, 64, 256, 256]
    assert [r["bytes_per_image"] for r in codes[:3]] == [4, 8, 32]
    for r in res["rows"]:
        assert KEYS <= set(r) and all(0 <= r[k] <= 1 for k in KEYS)
    # a shortlist of every other file re-ranked by exact fc7 is the float ranking
    assert {k: res["rows"][-1][k] for k in KEYS} == pytest.approx(
        {k: res["rows"][0][k] for k in KEYS}
    )
    table = cli(*args, env={**env, "COLUMNS": "200"}).stdout
    assert "precision@6" in table and "pixels 32x32" in table
    assert f"{res['rows'][0]['precision@6']:.3f}" in table


def test_unlabelled_index_and_missing_index(tmp_path):
    ix = tmp_path / "ix"
    planted_index(ix, {"/p/a/1.jpg": (0.0, 0), "/p/b/1.jpg": (1.0, 1)})
    one_line_error(cli("eval", "retrieval", "--index", ix, check=False), "no two files share")
    r = cli("eval", "retrieval", "--index", tmp_path / "none", check=False)
    one_line_error(r, "no index at")
