"""`alexsearch duplicates`, measured: pairwise precision / recall / F1 on a labelled set.

The set (bench/duplicates_set.py): --near ImageNet photos of ../shared/data, each with
eight variants (re-encode at low quality, resize, crop, brightness, small rotation,
border, watermark text, exact copy), --similar photos as two views a step apart (left
and right 75%), and the rest untouched as distractors, flat under random names. It is
indexed once with `alexsearch index` (cached under --work) with --weights (default: the
untrained, paper-initialised network, `weights init --seed 1`).

imagededup's measure: a pair of files is positive when both come from the same original;
a method's predicted pairs are the pairs inside its groups (a file's exact copies count
with it). Near tier: every near variant and its original; the two views of a similar
pair are neither positive nor negative there. The set is split in two halves by
original: thresholds are tuned on `tune`, figures are reported on `test`. Rows, all with
the same FAISS candidates and the same non-chaining grouping, in the same run:

- defaults: `alexsearch duplicates` as shipped (fc7 OR pHash of the stored thumbnail);
- fc7 alone, at its best threshold on the test half itself (an oracle: the strongest
  single-signal baseline);
- pHash of the stored 32x32 thumbnail alone, at its best threshold on the test half;
- pHash of the full photo (imagehash on the decoded file) alone, at its best threshold;
- the combined sweep's pick on the tune half (what the defaults were set from);
- the defaults' and fc7's edges grouped by connected components (imagededup's way,
  which chains) instead of around representatives.

Then per transform: recall of (original, variant) pairs for each row; the similar tier;
and the time of grouping 10,000 and 100,000 synthetic fc7 vectors (planted copies) on
this machine, beside the CPU's flags.

    python bench/duplicates.py [--work DIR] [--weights CKPT] [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample.tar"

from duplicates_set import NEAR_TRANSFORMS, make_set  # noqa: E402
from index_throughput import cpu_description  # noqa: E402

from alexsearch.index import duplicates as dup  # noqa: E402

FC7_GRID = [round(float(x), 4) for x in np.concatenate([np.arange(0.01, 0.1, 0.01),
                                                         np.arange(0.1, 0.81, 0.025)])]  # fmt: skip
# the combined rule's grid: fc7 <= a OR bits <= b OR (fc7 <= c AND bits <= d)
REGION = dict(a=[0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45], b=[8, 10, 12], c=[0.3, 0.4, 0.5, 0.6],
              d=[14, 18, 22, 26])  # fmt: skip
HASH_GRID = list(range(0, 25))
MIN_PRECISION = 0.985  # the tune half's floor for the pick (the target is 0.98 on test)


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "alexsearch", *map(str, args)], text=True)
    if r.returncode:
        sys.exit(f"alexsearch {' '.join(map(str, args))} failed ({r.returncode})")


def prepare(work: Path, weights: str | None, near: int, similar: int):
    photos = work / "imagenet-sample"
    if not photos.exists():
        if not SAMPLE.exists():
            sys.exit(f"{SAMPLE} not found (../shared/data is absent)")
        with tarfile.open(SAMPLE) as tar:
            tar.extractall(work, filter="data")
    labels = make_set(photos, work / "set", near, similar)
    if weights is None:
        weights = str(work / "init.ckpt")
        if not Path(weights).exists():
            cli("weights", "init", "--out", weights, "--seed", 1)
    index = work / "index"
    if not (index / "manifest.json").exists():
        cli("index", work / "set" / "photos", "--index", index, "--weights", weights,
            "--device", "cpu")  # fmt: skip
    return labels, index


def load(index: Path, space: str):
    from alexsearch.index.search import Snapshot

    snap = Snapshot(index)
    photos = dup.photos_of(snap, space)
    snap.close()
    return photos


def full_photo_hashes(photos, cache: Path) -> np.ndarray:
    """imagehash pHash of each decoded file (the baseline the thumbnail's is held to)."""
    if cache.exists():
        return np.load(cache)
    import imagehash
    from PIL import Image, ImageOps

    out = np.zeros((len(photos.paths), 8), np.uint8)
    for i, p in enumerate(photos.paths):
        with Image.open(p) as im:
            im.draft("RGB", (256, 256))  # pHash shrinks to 32x32 anyway
            out[i] = np.packbits(imagehash.phash(ImageOps.exif_transpose(im)).hash.ravel())
    np.save(cache, out)
    return out


class Truth:
    """Who is who: original id, transform and half of each row."""

    def __init__(self, photos, labels):
        names = [os.path.basename(p) for p in photos.paths]
        self.orig = np.array([labels[n]["original"] for n in names])
        self.transform = np.array([labels[n]["transform"] for n in names])
        self.half = np.array([labels[n]["half"] for n in names])
        self.shift = np.isin(self.transform, ["left", "right"])
        self.n = len(names)

    def positives(self, rows: np.ndarray, tier: str) -> set:
        """The positive pairs (i < j) among rows for the tier."""
        out = set()
        by: dict[str, list[int]] = {}
        for r in rows.tolist():
            if tier == "near" and self.shift[r]:
                continue
            by.setdefault(self.orig[r], []).append(r)
        for rs in by.values():
            for i, a in enumerate(rs):
                for b in rs[i + 1 :]:
                    out.add((min(a, b), max(a, b)))
        return out


def clusters_to_pairs(groups, exact_groups) -> set:
    """Pairs inside groups, a file's exact copies joined to the group of their keep."""
    copies = {g[0]: g[1:] for g in exact_groups}
    pairs = set()
    for g in list(groups) + list(exact_groups):
        members = list(g)
        if g not in exact_groups:
            for m in g:
                members += copies.get(m, [])
        members = sorted(set(members))
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                pairs.add((a, b))
    return pairs


def score(pred: set, truth: set, ignore=None) -> tuple[float, float, float]:
    if ignore is not None:
        pred = {p for p in pred if not ignore(p)}
    tp = len(pred & truth)
    prec = tp / len(pred) if pred else 1.0
    rec = tp / len(truth) if truth else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


class Half:
    """One half of the set as its own collection: its rows, exact groups and pairs."""

    def __init__(self, name, photos, truth, pairs, order_of):
        self.name = name
        self.truth = truth
        self.rows = np.flatnonzero(truth.half == name)
        inside = np.zeros(truth.n, bool)
        inside[self.rows] = True
        self.exact = []
        allowed = inside.copy()
        by: dict[str, list[int]] = {}
        for r in self.rows.tolist():
            by.setdefault(photos.digests[r], []).append(r)
        for rs in by.values():
            if len(rs) > 1:
                rs = order_of(np.asarray(rs)).tolist()
                allowed[rs[1:]] = False
                self.exact.append(rs)
        self.allowed = allowed
        self.order = order_of(self.rows)
        self.pos = {"near": truth.positives(self.rows, "near"),
                    "similar": truth.positives(self.rows, "similar")}  # fmt: skip
        self.pairs = pairs

    def groups(self, edges: np.ndarray, pairs=None) -> list[list[int]]:
        p = pairs or self.pairs
        found = dup.groups_of(self.truth.n, p.a[edges], p.b[edges], self.order, self.allowed)
        return [g for g, _ in found]

    def near_ignored(self, pair) -> bool:
        t = self.truth
        a, b = pair
        return t.shift[a] and t.shift[b] and t.orig[a] == t.orig[b]

    def components(self, edges: np.ndarray, pairs=None) -> list[list[int]]:
        """Connected components of the same edges: imagededup's grouping, which chains."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        p = pairs or self.pairs
        ok = edges & self.allowed[p.a] & self.allowed[p.b]
        n = self.truth.n
        graph = coo_matrix((np.ones(ok.sum()), (p.a[ok], p.b[ok])), shape=(n, n))
        _, label = connected_components(graph, directed=False)
        members: dict[int, list[int]] = {}
        for r in np.flatnonzero(self.allowed).tolist():
            members.setdefault(int(label[r]), []).append(r)
        return [sorted(g) for g in members.values() if len(g) > 1]

    def evaluate(self, edges, pairs=None, tier="near", chain=False):
        groups = self.components(edges, pairs) if chain else self.groups(edges, pairs)
        pred = clusters_to_pairs(groups, self.exact)
        ignore = self.near_ignored if tier == "near" else None
        return score(pred, self.pos[tier], ignore), pred

    def per_transform(self, pred: set) -> dict[str, float]:
        t = self.truth
        out = {}
        originals = {t.orig[r]: r for r in self.rows.tolist() if t.transform[r] == "original"}
        for name in NEAR_TRANSFORMS:
            want = [(originals[t.orig[r]], r) for r in self.rows.tolist()
                    if t.transform[r] == name and t.orig[r] in originals]  # fmt: skip
            hit = sum((min(a, b), max(a, b)) in pred for a, b in want)
            out[name] = hit / len(want) if want else float("nan")
        return out


def best(half: Half, make_edges, grid, floor: float = 0.0):
    """The grid value with the best F1 (precision at least `floor`) on `half`."""
    top = None
    for g in grid:
        (p, r, f), _ = half.evaluate(make_edges(g))
        if p >= floor and (top is None or f > top[1][2]):
            top = (g, (p, r, f))
    return top


def fmt(prf) -> str:
    return " ".join(f"{x:.3f}" for x in prf)


def near_rule(pairs, a, b, c, d) -> np.ndarray:
    return (pairs.fc7 <= a) | (pairs.bits <= b) | ((pairs.fc7 <= c) & (pairs.bits <= d))


def quality(args) -> None:
    labels, index = prepare(args.work, args.weights, args.near, args.similar)
    for space in args.spaces.split(","):
        print(f"\n=== fc7 space: {space} " + "=" * 60)
        quality_in(args, labels, index, space)


def quality_in(args, labels, index, space: str) -> None:
    photos = load(index, space)
    truth = Truth(photos, labels)
    full = full_photo_hashes(photos, args.work / "full_phash.npy")
    t0 = time.perf_counter()
    unit = dup.centred_unit(photos)
    pairs = dup.candidate_pairs(unit, photos.hashes, photos.has_hash)
    pairs_full = dup.candidate_pairs(unit, full, np.ones(len(full), bool))
    print(f"{len(photos.paths)} photos; candidate pairs {len(pairs.a)} (thumbnail pHash), "
          f"{len(pairs_full.a)} (full-photo pHash), {time.perf_counter() - t0:.1f} s")  # fmt: skip
    order_of = dup.keep_order(photos, "largest", lambda r: dup.pixel_count(photos.paths[r]))
    tune = Half("tune", photos, truth, pairs, order_of)
    test = Half("test", photos, truth, pairs, order_of)

    # tune: pick the combined thresholds (best F1 with precision >= MIN_PRECISION)
    pick = None
    for a in REGION["a"]:
        for b in REGION["b"]:
            for c in REGION["c"]:
                for d in REGION["d"]:
                    (p, r, f), _ = tune.evaluate(near_rule(pairs, a, b, c, d))
                    if p >= MIN_PRECISION and (pick is None or f > pick[1][2]):
                        pick = ((a, b, c, d), (p, r, f))
    if pick is None:
        sys.exit(f"no point of the grid reaches precision {MIN_PRECISION} on the tune half")
    print(f"tune half: combined pick (fc7 <= a OR pHash <= b OR (fc7 <= c AND pHash <= d)) "
          f"a, b, c, d = {pick[0]}: P R F1 {fmt(pick[1])}")  # fmt: skip
    for name, mk, grid in (
        ("fc7 alone", lambda g: pairs.fc7 <= g, FC7_GRID),
        ("thumbnail pHash alone", lambda g: pairs.bits <= g, HASH_GRID),
    ):
        g, prf = best(tune, mk, grid)
        print(f"tune half: {name} best F1 at {g}: P R F1 {fmt(prf)}")

    # test: every row in the same run
    rows = []
    d = dup.DEFAULTS[space]
    rows.append(
        (
            f"defaults ({d.near_fc7}, {d.near_hash}, {d.both_fc7}, {d.both_hash})",
            near_rule(pairs, d.near_fc7, d.near_hash, d.both_fc7, d.both_hash),
            pairs,
        )
    )
    rows.append((f"tune pick {pick[0]}", near_rule(pairs, *pick[0]), pairs))  # fmt: skip
    singles = (
        ("fc7 alone", lambda g: pairs.fc7 <= g, FC7_GRID, pairs),
        ("thumbnail pHash alone", lambda g: pairs.bits <= g, HASH_GRID, pairs),
        ("full-photo pHash alone", lambda g: pairs_full.bits <= g, HASH_GRID, pairs_full),
    )
    for floor, tag in ((0.0, ""), (0.98, " with P >= 0.98")):
        for name, mk, grid, p_ in singles:
            test.pairs = p_
            top = best(test, mk, grid, floor)
            test.pairs = pairs
            if top:
                rows.append((f"{name}, best on test{tag} ({top[0]})", mk(top[0]), p_))
    print(
        f"test half ({len(test.rows)} files, {len(test.pos['near'])} positive pairs), "
        "near tier (exact included); recall per transform:"
    )
    print(f"{'method':56s} {'P':>6s} {'R':>6s} {'F1':>6s}  " +
          " ".join(f"{t[:7]:>7s}" for t in NEAR_TRANSFORMS))  # fmt: skip
    for name, edges, p_ in rows:
        (p, r, f), pred = test.evaluate(edges, p_)
        per = test.per_transform(pred)
        print(f"{name:56s} {p:6.3f} {r:6.3f} {f:6.3f}  " +
              " ".join(f"{per[t]:7.3f}" for t in NEAR_TRANSFORMS))  # fmt: skip
    for name, edges, p_ in rows[:1] + [r for r in rows if r[0].startswith("fc7 alone, best")]:
        (p, r, f), pred = test.evaluate(edges, p_, chain=True)
        per = test.per_transform(pred)
        label = f"{name.split(' (')[0][:34]}, connected components"
        print(f"{label:56s} {p:6.3f} {r:6.3f} {f:6.3f}  " +
              " ".join(f"{per[t]:7.3f}" for t in NEAR_TRANSFORMS))  # fmt: skip
    (p, r, f), _ = test.evaluate(np.zeros(len(pairs.a), bool))
    print(f"{'exact tier alone (digest)':56s} {p:6.3f} {r:6.3f} {f:6.3f}")

    # similar tier: near groups first, then looser fc7 among the rest (as the library)
    print("similar tier (views a step apart are positives): fc7 threshold sweep, test half")
    near = near_rule(pairs, d.near_fc7, d.near_hash, d.both_fc7, d.both_hash)
    t = truth
    views = {(min(a, b), max(a, b)) for a in test.rows for b in test.rows
             if a < b and t.shift[a] and t.shift[b] and t.orig[a] == t.orig[b]}  # fmt: skip
    ng = test.groups(near)
    allowed = test.allowed.copy()
    for g in ng:
        allowed[g[1:]] = False
    for ts in sorted({0.3, 0.4, 0.5, 0.6, 0.7, 0.8, d.similar_fc7}):
        e = pairs.fc7 <= ts
        sg = [g for g, _ in dup.groups_of(t.n, pairs.a[e], pairs.b[e], test.order, allowed)]
        pred = clusters_to_pairs(ng + sg, test.exact)
        prf = score(pred, test.pos["similar"])
        vr = len(pred & views) / len(views) if views else float("nan")
        tag = " (default)" if ts == d.similar_fc7 else ""
        print(f"  similar fc7 <= {ts}{tag}: P R F1 {fmt(prf)}; views grouped {vr:.3f}")


def timing(sizes: list[int]) -> None:
    """Grouping on synthetic fc7 (non-negative, low-rank plus noise, like ReLU outputs)
    with 1% planted near copies, in the whitened space as an index of that size has it:
    the whitening is learnt first (as `index` learns it at publish, not timed), then the
    timed part is what `duplicates` does: fc7 through the whitening, FAISS neighbours of
    both signals, grouping (pixel counts from sizes: no files)."""
    from alexsearch.index import spaces

    print(f"\ntiming on synthetic fc7 vectors (4096-d), {cpu_description()}")
    for n in sizes:
        rng = np.random.default_rng(n)
        basis = rng.normal(size=(64, 4096)).astype(np.float32)
        vec = np.empty((n, 4096), np.float32)
        for s in range(0, n, 10_000):
            m = min(10_000, n - s)
            z = rng.normal(size=(m, 64)).astype(np.float32) @ basis
            vec[s : s + m] = np.maximum(z + rng.normal(size=(m, 4096)).astype(np.float32), 0)
        k = n // 100
        src = rng.choice(n - k, k, replace=False)
        vec[n - k :] = vec[src] + 0.05 * rng.normal(size=(k, 4096)).astype(np.float32)
        hashes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
        hashes[n - k :] = hashes[src]
        pca, _ = spaces.learn(vec, 256)
        t0 = time.perf_counter()
        white = spaces.apply(spaces.chain(pca), vec)
        photos = dup.Photos(
            np.arange(n, dtype=np.int64), [f"{i}.jpg" for i in range(n)], white, hashes,
            np.ones(n, bool), [f"d{i}" for i in range(n)], rng.integers(1, 10**6, n),
            np.zeros(n, np.int64), "whitened",
        )  # fmt: skip
        order_of = dup.keep_order(photos, "largest", lambda r: 0)
        t1 = time.perf_counter()
        groups = dup.find_groups(photos, ["exact", "near"], dup.DEFAULTS["whitened"], order_of)
        dt = time.perf_counter() - t1
        found = sum(len(g) - 1 for _, g, _ in groups)
        print(
            f"  {n:>7d} photos: {t1 - t0 + dt:6.1f} s (whitening {t1 - t0:.1f} s, neighbours "
            f"and groups {dt:.1f} s; {len(groups)} groups, {found} grouped of {k} planted "
            f"copies); an N x N float32 matrix would be {n * n * 4 / 2**30:.1f} GiB"
        )
        t2 = time.perf_counter()
        hashes_of_thumbs = dup.hashes_of([rng.integers(0, 256, 3072, np.uint8).tobytes()
                                          for _ in range(min(n, 10_000))])  # fmt: skip
        per = (time.perf_counter() - t2) / min(n, 10_000)
        print(
            f"           pHash of the stored thumbnails: {per * n:.1f} s for {n} "
            f"({per * 1e6:.0f} us each)"
        )
        del vec, photos, white, hashes_of_thumbs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/alexsearch-bench-duplicates"))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--near", type=int, default=400)
    ap.add_argument("--similar", type=int, default=100)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--spaces", default="whitened,paper", help="fc7 spaces measured")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    print(cpu_description())
    if not a.skip_quality:
        quality(a)
    if a.sizes:
        timing([int(s) for s in a.sizes.split(",")])
    print(json.dumps({s: t.to_dict() for s, t in dup.DEFAULTS.items()}))


if __name__ == "__main__":
    main()
