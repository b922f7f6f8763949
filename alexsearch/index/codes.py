"""Binary codes of an index: encode every vector with the autoencoder, a FAISS binary
index for Hamming search, kept in step by later indexing runs.

Files beside the index (named by the manifest's `codes` entry, published with it):

    autoencoder-<gen>.pt   weights, normalisation, bits, the fingerprint of the model
                           whose features it was trained on, training history
    codes-<gen>.npz        catalogue ids, packed codes, and a signature of each vector,
                           so a later `alexsearch index` re-encodes only what changed
    codes-<gen>.faissb     FAISS binary index over the codes, ids = catalogue ids
                           (exact flat; binary IVF when large)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import CodesError
from ..progress import Progress
from .autoencoder import DEFAULT_BITS, DEFAULT_EPOCHS, check_bits
from .autoencoder import load as load_coder
from .autoencoder import train as train_coder
from .catalogue import Catalogue
from .lock import write_lock
from .manifest import CodesRecord, Manifest, open_existing, read_manifest, write_manifest

FLAT_MAX = 2_000_000  # exact Hamming search up to here; binary IVF beyond


# --------------------------------------------------------------------------- FAISS binary


def build_binary_index(ids: np.ndarray, packed: np.ndarray, bits: int):
    """IndexBinaryIDMap over an exact IndexBinaryFlat, or binary IVF past FLAT_MAX codes."""
    import faiss

    n = len(ids)
    if n > FLAT_MAX:
        nlist = int(min(65536, 4 * np.sqrt(n)))
        quantizer = faiss.IndexBinaryFlat(bits)
        inner = faiss.IndexBinaryIVF(quantizer, bits, nlist)  # keeps a ref to quantizer
        sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
        inner.train(np.ascontiguousarray(packed[np.sort(sample)]))
        inner.nprobe = 32
    else:
        inner = faiss.IndexBinaryFlat(bits)
    index = faiss.IndexBinaryIDMap(inner)  # the Python wrapper keeps `inner` alive
    if n:
        index.add_with_ids(np.ascontiguousarray(packed), np.asarray(ids, np.int64))
    return index


def binary_kind(n: int) -> str:
    return "ivf" if n > FLAT_MAX else "flat"


def signatures(vecs: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint per vector: its float bits times fixed random odd numbers,
    summed mod 2**64 (integer arithmetic, so exact whatever the batch). A changed file's
    new vector gets a new signature, so only it is re-encoded."""
    v = np.ascontiguousarray(vecs, np.float32).view(np.uint32)
    r = np.random.default_rng(1234).integers(0, 2**63, v.shape[1], dtype=np.uint64) | 1
    out = np.empty(len(v), np.uint64)
    for s in range(0, len(v), 4096):  # bounded temporaries
        out[s : s + 4096] = (v[s : s + 4096].astype(np.uint64) * r).sum(1, dtype=np.uint64)
    return out


# --------------------------------------------------------------------------- on disk


def _write_codes(index_dir: Path, gen: int, ids, packed, sig, bits: int) -> tuple[str, str]:
    import faiss

    npz = f"codes-{gen}.npz"

    def put(f):
        np.savez(f, ids=np.asarray(ids, np.int64), codes=packed, sig=sig)

    atomic_write(index_dir / npz, put)
    fname = f"codes-{gen}.faissb"
    buf = faiss.serialize_index_binary(build_binary_index(ids, packed, bits))
    atomic_write(index_dir / fname, lambda f: f.write(buf.tobytes()))
    return npz, fname


def remove_stale(index_dir: Path, old: CodesRecord | None, new: CodesRecord | None) -> None:
    """After the manifest naming `new` is published, delete what only `old` named."""
    if not old:
        return
    keep = new.files() if new else set()
    for name in old.files() - keep:
        try:  # a reader that opened the old manifest a moment ago may still want it
            (index_dir / name).unlink()
        except FileNotFoundError:
            pass


@dataclass
class CodesSummary:
    """What `alexsearch codes` did; its fields are the keys `codes --json` prints."""

    index_dir: str
    bits: int
    bytes_per_image: int
    encoded: int
    kind: str
    epochs: int
    reconstruction_error: list[float]
    fingerprint: str
    autoencoder: str
    seconds: float
    train_seconds: float


