"""Binary codes: retrieval quality on CIFAR-10 and Hamming search speed.

1. Quality: leave-one-out precision@k and mAP on CIFAR-10 test images (parent folder =
   class), float fc7 beside 32-, 64- and 256-bit codes and 256-bit codes with the top
   --rerank re-ranked by exact fc7 (`alexsearch eval retrieval --binary`, the library call).
   Features come from an index built with `alexsearch index` over --per-class images of
   each class of ../shared/data/cifar10-jpeg.tar.gz; it is cached under --work, so a
   second run skips the (slow, CPU) extraction. Weights: --weights, else an untrained
   paper-initialised checkpoint (`weights init`, seed 0), which the output says.
2. Speed: k-NN (k=10) over --n-codes random 256-bit codes, one query at a time and in a
   batch: FAISS IndexBinaryFlat (what `query --binary` uses) beside a numpy baseline
   (XOR + np.bitwise_count + argpartition) measured in the same run.

    python bench/codes.py [--per-class 300] [--epochs 50] [--n-codes 1000000] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cli(*args, env=None):
    r = subprocess.run([sys.executable, "-m", "alexsearch", *map(str, args)], env=env, text=True)
    if r.returncode:
        sys.exit(f"alexsearch {' '.join(map(str, args))} failed ({r.returncode})")


def cifar_index(work: Path, per_class: int, weights: Path | None) -> tuple[Path, str]:
    photos = work / f"cifar10-test-{per_class}"
    if not photos.exists():
        if not CIFAR.exists():
            sys.exit(f"{CIFAR} not found (../shared/data is absent)")
        tmp = work / "extract"
        with tarfile.open(CIFAR) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("cifar10/test/")]
            by_class: dict[str, list] = {}
            for m in sorted(members, key=lambda m: m.name):
                if m.isfile():
                    by_class.setdefault(m.name.split("/")[2], []).append(m)
            chosen = [m for ms in by_class.values() for m in ms[:per_class]]
            tar.extractall(tmp, members=chosen, filter="data")
        (tmp / "cifar10" / "test").rename(photos)
    if weights is None:
        weights = work / "init.ckpt"
        if not weights.exists():
            cli("weights", "init", "--out", weights, "--classes", "10", "--seed", "0")
        described = f"untrained paper-init checkpoint ({weights}, seed 0): no trained one given"
    else:
        described = f"{weights}"
    ix = work / f"ix-{per_class}-{weights.stem}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli("index", photos, "--index", ix, "--weights", weights, "--workers", "1", env=env)
    return ix, described


def quality(ix: Path, epochs: int, rerank: int) -> dict:
    from alexsearch.evaluate import retrieval

    t = time.perf_counter()
    res = retrieval.retrieval(ix, binary=True, epochs=epochs, rerank=rerank)
    res["seconds"] = time.perf_counter() - t
    return res


def speed(n: int, bits: int, nq: int, thread_counts: list[int]) -> None:
    import faiss

    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    qs = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
    k = 10
    index = faiss.IndexBinaryFlat(bits)
    index.add(db)
    print(f"\nHamming k-NN (k={k}) over {n:,} random {bits}-bit codes ({n * bits // 8 >> 20} MiB):")
    d_all = None
    for threads in thread_counts:
        faiss.omp_set_num_threads(threads)
        index.search(qs[:2], k)  # warm up
        t = time.perf_counter()
        for q in qs:
            index.search(q[None], k)
        one = (time.perf_counter() - t) / nq
        t = time.perf_counter()
        d_all, _ = index.search(qs, k)
        batch = (time.perf_counter() - t) / nq
        print(
            f"  FAISS IndexBinaryFlat, {threads} thread(s), one query at a time: "
            f"{one * 1e3:8.2f} ms"
        )
        print(
            f"  FAISS IndexBinaryFlat, {threads} thread(s), batch of {nq}:        "
            f"{batch * 1e3:8.2f} ms"
        )

    db64 = db.view(np.uint64)

    def numpy_knn(q):
        d = np.bitwise_count(db64 ^ q.view(np.uint64)).sum(1, dtype=np.int32)
        top = np.argpartition(d, k)[:k]
        return d[top[np.argsort(d[top], kind="stable")]]

    numpy_knn(qs[0])
    t = time.perf_counter()
    for j, q in enumerate(qs):
        assert np.array_equal(numpy_knn(q), np.sort(d_all[j])), "numpy and FAISS disagree"
    base = (time.perf_counter() - t) / nq
    print(f"  numpy XOR + bitwise_count + argpartition (baseline):  {base * 1e3:8.2f} ms")
    print("  (per query; target: within 5 ms on the 2-core machine)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--index", type=Path, help="Use this labelled index instead of CIFAR-10.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/alexsearch-bench-codes"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--rerank", type=int, default=100)
    ap.add_argument("--n-codes", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--threads", default="1,2", help="FAISS thread counts to time.")
    ap.add_argument("--skip-quality", action="store_true")
    a = ap.parse_args()

    if not a.skip_quality:
        a.work.mkdir(parents=True, exist_ok=True)
        if a.index:
            ix, weights = a.index, "the index's weights"
        else:
            ix, weights = cifar_index(a.work, a.per_class, a.weights)
        res = quality(ix, a.epochs, a.rerank)
        print(
            f"\nretrieval on {ix}: {res['files']} files, {res['labels']} labels, weights: {weights}"
        )
        print(f"autoencoders: {a.epochs} epochs each; {res['seconds']:.0f} s in all")
        print(f"{'method':48} {'bytes':>6} {'P@1':>6} {'P@6':>6} {'P@10':>6} {'mAP':>6}")
        for r in res["rows"]:
            print(
                f"{r['method']:48} {r['bytes_per_image']:>6} {r['precision@1']:6.3f} "
                f"{r['precision@6']:6.3f} {r['precision@10']:6.3f} {r['mAP']:6.3f}"
            )
        fl = res["rows"][0]["precision@6"]
        for r in res["rows"][2:]:
            gap = (fl - r["precision@6"]) * 100
            print(f"  {r['method']}: precision@6 {gap:+.1f} points below float fc7")
    speed(a.n_codes, 256, a.queries, [int(t) for t in a.threads.split(",")])


if __name__ == "__main__":
    main()
