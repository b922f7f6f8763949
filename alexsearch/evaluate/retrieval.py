"""Retrieval precision of an index, leave-one-out.

Every ok file (or a fixed random sample of --max-queries of them) queries all the
others; a neighbour is right when it has the query's label, its parent folder's name
(images.folders.label_of). precision@k = right among the first k / k; AP averages the
precision at each right neighbour over the full ranking of the rest of the index; a
query whose label no other file has cannot be right and is left out. Rankings come
from exact FAISS searches (float L2, pixel L2, Hamming), in chunks of queries, so the
memory is chunk x files; Hamming ties keep FAISS's order.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import IndexError_
from ..images.folders import label_of
from ..index import autoencoder
from ..index.catalogue import Catalogue
from ..index.manifest import open_existing
from ..progress import Progress

RETRIEVAL_KS = (1, 6, 10)
RETRIEVAL_BITS = (32, 64, 256)
MAX_QUERIES = 5000
_CHUNK = 256


def ranking_scores(order: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per query (rows of `order`: positions of the other files, nearest first):
    precision@k for RETRIEVAL_KS, then average precision. Shape (q, len(KS) + 1)."""
    rel = labels[order] == labels[queries][:, None]
    ranks = np.arange(1, order.shape[1] + 1)
    out = np.empty((len(order), len(RETRIEVAL_KS) + 1))
    for j, k in enumerate(RETRIEVAL_KS):
        out[:, j] = rel[:, :k].sum(1) / k
    hits = rel.sum(1)
    out[:, -1] = (np.cumsum(rel, 1) / ranks * rel).sum(1) / np.maximum(hits, 1)
    return out


