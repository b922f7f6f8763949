"""Scale: the measured rows behind the README's "Scale" table.

Prints the CPU and its flags, then, on synthetic vectors (fc7-like: ReLU of Gaussian
noise, 4096-d; the IVF kinds' and codes' sizes do not depend on the values):

  bytes a photo   each kind's FAISS file (vectors.build_faiss, the product's own kinds)
                  and the catalogue row (fc7 + thumbnail + path) divided by the count;
                  256-bit codes: the packed code and its id
  query latency   one query vector (median of repeats) at sizes this machine holds, for
                  flat (exact: the baseline every other row is compared with), ivfpq,
                  and 256-bit Hamming codes, with the fitted extrapolation
                  flat t = a + b*n, IVF t = a + b*(n*nprobe/nlist), Hamming t = a + b*n
  extraction      the network's FLOPs an image (torch's FlopCounterMode), the CPU's
                  measured forward rate, and from them GPU estimates (none measured yet)

    python bench/scale.py [--sizes 10000,40000] [--ivf-sizes 30000,100000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
DIM = 4096


def fc7_like(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 20_000):  # in chunks: 4 GB of float64 noise otherwise
        m = min(20_000, n - i)
        out[i : i + m] = np.maximum(rng.standard_normal((m, dim), np.float32), 0)
    return out


def latency(index, q: np.ndarray, repeats: int, k: int = 10) -> float:
    index.search(q[:1], k)  # warm: pages in, threads up
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        index.search(q[r % len(q) : r % len(q) + 1], k)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


PCA_DIM = 256
PCA_BYTES = DIM * PCA_DIM * 4 + DIM * 4  # the IVF kinds' PCA matrix and mean


def ivf_index(kind: str, n: int):
    """The product's `kind` (vectors.train_faiss: nlist = 4 sqrt(n), nprobe 16) over n
    vectors already at the 256 dimensions its PCA keeps: the codes, lists and search
    cost are those of the 4096-d index; learning the 4096-d PCA would add seconds a
    size and changes neither (its matrix is PCA_BYTES, its query cost timed apart)."""
    from alexsearch.index import vectors

    x = fc7_like(n, PCA_DIM, seed=4)
    nlist = int(min(4096, 4 * np.sqrt(n)))
    trained = vectors.train_faiss(kind, n, x[: 40 * nlist])
    return vectors.build_faiss(kind, np.arange(n, dtype=np.int64), x, trained=trained)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fit(xs, ts) -> tuple[float, float]:
    """(a, b) of t = a + b*x, least squares."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ts, float), 1)
    return max(a, 0.0), b


def catalogue_bytes(n: int = 2000) -> float:
    """Bytes a row of the real catalogue (fc7, 32x32 thumbnail, a typical path)."""
    from alexsearch.index.catalogue import Catalogue

    with tempfile.TemporaryDirectory() as d:
        cat = Catalogue(Path(d) / "catalogue.sqlite")
        vecs = fc7_like(n, seed=3)
        thumb = os.urandom(32 * 32 * 3)
        for i in range(n):
            cat.put(f"/photos/2024/holiday/IMG_{i:06d}.jpg", 3_000_000, i, "ab" * 20,
                    vecs[i], thumb)  # fmt: skip
        cat.commit()
        cat.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cat.close()
        return (Path(d) / "catalogue.sqlite").stat().st_size / n


