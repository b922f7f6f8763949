"""Nearest neighbours in a published index.

A `Snapshot` is one published generation, opened read-only: its manifest, its FAISS
vectors (memory-mapped) and the catalogue that maps ids to paths, plus, when asked, its
binary codes. A writer publishing meanwhile never disturbs it: the files it opened stay
readable, and ids deleted since are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CodesError, IndexError_, UserError
from . import classnames, codes, spaces, vectors
from .catalogue import Catalogue
from .manifest import Manifest, not_published, read_manifest


@dataclass
class Hit:
    rank: int
    distance: float  # L2 in the search space (raw fc7 or whitened), or Hamming bits (int)
    path: str
    id: int  # the catalogue id
    label: str = ""  # with --label: the matching class among the photo's top-5
    prob: float | None = None  # and its probability
    index: str = ""  # the index it came from, in an answer over several (index/multi.py)
    part: int | None = None  # and that index's position among them

    def to_dict(self) -> dict:
        d = self.distance if isinstance(self.distance, int) else round(self.distance, 6)
        out = {"rank": self.rank, "distance": d, "path": self.path, "id": self.id}
        if self.label:
            out.update(label=self.label, prob=round(self.prob, 6))
        return {**out, **_part_of(self)}


def _part_of(hit) -> dict:
    """The index and part naming a hit of an answer over several indexes ({} for one)."""
    if not hit.index:
        return {}
    return {"index": hit.index, **({} if hit.part is None else {"part": hit.part})}


@dataclass
class LabelHit:
    rank: int
    prob: float  # the probability of `label` for this photo (fc8's softmax)
    label: str  # the matching class among the photo's top-5
    path: str
    id: int
    index: str = ""  # as Hit's, over several indexes
    part: int | None = None

    def to_dict(self) -> dict:
        return {"rank": self.rank, "prob": round(self.prob, 6), "label": self.label,
                "path": self.path, "id": self.id, **_part_of(self)}  # fmt: skip


@dataclass
class LabelResult:
    """The indexed photos whose top-5 classes match a word, most probable first."""

    word: str
    classes: list[str]  # the class names the word matched
    hits: list[LabelHit] = field(default_factory=list)
    unlabelled: int = 0  # indexed photos without labels yet (made before labels)

    def to_dict(self) -> dict:
        """What `alexsearch query --label WORD --json` prints."""
        return {"label": self.word, "classes": self.classes, "unlabelled": self.unlabelled,
                "photos": [h.to_dict() for h in self.hits]}  # fmt: skip


@dataclass
class LabelMatch:
    """The photos a --label names: (file id -> (class name, probability)), best first."""

    word: str
    classes: list[str]
    photos: dict[int, tuple[str, float]]
    unlabelled: int


@dataclass
class QueryResult:
    """One query image's neighbours, nearest first, or why it could not be searched."""

    query: str  # the image's absolute path ("" for bytes)
    hits: list[Hit] = field(default_factory=list)
    error: str = ""
    precision: str = ""  # what the query's fc7 was computed in, when not the index's
    index_precision: str = ""
    space: str = ""  # the search space that answered: paper, whitened, or hamming
    expand: int = 0  # neighbours averaged into the query before the search that answered

    def to_dict(self) -> dict:
        """What `alexsearch query --json` prints for this image."""
        other = {"precision": self.precision, "index_precision": self.index_precision}
        return {
            "query": self.query,
            **({"error": self.error} if self.error else {}),
            **(other if self.precision else {}),
            "space": self.space,
            "expand": self.expand,
            "neighbours": [h.to_dict() for h in self.hits],
        }


