"""Groups of duplicate photos in an index: `alexsearch duplicates`.

Three tiers, each a photo's first:
- exact: the same bytes (the content digest the catalogue holds);
- near: the same photo resized, re-encoded, brightened, cropped a little, turned a
  little, framed or watermarked: fc7 cosine distance or a perceptual hash (imagehash's
  pHash, 64 bits, of the 32x32 thumbnail the index already stores, so nothing is
  decoded again) within its threshold, or both within looser ones (Thresholds);
- similar (only when asked): a different shot of the same scene, a looser fc7 distance.

Neighbours come from FAISS, never an N x N matrix: k-NN over the unit fc7 vectors (flat
up to FLAT_MAX photos, then PCA to 256 and an inverted file) and k-NN in Hamming space
over the hashes; each candidate pair is then judged on its exact distances.

Groups do not chain: photos are taken by how many others they are close to (most
first, ties in keep order); each photo not yet grouped becomes the representative of a
group of itself and every ungrouped photo within the tier's thresholds of it, so every
member is close to the group's representative, never only to some other member. The
keep rule then picks which member stays. The thresholds are bench/duplicates.py's picks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import UserError

TIERS = ("exact", "near", "similar")
KEEP_RULES = ("largest", "oldest", "newest", "smallest")

# Defaults chosen on the tuning half of bench/duplicates.py (README, Duplicates), one set
# per fc7 space: the index's whitened space where it has learnt one, else raw fc7
# centred on the collection's mean (a small collection).
K_NEIGHBOURS = 16  # candidates per photo from each signal
FLAT_MAX = 20_000  # exact k-NN up to this many photos, an inverted file beyond
PCA_DIM = 256


@dataclass
class Member:
    path: str
    id: int
    distance: float  # fc7 cosine distance to the group's representative
    hash_distance: int  # pHash bits differing from the representative's (-1: no pHash)
    signal: str  # what put it in the group: representative, digest, fc7, phash, fc7+phash

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "id": self.id,
            "distance": round(float(self.distance), 6),
            "hash_distance": self.hash_distance,
            "signal": self.signal,
        }


@dataclass
class Group:
    tier: str
    keep: str  # the member's path the keep rule keeps
    files: list[Member]  # every member, the keep first
    representative: str = ""  # the member every other one is close to

    def to_dict(self) -> dict:
        return {
            "tier": self.tier,
            "keep": self.keep,
            "representative": self.representative or self.keep,
            "files": [m.to_dict() for m in self.files],
        }


@dataclass
class Thresholds:
    """A pair is near when fc7 <= near_fc7, or pHash bits <= near_hash, or both fc7 <=
    both_fc7 and bits <= both_hash (two moderate agreements outweigh one); similar when
    fc7 <= similar_fc7. fc7: cosine distance in `space`."""

    space: str = "whitened"
    near_fc7: float = 0.2
    near_hash: int = 8
    both_fc7: float = 0.4
    both_hash: int = 26
    similar_fc7: float = 0.6

    def to_dict(self) -> dict:
        return {
            "space": self.space,
            "near_fc7": self.near_fc7,
            "near_hash": self.near_hash,
            "both_fc7": self.both_fc7,
            "both_hash": self.both_hash,
            "similar_fc7": self.similar_fc7,
        }


DEFAULTS = {
    "whitened": Thresholds("whitened", 0.2, 8, 0.4, 26, 0.6),
    "paper": Thresholds("paper", 0.05, 10, 0.3, 18, 0.3),
}


@dataclass
class Report:
    """What `alexsearch duplicates --json` prints."""

    groups: list[Group]
    tiers: list[str]
    keep_rule: str
    thresholds: Thresholds
    files: int  # indexed photos looked at
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "tiers": self.tiers,
            "keep_rule": self.keep_rule,
            "thresholds": self.thresholds.to_dict(),
            "files": self.files,
            "duplicates": sum(len(g.files) - 1 for g in self.groups),
        }


@dataclass
class Photos:
    """The indexed photos as arrays, one row each (what grouping needs)."""

    ids: np.ndarray  # int64 (n,)
    paths: list[str]
    vectors: np.ndarray  # float32 (n, d): fc7 in `space` (whitened, or raw fc7: paper)
    hashes: np.ndarray  # uint8 (n, 8): 64-bit pHash, packed
    has_hash: np.ndarray  # bool (n,)
    digests: list[str]
    sizes: np.ndarray  # int64 bytes
    mtimes: np.ndarray  # int64 ns
    space: str = "paper"


def tiers_for(tier: str | None) -> list[str]:
    """The tiers shown for `--tier`: up to and including it; default exact and near."""
    tier = tier or "near"
    if tier not in TIERS:
        raise UserError(f"--tier {tier!r}: choose from {', '.join(TIERS)}")
    return list(TIERS[: TIERS.index(tier) + 1])


def thresholds_for(tiers: list[str], threshold: float | None, space: str) -> Thresholds:
    """The space's defaults, with `threshold` (--threshold) as the fc7 distance of the
    loosest tier shown (refused for exact alone, which has none)."""
    t = replace(DEFAULTS[space])
    if threshold is None:
        return t
    if not 0 <= threshold <= 2:
        raise UserError(f"--threshold {threshold}: a cosine distance between 0 and 2")
    if tiers[-1] == "exact":
        raise UserError("--threshold has no meaning for --tier exact (same bytes)")
    if tiers[-1] == "near":
        t.near_fc7 = threshold
        t.both_fc7 = max(t.both_fc7, threshold)
        t.similar_fc7 = max(t.similar_fc7, threshold)
    else:
        t.similar_fc7 = threshold
        t.near_fc7 = min(t.near_fc7, threshold)
    return t


# -- signals


def unit_fc7(vectors: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """fc7 centred on `mean` and scaled to unit length (their L2 is then a function of the
    cosine). Centring matters: every photo's fc7 shares a large common part (an untrained
    network's almost all of it: raw cosines are all ~1), which says nothing about which
    photo it is."""
    v = np.asarray(vectors, np.float32)
    if mean is not None:
        v = v - mean
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def collection_mean(vectors: np.ndarray, sample: int = 20_000) -> np.ndarray:
    """The mean fc7 of the collection (of a fixed sample of it when large)."""
    n = len(vectors)
    if n > sample:
        vectors = vectors[np.sort(np.random.default_rng(0).choice(n, sample, replace=False))]
    return np.asarray(vectors, np.float64).mean(0).astype(np.float32)


def phash_of_thumbnail(thumb: bytes) -> np.ndarray | None:
    """imagehash's pHash (64 bits, packed to 8 bytes) of a stored 32x32 RGB thumbnail:
    pHash shrinks every photo to 32x32 grey before its DCT anyway. None without one."""
    if not thumb:
        return None
    import imagehash
    from PIL import Image

    side = int(round((len(thumb) / 3) ** 0.5))
    h = imagehash.phash(Image.frombytes("RGB", (side, side), thumb))
    return np.packbits(h.hash.ravel())


def hashes_of(thumbs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n, 8) packed pHashes, bool (n,) has one) of stored thumbnails."""
    out = np.zeros((len(thumbs), 8), np.uint8)
    ok = np.zeros(len(thumbs), bool)
    for i, t in enumerate(thumbs):
        h = phash_of_thumbnail(t)
        if h is not None:
            out[i], ok[i] = h, True
    return out, ok


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits differing between rows of packed hashes."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(-1).astype(np.int64)


