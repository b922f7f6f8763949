"""One IVF training shared by the shards of a collection.

    alexsearch index PHOTOS --index TRAIN --train-only --kind ivfpq [--sample 50000]
    alexsearch index PHOTOS --index shard-I --shard I/N --trained TRAIN   # each machine
    alexsearch merge shard-0 ... shard-(N-1) --index ALL                   # no training

`--train-only` indexes a sample of the photos (the `sample` paths whose path relative
to the root has the smallest SHA-1: a uniform sample every machine agrees on) and learns
from its vectors, once, for the size of the whole collection: the IVF kind's PCA,
coarse quantizer and codebooks over raw fc7, the whitened space's transform, and the
same IVF training over the whitened vectors. They are kept as empty trained FAISS
indexes (and the transform) named by their signature, in TRAIN's folder.

An index given `--trained TRAIN` copies those files into its own folder (so it holds
all it needs) and every publish then adds its vectors to them instead of training; an
index without binary codes also takes TRAIN's autoencoder, if `alexsearch codes` made
one there, and encodes with it.
Shards trained alike hold codes that mean the same: `merge` joins their inverted lists
(merge.merge_faiss) instead of training and encoding the union again, and their whitened
distances are comparable (`query --index A --index B --space whitened`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexError_, UserError
from . import shards, spaces, vectors
from .manifest import Manifest, TrainingRecord, open_existing

IVF_KINDS = ("ivfpq", "ivfsq")
DEFAULT_SAMPLE = 50_000  # what train_faiss samples anyway (max(50_000, 64 nlist))
PER_LIST = 39  # FAISS k-means wants at least 39 training vectors a centroid


def check_kind(kind: str | None) -> str:
    """The kind `--train-only` trains (an IVF kind; the others need no training)."""
    if kind not in IVF_KINDS:
        raise UserError(
            f"--train-only trains an IVF kind (--kind {' or '.join(IVF_KINDS)}); "
            f"--kind {kind or 'flat'} needs no training"
        )
    return kind


def sample_files(files, roots: list[Path], size: int):
    """The `size` walked files (path, size, mtime_ns) with the smallest SHA-1 of their
    path relative to its root, in walk order: the same sample on every machine."""
    if size < 1:
        raise UserError(f"--sample {size}: must be at least 1")
    if len(files) <= size:
        return list(files)

    def key(f):
        rel = shards.relative_to_root(f[0], roots)
        return hashlib.sha1(rel.encode("utf-8", "surrogateescape")).digest()

    chosen = set(sorted(range(len(files)), key=lambda i: key(files[i]))[:size])
    return [f for i, f in enumerate(files) if i in chosen]


def learn(
    index_dir: Path, vecs: np.ndarray, kind: str, planned: int, space: str, space_dim: int
) -> TrainingRecord:  # fmt: skip
    """Train `kind` for a collection of `planned` vectors on `vecs` (the sample), in the
    paper space and, unless `space` is paper, in a whitened space learnt from `vecs`;
    write the trained empty indexes into index_dir and return their record."""
    import faiss

    n = len(vecs)
    nlist = max(1, min(vectors.ivf_lists(planned), n // PER_LIST))
    paper = vectors.train_faiss(kind, planned, vecs, nlist=nlist)
    blobs = [faiss.serialize_index(paper).tobytes()]
    pca, fit = None, spaces.fitting_dim(space_dim, n) if space != "paper" else None
    if fit:
        pca, _ = spaces.learn(vecs, fit)
        space_index = vectors.train_faiss(kind, planned, vecs, spaces.chain(pca), nlist=nlist)
        blobs += [_transform_bytes(pca), faiss.serialize_index(space_index).tobytes()]
    signature = hashlib.sha1(b"".join(hashlib.sha1(b).digest() for b in blobs)).hexdigest()
    tag = signature[:16]
    names = [f"trained-{tag}.faiss"]
    if fit:
        names += [f"whiten-trained-{tag}.faissvt", f"trained-space-{tag}.faiss"]
    for name, blob in zip(names, blobs, strict=True):
        atomic_write(index_dir / name, lambda f, b=blob: f.write(b))
    return TrainingRecord(
        kind=kind,
        signature=signature,
        planned=int(planned),
        nlist=nlist,
        sample=n,
        paper_file=names[0],
        transform_file=names[1] if fit else "",
        space_file=names[2] if fit else "",
        space_dim=fit or 0,
        source=os.path.abspath(index_dir),
    )


def _transform_bytes(pca) -> bytes:
    import faiss

    writer = faiss.VectorIOWriter()
    faiss.write_VectorTransform(pca, writer)
    return faiss.vector_to_array(writer.data).tobytes()


def source(trained: Path) -> tuple[Path, Manifest]:
    """The index `--trained` names and its manifest, which must hold a training."""
    src, m = open_existing(trained)
    if m.training is None:
        raise UserError(
            f"--trained {trained}: that index holds no training; make one with "
            f"`alexsearch index PHOTOS --index {trained} --train-only --kind ivfpq`"
        )
    return src, m


def check_model(src: Path, m: Manifest, fingerprint: str, pre_signature, index_dir: Path):
    """Refuse a training learnt from other weights or preprocessing than the index's:
    its codebooks would place the index's vectors wrongly."""
    if m.model.fingerprint != fingerprint:
        raise IndexError_(
            f"--trained {src} was learnt from weights {m.model.fingerprint}, {index_dir} "
            f"holds {fingerprint}: train with the same weights"
        )
    if (m.preprocess.signature or None) not in (None, pre_signature):
        raise IndexError_(
            f"--trained {src} was learnt with other preprocessing "
            f"({m.preprocess.geometry}) than {index_dir}'s: train with the same"
        )


