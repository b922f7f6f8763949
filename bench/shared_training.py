"""What one shared IVF training saves a sharded collection (index/training.py).

Prints the CPU and its flags, then, on synthetic fc7-like vectors (ReLU of Gaussian
noise, 4096-d) split into shards by id:

  merge          the shards' IVF-PQ indexes, all built from one training, joined list
                 by list (merge.merge_faiss: what `alexsearch merge` does for shards
                 made with --trained), beside the baseline `merge` falls back to for
                 shards trained apart: train on the union and add every vector again;
                 with recall@10 of both against exact search
  training       one IVF-PQ training with FAISS's default polysemous codebook
                 reordering (the baseline) and without it ("np", what vectors.py
                 asks for: search never uses the reordering)

    python bench/shared_training.py [--n 40000] [--shards 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]


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
    from scale import fc7_like

    from alexsearch.index import merge, vectors

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    print(f"CPU: {cpu_description()}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")  # fmt: skip
    x = fc7_like(a.n, seed=3)
    q = fc7_like(200, seed=9)
    ids = np.arange(a.n, dtype=np.int64)
    split = np.array_split(ids, a.shards)

    print(f"\n# merging {a.shards} IVF-PQ shards of {a.n:,} 4096-d vectors in all")
    trained, t_train = timed(lambda: vectors.train_faiss("ivfpq", a.n, x))
    shards = [vectors.build_faiss("ivfpq", s, x[s], trained=trained) for s in split]
    print(f"the shared training, once (index --train-only): {t_train:.1f} s")
    joined, t_join = timed(lambda: merge.merge_faiss([(ix, s, s) for ix, s in zip(shards, split)]))

    def rebuild():
        return vectors.build_faiss("ivfpq", ids, x)  # trains on the union, adds all

    rebuilt, t_rebuild = timed(rebuild)
    r_join, r_rebuild = recall_at_10(joined, x, q), recall_at_10(rebuilt, x, q)
    print(f"baseline, trained again on the union and every vector added: {t_rebuild:.1f} s, "
          f"recall@10 {r_rebuild:.3f}")  # fmt: skip
    print(f"shared training, inverted lists joined: {t_join:.2f} s, recall@10 {r_join:.3f} "
          f"({t_rebuild / t_join:.0f}x faster)")  # fmt: skip

    print("\n# one IVF-PQ training (PCA 256, 32-byte codes), 20,000 vectors")
    sample = x[:20_000]
    nlist = vectors.ivf_lists(a.n)

    def train(code):
        ix = faiss.index_factory(sample.shape[1], f"PCA256,IVF{nlist},{code}")
        ix.train(sample)
        return ix

    _, t_poly = timed(lambda: train("PQ32"))
    _, t_np = timed(lambda: train("PQ32np"))
    print(f"baseline, FAISS's default (polysemous codebook reordering): {t_poly:.1f} s")
    print(f"without it (PQ32np, vectors.train_faiss): {t_np:.1f} s ({t_poly / t_np:.0f}x faster)")


if __name__ == "__main__":
    main()