def _drop_self(found: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Remove each query's own position from its ranking (exactly once)."""
    keep = found != queries[:, None]
    return found[keep].reshape(len(found), found.shape[1] - 1)


def _float_rankings(x: np.ndarray, queries: np.ndarray, expand: int = 0):
    """Full L2 rankings (positions), chunk by chunk. expand=N: average query expansion,
    each query averaged with its first N neighbours (re-normalised when x is) first."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x, np.float32))
    unit = bool(np.allclose(np.linalg.norm(x[: min(len(x), 16)], axis=1), 1, atol=1e-3))
    for s in range(0, len(queries), _CHUNK):
        q = queries[s : s + _CHUNK]
        qv = np.ascontiguousarray(x[q], np.float32)
        if expand:
            _, first = index.search(qv, expand + 1)
            top = _drop_self(first, q)[:, :expand]
            qv = (qv + x[top].sum(1)) / (1 + expand)
            if unit:
                qv /= np.maximum(np.linalg.norm(qv, axis=1, keepdims=True), 1e-12)
        _, found = index.search(np.ascontiguousarray(qv, np.float32), len(x))
        yield q, _drop_self(found, q)


def query_latency_ms(x: np.ndarray, transforms=(), expand: int = 0, reps: int = 100) -> float:
    """ms for one k=6 query, one at a time, through an exact FAISS index of the space:
    the transforms (a whitened space's), the search, and with expand=N the second search
    (the network's forward, the same for every space, is not included)."""
    import faiss

    from ..index import spaces

    base = spaces.apply(transforms, x) if transforms else np.ascontiguousarray(x, np.float32)
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    picks = np.random.default_rng(1).choice(len(x), min(reps, len(x)), replace=False)
    t0 = time.perf_counter()
    for i in picks:
        q = spaces.apply(transforms, x[i : i + 1]) if transforms else x[i : i + 1]
        _, ids = index.search(q, 7 + expand)
        if expand:
            nb = x[ids[0, 1 : 1 + expand]]
            nb = spaces.apply(transforms, nb) if transforms else nb
            q = (q + nb.sum(0, keepdims=True)) / (1 + expand)
            index.search(np.ascontiguousarray(q, np.float32), 7)
    return (time.perf_counter() - t0) / max(len(picks), 1) * 1000


def _hamming_rankings(packed: np.ndarray, queries: np.ndarray, bits: int):
    import faiss

    index = faiss.IndexBinaryFlat(bits)
    index.add(np.ascontiguousarray(packed))
    for s in range(0, len(queries), _CHUNK):
        q = queries[s : s + _CHUNK]
        _, found = index.search(np.ascontiguousarray(packed[q]), len(packed))
        yield q, _drop_self(found, q)


def _reranked(rankings, x: np.ndarray, n: int):
    """Re-rank the first n of each Hamming ranking by exact L2; the rest keep their order."""
    for q, order in rankings:
        head = order[:, :n].copy()
        for r, qi in enumerate(q):  # one query at a time: n x dim, not chunk x n x dim
            d = ((x[head[r]] - x[qi]) ** 2).sum(-1)
            head[r] = head[r][np.argsort(d, kind="stable")]
        yield q, np.concatenate([head, order[:, n:]], axis=1)


def _score(rankings, labels) -> dict:
    rows = [ranking_scores(order, labels, q) for q, order in rankings]
    mean = np.concatenate(rows).mean(0) if rows else np.full(len(RETRIEVAL_KS) + 1, np.nan)
    out = {f"precision@{k}": float(mean[j]) for j, k in enumerate(RETRIEVAL_KS)}
    out["mAP"] = float(mean[-1])
    return out


def _space_rows(row, index_dir, manifest, vecs, queries, expand) -> None:
    """Rows for cosine, the whitened space and whitened + expansion."""
    from ..index import spaces

    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    dim = manifest.dimension
    norm = _Normalise()
    row("fc7 cosine", dim * 4, _float_rankings(unit, queries), query_latency_ms(vecs, [norm]),
        space="cosine")  # fmt: skip
    if manifest.space is not None:
        pca = spaces.read_transform(index_dir, manifest.space.transform_file)
        source = f"the index's, generation {manifest.space.generation}"
    else:
        want = spaces.fitting_dim(manifest.space_dim or spaces.DEFAULT_DIM, len(vecs))
        if want is None:
            return
        pca, _ = spaces.learn(vecs, want)
        source = "learnt here"
    chain = spaces.chain(pca)
    white = spaces.apply(chain, vecs)
    d_out = pca.d_out
    lat = query_latency_ms(vecs, chain)
    row(f"whitened {d_out}", d_out * 4, _float_rankings(white, queries), lat,
        space="whitened", transform=source)  # fmt: skip
    for n in expand if expand is not None else (spaces.DEFAULT_EXPAND,):
        if n:
            row(
                f"whitened {d_out} + expansion {n}", d_out * 4,
                _float_rankings(white, queries, n), query_latency_ms(vecs, chain, n),
                space="whitened", expand=n, transform=source,
            )  # fmt: skip


class _Normalise:
    """L2 normalisation as a transform (cosine's latency row)."""

    def apply(self, x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _relabelled(progress: Progress | None, stage: str) -> Progress | None:
    """`progress` with every stage reported under one name (which autoencoder trains)."""
    if progress is None:
        return None
    return lambda _stage, done, total, **figures: progress(stage, done, total, **figures)


def retrieval(
    index=None,
    binary: bool = False,
    bits: tuple[int, ...] = RETRIEVAL_BITS,
    epochs: int | None = None,
    rerank: int = 0,
    max_queries: int | None = MAX_QUERIES,
    seed: int = 0,
    progress: Progress | None = None,  # while autoencoders train
    expand: tuple[int, ...] | None = None,
) -> dict:
    """Leave-one-out retrieval figures of an index: fc7 float L2 (the paper's ranking)
    beside pixel L2 (32x32 thumbnails), cosine, the whitened space (the index's own
    transform, else one learnt here as `index` would) and whitened + query expansion by
    each N in `expand` (default: spaces.DEFAULT_EXPAND), each with its query latency;
    with `binary` the codes of each size in `bits` (the index's own autoencoder when it
    has that size, else one trained here), optionally re-ranked."""
    d, manifest = open_existing(index)
    cat = Catalogue(d / "catalogue.sqlite", readonly=True)
    try:
        ok = cat.ok_files(manifest.dimension)
    finally:
        cat.close()
    ids, vecs = ok.ids, ok.vectors
    labels_txt = [label_of(p) for p in ok.paths]
    _, labels = np.unique(labels_txt, return_inverse=True)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    candidates = np.flatnonzero(counts[labels] > 1) if len(labels) else np.zeros(0, int)
    if len(candidates) == 0:
        raise IndexError_(
            f"{d}: no two files share a parent folder, so no neighbour can be right; "
            "retrieval evaluation needs photos sorted into folders by subject"
        )
    sampled = max_queries is not None and len(candidates) > max_queries
    queries = candidates
    if sampled:
        rng = np.random.default_rng(seed)
        queries = np.sort(rng.choice(candidates, max_queries, replace=False))
    out_rows = []

    def row(method, bytes_per_image, rankings, latency=None, **extra):
        out_rows.append(
            {
                "method": method,
                **extra,
                "bytes_per_image": bytes_per_image,
                **_score(rankings, labels),
                **({"query_ms": latency} if latency is not None else {}),
            }
        )

    dim = manifest.dimension
    row(
        "fc7 float, L2",
        dim * 4,
        _float_rankings(vecs, queries),
        query_latency_ms(vecs),
        space="paper",
    )
    if all(ok.thumbs):
        thumbs = np.stack([np.frombuffer(t, np.uint8) for t in ok.thumbs]).astype(np.float32)
        row("pixels 32x32, L2", thumbs.shape[1], _float_rankings(thumbs, queries))
    _space_rows(row, d, manifest, vecs, queries, expand)
    if binary:
        have = manifest.codes
        fp = manifest.model.fingerprint
        for b in bits:
            if have is not None and have.bits == b:
                coder = autoencoder.load(d / have.autoencoder, fp)
                source = "index's autoencoder"
            else:
                n_ep = epochs or autoencoder.DEFAULT_EPOCHS
                coder = autoencoder.train(
                    vecs,
                    b,
                    n_ep,
                    fp,
                    seed=seed,
                    progress=_relabelled(progress, f"{b}-bit autoencoder"),
                )
                source = f"trained here, {n_ep} epochs"
            packed = coder.encode(vecs)
            row(
                f"{b}-bit codes, Hamming",
                b // 8,
                _hamming_rankings(packed, queries, b),
                bits=b,
                autoencoder=source,
            )
            if rerank and b == max(bits):
                row(
                    f"{b}-bit codes, top {rerank} re-ranked by fc7 L2",
                    b // 8 + dim * 4,
                    _reranked(_hamming_rankings(packed, queries, b), vecs, rerank),
                    bits=b,
                    autoencoder=source,
                )
    return {
        "index": str(d),
        "files": len(ids),
        "labels": int(len(counts)),
        "queries": int(len(queries)),
        "sampled": bool(sampled),
        "left_out_single": int(len(ids) - len(candidates)),
        "rows": out_rows,
    }