def forward_flops() -> float:
    """FLOPs of one image's forward to fc7 (multiply-adds count 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from alexsearch.net.alexnet import AlexNet

    model = AlexNet().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.features(torch.zeros(1, 3, 224, 224))
    return float(fc.get_total_flops())


def cpu_forward_rate(batch: int = 32, repeats: int = 3) -> float:
    """Images a second through the fp32 forward on this CPU (no decoding)."""
    import torch

    from alexsearch.net.alexnet import AlexNet

    model = AlexNet().eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        model.features(x)
        t = time.perf_counter()
        for _ in range(repeats):
            model.features(x)
    return batch * repeats / (time.perf_counter() - t)


def main() -> None:
    import faiss
    from index_throughput import cpu_description

    from alexsearch.index import codes

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,40000", help="flat sizes (4096-d float32)")
    ap.add_argument("--ivf-sizes", default="30000,100000")
    ap.add_argument("--code-sizes", default="100000,1000000")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    print(f"CPU: {cpu_description()}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")  # fmt: skip
    faiss.omp_set_num_threads(1)  # one query: what a server's request thread does
    q = fc7_like(64, seed=1)

    print("\n# bytes a photo")
    row = catalogue_bytes()
    print(f"catalogue row (fc7 float32 + thumbnail + path): {row:,.0f} B")
    n = 30_000
    print(f"flat: {DIM * 4 + 8:,} B a photo (float32 fc7 + id)")
    for kind in ("ivfsq", "ivfpq"):
        ix = ivf_index(kind, n)
        size = len(faiss.serialize_index(ix))
        ix.reset()
        fixed = len(faiss.serialize_index(ix)) + PCA_BYTES
        print(f"{kind}: {(size - fixed + PCA_BYTES) / n:,.1f} B a photo + {fixed / 1e6:.1f} MB "
              f"fixed (n={n:,}; fixed: centroids, codebooks, the 4096->256 PCA)")  # fmt: skip
    print(f"codes 256-bit: {256 // 8 + 8} B a photo (code + id; .npz adds an 8-B signature)")

    print("\n# query latency, one vector, k=10, 1 thread (median)")
    flat_n, flat_t = [], []
    for size in map(int, a.sizes.split(",")):
        ix = faiss.IndexFlatL2(DIM)
        ix.add(fc7_like(size, seed=2))
        t = latency(ix, q, a.repeats)
        flat_n.append(size)
        flat_t.append(t)
        print(f"flat (baseline) n={size:,}: {t * 1e3:.2f} ms")
        del ix
    fa, fb = fit(flat_n, flat_t)
    print(f"  fit: t = {fa * 1e3:.3f} ms + {fb * 1e9:.3f} ns * n")

    pca = np.random.default_rng(6).standard_normal((DIM, PCA_DIM)).astype(np.float32)
    pca_t = statistics.median(
        [_timed(lambda: q[:1] @ pca) for _ in range(a.repeats)]
    )  # the query's 4096->256 PCA, which ivf_index leaves out
    scanned, ivf_t = [], []
    for size in map(int, a.ivf_sizes.split(",")):
        ix = ivf_index("ivfpq", size)
        ivf = faiss.extract_index_ivf(ix)
        t = latency(ix, q[:, :PCA_DIM], a.repeats) + pca_t
        scanned.append(size * ivf.nprobe / ivf.nlist)
        ivf_t.append(t)
        flat_same = fa + fb * size
        print(f"ivfpq n={size:,} (nlist {ivf.nlist}, nprobe {ivf.nprobe}): {t * 1e3:.2f} ms "
              f"(flat at this n, fitted: {flat_same * 1e3:.1f} ms)")  # fmt: skip
        del ix
    ia, ib = fit(scanned, ivf_t) if len(scanned) > 1 else (ivf_t[0], 0.0)
    print(f"  fit: t = {ia * 1e3:.3f} ms + {ib * 1e9:.2f} ns * (n * nprobe / nlist)")

    code_n, code_t = [], []
    rng = np.random.default_rng(5)
    for size in map(int, a.code_sizes.split(",")):
        packed = rng.integers(0, 256, (size, 32), dtype=np.uint8)
        bix = codes.build_binary_index(np.arange(size), packed, 256)
        qq = rng.integers(0, 256, (64, 32), dtype=np.uint8)
        bix.search(qq[:1], 10)
        ts = []
        for r in range(a.repeats):
            t = time.perf_counter()
            bix.search(qq[r % 64 : r % 64 + 1], 10)
            ts.append(time.perf_counter() - t)
        code_n.append(size)
        code_t.append(statistics.median(ts))
        print(f"codes 256-bit n={size:,} ({codes.binary_kind(size)}): {code_t[-1] * 1e3:.2f} ms")
    ca, cb = fit(code_n, code_t)
    print(f"  fit: t = {ca * 1e3:.3f} ms + {cb * 1e9:.3f} ns * n")

    print("\n# extraction")
    flops = forward_flops()
    torch_threads = os.cpu_count()
    rate = cpu_forward_rate()
    print(f"forward to fc7: {flops / 1e9:.2f} GFLOP an image; this CPU ({torch_threads} "
          f"cores, fp32): {rate:.0f} img/s = {rate * flops / 1e9:.0f} GFLOP/s")  # fmt: skip
    for name, peak in (("H100/H200 bf16 dense", 990e12), ("A100 bf16 dense", 312e12)):
        est = 0.3 * peak / flops
        print(
            f"estimate {name}: 30% of {peak / 1e12:.0f} TFLOP/s -> {est:,.0f} img/s "
            "(forward only; JPEG decoding, ~3.5 ms a photo a CPU thread, usually binds)"
        )


if __name__ == "__main__":
    main()
