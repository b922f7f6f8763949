"""Search spaces for fc7: which post-processing retrieves best, measured.

For each labelled set (photos sorted into folders by subject; a neighbour is right when
it has the query's folder), fc7 is extracted once with `alexsearch index` (cached under
--work, with the vectors as .npy), then every row ranks the whole set for each query
(leave-one-out, a fixed sample of --max-queries queries) and prints precision@1/6/10
and mAP beside the paper's ranking (Euclidean on raw fc7, Fig. 4), with bytes per image
and the search latency of one k=6 query (exact FAISS index of that space, one query at
a time; the network's forward, the same for every row, is not included).

Rows: paper L2; cosine (L2-normalised fc7); PCA to D without whitening, cosine; PCA-
whitened to D (FAISS PCAMatrix, eigen_power -0.5, learnt on the set itself as `index`
learns it, then L2-normalised) for D in --dims, with shrinkage s (s x the mean of the
kept eigenvalues added to each before whitening) for s in --shrink; then, at the best
whitened D and shrinkage, the same whitening after a power normalisation of fc7 (signed
square root, a standard trick for ReLU activations) and after L2 normalisation; average
query expansion (the query averaged with its top N, searched again; `w` = weighted by
cosine similarity) for N in --expand and alpha-QE (weights cosine^3, N = 5, 10) on the
best whitened row, and N = 1, 2 on paper and cosine; hubness correction (CSLS: a stored
vector's score less beta x its mean cosine to its k nearest, as L2 in D + 2 dimensions);
last, database-side augmentation
(DBA: every stored vector replaced by the normalised sum of itself and its top N,
weighted as QE is), measured on a split (half the set the database, queries from the
other half: leave-one-out would leak each query into its neighbours' averages) beside
paper and plain whitened on the same split.

    python bench/retrieval_spaces.py [--set NAME=FOLDER ...] [--weights CKPT] [--work DIR]

Default sets (--sets to choose): CIFAR-10's test split (10,000 images) and 500 a class of
its train split (5,000), from --data/cifar10-jpeg.tar.gz, and `imagenet-coarse`: the
animals, food, landscapes and plants of --data/imagenet-sample.tar (one photo per ILSVRC
class, full size) grouped by the class index into 10 coarse labels (fish, birds,
reptiles and amphibians, invertebrates, dogs, wild carnivores, other mammals, food,
landscapes, plants and fungi; 469 photos; man-made objects, one heterogeneous half of
ImageNet, are left out); default weights: an untrained, paper-initialised 10-class
checkpoint (`weights init --seed 1`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alexsearch.index.spaces import SAMPLE, principal_components  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

# ILSVRC class indices (the wnids' sorted order) of each coarse label of imagenet-coarse
COARSE = {
    "fish": [(0, 6), (389, 397)],
    "birds": [(7, 24), (80, 100), (127, 146)],
    "reptiles_amphibians": [(25, 68)],
    "invertebrates": [(69, 79), (107, 126), (300, 329)],
    "dogs": [(151, 268)],
    "wild_carnivores": [(269, 299)],
    "other_mammals": [(101, 106), (147, 150), (330, 388)],
    "food": [(924, 969)],
    "landscapes": [(970, 980)],
    "plants_fungi": [(984, 997)],
}


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "alexsearch", *map(str, args)], text=True)
    if r.returncode:
        sys.exit(f"alexsearch {' '.join(map(str, args))} failed ({r.returncode})")


def default_sets(work: Path, data: Path, names: list[str]) -> dict[str, Path]:
    """CIFAR-10 test (all), train (500 a class) and imagenet-coarse, made under work/."""
    out = {
        "cifar10-test": work / "cifar10" / "test",
        "cifar10-train500": work / "trainsub",
        "imagenet-coarse": work / "imagenet-coarse",
    }
    out = {k: v for k, v in out.items() if k in names}
    cifar, imagenet = data / "cifar10-jpeg.tar.gz", data / "imagenet-sample.tar"
    if {"cifar10-test", "cifar10-train500"} & set(out) and not (work / "cifar10").exists():
        if not cifar.exists():
            sys.exit(f"{cifar} not found (../shared/data is absent); give --set NAME=FOLDER")
        with tarfile.open(cifar) as tar:
            tar.extractall(work, filter="data")
    sub = out.get("cifar10-train500")
    if sub is not None and not sub.exists():
        for cls in sorted((work / "cifar10" / "train").iterdir()):
            (sub / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:500]:
                (sub / cls.name / f.name).write_bytes(f.read_bytes())
    coarse = out.get("imagenet-coarse")
    if coarse is not None and not coarse.exists():
        if not imagenet.exists():
            sys.exit(f"{imagenet} not found (../shared/data is absent); give --set NAME=FOLDER")
        with tarfile.open(imagenet) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.name.endswith(".JPEG")), key=lambda m: m.name
            )
            for label, spans in COARSE.items():
                (coarse / label).mkdir(parents=True)
                for a, b in spans:
                    for m in members[a : b + 1]:
                        data_ = tar.extractfile(m).read()
                        (coarse / label / Path(m.name).name).write_bytes(data_)
    return out


def vectors_of(name: str, folder: Path, weights: Path, work: Path):
    """(fc7, labels) of a folder, through `alexsearch index`, cached as .npy."""
    vec_f, lab_f = work / f"{name}.fc7.npy", work / f"{name}.labels.npy"
    if not vec_f.exists():
        index = work / f"ix_{name}"
        cli("index", folder, "--index", index, "--weights", weights, "--device", "cpu")
        from alexsearch.images.folders import label_of
        from alexsearch.index.catalogue import Catalogue

        cat = Catalogue(index / "catalogue.sqlite", readonly=True)
        ok = cat.ok_files(4096)
        cat.close()
        _, labels = np.unique([label_of(p) for p in ok.paths], return_inverse=True)
        np.save(vec_f, ok.vectors)
        np.save(lab_f, labels)
    return np.load(vec_f), np.load(lab_f)


# -------------------------------------------------------------------------- spaces


def whitener(eig, dim: int, power: float, shrink: float):
    """The library's PCAMatrix (alexsearch/index/spaces.py) from components learnt once."""
    from alexsearch.index.spaces import pca_matrix

    return pca_matrix(eig, dim, shrink, power)


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def full_rankings(base: np.ndarray, qvecs: np.ndarray, queries: np.ndarray, chunk=256):
    """(queries, order) chunks: every other position of base, nearest (L2) first."""
    import faiss

    from alexsearch.evaluate.retrieval import _drop_self

    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        _, found = index.search(np.ascontiguousarray(qvecs[s : s + chunk], np.float32), len(base))
        yield q, _drop_self(found, q)


