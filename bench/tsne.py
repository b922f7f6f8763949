"""t-SNE speed: openTSNE (FFT-accelerated) beside scikit-learn's Barnes-Hut TSNE, same run.

Synthetic clustered 4096-d vectors (fc7-like: non-negative, 20 clusters) go through the
same PCA to 50 that `alexsearch viz tsne` uses, then each library embeds them with its
defaults at perplexity 30 on the same cores. Prints both times and a cluster-separation
figure (mean 10-NN label agreement in 2-D) so a faster but worse embedding shows.

    python bench/tsne.py [--n 10000] [--threads 2] [--skip-sklearn]

Measured on the project's 2-core CPU while shared with four other jobs (load 6-10):
10k points, openTSNE 65 s vs scikit-learn 375 s, and in a second run 138 s vs 277 s;
50k points, openTSNE 341 s.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def clustered(n: int, dim: int = 4096, clusters: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, (clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + rng.normal(0, 0.8, (n, dim)).astype(np.float32)
    return np.maximum(x, 0, out=x), labels


def knn_agreement(y: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(y).kneighbors(y, return_distance=False)[:, 1:]
    return float((labels[idx] == labels[:, None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-sklearn", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))

    from alexsearch.viz import tsne

    x, labels = clustered(a.n)
    t = time.perf_counter()
    x50 = tsne.pca50(x)
    t_pca = time.perf_counter() - t
    print(f"{a.n} points, 4096-d -> PCA 50 in {t_pca:.1f} s, {a.threads} threads", flush=True)

    t = time.perf_counter()
    y = tsne.tsne_2d(x50, method="opentsne", threads=a.threads)
    t_open = time.perf_counter() - t
    agree = knn_agreement(y, labels)
    print(f"openTSNE (FFT)           {t_open:6.1f} s   10-NN agreement {agree:.3f}", flush=True)
    if not a.skip_sklearn:
        t = time.perf_counter()
        y = tsne.tsne_2d(x50, method="sklearn", threads=a.threads)
        t_sk = time.perf_counter() - t
        print(
            f"scikit-learn (BH) [base] {t_sk:6.1f} s   10-NN agreement "
            f"{knn_agreement(y, labels):.3f}   speed-up {t_sk / t_open:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
