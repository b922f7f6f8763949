"""What one shared IVF training saves a sharded collection (index/training.py).

Prints the CPU and its flags, then, on synthetic fc7-like vectors (4096-d, ReLU of
Gaussian noise around 4,000 random centres, so that neighbours mean something) split into
shards by id:

  merge          the shards' IVF-PQ indexes, all built from one training, joined list
                 by list (merge.merge_faiss: what `alexsearch merge` does for shards
                 made with --trained), beside the baseline `merge` falls back to for
                 shards trained apart: train on the union and add every vector again;
                 with recall@10 of both against exact search
  training       one IVF-PQ training of raw fc7 as FAISS's factory makes it
                 ("PCA256,IVF,PQ32": its PCAMatrix decomposes the 4096x4096
                 covariance, and its PQ is reordered for polysemous filtering, which
                 search never uses; the baseline), the same without the reordering,
                 and vectors.train_faiss (the search spaces' PCA of the top 256
                 components, no reordering)

    python bench/shared_training.py [--n 40000] [--shards 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]


def clustered(n: int, seed: int, centres: int = 4000, dim: int = 4096) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(0).standard_normal((centres, dim), np.float32)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 8192):  # bounded temporaries
        m = min(8192, n - i)
        noise = rng.standard_normal((m, dim), np.float32)
        out[i : i + m] = np.maximum(c[rng.integers(0, centres, m)] + 0.3 * noise, 0)
    return out


def recall_at_10(index, x: np.ndarray, q: np.ndarray) -> float:
    import faiss

    exact = faiss.IndexFlatL2(x.shape[1])
    exact.add(x)
    _, want = exact.search(q, 10)
    _, got = index.search(q, 10)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)]))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    import faiss
    from index_throughput import cpu_description

    from alexsearch.index import merge, vectors

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    print(f"CPU: {cpu_description()}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")  # fmt: skip
    x = clustered(a.n, seed=3)
    q = clustered(200, seed=9)
    ids = np.arange(a.n, dtype=np.int64)
    split = np.array_split(ids, a.shards)

    print(f"\n# merging {a.shards} IVF-PQ shards of {a.n:,} 4096-d vectors in all")
    trained, t_train = timed(lambda: vectors.train_faiss("ivfpq", a.n, x))
    shards = [vectors.build_faiss("ivfpq", s, x[s], trained=trained) for s in split]
    print(f"the shared training, once (index --train-only): {t_train:.1f} s")
    parts = [(ix, s, s) for ix, s in zip(shards, split, strict=True)]
    joined, t_join = timed(lambda: merge.merge_faiss(parts))

    def rebuild():
        return vectors.build_faiss("ivfpq", ids, x)  # trains on the union, adds all

    rebuilt, t_rebuild = timed(rebuild)
    r_join, r_rebuild = recall_at_10(joined, x, q), recall_at_10(rebuilt, x, q)
    print(f"baseline, trained again on the union and every vector added: {t_rebuild:.1f} s, "
          f"recall@10 {r_rebuild:.3f}")  # fmt: skip
    print(f"shared training, inverted lists joined: {t_join:.2f} s, recall@10 {r_join:.3f} "
          f"({t_rebuild / t_join:.0f}x faster)")  # fmt: skip

    print("\n# one IVF-PQ training of 4096-d vectors, a sample of 30,000, 600 lists")
    sample, nlist = x[:30_000], 600

    def factory(code):
        ix = faiss.index_factory(sample.shape[1], f"PCA256,IVF{nlist},{code}")
        ix.train(sample)
        return ix

    _, t_poly = timed(lambda: factory("PQ32"))
    _, t_np = timed(lambda: factory("PQ32np"))
    _, t_ours = timed(lambda: vectors.train_faiss("ivfpq", a.n, sample, nlist=nlist))
    print(f"baseline, FAISS's factory (PCAMatrix, polysemous reordering): {t_poly:.1f} s")
    print(f"the same without the reordering (PQ32np): {t_np:.1f} s")
    print(f"vectors.train_faiss (top-256 PCA, no reordering): {t_ours:.1f} s "
          f"({t_poly / t_ours:.0f}x faster)")  # fmt: skip


if __name__ == "__main__":
    main()