def scores(base, qvecs, queries, labels):
    """precision@1/6/10, mAP, and the top 5 of each query's ranking (for expansion)."""
    from alexsearch.evaluate.retrieval import ranking_scores

    rows, tops = [], []
    for q, order in full_rankings(base, qvecs, queries):
        rows.append(ranking_scores(order, labels, q))
        tops.append(order[:, :10])
    return np.concatenate(rows).mean(0), np.concatenate(tops)


def expanded(base, queries, top, n, weighted, normalise):
    """Average query expansion: the query plus its top n, weighted by cosine to the
    power `weighted` (0 or False: unweighted; alpha-QE with 3)."""
    q = base[queries].astype(np.float64)
    nb = base[top[:, :n]].astype(np.float64)  # (q, n, d)
    if weighted:
        w = np.clip(
            np.einsum(
                "qd,qnd->qn",
                normalised(q),
                normalised(nb.reshape(-1, q.shape[1])).reshape(nb.shape),
            ),
            0,
            None,
        ) ** float(weighted)
    else:
        w = np.ones(nb.shape[:2])
    e = (q + np.einsum("qn,qnd->qd", w, nb)) / (1 + w.sum(1, keepdims=True))
    return (normalised(e) if normalise else e).astype(np.float32)


def latency_ms(base, transform, n_expand=0, normalise=True, reps=200) -> float:
    """ms for one k=6 query, one at a time: transform + exact search (+ expansion)."""
    import faiss

    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base))
    rng = np.random.default_rng(1)
    raw_q = RAW[rng.choice(len(RAW), reps, replace=False)]
    t0 = time.perf_counter()
    for r in raw_q:
        v = transform(r[None])
        _, ids = index.search(v, 7 + n_expand)
        if n_expand:
            nb = transform(RAW[ids[0, 1 : 1 + n_expand]])  # their raw fc7, as the catalogue has
            v = (v + nb.sum(0, keepdims=True)) / (1 + n_expand)
            v = normalised(v) if normalise else v
            index.search(np.ascontiguousarray(v, np.float32), 7)
    return (time.perf_counter() - t0) / reps * 1000


def IDENT(x):
    return np.ascontiguousarray(x, np.float32)


RAW = np.zeros((1, 1), np.float32)


