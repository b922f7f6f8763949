"""Indexing throughput: a cold `alexsearch index` beside the usual PyTorch baseline.

Both run as fresh processes over the same folder of photos (default: the 1,000 ImageNet
photos of ../shared/data), with the same weights, one after the other, `--repeats`
times interleaved; each figure is end to end (process start, model load, decode, forward,
FAISS), and the median is reported.

Baseline, as people usually write it: PIL + torchvision transforms (Resize 256,
CenterCrop 224, ToTensor, Normalize), a DataLoader with as many workers as cores, the
same network in eager fp32 (default memory format), vectors into a flat FAISS index.

    python bench/index_throughput.py [--photos DIR] [--repeats 3] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "imagenet-sample.tar"


def baseline(photos: str, weights: str, workers: int) -> dict:
    """The usual eager loop; run in its own process by main()."""
    import faiss
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from alexsearch.images.files import is_image_name
    from alexsearch.weights import checkpoint

    t0 = time.perf_counter()
    ckpt = checkpoint.load(weights)
    model = ckpt.build("cpu")
    pre = ckpt.preprocess
    tf = T.Compose(
        [
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([m / 255 for m in pre.mean], [1 / 255] * 3),
        ]
    )
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(photos) for f in fs if is_image_name(f)
    )

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return tf(Image.open(files[i]).convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=32, num_workers=workers)
    index = faiss.IndexFlatL2(4096)
    with torch.no_grad():
        for x in loader:
            index.add(model.features(x).numpy())
    return {"images": index.ntotal, "seconds": time.perf_counter() - t0}


def index_once(photos: str, index_dir: str, env: dict) -> tuple[dict, float]:
    """One cold `alexsearch index --json`: (its summary, wall seconds)."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "alexsearch", "index", photos, "--index", index_dir, "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"alexsearch index failed: {r.stderr.strip()}")
    return json.loads(r.stdout), seconds


def run_ours(photos: str, weights: str, index_dir: str) -> dict:
    shutil.rmtree(index_dir, ignore_errors=True)
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": weights}
    s, seconds = index_once(photos, index_dir, env)
    again, again_s = index_once(photos, index_dir, env)  # nothing changed: incremental path
    if again["unchanged"] != s["total_ok"] + s["total_failed"]:
        sys.exit(f"re-index with nothing changed re-did work: {again}")
    n = s["total_ok"]
    return {"images": n, "seconds": seconds, "failed": s["total_failed"], "again": again_s}


def run_baseline(photos: str, weights: str, workers: int) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, __file__, "--as-baseline", photos, weights, str(workers)],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"baseline failed: {r.stderr.strip()}")
    return {**json.loads(r.stdout), "seconds": seconds}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--as-baseline":
        print(json.dumps(baseline(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", help="folder of photos [default: ../shared ImageNet sample]")
    ap.add_argument("--weights", help="checkpoint [default: a paper-initialised one]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, help="use only the first N photos")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="alexsearch-bench-"))
    try:
        photos = args.photos
        if photos is None:
            if not SHARED.exists():
                sys.exit(f"{SHARED} is absent: pass --photos DIR")
            with tarfile.open(SHARED) as tar:
                tar.extractall(tmp, filter="data")
            photos = str(tmp / "imagenet-sample")
        if args.limit:
            sub = tmp / "subset"
            sub.mkdir()
            names = sorted(n for n in os.listdir(photos) if not n.endswith(".md"))
            for n in names[: args.limit]:
                os.symlink(os.path.abspath(os.path.join(photos, n)), sub / n)
            photos = str(sub)
        weights = args.weights
        if weights is None:
            from alexsearch.weights import checkpoint

            weights = str(tmp / "init.ckpt")
            checkpoint.save(checkpoint.init_checkpoint(1000, seed=0), weights)
        cores = os.cpu_count() or 1
        ours, base = [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            ours.append(run_ours(photos, weights, str(tmp / "ix")))
            base.append(run_baseline(photos, weights, cores))
        n = ours[0]["images"]
        o = statistics.median(r["seconds"] for r in ours)
        b = statistics.median(r["seconds"] for r in base)
        print(f"photos: {n} indexed ({ours[0]['failed']} failed), {cores} cores, cold processes")
        print(f"  alexsearch index : {o:6.1f} s  {n / o:6.1f} img/s")
        print(f"  baseline (eager) : {b:6.1f} s  {base[0]['images'] / b:6.1f} img/s")
        print(f"  speed-up         : {b / o:6.2f}x  (targets: >= 2.5x and >= 100 img/s)")
        again = statistics.median(r["again"] for r in ours)
        print(f"  re-index, nothing changed: {again:.2f} s  (target < 2 s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