def build(
    index: str | Path | None,
    bits: int | None = None,  # None: the given autoencoder's, else DEFAULT_BITS
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    autoencoder: Path | None = None,  # reuse a saved one instead of training
    wait: bool = False,
    progress: Progress | None = None,
) -> CodesSummary:
    """`alexsearch codes`: train (or load) the autoencoder, encode every vector, publish."""
    t0 = time.perf_counter()
    if bits is not None:
        check_bits(bits)
    index_dir, _ = open_existing(index)
    with write_lock(index_dir, wait=wait):
        manifest = read_manifest(index_dir)
        fp = manifest.model.fingerprint
        cat = Catalogue(index_dir / "catalogue.sqlite", readonly=True)
        try:
            ids, vecs = cat.vectors(manifest.dimension)
        finally:
            cat.close()
        if autoencoder is not None:
            coder = load_coder(autoencoder, fp)
            if bits is not None and coder.bits != bits:
                raise CodesError(
                    f"{autoencoder} makes {coder.bits}-bit codes, not --bits {bits}; drop "
                    "--bits to use it, or train a new one without --autoencoder"
                )
            epochs_run = 0
        else:
            bits = bits or DEFAULT_BITS
            coder = train_coder(vecs, bits, epochs, fp, seed=seed, progress=progress)
            epochs_run = epochs
        t_train = time.perf_counter() - t0
        if coder.dim != manifest.dimension:
            raise CodesError(
                f"{autoencoder}: made for {coder.dim}-d vectors, the index holds "
                f"{manifest.dimension}-d"
            )
        gen = manifest.generation + 1
        ae_name = f"autoencoder-{gen}.pt"
        coder.save(index_dir / ae_name)
        packed = coder.encode(vecs)
        npz, fname = _write_codes(index_dir, gen, ids, packed, signatures(vecs), coder.bits)
        entry = CodesRecord(
            bits=coder.bits,
            bytes_per_image=coder.bits // 8,
            fingerprint=coder.fingerprint,
            autoencoder=ae_name,
            codes_file=npz,
            index_file=fname,
            kind=binary_kind(len(ids)),
            count=len(ids),
            epochs=epochs_run,
            trained_on=coder.trained_on,
            reconstruction_error=[round(h, 6) for h in coder.history],
            updated=time.time(),
        )
        published = replace(manifest, generation=gen, codes=entry, updated=time.time())
        write_manifest(index_dir, published)
        remove_stale(index_dir, manifest.codes, entry)
    return CodesSummary(
        index_dir=str(index_dir),
        bits=coder.bits,
        bytes_per_image=coder.bits // 8,
        encoded=len(ids),
        kind=entry.kind,
        epochs=epochs_run,
        reconstruction_error=entry.reconstruction_error,
        fingerprint=fp,
        autoencoder=str(index_dir / ae_name),
        seconds=time.perf_counter() - t0,
        train_seconds=t_train,
    )


def refresh(index_dir: Path, entry: CodesRecord, ids, vecs, gen: int) -> CodesRecord:
    """Keep codes in step after an indexing run (called before the manifest is published):
    keep the codes of unchanged vectors, encode new and changed ones with the saved
    autoencoder, drop deleted ones. Returns the new manifest entry."""
    sig = signatures(vecs)
    try:
        with np.load(index_dir / entry.codes_file) as old:
            old_ids, old_codes, old_sig = old["ids"], old["codes"], old["sig"]
    except (OSError, KeyError, ValueError) as e:
        raise CodesError(
            f"{index_dir}: the binary codes cannot be kept current ({e}); "
            "run `alexsearch codes` again"
        ) from None
    packed = np.zeros((len(ids), entry.bits // 8), np.uint8)
    at = np.clip(np.searchsorted(old_ids, ids), 0, max(len(old_ids) - 1, 0))
    same = np.zeros(len(ids), bool)
    if len(old_ids):
        same = (old_ids[at] == ids) & (old_sig[at] == sig)
        packed[same] = old_codes[at[same]]
    if (~same).any():
        coder = load_coder(index_dir / entry.autoencoder, entry.fingerprint)
        packed[~same] = coder.encode(vecs[~same])
    npz, fname = _write_codes(index_dir, gen, ids, packed, sig, entry.bits)
    return replace(
        entry,
        codes_file=npz,
        index_file=fname,
        kind=binary_kind(len(ids)),
        count=len(ids),
        reencoded=int((~same).sum()),
        updated=time.time(),
    )


def open_codes(index_dir: Path, manifest: Manifest):
    """(coder, FAISS binary index) of a published manifest, or a clear message."""
    import faiss

    entry = manifest.codes
    if not entry:
        raise CodesError(
            f"{index_dir} has no binary codes yet: run `alexsearch codes --index {index_dir}`"
        )
    coder = load_coder(index_dir / entry.autoencoder, manifest.model.fingerprint)
    p = index_dir / entry.index_file
    try:
        index = faiss.read_index_binary(str(p))
    except RuntimeError as e:
        raise CodesError(f"{p}: unreadable binary index ({str(e).splitlines()[0][:120]})") from None
    return coder, index


def hamming_knn(index, packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 bit counts, ids) of the k nearest codes per row.

    A few queries run on one thread: a scan of 1M codes takes milliseconds, and on a
    busy 2-core machine two OpenMP threads made it ~10x slower (bench/codes.py)."""
    import faiss

    k = min(k, index.ntotal)
    if k == 0:
        return np.zeros((len(packed), 0), np.int32), np.zeros((len(packed), 0), np.int64)
    packed = np.ascontiguousarray(packed, np.uint8)
    if len(packed) > 8:
        return index.search(packed, k)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(packed, k)
    finally:
        faiss.omp_set_num_threads(before)
