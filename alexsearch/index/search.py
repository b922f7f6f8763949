"""`alexsearch query`: nearest neighbours of images in an index.

A query reads the published manifest and its FAISS snapshot (never a half-written
index), embeds each query image exactly as indexing did, and maps result ids back to
paths through the catalogue. A query image that is itself in the index is left out of
its own results unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import CodesError, IndexError_, UserError
from ..images.decode import ImageError
from . import codes, vectors
from .catalogue import Catalogue
from .manifest import check_model, open_existing, read_manifest


@dataclass
class Hit:
    rank: int
    distance: float
    path: str
    id: int


@dataclass
class Result:
    query: str
    hits: list[Hit] = field(default_factory=list)
    error: str = ""


class Searcher:
    """An open index snapshot: FAISS vectors + catalogue, read-only."""

    def __init__(self, index: str | os.PathLike | None):
        self.dir, self.manifest = open_existing(index)
        for _ in range(3):  # a writer may publish a new generation while we open it
            try:
                self.index = vectors.read_faiss(self.dir, self.manifest)
                break
            except IndexError_:
                fresh = read_manifest(self.dir)
                if fresh is None or fresh["vectors_file"] == self.manifest["vectors_file"]:
                    raise
                self.manifest = fresh
        self.catalogue = Catalogue(self.dir / "catalogue.sqlite", readonly=True)

    def check_model(self, fingerprint: str, weights_path, pre) -> None:
        fix = "query with the index's weights or rebuild the index"
        check_model(self.dir, self.manifest, fingerprint, pre, weights_path, fix)

    def search(self, vectors: np.ndarray, k: int, exclude_ids=None) -> list[list[Hit]]:
        """k nearest per row of `vectors`; exclude_ids[i] is left out of row i's results."""
        exclude_ids = exclude_ids or [None] * len(vectors)
        extra = 1 if any(e is not None for e in exclude_ids) else 0
        n = self.index.ntotal
        want = min(k + extra, n)
        if want == 0:
            return [[] for _ in vectors]
        dist, ids = self.index.search(np.ascontiguousarray(vectors, np.float32), want)
        paths = self.catalogue.paths({int(i) for i in ids.ravel() if i >= 0})
        out = []
        for row_d, row_i, skip in zip(dist, ids, exclude_ids, strict=True):
            hits = []
            for d, i in zip(row_d, row_i, strict=True):
                i = int(i)
                if i < 0 or i == skip or i not in paths:
                    continue  # -1: fewer than k; not in paths: deleted by a later run
                hits.append(Hit(len(hits) + 1, float(max(d, 0.0)) ** 0.5, paths[i], i))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    # -- binary codes (alexsearch codes): Hamming k-NN, optionally re-ranked by exact fc7

    def open_codes(self) -> None:
        """Load the autoencoder and binary index the manifest names (clear line if none)."""
        for _ in range(3):  # a writer may publish new codes while we open them
            try:
                self.coder, self.binary = codes.open_codes(self.dir, self.manifest)
                return
            except CodesError:
                fresh = read_manifest(self.dir)
                if fresh is None or fresh.get("codes") == self.manifest.get("codes"):
                    raise
                self.manifest = fresh

    def search_codes(
        self, vectors: np.ndarray, k: int, exclude_ids=None, rerank: int = 0
    ) -> list[list[Hit]]:
        """k nearest by Hamming distance between codes (bit counts); with rerank=N, a
        Hamming shortlist of N re-ranked by exact L2 between fc7 vectors (the catalogue's)."""
        if rerank and rerank < k:
            raise UserError(f"--rerank {rerank} must be at least --k {k}")
        exclude_ids = exclude_ids or [None] * len(vectors)
        extra = 1 if any(e is not None for e in exclude_ids) else 0
        packed = self.coder.encode(np.asarray(vectors, np.float32))
        dist, ids = codes.hamming_knn(self.binary, packed, max(k, rerank) + extra)
        paths = self.catalogue.paths({int(i) for i in ids.ravel() if i >= 0})
        out = []
        for vec, row_d, row_i, skip in zip(vectors, dist, ids, exclude_ids, strict=True):
            cands = [
                (float(d), int(i))
                for d, i in zip(row_d, row_i, strict=True)
                if i >= 0 and int(i) != skip and int(i) in paths
            ]
            if rerank:
                cands = cands[:rerank]
                exact = [float(np.linalg.norm(self.catalogue.vector_of(i) - vec)) for _, i in cands]
                cands = sorted(zip(exact, (i for _, i in cands), strict=True))
            else:
                cands = [(int(d), i) for d, i in cands]  # Hamming: whole bits
            out.append([Hit(r + 1, d, paths[i], i) for r, (d, i) in enumerate(cands[:k])])
        return out

    def close(self) -> None:
        self.catalogue.close()


def query(
    searcher: Searcher,
    embed: Callable[[str], np.ndarray],
    images: list[str],
    k: int = 6,
    include_self: bool = False,
    binary: bool = False,
    rerank: int = 0,
) -> list[Result]:
    """Embed each image (`embed`: path -> fc7, images.decode.ImageError when it cannot be read)
    and search. An unreadable query image gets an error, not a crash.

    binary: Hamming k-NN over the codes; rerank=N: a Hamming shortlist of N re-ranked by
    exact fc7 distance (call searcher.open_codes() first for either)."""
    if k < 1:
        raise UserError("--k must be at least 1")
    results, vecs, excl, slots = [], [], [], []
    for img in images:
        path = os.path.abspath(img)
        res = Result(query=path)
        results.append(res)
        try:
            vecs.append(embed(path))
        except ImageError as e:
            res.error = str(e)
            continue
        excl.append(None if include_self else searcher.catalogue.id_of(path))
        slots.append(res)
    if vecs:
        if binary or rerank:
            found = searcher.search_codes(np.stack(vecs), k, excl, rerank)
        else:
            found = searcher.search(np.stack(vecs), k, excl)
        for res, hits in zip(slots, found, strict=True):
            res.hits = hits
    return results


def embedder(weights_path, recorded: str | None, device: str, max_megapixels: float):
    """(embed, fingerprint, preprocess, weights path) for queries with the resolved weights.

    On the CPU the network runs on numpy (numpy_net) whenever the checkpoint is one it
    reads, so a query never imports torch (~2 s); otherwise, and on a GPU, torch."""
    from ..net import numpy_net
    from ..weights import locations

    path = locations.resolve(weights_path, recorded)
    net = numpy_net.load(path) if str(device).strip().lower() == "cpu" else None
    if net is not None:
        embed = lambda p: net.embed(p, max_megapixels)  # noqa: E731
        return embed, net.fingerprint, net.preprocess, path.resolve()
    from ..net.devices import resolve_device
    from ..weights import checkpoint
    from .extract import extract_one

    dev = resolve_device(device)
    ckpt = checkpoint.load(path)
    model = ckpt.build(dev)
    pre = ckpt.preprocess

    def embed(p: str) -> np.ndarray:
        return extract_one(model, pre, p, max_megapixels, dev)

    return embed, ckpt.fingerprint, pre, path.resolve()


def result_dicts(results: list[Result]) -> list[dict]:
    return [
        {
            "query": r.query,
            **({"error": r.error} if r.error else {}),
            "neighbours": [
                {"rank": h.rank, "distance": round(h.distance, 6), "path": h.path, "id": h.id}
                for h in r.hits
            ],
        }
        for r in results
    ]
