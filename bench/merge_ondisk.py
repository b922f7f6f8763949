"""Merging IVF shards on disk vs in memory (issue 17): time and peak memory.

The same written shards (one trained IVF index, vectors.build_faiss with `trained`) are
merged twice, each in a fresh process, into a written index:

  in memory (baseline)  faiss.read_index of every shard, merge.merge_faiss, write_faiss
  on disk               ondisk.merge_on_disk from the shard files (memory-mapped), its
                        lists into vectors-1.ivfdata, then write_faiss of the rest

Peak memory is given twice: peak anonymous RSS (RssAnon, sampled every 2 ms: memory the
process owns, that the kernel cannot drop) and VmHWM (the peak of all resident pages,
counting file pages read or written through a mapping, which the page cache lends and
reclaims under pressure). "opened": the anonymous RSS that vectors.read_faiss of the
written index and 8 queries add in a fresh process (both forms map their lists; the id
map and its reverse map are in RAM); "query": one query's median latency there.
Vectors are 256-d (the IVF kinds' PCA output, as in
bench/scale.py), fc7-like (ReLU of Gaussian noise); the shards are written once under
--work and reused while their parameters are the same.

    python bench/merge_ondisk.py [--n 400000] [--shards 4] [--kind ivfsq] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
DIM = 256


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))


def prepare(work: Path, n: int, shards: int, kind: str) -> None:
    from scale import fc7_like

    from alexsearch.index import vectors

    params = {"n": n, "shards": shards, "kind": kind, "dim": DIM}
    done = work / "params.json"
    if done.exists() and json.loads(done.read_text()) == params:
        return
    work.mkdir(parents=True, exist_ok=True)
    x = fc7_like(n, DIM, seed=4)
    # 1,024 lists (what vectors.train_faiss picks for 65,536 vectors): k-means on 40k
    # samples in seconds here; the list count changes neither merge's cost per vector
    trained = vectors.train_faiss(kind, 65_536, x[:40_000])
    ids = {}
    for k, s in enumerate(np.array_split(np.arange(n), shards)):
        local = np.arange(len(s), dtype=np.int64)
        index = vectors.build_faiss(kind, local, x[s], trained=trained)
        vectors.write_faiss(work, index, k, prefix="shard")
        ids[f"old{k}"], ids[f"new{k}"] = local, s.astype(np.int64) * 2 + 1
        del index
    np.savez(work / "ids.npz", **ids)
    done.write_text(json.dumps(params))


def opened(folder: Path) -> None:
    """The anonymous RSS vectors.read_faiss of a merged index and 8 queries add, in a
    fresh process (what a query process pays), and one query's median latency (k=10,
    nprobe 16, one thread, pages in the page cache); prints them as JSON."""
    import faiss
    from scale import fc7_like, latency

    from alexsearch.index import vectors

    before = status_kb("RssAnon")
    index = vectors.read_faiss(folder, "vectors-1.faiss")
    faiss.extract_index_ivf(index).nprobe = 16
    q = fc7_like(50, DIM, seed=1)
    index.search(q[:8], 10)
    grown = status_kb("RssAnon") - before
    faiss.omp_set_num_threads(1)  # one query: what a server's request thread does
    ms = latency(index, q, 100) * 1e3
    print(json.dumps({"open_anon_mb": grown / 1024, "query_ms": ms}))


def child(method: str, work: Path) -> None:
    """One merge in this process; prints its figures as JSON."""
    import faiss

    from alexsearch.index import merge, ondisk, vectors

    if method.startswith("open-"):
        return opened(work / method[5:])

    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status_kb("RssAnon"))
            time.sleep(0.002)

    params = json.loads((work / "params.json").read_text())
    ids = np.load(work / "ids.npz")
    out = work / method
    out.mkdir(exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    base = status_kb("RssAnon")
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    files = [work / f"shard-{k}.faiss" for k in range(params["shards"])]
    parts = [(f, ids[f"old{k}"], ids[f"new{k}"]) for k, f in enumerate(files)]
    if method == "memory":
        merged = merge.merge_faiss([(faiss.read_index(str(p)), o, n) for p, o, n in parts])
    else:
        merged = ondisk.merge_on_disk(parts, out / "vectors-1.ivfdata")
    merged_at = time.perf_counter()
    vectors.write_faiss(out, merged, 1)
    end = time.perf_counter()
    stop.set()
    t.join()
    check = vectors.read_faiss(out, "vectors-1.faiss")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(json.dumps({
        "seconds": end - start,
        "write_s": end - merged_at,  # of which vectors.write_faiss (serialise + write)
        "peak_anon_mb": (max(peak[0], status_kb("RssAnon")) - base) / 1024,
        "hwm_mb": status_kb("VmHWM") / 1024,
        "ntotal": int(check.ntotal),
        "written_mb": size / 1e6,
    }))  # fmt: skip


def run_child(method: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--work", str(work)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    import faiss
    from index_throughput import cpu_description

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--kind", default="ivfsq", choices=("ivfsq", "ivfpq"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "merge_ondisk")
    ap.add_argument("--child", choices=("memory", "disk", "open-memory", "open-disk"))
    a = ap.parse_args()
    if a.child:
        child(a.child, a.work)
        return
    print(f"CPU: {cpu_description()}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")  # fmt: skip
    prepare(a.work, a.n, a.shards, a.kind)
    shards = sum((a.work / f"shard-{k}.faiss").stat().st_size for k in range(a.shards))
    print(f"{a.shards} {a.kind} shards of {a.n:,} {DIM}-d vectors in all: "
          f"{shards / 1e6:,.0f} MB of shard files")  # fmt: skip
    rows = {}
    for method in ("memory", "disk"):  # each in a fresh process: its own peak
        rows[method] = run_child(method, a.work)
        rows[method].update(run_child(f"open-{method}", a.work))
    print(f"{'':26}{'seconds':>9}{'(writing)':>11}{'peak anon RSS':>15}{'VmHWM':>10}{'written':>11}"
          f"{'opened':>10}{'query':>10}")  # fmt: skip
    for method, label in (("memory", "in memory (baseline)"), ("disk", "on disk (.ivfdata)")):
        r = rows[method]
        assert r["ntotal"] == a.n, r
        print(f"{label:26}{r['seconds']:>8.2f}s{r['write_s']:>10.2f}s{r['peak_anon_mb']:>12,.0f} MB"
              f"{r['hwm_mb']:>7,.0f} MB{r['written_mb']:>8,.0f} MB"
              f"{r['open_anon_mb']:>7,.0f} MB{r['query_ms']:>7.2f} ms")  # fmt: skip
    m, d = rows["memory"], rows["disk"]
    print(f"on disk / in memory: time x{d['seconds'] / m['seconds']:.2f}, "
          f"peak anon RSS x{d['peak_anon_mb'] / m['peak_anon_mb']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