def adopt(index_dir: Path, src: Path, record: TrainingRecord) -> TrainingRecord:
    """Copy a training's files from its index `src` into index_dir (each atomically;
    nothing to do when they are there already, as in src itself)."""
    for name in sorted(record.files()):
        there = index_dir / name
        if os.path.abspath(src / name) == os.path.abspath(there) or there.exists():
            continue  # named by the signature of its contents: the same file
        try:
            with open(src / name, "rb") as f:
                atomic_write(there, lambda out, f=f: shutil.copyfileobj(f, out, 1 << 20))
        except FileNotFoundError:
            raise IndexError_(f"--trained {src}: {name} is missing; train it again") from None
    return record


def adopt_codes(index_dir: Path, src: Path, m: Manifest):
    """The CodesRecord that makes an index encode its vectors with the autoencoder of
    the training index `src` (its `alexsearch codes`), copied in, with no codes yet
    (the next publish encodes them all): shards that share it have codes merge carries
    over. None when src has no codes."""
    from .codes import _write_codes

    entry = m.codes
    if entry is None:
        return None
    digest = hashlib.sha1((src / entry.autoencoder).read_bytes()).hexdigest()
    name = f"autoencoder-{digest[:16]}.pt"
    if not (index_dir / name).exists():
        with open(src / entry.autoencoder, "rb") as f:
            atomic_write(index_dir / name, lambda out: shutil.copyfileobj(f, out, 1 << 20))
    width = entry.bits // 8
    none = np.zeros(0, np.int64)
    npz, faissb = _write_codes(index_dir, 0, none, np.zeros((0, width), np.uint8),
                               np.zeros(0, np.uint64), entry.bits)  # fmt: skip
    return replace(entry, autoencoder=name, codes_file=npz, index_file=faissb, count=0)


def read(index_dir: Path, record: TrainingRecord):
    """(paper index, whitening transform or None, whitened index or None): the trained
    empty indexes a publish adds to (each a fresh copy: adding leaves the files as
    they are)."""
    paper = _read_index(index_dir, record.paper_file)
    if not record.space_file:
        return paper, None, None
    pca = spaces.read_transform(index_dir, record.transform_file)
    return paper, pca, _read_index(index_dir, record.space_file)


def _read_index(index_dir: Path, name: str):
    import faiss

    p = index_dir / name
    try:
        return faiss.read_index(str(p))
    except RuntimeError as e:
        raise IndexError_(f"{p}: unreadable training ({str(e).splitlines()[0][:120]})") from None