def sweep(name, x, labels, args):
    global RAW
    RAW = x
    rng = np.random.default_rng(0)
    queries = np.arange(len(x))
    if len(x) > args.max_queries:
        queries = np.sort(rng.choice(len(x), args.max_queries, replace=False))
    rows = []

    def row(label, base, nbytes, transform, n_expand=0, qvecs=None, normalise=True):
        t = time.perf_counter()
        s, top = scores(base, base[queries] if qvecs is None else qvecs, queries, labels)
        lat = latency_ms(base, transform, n_expand, normalise)
        rows.append((label, nbytes, *s, lat))
        p = rows[0]
        print(
            f"{name:17s} {label:34s} {nbytes:6d} {s[0]:.3f} {s[1]:.3f} {s[2]:.3f} {s[3]:.3f}"
            f"  p@6 x{s[1] / p[3]:.2f}  {lat:6.3f} ms x{lat / p[-1]:.2f}"
            f"  ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        return s, top

    print(f"\n{name}: {len(x)} images, {labels.max() + 1} labels, {len(queries)} queries")
    print(
        f"{'set':17s} {'space':34s} {'bytes':>6s} p@1   p@6   p@10  mAP    vs paper p@6   latency"
    )
    _, top_paper = row("paper: raw fc7, L2", x, 4096 * 4, IDENT)
    xn = normalised(x)
    _, top_cos = row("cosine (L2-normalised fc7)", xn, 4096 * 4, lambda v: normalised(IDENT(v)))
    t = time.perf_counter()
    eig = principal_components(x, max(args.dims), SAMPLE)
    print(
        f"principal components: top {max(args.dims)} of {eig.sample} vectors in "
        f"{time.perf_counter() - t:.0f} s (as `index` learns them)"
    )
    best = None
    for d in args.dims:
        pca = whitener(eig, d, 0.0, 0.0)
        xp = normalised(pca.apply(x))
        row(
            f"PCA {d}, no whitening, cosine",
            xp,
            d * 4,
            lambda v, p=pca: normalised(p.apply(IDENT(v))),
        )
        for s in args.shrink:
            pca = whitener(eig, d, -0.5, s)
            xw = normalised(pca.apply(x))
            tf = lambda v, p=pca: normalised(p.apply(IDENT(v)))  # noqa: E731
            sc, top = row(f"whitened {d}, shrink {s:g}", xw, d * 4, tf)
            if best is None or sc[1] > best[0][1]:
                best = (sc, d, s, xw, top, tf)
    sc, d, s, xw, top, tf = best
    for label, prep in (("signed sqrt", signed_sqrt), ("L2", normalised)):
        xp = prep(x)
        pca = whitener(principal_components(xp, d, SAMPLE), d, -0.5, s)
        row(
            f"{label} -> whitened {d}, shrink {s:g}",
            normalised(pca.apply(xp)),
            d * 4,
            lambda v, p=pca, f=prep: normalised(p.apply(IDENT(f(IDENT(v))))),
        )
    for k, beta in ((10, 0.5), (20, 0.5), (20, 1.0)):
        base, qv = hubness_corrected(xw, k, beta)

        def tf_csls(v, t=tf):
            w = t(v)
            return np.hstack([w, np.ones((len(w), 1)), np.zeros((len(w), 1))]).astype(np.float32)

        row(f"whitened {d}, shrink {s:g}, CSLS k{k} b{beta:g}", base, d * 4 + 8, tf_csls, 0,
            qv[queries])  # fmt: skip
    for n, w in [(n, w) for n in args.expand for w in (0, 1)] + [(5, 3), (10, 3)]:
        q = expanded(xw, queries, top, n, w, True)
        tag = {0: "", 1: " w", 3: " alpha 3"}[w]
        row(f"whitened {d}, shrink {s:g} + QE{n}{tag}", xw, d * 4, tf, n, q)
    for n in (1, 2):
        q = expanded(x, queries, top_paper, n, False, False)
        row(f"paper + QE{n}", x, 4096 * 4, IDENT, n, q, normalise=False)
        q = expanded(xn, queries, top_cos, n, False, True)
        row(f"cosine + QE{n}", xn, 4096 * 4, lambda v: normalised(IDENT(v)), n, q)
    dba_rows(name, x, xw, labels, args.max_queries, tf, d)
    return rows


def hubness_corrected(y: np.ndarray, k: int, beta: float):
    """(stored, queries): unit vectors y ranked by cos(q, x) - beta r_x, r_x the mean
    cosine of x to its k nearest others (CSLS, Lample et al. 2018: hubs, near to
    everything, are pushed back), as plain L2 in d + 2 dimensions: x -> [x, -beta r_x,
    sqrt(M - (beta r_x)^2)] (all the same norm), q -> [q, 1, 0]."""
    import faiss

    index = faiss.IndexFlatIP(y.shape[1])
    index.add(np.ascontiguousarray(y, np.float32))
    sim, _ = index.search(np.ascontiguousarray(y, np.float32), k + 1)
    c = beta * sim[:, 1:].mean(1)  # self first
    big = float((c**2).max())
    stored = np.hstack([y, -c[:, None], np.sqrt(big - c**2)[:, None]]).astype(np.float32)
    queries = np.hstack([y, np.ones((len(y), 1)), np.zeros((len(y), 1))]).astype(np.float32)
    return stored, queries


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.sqrt(np.abs(x))


def augmented(db: np.ndarray, n: int, alpha: float, chunk: int = 1024) -> np.ndarray:
    """Database-side augmentation: each (unit) vector replaced by the normalised sum of
    itself and its top n neighbours among db, weighted by cosine^alpha (0: equally)."""
    import faiss

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, np.float32))
    out = np.empty_like(db)
    for s in range(0, len(db), chunk):
        sim, ids = index.search(np.ascontiguousarray(db[s : s + chunk]), n + 1)  # self first
        w = np.clip(sim, 0, None) ** alpha if alpha else np.ones_like(sim)
        w[:, 0] = 1.0
        out[s : s + chunk] = normalised(np.einsum("qn,qnd->qd", w, db[ids]))
    return out


