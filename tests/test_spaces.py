"""Search spaces (alexsearch/index/spaces.py): the whitened space finds neighbours the
paper's L2 misses, survives incremental re-indexing, is absent (answering in `paper`)
in old and too-small indexes, and query expansion changes the answer as it should."""

import json

import numpy as np
import pytest
from helpers import one_line_error, run_in_process
from make_shapes import make

import alexsearch
from alexsearch.index import build
from alexsearch.index.catalogue import Catalogue
from alexsearch.index.lock import write_lock
from alexsearch.index.manifest import Manifest, read_manifest
from alexsearch.index.network import LAYER, open_network
from alexsearch.index.spaces import DEFAULT_EXPAND

DIM = 4096
CLUSTERS, PER = 8, 8


def plant(index_dir, weights, vecs, names, space="whitened", space_dim=32, kind="flat"):
    """Put fc7 vectors straight into an index's catalogue and publish it, as
    `alexsearch index` would have (the index records `weights` as its network)."""
    net = open_network(weights, None, "cpu", "fp32")
    with write_lock(index_dir):
        m = read_manifest(index_dir) or Manifest.new(
            net.fingerprint, net.weights, LAYER, net.dimension, net.preprocess, "fp32"
        )
        cat = Catalogue(index_dir / "catalogue.sqlite")
        for name, v in zip(names, vecs, strict=True):
            cat.put(f"/planted/{name}.jpg", 1, 1, f"digest-{name}", v, b"")
        cat.commit()
        m = build.publish(index_dir, cat, m, kind, None, space, space_dim)
        cat.close()
    return m


