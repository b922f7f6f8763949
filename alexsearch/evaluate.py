"""Evaluation: classification error (top-1/top-5, centre and ten-crop) and retrieval
precision (precision@k and mAP over an index, parent folder as label)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

# --------------------------------------------------------------------------- classification


@dataclass
class ClassificationResult:
    images: int
    centre_top1_err: float
    centre_top5_err: float
    ten_crop_top1_err: float
    ten_crop_top5_err: float
    folder: str
    mapping: str  # how folder classes were matched to the checkpoint's ("by name", ...)
    skipped: list = field(default_factory=list)  # [(path, reason)]

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "images": self.images,
            "centre": {"top1_err": self.centre_top1_err, "top5_err": self.centre_top5_err},
            "ten_crop": {"top1_err": self.ten_crop_top1_err, "top5_err": self.ten_crop_top5_err},
            "mapping": self.mapping,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def class_mapping(folder_classes: list[str], ckpt_classes: list[str], num_outputs: int):
    """(folder label -> network output index, how). By name when every folder class is one
    of the checkpoint's; otherwise by sorted order when the counts agree; else refuse."""
    from .errors import UserError

    if folder_classes and all(c in ckpt_classes for c in folder_classes):
        where = {c: i for i, c in enumerate(ckpt_classes)}
        return [where[c] for c in folder_classes], "by name"
    if len(folder_classes) == num_outputs:
        return list(range(num_outputs)), (
            "by sorted order (the folder's class names are not the checkpoint's)"
        )
    raise UserError(
        f"the folder has {len(folder_classes)} classes and the checkpoint "
        f"{num_outputs}, and the names do not match (e.g. folder class "
        f"{next(c for c in folder_classes if c not in ckpt_classes)!r}): cannot tell which "
        "output is which class"
    )


def eval_folder(root) -> Path:
    """DIR, or DIR/val when DIR holds a val/ split."""
    root = Path(root)
    return root / "val" if (root / "val").is_dir() else root


def ten_crop_probs(model, u8, pre, device) -> torch.Tensor:
    """Softmax of the ten crops of each uint8 256 image: (N, 10, classes), crop 4 the centre."""
    from . import data

    # Subtract the mean before cropping, so a mean image is cropped with each crop.
    crops = data.ten_crop(pre.normalize(u8.to(device)), pre.input_size)  # (N, 10, 3, s, s)
    n = crops.shape[0]
    x = crops.reshape(n * 10, *crops.shape[2:])
    with torch.no_grad():
        return torch.softmax(model(x).float(), dim=1).view(n, 10, -1)


CENTRE = 4  # index of the unmirrored centre crop in data.ten_crop's order


def classify(
    ckpt,
    root,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "cpu",
    limit: int | None = None,
    progress=None,
) -> ClassificationResult:
    """Top-1/top-5 error of a checkpoint on a labelled folder, centre crop and ten-crop."""
    from . import data, train
    from .errors import UserError

    folder = eval_folder(root)
    try:
        classes, samples = data.labelled_folder(folder)
    except ValueError as e:
        raise UserError(str(e)) from None
    if limit is not None and limit < len(samples):
        import random

        samples = sorted(random.Random(0).sample(samples, limit), key=lambda s: (s[1], s[0]))
    to_output, how = class_mapping(classes, ckpt.classes, ckpt.arch.num_classes)
    samples = [(p, to_output[y]) for p, y in samples]
    model = ckpt.build(device)
    c1 = c5 = t1 = t5 = n = 0
    skipped = []
    batches = train.loader(samples, batch_size, workers, squash=ckpt.preprocess.squash)
    for b, (u8, labels, bad) in enumerate(batches):
        skipped += bad
        if len(labels):
            probs = ten_crop_probs(model, u8, ckpt.preprocess, device).cpu()
            a, z = train.topk_wrong(probs[:, CENTRE], labels)
            c1, c5 = c1 + a, c5 + z
            a, z = train.topk_wrong(probs.mean(1), labels)
            t1, t5, n = t1 + a, t5 + z, n + len(labels)
        if progress:
            progress(min((b + 1) * batch_size, len(samples)), len(samples))
    if n == 0:
        raise UserError(f"{folder}: no readable image to evaluate")
    return ClassificationResult(
        images=n,
        centre_top1_err=c1 / n,
        centre_top5_err=c5 / n,
        ten_crop_top1_err=t1 / n,
        ten_crop_top5_err=t5 / n,
        folder=str(folder),
        mapping=how,
        skipped=skipped,
    )


