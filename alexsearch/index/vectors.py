"""The FAISS index over an index's fc7 vectors: which kind, building it, writing and
memory-mapping it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexError_

KINDS = ("flat", "hnsw", "ivfpq", "ivfsq", "auto")
REDUCED_DIM = 256  # what the IVF kinds code raw fc7 in (a PCA in front of them)


# Exact search reads every vector for every query: about 10 GB/s on a small machine, so
# up to 512 MB (32k fc7 vectors) answers within ~50 ms; past that `auto` compresses.
EXACT_SCAN_BYTES = 512 * 1024**2


def choose_kind(kind: str, n: int, dim: int, max_memory: int | None) -> str:
    """`auto`, in the spirit of autofaiss: exact while a query's scan is cheap and fits the
    memory budget; else PCA + IVF with 8-bit scalar codes (256 bytes a vector), or product
    codes (32 bytes a vector) when even those would not fit the budget."""
    if kind != "auto":
        return kind
    flat_bytes = n * dim * 4
    budget = max_memory if max_memory else 4 * 1024**3
    if n < 10_000 or (flat_bytes <= min(budget, EXACT_SCAN_BYTES)):
        return "flat"  # too few vectors to train an IVF well, or cheap enough to scan
    return "ivfsq" if n * 256 * 1.2 <= budget else "ivfpq"


def build_faiss(kind: str, ids: np.ndarray, vecs: np.ndarray, transforms=None, trained=None):
    """A FAISS index of `kind` over vecs with the given ids (IDMap2 keeps id -> vector).

    transforms: trained FAISS VectorTransforms (a search space's, spaces.py); the index
    of `kind` is then built over their output and wrapped in an IndexPreTransform that
    applies them to every vector added and every query. The IVF kinds reduce to 256
    dimensions with their own PCA only when no transform does already. trained: an
    empty trained index (train_faiss) to add to instead: shards of one collection share
    it, so their indexes merge without training again (merge.merge_faiss)."""

    n = len(vecs)
    index = copy_index(trained) if trained is not None else train_faiss(kind, n, vecs, transforms)
    if n:
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return index


def ivf_lists(n: int) -> int:
    """The inverted lists of an IVF index for a collection of n vectors (~4 sqrt(n))."""
    return int(max(1, min(4096, 4 * np.sqrt(max(n, 1)))))


def copy_index(index):
    """A deep copy of a FAISS index (faiss.clone_index cannot copy a whitened space's
    NormalizationTransform; its serialisation can)."""
    import faiss

    return faiss.deserialize_index(faiss.serialize_index(index))


def train_faiss(
    kind: str, n: int, sample: np.ndarray, transforms=None, pq: int = 32, nlist=None
):  # fmt: skip
    """An empty index of `kind` for a collection of `n` vectors, trained on `sample`
    (the IVF kinds' PCA, coarse quantizer and codebooks; nothing to train otherwise).
    pq: ivfpq's bytes a vector (a divisor of the dimension it codes). nlist: the IVF
    kinds' inverted lists (default ivf_lists(n))."""
    import faiss

    ivf = kind in ("ivfpq", "ivfsq")
    if ivf:
        nlist = nlist or ivf_lists(n)
        if len(sample) < 39 * nlist or len(sample) < 256:
            raise IndexError_(
                f"--kind {kind} needs more vectors to train on than {len(sample)}; use --kind "
                "flat (exact) or --kind auto for a collection this small"
            )
        # A sample trains PCA and k-means as well as every vector, at a fraction of the cost.
        m, cap = len(sample), max(50_000, 64 * nlist)
        if m > cap:
            sample = sample[np.random.default_rng(0).choice(m, cap, replace=False)]
        sample = np.ascontiguousarray(sample, np.float32)
        if not transforms:
            transforms = [_reduction(sample)]
    out_dim = transforms[-1].d_out if transforms else sample.shape[1]
    if kind == "flat":
        inner = faiss.IndexFlatL2(out_dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(out_dim, 32)
        inner.hnsw.efSearch = 64
    elif ivf:
        # "np": no polysemous training. It reorders the codebooks for Hamming filtering,
        # which search never uses (polysemous_ht 0), and cost 19 s of a 2-core CPU a
        # training (bench/shared_training.py); distances are the same.
        code = f"PQ{pq}np" if kind == "ivfpq" else "SQ8"
        inner = faiss.index_factory(out_dim, f"IVF{nlist},{code}")
    else:
        raise IndexError_(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    index = faiss.IndexIDMap2(inner)
    if transforms:
        index = faiss.IndexPreTransform(index)
        for t in reversed(transforms):
            index.prepend_transform(t)
    if ivf:
        index.train(sample)  # the k-means and codebooks (the transforms are trained)
        faiss.extract_index_ivf(inner).nprobe = min(nlist, 16)
    return index


def _reduction(sample: np.ndarray):
    """The IVF kinds' PCA to REDUCED_DIM dimensions (no whitening), learnt with the
    search spaces' PCA (spaces.principal_components: exact or randomized SVD of the
    sample's top components) rather than FAISS's PCAMatrix.train, which decomposes the
    whole 4096x4096 covariance: with the PQ, 13.5 s against 102 s for 30,000 vectors
    on 2 cores (bench/shared_training.py)."""
    from . import spaces

    dim = min(REDUCED_DIM, sample.shape[1])
    return spaces.pca_matrix(spaces.principal_components(sample, dim), dim, 0.0, 0.0)


def write_faiss(index_dir: Path, index, generation: int, prefix: str = "vectors") -> str:
    import faiss

    name = f"{prefix}-{generation}.faiss"
    buf = faiss.serialize_index(index)
    atomic_write(index_dir / name, lambda f: f.write(buf.tobytes()))
    return name


def read_faiss(index_dir: Path, name: str):
    """The vectors file `name` of an index, memory-mapped and read-only."""
    import faiss

    from . import ondisk

    if ondisk.is_on_disk(index_dir, name):  # a merge's inverted lists in a file beside it
        return ondisk.read_on_disk(index_dir, name)
    p = index_dir / name
    try:
        # Memory-mapped: opening costs nothing whatever the size (a flat 100k index is
        # 1.6 GB), pages come from the page cache, and a file a writer unlinks meanwhile
        # stays readable through the mapping.
        # ONDISK_SAME_DIR: an index with on-disk lists whose .ivfdata is gone fails here
        # rather than opening a file of that name in the cwd
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR
        return faiss.read_index(str(p), flags)
    except RuntimeError as e:
        if "OnDiskInvertedLists" in str(e):  # it names an .ivfdata that is not beside it
            raise IndexError_(
                f"{index_dir / ondisk.ivfdata_name(name)}: missing (the inverted lists of "
                f"{name}); merge the shards again (alexsearch merge)"
            ) from None
        raise IndexError_(
            f"{p}: unreadable vectors file ({str(e).splitlines()[0][:120]})"
        ) from None