def dba_rows(name, x, xw, labels, max_queries, tf, d):
    """DBA on a split: database = one half (augmented among itself), queries = the other
    half, beside paper L2 and plain whitened on the same split (p@6 ratio to paper)."""
    perm = np.random.default_rng(2).permutation(len(x))
    qi, di = np.sort(perm[: len(x) // 2][:max_queries]), np.sort(perm[len(x) // 2 :])

    def split_scores(db, qv):
        import faiss

        index = faiss.IndexFlatL2(db.shape[1])
        index.add(np.ascontiguousarray(db, np.float32))
        _, order = index.search(np.ascontiguousarray(qv, np.float32), len(db))
        return _split_ranking_scores(order, labels[di], labels[qi])

    base = split_scores(x[di], x[qi])
    print(f"{name} DBA split: {len(di)} stored, {len(qi)} queries from the other half")
    for label, db, lat in [
        ("split: paper L2", x[di], latency_ms(x[di], IDENT)),
        (f"split: whitened {d}", xw[di], latency_ms(xw[di], tf)),
    ] + [
        (f"split: whitened {d} + DBA{n}{' alpha 3' if a else ''}", augmented(xw[di], n, a), None)
        for n, a in ((1, 0), (2, 0), (3, 0), (5, 3), (10, 3))
    ]:
        sc = split_scores(db, xw[qi] if db.shape[1] == d else x[qi])
        lat_s = f"{lat:6.3f} ms" if lat is not None else "  (as whitened)"
        print(
            f"{name:17s} {label:34s} {db.shape[1] * 4:6d} {sc[0]:.3f} {sc[1]:.3f} {sc[2]:.3f} "
            f"{sc[3]:.3f}  p@6 x{sc[1] / base[1]:.2f}  {lat_s}",
            flush=True,
        )


def _split_ranking_scores(order, db_labels, q_labels):
    """ranking_scores for queries that are not in the database."""
    from alexsearch.evaluate.retrieval import RETRIEVAL_KS

    rel = db_labels[order] == q_labels[:, None]
    ranks = np.arange(1, order.shape[1] + 1)
    out = [rel[:, :k].mean(1).mean() for k in RETRIEVAL_KS]
    ap = (np.cumsum(rel, 1) / ranks * rel).sum(1) / np.maximum(rel.sum(1), 1)
    return np.array([*out, ap.mean()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="NAME=FOLDER (labelled)")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/b19"))
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--sets", default="cifar10-test,cifar10-train500,imagenet-coarse")
    ap.add_argument("--max-queries", type=int, default=5000)
    ap.add_argument("--dims", default="128,256,512,1024")
    ap.add_argument("--shrink", default="0,0.01,0.1,1")
    ap.add_argument("--expand", default="1,2,3,5")
    args = ap.parse_args()
    args.dims = [int(v) for v in args.dims.split(",")]
    args.shrink = [float(v) for v in args.shrink.split(",")]
    args.expand = [int(v) for v in args.expand.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    sets = (
        dict(s.split("=", 1) for s in args.set)
        if args.set
        else default_sets(args.work, args.data, args.sets.split(","))
    )
    weights = args.weights
    if weights is None:
        weights = args.work / "init10.ckpt"
        if not weights.exists():
            cli("weights", "init", "--out", weights, "--classes", "10", "--seed", "1")
        print(f"weights: untrained paper-init checkpoint {weights} (seed 1)")
    import os

    print(f"machine: {os.cpu_count()} cores; one query at a time, exact FAISS search")
    for name, folder in sets.items():
        x, labels = vectors_of(name, Path(folder), weights, args.work)
        sweep(name, x, labels, args)


if __name__ == "__main__":
    main()