class Snapshot:
    """One published generation of an index: FAISS vectors + catalogue, read-only."""

    def __init__(self, index_dir: Path):
        self.dir = index_dir
        manifest = read_manifest(index_dir)
        for _ in range(3):  # a writer may publish a new generation while we open it
            if manifest is None:
                raise IndexError_(not_published(index_dir))
            try:
                self.index = vectors.read_faiss(index_dir, manifest.vectors_file)
                break
            except IndexError_:
                fresh = read_manifest(index_dir)
                if fresh is None or fresh.vectors_file == manifest.vectors_file:
                    raise
                manifest = fresh
        self.manifest: Manifest = manifest
        self.catalogue = Catalogue(index_dir / "catalogue.sqlite", readonly=True)
        self.coder = self.binary = None
        self.space_index = None

    def space(self, requested: str | None) -> str:
        """The search space a query answers in: `requested`, else the index's default
        (whitened when it has learnt one); whitened asked of an index without it is
        refused with the reason."""
        spaces.check_space(requested)
        if requested is None:
            return self.manifest.default_space()
        if requested == "whitened" and self.manifest.space is None:
            why = self.manifest.describe_space()
            raise IndexError_(
                f"{self.dir} has no whitened space: it answers in {why}; "
                "use --space paper, or re-index"
            )
        return requested

    def open_space(self):
        """The whitened space's FAISS index (IndexPreTransform), memory-mapped."""
        if self.space_index is None:
            self.space_index = vectors.read_faiss(self.dir, self.manifest.space.index_file)
        return self.space_index

    def search(
        self, vecs: np.ndarray, k: int, exclude_ids=None, space: str = "paper", expand: int = 0
    ) -> list[list[Hit]]:
        """k nearest per row of `vecs` in `space`; exclude_ids[i] is left out of row i's
        results. expand=N: average query expansion, the query averaged with its first N
        neighbours (in the space: their catalogue fc7 through the index's own transform)
        and searched again."""
        exclude_ids = exclude_ids or [None] * len(vecs)
        extra = 1 if any(e is not None for e in exclude_ids) else 0
        index = self.index if space == "paper" else self.open_space()
        want = min(k + extra, index.ntotal)
        if want == 0:
            return [[] for _ in vecs]
        vecs = np.ascontiguousarray(vecs, np.float32)
        if expand:
            dist, ids = self._expanded(index, vecs, want, exclude_ids, space, expand)
        else:
            dist, ids = index.search(vecs, want)
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

    def _expanded(self, index, vecs, want, exclude_ids, space, n):
        """Search once for n neighbours, average them into the query, search again."""
        transforms = spaces.index_chain(index) if space != "paper" else []
        inner = index.index if transforms else index
        q = spaces.apply(transforms, vecs)
        _, first = inner.search(q, min(n + 1, index.ntotal))
        for r, (row, skip) in enumerate(zip(first, exclude_ids, strict=True)):
            nb = [int(i) for i in row if i >= 0 and i != skip][:n]
            raw = [v for v in (self.catalogue.vector_of(i) for i in nb) if v is not None]
            if raw:
                q[r] = (q[r] + spaces.apply(transforms, np.stack(raw)).sum(0)) / (1 + len(raw))
        if transforms:
            q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return inner.search(np.ascontiguousarray(q, np.float32), want)

    # -- by label: the top-5 classes the catalogue holds (index/labels.py)

    def vocabulary(self) -> list[classnames.ClassName]:
        """The classes the labels are numbered in; refused when the index has no labels."""
        names = self.catalogue.class_names()
        if names is None:
            raise IndexError_(
                f"{self.dir} has no labels yet (made before labels): run `alexsearch index` "
                "on it again, which computes them from the stored fc7 without decoding photos"
            )
        return classnames.vocabulary(names, len(names))

    def match_label(self, word: str, min_prob: float = 0.0) -> LabelMatch:
        """The photos whose top-5 classes hold a class `word` names, with at least
        `min_prob`, most probable first; UserError listing the closest names when the
        word names no class."""
        if not 0.0 <= min_prob <= 1.0:
            raise UserError(f"--min-prob {min_prob} must be between 0 and 1")
        vocab = self.vocabulary()
        wanted = classnames.matching(word, vocab)
        rows = self.catalogue.with_classes(wanted, min_prob)
        ok, _ = self.catalogue.count()
        return LabelMatch(
            word,
            [vocab[c].name for c in wanted],
            {i: (vocab[c].name, p) for i, c, p in rows},
            ok - self.catalogue.labelled_count(),
        )

    def search_among(
        self, vecs: np.ndarray, k: int, match: LabelMatch, exclude_ids=None, space="paper"
    ) -> list[list[Hit]]:
        """k nearest per row of `vecs` among the photos of `match`, exactly (brute force
        over their catalogue fc7, in `space` through the index's own transform), each hit
        with its matching class and probability."""
        import faiss

        exclude_ids = exclude_ids or [None] * len(vecs)
        ids, cand = self.catalogue.vectors_of(list(match.photos), self.manifest.dimension)
        if len(ids) == 0:
            return [[] for _ in vecs]
        q = np.ascontiguousarray(vecs, np.float32)
        if space != "paper":
            transforms = spaces.index_chain(self.open_space())
            q, cand = spaces.apply(transforms, q), spaces.apply(transforms, cand)
        want = min(k + 1, len(ids))
        dist, rows = faiss.knn(q, np.ascontiguousarray(cand, np.float32), want)
        paths = self.catalogue.paths(ids.tolist())
        out = []
        for row_d, row_i, skip in zip(dist, rows, exclude_ids, strict=True):
            hits = []
            for d, r in zip(row_d, row_i, strict=True):
                i = int(ids[r]) if r >= 0 else -1
                if i < 0 or i == skip or i not in paths:
                    continue
                label, prob = match.photos[i]
                dd = float(max(d, 0.0)) ** 0.5
                hits.append(Hit(len(hits) + 1, dd, paths[i], i, label, prob))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    # -- binary codes (alexsearch codes): Hamming k-NN, optionally re-ranked by exact fc7

    def open_codes(self) -> None:
        """Load the autoencoder and binary index the manifest names (clear line if none)."""
        if self.coder is not None:
            return
        for _ in range(3):  # a writer may publish new codes while we open them
            try:
                self.coder, self.binary = codes.open_codes(self.dir, self.manifest)
                return
            except CodesError:
                fresh = read_manifest(self.dir)
                if fresh is None or fresh.codes == self.manifest.codes:
                    raise
                self.manifest = fresh

    def search_codes(
        self, vecs: np.ndarray, k: int, exclude_ids=None, rerank: int = 0
    ) -> list[list[Hit]]:
        """k nearest by Hamming distance between codes (bit counts); with rerank=N, a
        Hamming shortlist of N re-ranked by exact L2 between fc7 vectors (the catalogue's)."""
        self.open_codes()
        exclude_ids = exclude_ids or [None] * len(vecs)
        extra = 1 if any(e is not None for e in exclude_ids) else 0
        packed = self.coder.encode(np.asarray(vecs, np.float32))
        dist, ids = codes.hamming_knn(self.binary, packed, max(k, rerank) + extra)
        paths = self.catalogue.paths({int(i) for i in ids.ravel() if i >= 0})
        out = []
        for vec, row_d, row_i, skip in zip(vecs, dist, ids, exclude_ids, strict=True):
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
