"""IVF kinds at scale (issue 17): shards added to one trained IVF-PQ index and merged
(merge.merge_faiss, no retraining) answer as well as the index built in one piece."""

import faiss
import numpy as np

from alexsearch.index import merge, vectors

N, DIM, QUERIES, K = 200_000, 16, 500, 10


def clustered(n, dim, seed):
    """Vectors around 2,000 centres: structure an IVF can find, like fc7's classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    return centres[rng.integers(0, 2000, n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)


def recall(index, queries, truth) -> float:
    _, got = index.search(queries, K)
    return np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth, strict=True)])


def test_ivfpq_built_as_4_shards_and_merged_recalls_like_one_piece():
    x = clustered(N, DIM, 0)
    q = clustered(QUERIES, DIM, 1)
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # catalogue ids, not positions
    exact = faiss.IndexFlatL2(DIM)
    exact.add(x)
    truth = ids[exact.search(q, K)[1]]

    def kind(sample):  # the project's IVF-PQ (vectors.py) at a dimension this small,
        # 447 lists (what it picks for 12,500 vectors): fewer to train on a slow CPU
        return vectors.train_faiss("ivfpq", 12_500, sample[:20_000], pq=8)

    one = vectors.build_faiss("ivfpq", ids, x, trained=kind(x[::10]))
    shards = np.array_split(np.arange(N), 4)
    trained = kind(x[shards[0]])  # trained once, on the first shard, shared by all
    parts = []
    for s in shards:
        local = np.arange(len(s), dtype=np.int64)  # each shard numbers its own catalogue
        parts.append((vectors.build_faiss("ivfpq", local, x[s], trained=trained), local, ids[s]))
    merged = merge.merge_faiss(parts)
    assert merged.ntotal == N
    for index in (one, merged):
        faiss.extract_index_ivf(index).nprobe = 16
    r_one, r_merged = recall(one, q, truth), recall(merged, q, truth)
    assert r_one > 0.5  # a working index, not two equally broken ones
    assert abs(r_merged - r_one) <= 0.01, (r_merged, r_one)
    # the merged vectors carry the merged catalogue's ids
    held = merge.ids_of(merged)
    assert sorted(held.tolist()) == ids.tolist()
    assert set(merged.search(q, K)[1].ravel().tolist()) <= set(ids.tolist())

    # shards trained apart are refused rather than merged into nonsense
    alone = vectors.build_faiss("ivfpq", parts[1][1], x[shards[1]], trained=kind(x[shards[1]]))
    try:
        merge.merge_faiss([parts[0], (alone, parts[1][1], parts[1][2])])
    except Exception as e:
        assert "trained apart" in str(e)
    else:
        raise AssertionError("merged indexes trained apart")
