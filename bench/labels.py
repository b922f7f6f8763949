"""Labels: what computing each photo's top-5 classes from its stored fc7 costs an
indexing run, and what `query --label` costs, on a synthetic catalogue.

Builds a catalogue of N fc7-like vectors (ReLU of Gaussian noise, 4096-d) and a random
1000-class fc8, then in the same run times:

  labelling     labels.fill: read the unlabelled rows' fc7, fc8 + softmax + top-5 on
                numpy, insert, commit (what `index` adds after extracting; a backfill of
                an index made before labels is the same with every row)
  baseline      what publish already does with the same rows: read every fc7 and build
                the flat FAISS index (cat.vectors + vectors.build_faiss)
  query label   Catalogue.with_classes for one class (query --label's SQL), median

and prints each per photo beside the forward's own cost per photo on this machine
(the paper's net, fp32, batch 32, torch).

    python bench/labels.py [--n 20000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from index_throughput import cpu_description  # bench/: the CPU and its flags


def synthetic_catalogue(path: Path, n: int, dim: int = 4096):
    from alexsearch.index.catalogue import Catalogue

    rng = np.random.default_rng(0)
    cat = Catalogue(path)
    for start in range(0, n, 1000):
        for i in range(start, min(n, start + 1000)):
            v = np.maximum(rng.standard_normal(dim, dtype=np.float32), 0)
            cat.put(f"/photos/{i:07d}.jpg", 1000, 1, f"d{i}", v, b"")
        cat.commit()
    return cat


def forward_ms_per_photo() -> float:
    import torch

    from alexsearch.net.alexnet import AlexNet

    torch.manual_seed(0)
    model = AlexNet().eval()
    x = torch.randn(32, 3, 224, 224)
    with torch.inference_mode():
        model.features(x)  # warm
        t = time.perf_counter()
        model.features(x)
        return (time.perf_counter() - t) / 32 * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from alexsearch.index import labels, vectors

    print(cpu_description())
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-labels-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"catalogue-{args.n}.sqlite"
    db.unlink(missing_ok=True)
    cat = synthetic_catalogue(db, args.n)
    rng = np.random.default_rng(1)
    clf = labels.Classifier(
        (rng.standard_normal((1000, 4096), dtype=np.float32) * 0.01),
        np.zeros(1000, np.float32),
        [f"class {i}" for i in range(1000)],
    )

    runs = []
    for _ in range(2):  # the first read may come from the disk; the labelling's from memory
        t = time.perf_counter()
        ids, vecs = cat.vectors(4096)
        vectors.build_faiss("flat", ids, vecs)
        runs.append(time.perf_counter() - t)
        del vecs
    baseline = runs[-1]

    t = time.perf_counter()
    done = labels.fill(cat, 4096, lambda: clf)
    labelling = time.perf_counter() - t
    assert done == args.n

    times, found = [], []
    for c in range(20):
        t = time.perf_counter()
        found.append(len(cat.with_classes([c], 0.0)))
        times.append(time.perf_counter() - t)
    cat.close()
    fwd = forward_ms_per_photo()

    per = 1000 / args.n
    print(f"{args.n} photos, 1000 classes")
    row = "{:<42}{:.2f} s, {:.3f} ms/photo"
    print(row.format("labelling (read fc7, fc8, top-5, store):", labelling, labelling * per))
    print(row.format("baseline: publish's read + flat build:", baseline, baseline * per))
    print(f"baseline: the forward (eager fp32, batch 32): {fwd:.3f} ms/photo")
    print(f"labelling / forward: {labelling * per / fwd:.3f}")
    print(
        f"query --label's SQL for one class: median {statistics.median(times) * 1000:.2f} ms"
        f" ({statistics.median(found):.0f} photos)"
    )


if __name__ == "__main__":
    main()