def clustered(seed=0, clusters=CLUSTERS, per=PER, nuisance=3.0):
    """Clusters told apart by one unit along their own axis, plus a nuisance axis of
    huge variance: raw L2 ranks by the nuisance, whitening equalises it away."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(clusters), per)
    x = np.full((len(labels), DIM), 1.0, np.float32)
    x[np.arange(len(labels)), 10 + labels] += 1.0
    x[:, 100] += rng.normal(0, nuisance, len(labels))
    x[:, 200:232] += rng.normal(0, 0.01, (len(labels), 32))
    names = [f"c{c}/{i}" for i, c in enumerate(labels)]
    return x, labels, names


def same_cluster_rate(results, labels, k):
    right = [
        sum(int(h.path.split("/")[2][1:]) == labels[q] for h in r.hits[:k]) / k
        for q, r in enumerate(results)
    ]
    return float(np.mean(right))


@pytest.fixture
def planted(tmp_path, init_ckpt):
    x, labels, names = clustered()
    plant(tmp_path / "ix", init_ckpt, x, names)
    return tmp_path / "ix", x, labels


def test_whitened_finds_planted_neighbours_paper_does_not_api(planted):
    ix_dir, x, labels = planted
    with alexsearch.open_index(ix_dir) as ix:
        white = ix.query(x, k=6)  # the default space: whitened, learnt at publish
        paper = ix.query(x, k=6, space="paper")
        assert ix.info()["space"].startswith("whitened 32-d (learnt at generation 1 from 64")
    assert {(r.space, r.expand) for r in white} == {("whitened", DEFAULT_EXPAND)}
    assert {(r.space, r.expand) for r in paper} == {("paper", 0)}
    assert same_cluster_rate(white, labels, 6) > 0.95
    assert same_cluster_rate(paper, labels, 6) < 0.5
    # paper is the paper's ranking: Euclidean on raw fc7
    d = np.linalg.norm(x - x[3], axis=1)
    assert [h.distance for h in paper[3].hits[1:]] == pytest.approx(np.sort(d)[1:6], abs=5e-3)


def test_whitened_finds_planted_neighbours_through_the_cli(planted, tmp_path, capsys):
    ix_dir, x, labels = planted
    np.save(tmp_path / "q.npy", x)
    got = {}
    for space in ("whitened", "paper"):
        r = run_in_process(
            capsys, "query", "--vectors", tmp_path / "q.npy", "--index", ix_dir,
            "--space", space, "--expand", "0", "--json",
        )  # fmt: skip
        got[space] = json.loads(r.stdout)
        assert {(q["space"], q["expand"]) for q in got[space]} == {(space, 0)}

    def rate(res):
        return np.mean(
            [
                np.mean([n["path"].split("/")[2] == f"c{labels[i]}" for n in q["neighbours"]])
                for i, q in enumerate(res)
            ]
        )

    assert rate(got["whitened"]) > 0.95 and rate(got["paper"]) < 0.5
    info = json.loads(run_in_process(capsys, "info", "--index", ix_dir, "--json").stdout)
    assert info["space"].startswith("whitened 32-d")


def test_transform_survives_incremental_reindex_and_relearns_past_half(planted, init_ckpt):
    ix_dir, x, labels = planted
    first = read_manifest(ix_dir)
    with alexsearch.open_index(ix_dir) as ix:
        before = [[(h.id, h.distance) for h in r.hits] for r in ix.query(x, k=5)]
        # six more photos of cluster 0: a new generation, the same transform
        extra = x[:6].copy()
        extra[:, 200:232] += np.random.default_rng(3).normal(0, 0.01, (6, 32))
        m = plant(ix_dir, init_ckpt, extra, [f"c0/x{i}" for i in range(6)])
        assert m.generation == first.generation + 1
        assert m.space.transform_file == first.space.transform_file
        assert m.space.generation == first.space.generation == 1
        after = ix.query(x, k=5)  # the new generation, picked up live
    # the other clusters' queries answer exactly as before; cluster 0's find the new photos
    others = labels != 0
    was = [b for b, o in zip(before, others, strict=True) if o]
    now = [[(h.id, h.distance) for h in r.hits] for r, o in zip(after, others, strict=True) if o]
    assert [[i for i, _ in row] for row in now] == [[i for i, _ in row] for row in was]
    assert [d for row in now for _, d in row] == pytest.approx(
        [d for row in was for _, d in row], abs=1e-5
    )
    new_ids = {i for i in range(65, 71)}
    assert any(
        h.id in new_ids for r, lab in zip(after, labels, strict=True) if lab == 0 for h in r.hits
    )
    assert (ix_dir / first.space.transform_file).exists()
    # grown by half since it was learnt: learnt again, the old transform file removed
    more, _, more_names = clustered(seed=5, per=4)
    m = plant(ix_dir, init_ckpt, more, [f"m{n}" for n in more_names])
    assert m.space.generation == m.generation == 3 and m.space.learnt_from == 64 + 6 + 32
    assert not (ix_dir / first.space.transform_file).exists()
    assert not (ix_dir / first.space.index_file).exists()


def test_index_made_before_spaces_answers_paper_until_reindexed(planted, init_ckpt, capsys):
    ix_dir, x, labels = planted
    raw = json.loads((ix_dir / "manifest.json").read_text())
    for key in ("space", "space_requested", "space_dim", "space_note"):
        raw.pop(key)
    (ix_dir / "manifest.json").write_text(json.dumps(raw))
    with alexsearch.open_index(ix_dir) as ix:
        res = ix.query(x[:2], k=3)
        assert {(r.space, r.expand) for r in res} == {("paper", 0)}
        assert "made before search spaces" in ix.info()["space"]
    np.save(ix_dir.parent / "q.npy", x[:1])
    r = run_in_process(
        capsys, "query", "--vectors", ix_dir.parent / "q.npy", "--index", ix_dir,
        "--space", "whitened", check=False,
    )  # fmt: skip
    one_line_error(r, "has no whitened space", "--space paper")
    # re-indexed: the whitened space is learnt
    with write_lock(ix_dir):
        cat = Catalogue(ix_dir / "catalogue.sqlite")
        m = build.publish(ix_dir, cat, read_manifest(ix_dir), "flat", None, None, 32)
        cat.close()
    assert m.space is not None and m.space_requested == "whitened"
    with alexsearch.open_index(ix_dir) as ix:
        assert ix.query(x[:1], k=3)[0].space == "whitened"


def test_too_small_collection_falls_back_to_paper_and_info_says_so(tmp_path, init_ckpt, capsys):
    x, _, names = clustered(clusters=3, per=4)
    m = plant(tmp_path / "ix", init_ckpt, x, names, space_dim=32)
    assert m.space is None and m.space_requested == "whitened"
    info = json.loads(run_in_process(capsys, "info", "--index", tmp_path / "ix", "--json").stdout)
    # 32-d needs 64 vectors, 16-d 32, 8-d (a quarter, the least it goes down to) 16
    assert info["space"].startswith("paper (whitened 32-d needs at least 16 vectors")
    assert "this index has 12" in info["space"]
    with alexsearch.open_index(tmp_path / "ix") as ix:
        assert ix.query(x[:1])[0].space == "paper"


def test_small_collection_learns_fewer_dimensions_then_the_asked_ones_as_it_grows(
    tmp_path, init_ckpt, capsys
):
    x, labels, names = clustered()  # 64 vectors: 64-d needs 128, so 32-d is learnt
    m = plant(tmp_path / "ix", init_ckpt, x, names, space_dim=64)
    assert (m.space.dimension, m.space_dim) == (32, 64)
    info = json.loads(run_in_process(capsys, "info", "--index", tmp_path / "ix", "--json").stdout)
    assert info["space"].startswith("whitened 32-d")
    with alexsearch.open_index(tmp_path / "ix") as ix:
        assert same_cluster_rate(ix.query(x, k=6), labels, 6) > 0.9
        assert same_cluster_rate(ix.query(x, k=6, space="paper"), labels, 6) < 0.5
        # duplicates' thresholds were tuned on the full whitening: raw fc7 here
        assert ix.duplicates().to_dict()["thresholds"]["space"] == "paper"
    more, _, more_names = clustered(seed=1, per=8)
    m = plant(tmp_path / "ix", init_ckpt, more, [f"more-{n}" for n in more_names], space_dim=64)
    assert (m.space.dimension, m.space.generation, m.space.learnt_from) == (64, 2, 128)


def test_expand_changes_the_answer_as_expected(tmp_path, init_ckpt, capsys):
    # along one axis: query at 0, a at 1, c at -1.5, b at 2. Plain: a, c. Expanded by
    # one neighbour the query moves to (0 + 1) / 2 = 0.5: a, b.
    base = np.full((3, DIM), 1.0, np.float32)
    base[:, 7] += [1.0, -1.5, 2.0]
    plant(tmp_path / "ix", init_ckpt, base, ["a", "c", "b"], space="paper")
    q = np.full((1, DIM), 1.0, np.float32)
    np.save(tmp_path / "q.npy", q)
    names = {}
    for n in (0, 1):
        r = run_in_process(
            capsys, "query", "--vectors", tmp_path / "q.npy", "--index", tmp_path / "ix",
            "--k", "2", "--expand", n, "--json",
        )  # fmt: skip
        (res,) = json.loads(r.stdout)
        assert (res["space"], res["expand"]) == ("paper", n)
        names[n] = [h["path"].rsplit("/", 1)[1] for h in res["neighbours"]]
    assert names == {0: ["a.jpg", "c.jpg"], 1: ["a.jpg", "b.jpg"]}
    with alexsearch.open_index(tmp_path / "ix") as ix:
        assert [h.path[-5:] for h in ix.query(q, k=2, expand=1)[0].hits] == ["a.jpg", "b.jpg"]
        assert ix.info()["space"] == "paper (asked for with --space paper)"


def test_real_photos_whitened_by_default_paper_reproduces_l2(tmp_path, init_ckpt, capsys):
    make(tmp_path / "photos", per_class=3, seed=2)
    ix_dir = tmp_path / "ix"
    s = alexsearch.build_index(
        tmp_path / "photos", index=ix_dir, weights=init_ckpt, device="cpu", workers=0,
        precision="fp32", space_dim=4,
    )  # fmt: skip
    assert s.space.startswith("whitened 4-d")
    query = sorted((tmp_path / "photos").rglob("*.jpg"))[0]
    out = {}
    for space in ("whitened", "paper"):
        r = run_in_process(capsys, "query", query, "--index", ix_dir, "--space", space, "--json")
        out[space] = json.loads(r.stdout)[0]
    assert (out["whitened"]["space"], out["whitened"]["expand"]) == ("whitened", DEFAULT_EXPAND)
    assert (out["paper"]["space"], out["paper"]["expand"]) == ("paper", 0)
    with alexsearch.open_index(ix_dir) as ix:
        qv = ix.vector(ix._current().catalogue.id_of(str(query)))
        d = sorted(
            float(np.linalg.norm(ix.vector(n["id"]) - qv)) for n in out["paper"]["neighbours"]
        )
    assert [n["distance"] for n in out["paper"]["neighbours"]] == pytest.approx(d, abs=1e-3)
    # other weights are refused whatever the space (the fingerprint check)
    other = tmp_path / "other.ckpt"
    run_in_process(capsys, "weights", "init", "--out", other, "--classes", "10", "--seed", "9")
    r = run_in_process(capsys, "query", query, "--index", ix_dir, "--weights", other, check=False)
    one_line_error(r, "was built with weights")


def test_eval_retrieval_rows_per_space(planted, capsys):
    ix_dir, x, labels = planted
    r = run_in_process(capsys, "eval", "retrieval", "--index", ix_dir, "--expand", "1",
                       "--expand", "2", "--json")  # fmt: skip
    rows = {row["method"]: row for row in json.loads(r.stdout)["rows"]}
    assert list(rows) == [
        "fc7 float, L2",
        "fc7 cosine",
        "whitened 32",
        "whitened 32 + expansion 1",
        "whitened 32 + expansion 2",
    ]  # fmt: skip  (no thumbnails planted: no pixel row)
    assert rows["whitened 32"]["transform"] == "the index's, generation 1"
    assert rows["whitened 32"]["bytes_per_image"] == 128
    assert rows["fc7 float, L2"]["bytes_per_image"] == 16384
    assert all(row["query_ms"] > 0 for row in rows.values())
    assert rows["whitened 32"]["precision@6"] > 0.9 > 0.5 > rows["fc7 float, L2"]["precision@6"]
    table = run_in_process(capsys, "eval", "retrieval", "--index", ix_dir).stdout
    assert "whitened" in table and "query" in table


def test_hnsw_kind_sits_behind_the_transform(tmp_path, init_ckpt):
    import faiss

    x, labels, names = clustered()
    m = plant(tmp_path / "ix", init_ckpt, x, names, kind="hnsw")
    assert (m.kind, m.space.kind) == ("hnsw", "hnsw")
    pre = faiss.read_index(str(tmp_path / "ix" / m.space.index_file))
    inner = faiss.downcast_index(faiss.downcast_index(pre.index).index)
    assert isinstance(pre, faiss.IndexPreTransform) and isinstance(inner, faiss.IndexHNSWFlat)
    with alexsearch.open_index(tmp_path / "ix") as ix:
        assert same_cluster_rate(ix.query(x, k=6), labels, 6) > 0.95


@pytest.mark.parametrize("n", [300, 2600])  # exact Gram path, randomized SVD above GRAM_MAX
def test_published_transform_matches_an_exact_svd(tmp_path, init_ckpt, n):
    """The whitening `index` publishes projects on the collection's exact top principal
    components, divides by sqrt(eigenvalue + shrinkage x mean) and L2-normalises:
    compared with numpy's full SVD of the centred vectors (up to each axis's sign)."""
    from alexsearch.index import spaces

    rng = np.random.default_rng(3)
    dim = 16
    scales = np.geomspace(8, 0.5, 40)  # a decaying spectrum: the top 16 are well apart
    x = (rng.normal(size=(n, 40)) * scales) @ np.linalg.qr(rng.normal(size=(DIM, 40)))[0].T
    x = (x + rng.normal(0, 0.01, (n, DIM)) + 1).astype(np.float32)
    m = plant(tmp_path / "ix", init_ckpt, x, [f"v{i}" for i in range(n)], space_dim=dim)
    assert m.space.dimension == dim and m.space.sample == n
    pca = spaces.read_transform(tmp_path / "ix", m.space.transform_file)
    got = spaces.apply(spaces.chain(pca), x)

    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    lam = s[:dim] ** 2 / (n - 1)
    want = (xc @ vt[:dim].T) / np.sqrt(lam + spaces.SHRINK * lam.mean())
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    signs = np.sign((got * want).sum(0))
    assert np.abs(got - want * signs).max() < 2e-3
    got_lam = faiss_vector(pca.eigenvalues)
    np.testing.assert_allclose(got_lam, lam, rtol=1e-3)


def faiss_vector(v):
    import faiss

    return faiss.vector_to_array(v)
