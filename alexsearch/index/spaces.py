"""Search spaces of an index: how fc7 vectors are compared.

    paper     Euclidean distance between raw fc7 vectors, as the paper ranks (Fig. 4):
              the index's vectors-<gen>.faiss.
    whitened  fc7 centred, PCA-whitened to D dimensions (each component divided by the
              square root of its eigenvalue plus SHRINK x the mean of the kept ones),
              L2-normalised, then compared by L2 (a monotone function of the cosine):
              a FAISS PCAMatrix (eigen_power -0.5) and NormalizationTransform inside an
              IndexPreTransform around the index's kind (space-<gen>.faiss), so every
              query passes through the index's own transform.

The transform is learnt at publish time from the collection's own vectors (a fixed
sample of at most SAMPLE), saved in whiten-<gen>.faissvt and kept while the collection
stays between half and one and a half times the size it was learnt from; past that it
is learnt again. A collection of fewer than min_vectors(D) vectors learns D/2 or D/4
dimensions (fitting_dim), and one too small for those answers in `paper`.
Raw fc7 stays in the catalogue and the paper's index, so `paper` is always available.

Learning takes the top D components of the centred sample only: exactly through its
Gram matrix for a sample of at most GRAM_MAX vectors (0.2 s for 1,000 x 4096), a
randomized SVD (scikit-learn) above; FAISS's own PCAMatrix.train decomposes the full
4096x4096 covariance, minutes on a small CPU. The result is loaded into a PCAMatrix,
which FAISS applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexError_, UserError

SPACES = ("paper", "whitened")
DEFAULT_SPACE = "whitened"  # chosen by bench/retrieval_spaces.py (README: search spaces)
DEFAULT_DIM = 256
SHRINK = 1.0
DEFAULT_EXPAND = 0
SAMPLE = 20_000
MIN_PER_DIM = 2  # below ~2 vectors a dimension the smallest kept eigenvalues are noise


def min_vectors(dim: int) -> int:
    """The fewest vectors a whitened space of `dim` dimensions is learnt from."""
    return MIN_PER_DIM * dim


def fitting_dim(dim: int, n: int) -> int | None:
    """The dimension a collection of n vectors learns when `dim` is asked for: dim, or
    for too few vectors dim halved until they are enough, down to a quarter of it (the
    whitened space beat the paper's L2 at 128 on 469 photos, where 256 needs 512);
    None below that: the collection answers in paper."""
    for d in (dim, dim // 2, dim // 4):
        if d >= 1 and n >= min_vectors(d):
            return d
    return None


def check_space(space: str | None, dim: int | None = None) -> None:
    if space is not None and space not in SPACES:
        raise UserError(f"unknown --space {space!r}; choose from {', '.join(SPACES)}")
    if dim is not None and not 1 <= dim <= 4096:
        raise UserError(f"--space-dim {dim}: expected 1 to 4096")


def needs_relearn(learnt_from: int, n: int) -> bool:
    """The collection grew or shrank by half since the transform was learnt."""
    return n >= 1.5 * learnt_from or n <= 0.5 * learnt_from


@dataclass
class Eigen:
    """The top principal components of a sample: mean (d,), eigenvalues (D,) in
    decreasing order, eigenvectors (D, d) as rows."""

    mean: np.ndarray
    values: np.ndarray
    vectors: np.ndarray
    sample: int


GRAM_MAX = 2048  # up to this many samples, exact PCA through the n x n Gram matrix


def principal_components(vecs: np.ndarray, dim: int, sample: int = SAMPLE) -> Eigen:
    """The top `dim` principal components of (a fixed sample of) vecs: exact through the
    Gram matrix for a sample of at most GRAM_MAX vectors, a randomized SVD above."""
    n = len(vecs)
    if n > sample:
        vecs = vecs[np.sort(np.random.default_rng(0).choice(n, sample, replace=False))]
    x = np.asarray(vecs, np.float32)
    mean = x.mean(0, dtype=np.float64).astype(np.float32)
    xc = x - mean
    dim = min(dim, *xc.shape)
    if len(xc) <= GRAM_MAX:
        s, vt = _gram_svd(xc, dim)
    else:
        from sklearn.utils.extmath import randomized_svd

        _, s, vt = randomized_svd(xc, dim, n_oversamples=20, n_iter=4, random_state=0)
    values = (s.astype(np.float64) ** 2 / max(len(xc) - 1, 1)).astype(np.float32)
    return Eigen(mean, values, np.ascontiguousarray(vt, np.float32), len(x))


def _gram_svd(xc: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(singular values, right singular vectors as rows) of the top `dim` of xc (n x d,
    n small): the eigenvectors u of xc xc^T give vt = u^T xc / s, exact, and cost
    n^2 d rather than the d x d covariance's d^2 n (and no scikit-learn import, ~1 s).
    Components below float32's noise in g (a sample of rank under dim) are zero rows."""
    w, u = np.linalg.eigh((xc @ xc.T).astype(np.float64))  # ascending
    w, u = w[::-1][:dim], u[:, ::-1][:, :dim]
    s = np.sqrt(np.clip(w, 0, None))
    keep = s > (s[0] if len(s) else 0) * 1e-3
    vt = np.zeros((len(s), xc.shape[1]), np.float32)
    vt[keep] = (u[:, keep].T.astype(np.float32) @ xc) / s[keep, None].astype(np.float32)
    return np.where(keep, s, 0.0), vt


def pca_matrix(eig: Eigen, dim: int, shrink: float = SHRINK, power: float = -0.5):
    """A trained FAISS PCAMatrix to `dim` dimensions from the components in `eig`
    (the first `dim` of them), whitening with shrinkage when power is -0.5."""
    import faiss

    d_in = eig.vectors.shape[1]
    pca = faiss.PCAMatrix(d_in, dim, power)
    values = eig.values[:dim]
    faiss.copy_array_to_vector(eig.mean.astype(np.float32), pca.mean)
    faiss.copy_array_to_vector(values.astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(eig.vectors[:dim].ravel().astype(np.float32), pca.PCAMat)
    pca.epsilon = float(shrink * values.mean()) if shrink else 0.0
    pca.is_trained = True
    pca.prepare_Ab()
    return pca


def chain(pca) -> list:
    """The transforms of the whitened space: the PCA, then L2 normalisation."""
    import faiss

    return [pca, faiss.NormalizationTransform(pca.d_out, 2.0)]


def learn(vecs: np.ndarray, dim: int, shrink: float = SHRINK, sample: int = SAMPLE):
    """(PCAMatrix, sample size): the whitening learnt from a collection's vectors."""
    eig = principal_components(vecs, dim, sample)
    return pca_matrix(eig, dim, shrink), eig.sample


def apply(transforms, x: np.ndarray) -> np.ndarray:
    """x through a chain of FAISS transforms (an IndexPreTransform's, in order)."""
    x = np.ascontiguousarray(x, np.float32)
    for t in transforms:
        x = np.ascontiguousarray(t.apply(x), np.float32)
    return x


def index_chain(pre) -> list:
    """The transforms inside an IndexPreTransform, in the order it applies them."""
    import faiss

    return [faiss.downcast_VectorTransform(pre.chain.at(i)) for i in range(pre.chain.size())]


def write_transform(index_dir: Path, pca, generation: int) -> str:
    import faiss

    name = f"whiten-{generation}.faissvt"
    writer = faiss.VectorIOWriter()
    faiss.write_VectorTransform(pca, writer)
    buf = faiss.vector_to_array(writer.data)
    atomic_write(index_dir / name, lambda f: f.write(buf.tobytes()))
    return name


def read_transform(index_dir: Path, name: str):
    import faiss

    p = index_dir / name
    try:
        return faiss.read_VectorTransform(str(p))  # swig returns the PCAMatrix, owned
    except RuntimeError as e:
        raise IndexError_(f"{p}: unreadable transform ({str(e).splitlines()[0][:120]})") from None


def refresh(
    index_dir: Path, old, requested: str, dim: int, ids, vecs, kind: str, gen: int,
    training=None,
):  # fmt: skip
    """(SpaceRecord or None, note) for generation `gen` of an index: the whitened space
    over `vecs`, with the transform of `old` (the previous record) kept unless the
    dimension changed or the collection grew or shrank by half, learnt again otherwise;
    None and why when `requested` is paper or the collection is too small. training:
    (TrainingRecord, its transform, its trained empty index) of a shared training
    (training.py) that holds a whitened space: that space, never learnt again."""
    from .manifest import SpaceRecord
    from .vectors import build_faiss, write_faiss

    n = len(ids)
    if requested == "paper":
        return None, "asked for with --space paper"
    if training is not None and training[0].space_file:
        record, _, trained = training
        name = write_faiss(index_dir, build_faiss(kind, ids, vecs, trained=trained), gen, "space")
        return SpaceRecord(
            "whitened", record.space_dim, SHRINK, record.sample, record.sample, gen,
            record.transform_file, name, kind,
        ), ""  # fmt: skip
    fit = fitting_dim(dim, n)
    if fit is None:
        least = min_vectors(max(dim // 4, 1))
        return None, (
            f"whitened {dim}-d needs at least {least} vectors, this index has {n}; "
            "it is learnt when the collection is large enough"
        )
    dim = fit
    if old is not None and old.dimension == dim and not needs_relearn(old.learnt_from, n):
        pca = read_transform(index_dir, old.transform_file)
        learnt = (old.sample, old.learnt_from, old.generation, old.transform_file, old.shrink)
    else:
        pca, sample = learn(vecs, dim)
        learnt = (sample, n, gen, write_transform(index_dir, pca, gen), SHRINK)
    index = build_faiss(kind, ids, vecs, chain(pca))
    name = write_faiss(index_dir, index, gen, prefix="space")
    sample, learnt_from, generation, tfile, shrink = learnt
    return SpaceRecord(
        "whitened", dim, shrink, sample, learnt_from, generation, tfile, name, kind
    ), ""