def centred_unit(photos: Photos) -> np.ndarray:
    """Every photo's fc7 at unit length: whitened vectors as they are (the whitening
    centred them), raw fc7 centred on the mean of the collection's distinct files (a
    file's exact copies counted once)."""
    if photos.space == "whitened":
        return unit_fc7(photos.vectors)
    first = {}
    for r, d in enumerate(photos.digests):
        first.setdefault(d or r, r)
    rows = np.fromiter(first.values(), np.int64)
    return unit_fc7(photos.vectors, collection_mean(photos.vectors[rows]))


# -- candidate pairs from FAISS


def fc7_candidates(unit: np.ndarray, k: int = K_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """(rows, neighbours) of the k nearest of every photo by fc7 (self left out)."""
    import faiss

    n, d = unit.shape
    k = min(k + 1, n)
    if n <= FLAT_MAX:
        index = faiss.IndexFlatIP(d)
        index.add(np.ascontiguousarray(unit))
        _, nb = index.search(np.ascontiguousarray(unit), k)
    else:
        # PCA to 256 (randomized SVD on a sample: FAISS's own PCA decomposes the whole
        # 4096x4096 covariance), then an inverted file: a near duplicate lies in its
        # photo's own cell or a next one.
        rng = np.random.default_rng(0)
        low, dim = unit, d
        if d > PCA_DIM:  # raw fc7; the whitened space is 256-d already
            from sklearn.decomposition import PCA

            sample = unit[rng.choice(n, min(n, 20_000), replace=False)]
            dim = min(PCA_DIM, len(sample))
            pca = PCA(dim, svd_solver="randomized", random_state=0).fit(sample)
            low = unit_fc7(pca.transform(unit).astype(np.float32))
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(low[rng.choice(n, min(n, 64 * nlist), replace=False)])
        index.add(low)
        index.nprobe = 8
        _, nb = index.search(low, k)
    return _pairs(nb)


def hash_candidates(
    hashes: np.ndarray, has_hash: np.ndarray, k: int = K_NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, neighbours) of the k nearest of every photo by pHash (Hamming, FAISS)."""
    import faiss

    rows = np.flatnonzero(has_hash)
    if len(rows) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = faiss.IndexBinaryFlat(64)
    codes = np.ascontiguousarray(hashes[rows])
    index.add(codes)
    _, nb = index.search(codes, min(k + 1, len(rows)))
    a, b = _pairs(nb)
    return rows[a], rows[b]


def _pairs(nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.repeat(np.arange(len(nb)), nb.shape[1])
    b = nb.ravel()
    keep = (b >= 0) & (a != b)
    return a[keep].astype(np.int64), b[keep].astype(np.int64)


@dataclass
class Pairs:
    """Candidate pairs (a < b, unique) with both exact distances."""

    a: np.ndarray
    b: np.ndarray
    fc7: np.ndarray  # cosine distance
    bits: np.ndarray  # pHash bits differing (a large number where either has none)


def candidate_pairs(unit: np.ndarray, hashes: np.ndarray, has_hash: np.ndarray) -> Pairs:
    a1, b1 = fc7_candidates(unit)
    a2, b2 = hash_candidates(hashes, has_hash)
    a = np.concatenate([a1, a2])
    b = np.concatenate([b1, b2])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo * len(unit) + hi)
    a, b = key // len(unit), key % len(unit)
    fc7 = np.empty(len(a), np.float32)
    for s in range(0, len(a), 65536):  # chunks: bounded memory at any size
        sl = slice(s, s + 65536)
        fc7[sl] = 1.0 - np.einsum("ij,ij->i", unit[a[sl]], unit[b[sl]])
    bits = hamming(hashes[a], hashes[b])
    bits[~(has_hash[a] & has_hash[b])] = 1 << 16
    return Pairs(a, b, np.maximum(fc7, 0.0), bits)


# -- grouping


def near_edge(p: Pairs, t: Thresholds) -> np.ndarray:
    both = (p.fc7 <= t.both_fc7) & (p.bits <= t.both_hash)
    return (p.fc7 <= t.near_fc7) | (p.bits <= t.near_hash) | both


def star_groups(n: int, a, b, order: np.ndarray, allowed: np.ndarray) -> list[list[int]]:
    """Groups that do not chain: rows taken in `order`; each row not yet grouped, if
    `allowed`, gathers every ungrouped allowed row it has an edge to. Returns
    [representative, member, ...] lists of at least two rows."""
    adj: dict[int, list[int]] = {}
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if allowed[x] and allowed[y]:
            adj.setdefault(x, []).append(y)
            adj.setdefault(y, []).append(x)
    taken = np.zeros(n, bool)
    groups = []
    for r in order.tolist():
        if taken[r] or r not in adj:
            continue
        members = [m for m in adj[r] if not taken[m]]
        if not members:
            continue
        taken[r] = True
        taken[members] = True
        groups.append([r, *sorted(set(members))])
    return groups


def groups_of(n: int, a, b, order: np.ndarray, allowed: np.ndarray) -> list[tuple[list, int]]:
    """star_groups around the most connected photos: representatives are taken by their
    number of edges (most first; ties in keep order), as a photo's many variants all
    lie close to the photo itself, not to each other; each group is then listed in
    keep order (the keep first). Returns (rows, representative) per group."""
    ok = allowed[a] & allowed[b]
    degree = np.bincount(np.concatenate([a[ok], b[ok]]), minlength=n)
    position = np.full(n, n, np.int64)
    position[order] = np.arange(len(order))
    by_degree = order[np.argsort(-degree[order], kind="stable")]
    out = []
    for g in star_groups(n, a, b, by_degree, allowed):
        out.append((sorted(g, key=lambda r: position[r]), g[0]))
    return out


def find_groups(
    photos: Photos,
    tiers: list[str],
    thresholds: Thresholds,
    order_of: Callable[[np.ndarray], np.ndarray],
    progress: Callable | None = None,
) -> list[tuple[str, list[int], int]]:
    """(tier, [keep row, member rows...], representative row) for every group.

    order_of(rows): those rows, the keep rule's best first (asked only of the rows that
    have a duplicate, so a large collection's headers are not all read). Exact groups
    first (one per digest); near and similar groups are then made of each exact group's
    keep and the photos in no exact group, so a photo's copies go with it."""
    n = len(photos.ids)
    out: list[tuple[str, list[int], int]] = []
    by_digest: dict[str, list[int]] = {}
    for r, d in enumerate(photos.digests):
        if d:
            by_digest.setdefault(d, []).append(r)
    allowed = np.ones(n, bool)
    for rows in by_digest.values():
        if len(rows) > 1:
            rows = order_of(np.asarray(rows)).tolist()
            allowed[rows[1:]] = False
            out.append(("exact", rows, rows[0]))
    if tiers == ["exact"] or n < 2:
        return out
    if progress:
        progress("neighbours", 0, n)
    pairs = candidate_pairs(centred_unit(photos), photos.hashes, photos.has_hash)
    if progress:
        progress("neighbours", n, n)
    edges = {"near": near_edge(pairs, thresholds)}
    if "similar" in tiers:
        edges["similar"] = pairs.fc7 <= thresholds.similar_fc7
    used = edges["near"] | edges.get("similar", False)  # pHash-only pairs are near only
    involved = np.unique(np.concatenate([pairs.a[used], pairs.b[used]]))
    order = order_of(involved) if len(involved) else involved
    taken = ~allowed
    for tier in ("near", "similar"):
        if tier not in tiers:
            continue
        e = edges[tier]
        for g, rep in groups_of(n, pairs.a[e], pairs.b[e], order, ~taken):
            taken[g[1:]] = True  # a keep may still gather a looser tier's group
            out.append((tier, g, rep))
    return out


def keep_order(photos: Photos, rule: str, pixels: Callable[[int], int]):
    """order_of(rows) for find_groups: the rows, the one the keep rule keeps first.
    largest: most pixels, then the oldest file, then the largest file; smallest: fewest
    pixels, then the oldest; oldest / newest: by modification time, then most pixels."""
    if rule not in KEEP_RULES:
        raise UserError(f"--keep {rule!r}: choose from {', '.join(KEEP_RULES)}")

    def order_of(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        px = np.array([pixels(int(r)) for r in rows], np.int64)
        m, size = photos.mtimes[rows], photos.sizes[rows]
        keys = {  # np.lexsort: the last key is the first sorted on
            "largest": (rows, -size, m, -px),
            "smallest": (rows, size, m, px),
            "oldest": (rows, -px, m),
            "newest": (rows, -px, -m),
        }[rule]
        return rows[np.lexsort(keys)]

    return order_of


def pixel_count(path: str) -> int:
    """Width x height from the file's header (no decoding); 0 when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
        return int(w) * int(h)
    except Exception:  # noqa: BLE001 - an unreadable file keeps last, it is not an error here
        return 0


def report(
    photos: Photos,
    tier: str | None = None,
    threshold: float | None = None,
    keep: str = "largest",
    progress: Callable | None = None,
) -> Report:
    tiers = tiers_for(tier)
    t = thresholds_for(tiers, threshold, photos.space)
    order_of = keep_order(photos, keep, lambda r: pixel_count(photos.paths[r]))
    found = find_groups(photos, tiers, t, order_of, progress)
    unit = None  # made when a near or similar group needs distances
    groups = []
    for tier_name, rows, rep in found:
        members = []
        for r in rows:
            if tier_name == "exact":
                d, bits, sig = 0.0, 0, "representative" if r == rep else "digest"
            else:
                if unit is None:
                    unit = centred_unit(photos)
                d = max(0.0, float(1.0 - unit[r] @ unit[rep]))
                has = photos.has_hash[r] and photos.has_hash[rep]
                bits = int(hamming(photos.hashes[r], photos.hashes[rep])) if has else -1
                sig = "representative" if r == rep else _signal(tier_name, d, bits, t)
            members.append(Member(photos.paths[r], int(photos.ids[r]), d, bits, sig))
        groups.append(Group(tier_name, photos.paths[rows[0]], members, photos.paths[rep]))
    tier_rank = {name: i for i, name in enumerate(TIERS)}
    groups.sort(key=lambda g: (tier_rank[g.tier], g.keep))
    return Report(groups, tiers, keep, t, len(photos.ids))


def _signal(tier: str, d: float, bits: int, t: Thresholds) -> str:
    if tier == "similar":
        return "fc7"
    by_fc7, by_hash = d <= t.near_fc7, 0 <= bits <= t.near_hash
    if not by_fc7 and not by_hash:
        return "fc7+phash"  # both moderately close
    return "fc7+phash" if by_fc7 and by_hash else ("fc7" if by_fc7 else "phash")


def photos_of(snapshot, space: str | None = None) -> Photos:
    """Every indexed (ok) photo of a published snapshot with its signals; fc7 in `space`
    (None: the index's default, whitened where it has learnt it)."""
    from . import spaces

    catalogue = snapshot.catalogue
    m = snapshot.manifest
    if space is None and m.space is not None and m.space.dimension < m.space_dim:
        # a small collection's reduced whitening (spaces.fitting_dim): the thresholds
        # were tuned at the full dimension, so compare raw fc7 as before it had one
        space = "paper"
    space = snapshot.space(space)
    ok = catalogue.ok_files(snapshot.manifest.dimension)
    rows = catalogue.rows()
    digests, sizes, mtimes = [], [], []
    for p in ok.paths:
        r = rows.get(p)
        digests.append(r.digest if r else "")
        sizes.append(r.size if r else 0)
        mtimes.append(r.mtime_ns if r else 0)
    hashes, has = hashes_of(ok.thumbs)
    vectors = ok.vectors
    if space == "whitened" and len(vectors):
        vectors = spaces.apply(spaces.index_chain(snapshot.open_space()), vectors)
    return Photos(
        ok.ids,
        [os.fspath(p) for p in ok.paths],
        vectors,
        hashes,
        has,
        digests,
        np.asarray(sizes, np.int64),
        np.asarray(mtimes, np.int64),
        space,
    )
