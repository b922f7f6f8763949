"""How long `index` takes to learn the whitened space's principal components, before
(scikit-learn's randomized SVD, as up to this change) and after (exact through the Gram
matrix for a sample of at most spaces.GRAM_MAX vectors), each in a fresh process so the
imports a cold `alexsearch index` pays are counted; with the top-D subspace overlap and
the largest eigenvalue error of each against numpy's full SVD.

    python bench/principal_components.py [--vectors FC7.npy] [--n 1000,2048] [--dim 256]

Without --vectors: fc7-like synthetic vectors (ReLU of a low-rank Gaussian mix).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
x = np.load(sys.argv[1]); dim = int(sys.argv[2]); how = sys.argv[3]
t1 = time.perf_counter()
if how == "randomized":
    from sklearn.utils.extmath import randomized_svd
    xc = x - x.mean(0)
    _, s, vt = randomized_svd(xc, dim, n_oversamples=20, n_iter=4, random_state=0)
    values = s.astype(np.float64) ** 2 / (len(x) - 1)
else:
    from alexsearch.index.spaces import principal_components
    e = principal_components(x, dim)
    values, vt = e.values, e.vectors
t2 = time.perf_counter()
np.save(sys.argv[4], vt); np.save(sys.argv[4] + ".values.npy", values)
print(json.dumps({"learn_s": t2 - t1, "with_imports_s": t2 - t0}))
"""


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 400)) / np.arange(1, 401) ** 0.6
    mix = rng.standard_normal((400, 4096)).astype(np.float32)
    return np.maximum(z.astype(np.float32) @ mix + 0.2 * rng.standard_normal((n, 4096)), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vectors", type=Path)
    ap.add_argument("--n", default="1000,2048")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-pca"))
    a = ap.parse_args()
    from index_throughput import cpu_description

    print(f"machine: {cpu_description()}")
    a.work.mkdir(parents=True, exist_ok=True)
    src = np.load(a.vectors).astype(np.float32) if a.vectors else None
    print(
        f"{'n':>6s} {'method':28s} {'learn s':>8s} {'cold s':>7s} {'overlap':>8s} {'eig err':>8s}"
    )
    for n in map(int, a.n.split(",")):
        x = synthetic(n) if src is None else src[np.random.default_rng(0).permutation(len(src))[:n]]
        f = a.work / f"x{n}.npy"
        np.save(f, np.ascontiguousarray(x, np.float32))
        xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        exact, lam = vt[: a.dim], s[: a.dim] ** 2 / (n - 1)
        for how, label in (
            ("randomized", "before: randomized SVD"),
            ("library", "after: spaces (Gram)"),
        ):
            out = a.work / f"vt{n}-{how}.npy"
            r = subprocess.run(
                [sys.executable, "-c", CHILD, f, str(a.dim), how, out],
                capture_output=True, text=True, check=True, cwd=ROOT,
            )  # fmt: skip
            t = json.loads(r.stdout.strip().splitlines()[-1])
            got, values = np.load(out), np.load(str(out) + ".values.npy")
            overlap = np.linalg.norm(got @ exact.T) ** 2 / a.dim
            err = np.max(np.abs(values / lam - 1))
            print(
                f"{n:6d} {label:28s} {t['learn_s']:8.2f} {t['with_imports_s']:7.2f} "
                f"{overlap:8.4f} {err:8.2%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