# --------------------------------------------------------------------------- retrieval
# Leave-one-out over an index: every ok file (or a fixed random sample of --max-queries of
# them) queries all the others; a neighbour is right when it has the query's label, its
# parent folder's name. precision@k = right among the first k / k; AP averages the
# precision at each right neighbour over the full ranking of the rest of the index; a
# query whose label no other file has cannot be right and is left out. Rankings come
# from exact FAISS searches (float L2, pixel L2, Hamming), in chunks of queries, so the
# memory is chunk x files; Hamming ties keep FAISS's order.

# isort: split
import numpy as np  # noqa: E402  (imported here: this section is merged separately)

RETRIEVAL_KS = (1, 6, 10)
RETRIEVAL_BITS = (32, 64, 256)
MAX_QUERIES = 5000
_CHUNK = 256


def label_of(path: str) -> str:
    import os

    return os.path.basename(os.path.dirname(path))


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


def _float_rankings(x: np.ndarray, queries: np.ndarray):
    """Full L2 rankings (positions), chunk by chunk."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x, np.float32))
    for s in range(0, len(queries), _CHUNK):
        q = queries[s : s + _CHUNK]
        _, found = index.search(np.ascontiguousarray(x[q], np.float32), len(x))
        yield q, _drop_self(found, q)


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


def retrieval(
    index=None,
    binary: bool = False,
    bits: tuple[int, ...] = RETRIEVAL_BITS,
    epochs: int | None = None,
    rerank: int = 0,
    max_queries: int | None = MAX_QUERIES,
    seed: int = 0,
    progress=None,  # progress(label, done, total) while training autoencoders
) -> dict:
    """Leave-one-out retrieval figures of an index: fc7 float L2 beside pixel L2 (32x32
    thumbnails), and with `binary` the codes of each size in `bits` (the index's own
    autoencoder when it has that size, else one trained here), optionally re-ranked."""
    from . import codes, store

    d, manifest = store.open_existing(index)
    cat = store.Catalogue(d / "catalogue.sqlite", readonly=True)
    try:
        ids, vecs = cat.vectors(manifest["dimension"])
        rows = cat.labelled()
    finally:
        cat.close()
    assert [r[0] for r in rows] == ids.tolist()  # both ordered by id, over the same ok files
    labels_txt = [label_of(p) for _, p, _ in rows]
    _, labels = np.unique(labels_txt, return_inverse=True)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    candidates = np.flatnonzero(counts[labels] > 1) if len(labels) else np.zeros(0, int)
    if len(candidates) == 0:
        raise store.IndexError_(
            f"{d}: no two files share a parent folder, so no neighbour can be right; "
            "retrieval evaluation needs photos sorted into folders by subject"
        )
    sampled = max_queries is not None and len(candidates) > max_queries
    queries = candidates
    if sampled:
        rng = np.random.default_rng(seed)
        queries = np.sort(rng.choice(candidates, max_queries, replace=False))
    out_rows = []

    def row(method, bytes_per_image, rankings, **extra):
        out_rows.append(
            {
                "method": method,
                **extra,
                "bytes_per_image": bytes_per_image,
                **_score(rankings, labels),
            }
        )

    dim = manifest["dimension"]
    row("fc7 float, L2", dim * 4, _float_rankings(vecs, queries))
    if all(t for _, _, t in rows):
        thumbs = np.stack([np.frombuffer(t, np.uint8) for _, _, t in rows]).astype(np.float32)
        row("pixels 32x32, L2", thumbs.shape[1], _float_rankings(thumbs, queries))
    if binary:
        have = manifest.get("codes") or {}
        for b in bits:
            if have.get("bits") == b:
                coder = codes.load(d / have["autoencoder"], manifest["model"]["fingerprint"])
                source = "index's autoencoder"
            else:
                n_ep = epochs or codes.DEFAULT_EPOCHS
                cb = (
                    (lambda e, n, err, b=b: progress(f"{b}-bit autoencoder", e, n))
                    if progress
                    else None
                )
                coder = codes.train(
                    vecs, b, n_ep, manifest["model"]["fingerprint"], seed=seed, progress=cb
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
