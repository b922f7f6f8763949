"""IVF indexes whose inverted lists live in a file beside them, memory-mapped (FAISS
OnDiskInvertedLists, what faiss.contrib.ondisk builds): merging shards into an index
larger than memory, and reading it back.

    vectors-<gen>.faiss     the index without its codes: transforms, coarse quantizer,
                            codebooks, the id map, and where each list lies in ...
    vectors-<gen>.ivfdata   ... the inverted lists (codes and ids), then a 48-byte
                            trailer: magic, byte count, vector count, SHA-1 of samples

The .faiss names its .ivfdata by basename only, and read_on_disk ignores even that:
the index's .ivfdata is the one beside it with the same stem, so the folder can be
moved or copied anywhere (FAISS alone would open the stored path relative to the cwd).

Memory: the merge copies the shards' lists list by list from memory-mapped shard files
into the memory-mapped .ivfdata (FAISS merge_from_multiple), so codes pass through the
page cache and are never all held by the process; what stays in RAM is the id map
(IndexIDMap2: 8 bytes a vector, plus its reverse map). Searching touches only the
lists it probes.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..atomic import WriteError, describe_os_error
from ..errors import IndexError_, UserError
from .merge import _id_map

TRAILER = struct.Struct("<8sQQ20s4x")  # magic, list bytes, vectors, SHA-1 of samples
MAGIC = b"ALXIVFD1"
SAMPLES, SAMPLE_BYTES = 64, 64 * 1024  # 4 MiB read to check a file of any size


def ivfdata_name(name: str) -> str:
    """The inverted lists file of the index file `name`: vectors-3.faiss -> vectors-3.ivfdata."""
    return str(Path(name).with_suffix(".ivfdata"))


def is_on_disk(index_dir: Path, name: str) -> bool:
    return (Path(index_dir) / ivfdata_name(name)).is_file()


def open_shard(path: str | os.PathLike):
    """A shard's index file, its inverted lists memory-mapped (IO_FLAG_MMAP, as
    faiss.contrib.ondisk reads shards), read-only: what merge_on_disk reads without
    loading the codes. (vectors.read_faiss's indexes map their lists too, as views.)"""
    import faiss

    path = Path(path)
    if is_on_disk(path.parent, path.name):  # an earlier on-disk merge: its own lists file
        return read_on_disk(path.parent, path.name)
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise IndexError_(f"{path}: unreadable vectors file ({_first_line(e)})") from None


def merge_on_disk(parts, ivfdata_path: Path):
    """merge.merge_faiss's result (same ids, same lists in the same order, so the same
    answers) with its inverted lists written to `ivfdata_path` rather than held in
    memory. parts: [(index or index file path, old_ids, new_ids)]; a path is opened
    with open_shard (memory-mapped), an index object is read as it is. Returns the merged
    index, its lists memory-mapped read-only from ivfdata_path; write it with
    vectors.write_faiss under the name whose ivfdata_name is ivfdata_path's.

    Atomic: the lists are written under a temporary name, fsynced, then renamed; a
    merge that fails or is killed leaves no ivfdata_path (a kill leaves a hidden .tmp,
    removed by the next merge to the same path). Call it under the index's write lock."""
    import faiss

    ivfdata_path = Path(ivfdata_path)
    if not parts:
        raise UserError("nothing to merge")
    parts = [(open_shard(p) if isinstance(p, (str, os.PathLike)) else p, o, n) for p, o, n in parts]
    if len({_signature(p[0]) for p in parts}) > 1:
        raise IndexError_(
            "the shards' indexes were trained apart (other centroids or codebooks): "
            "train once and build every shard from it"
        )
    ivfs = [_ivf(p[0]) for p in parts]
    ids = [_new_ids(index, old, new) for index, old, new in parts]
    total = sum(len(i) for i in ids)
    if total == 0:
        raise UserError("nothing to merge: the shards hold no vectors")
    nlist, code_size = ivfs[0].nlist, ivfs[0].code_size
    need = total * (code_size + 8)  # what merge_from_multiple lays out: codes + ids
    try:
        ivfdata_path.parent.mkdir(parents=True, exist_ok=True)
        _check_space(ivfdata_path.parent, need)
    except OSError as e:
        raise WriteError(f"cannot write {ivfdata_path}: {describe_os_error(e)}") from e

    out = _empty_like(parts[0][0])
    ivf_out = faiss.extract_index_ivf(out)
    # a merge killed before its rename left its temporary (never opened by a reader):
    # callers hold the index's write lock (index/lock.py), so no live merge owns one
    for stale in ivfdata_path.parent.glob(f".{ivfdata_path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{ivfdata_path.name}.", suffix=".tmp", dir=ivfdata_path.parent
    )
    os.close(fd)
    try:
        lists = faiss.OnDiskInvertedLists(nlist, code_size, tmp)
        sources = faiss.InvertedListsPtrVector()
        for ivf in ivfs:
            sources.push_back(ivf.invlists)
        with _quiet_stdout():  # FAISS printf()s "resizing <file> to N bytes"
            # shift_ids=True shifts each shard by its largest id, not its count (FAISS
            # 1.15), colliding ids: the shift is applied below instead
            n = lists.merge_from_multiple(sources.data(), sources.size(), False)
        if n != total or lists.totsize != need:
            raise IndexError_(f"merging the shards' lists gave {n} vectors, expected {total}")
        _shift_ids(lists, ivfs, [len(i) for i in ids])
        ivf_out.replace_invlists(lists, True)
        lists.this.disown()
        idmap = _id_map(out)
        faiss.copy_array_to_vector(np.concatenate(ids).astype(np.int64), idmap.id_map)
        levels = (faiss.downcast_index(out), idmap, faiss.downcast_index(idmap.index), ivf_out)
        for level in levels:
            level.ntotal = total
        idmap.construct_rev_map()
        faiss.downcast_InvertedLists(ivf_out.invlists).filename = ivfdata_path.name
        header = faiss.serialize_index(out)  # ilod: where each list lies, no codes
        del out, ivf_out, idmap, lists, levels  # unmaps the writable mapping
        with open(tmp, "r+b") as f:
            f.seek(0, os.SEEK_END)
            f.write(TRAILER.pack(MAGIC, need, total, _fingerprint(f.fileno(), need, total)))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, ivfdata_path)
        tmp = None
        _fsync_dir(ivfdata_path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {ivfdata_path}: {describe_os_error(e)}") from e
    except RuntimeError as e:  # FAISS's own errors (a list it cannot map or grow)
        raise IndexError_(f"cannot merge into {ivfdata_path}: {_first_line(e)}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(header, reader.data)
    index = faiss.read_index(reader, faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    _map(index, ivfdata_path, ivfdata_path)
    return index


def read_on_disk(index_dir: Path, name: str):
    """The index file `name` of index_dir with its inverted lists memory-mapped,
    read-only, from the .ivfdata beside it (whatever path the file names). A missing,
    truncated or overwritten .ivfdata is refused in one line (IndexError_) before
    anything is mapped: FAISS would read past the end of a short file and crash."""
    import faiss

    p = Path(index_dir) / name
    try:
        index = faiss.read_index(str(p), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise IndexError_(f"{p}: unreadable vectors file ({_first_line(e)})") from None
    _map(index, p, Path(index_dir) / ivfdata_name(name))
    return index


# --------------------------------------------------------------------------- helpers


def _map(index, index_path: Path, data: Path) -> None:
    """Check `data` against the lists `index` describes, then memory-map it read-only."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise IndexError_(f"{index_path}: not an index with on-disk inverted lists")

    def bad(why: str):
        return IndexError_(f"{data}: {why}; merge the shards again (alexsearch merge)")

    try:
        size = data.stat().st_size
    except FileNotFoundError:
        raise bad(f"missing (the inverted lists of {index_path.name})") from None
    need = lists.totsize
    if size != need + TRAILER.size:
        raise bad(f"{size:,} bytes where its index expects {need + TRAILER.size:,} (truncated?)")
    with open(data, "rb") as f:
        magic, nbytes, ntotal, digest = TRAILER.unpack(os.pread(f.fileno(), TRAILER.size, need))
        if magic != MAGIC or nbytes != need or ntotal != ivf.ntotal:
            raise bad("not the inverted lists of this index (trailer does not match)")
        if digest != _fingerprint(f.fileno(), need, ntotal):
            raise bad("corrupt (its contents do not match their checksum)")
    width = lists.code_size + 8
    held = 0
    for i in range(lists.nlist):  # every list inside the file: FAISS does not check
        one = lists.lists.at(i)
        if one.size > one.capacity or one.offset + one.capacity * width > need:
            raise bad(f"inverted list {i} lies outside the file")
        held += one.size
    if held != ivf.ntotal:
        raise bad(f"its lists hold {held} vectors, the index {ivf.ntotal}")
    lists.filename = str(data)
    lists.read_only = True
    try:
        lists.do_mmap()
    except RuntimeError as e:
        raise bad(f"cannot be mapped ({_first_line(e)})") from None
    lists.filename = data.name  # what a re-serialisation stores: no absolute path
    # FAISS starts 32 threads a search to touch the probed lists' pages ahead: +1.4 ms a
    # query from the page cache (1.9 -> 3.4 ms, bench/merge_ondisk.py); pages fault in
    # as they do for read_faiss's mapped ordinary IVF lists instead
    lists.prefetch_nthread = 0


def _fingerprint(fd: int, nbytes: int, ntotal: int) -> bytes:
    """SHA-1 of the sizes and of SAMPLES blocks spread over the lists (all of them when
    the file is small): catches truncation, another index's file and overwritten
    regions at a fixed cost, without reading a file larger than memory at every open."""
    h = hashlib.sha1(struct.pack("<QQ", nbytes, ntotal))
    if nbytes <= SAMPLES * SAMPLE_BYTES:
        offsets = range(0, nbytes, SAMPLE_BYTES)
    else:
        step = (nbytes - SAMPLE_BYTES) / (SAMPLES - 1)
        offsets = (round(i * step) for i in range(SAMPLES))
    for off in offsets:
        h.update(os.pread(fd, min(SAMPLE_BYTES, nbytes - off), off))
    return h.digest()


def _shift_ids(lists, ivfs, counts) -> None:
    """Offset each shard's sequential ids by the vectors of the shards before it, in
    place in the merged lists (each list holds shard 0's entries, then shard 1's...):
    what IndexIVF.merge_from(other, add_id) does in memory (merge._append)."""
    import faiss

    shifts = np.cumsum([0] + counts[:-1])
    for i in range(lists.nlist):
        n = lists.list_size(i)
        if not n:
            continue
        held = faiss.rev_swig_ptr(lists.get_ids(i), n)  # a view of the mapped file
        at = 0
        for ivf, shift in zip(ivfs, shifts, strict=True):
            m = ivf.invlists.list_size(i)
            if shift:
                held[at : at + m] += shift
            at += m


def _new_ids(index, old_ids, new_ids) -> np.ndarray:
    """The merged ids of `index`'s vectors in its order: old_ids[k] becomes new_ids[k]
    (merge.renumber's mapping, without modifying the shard's index)."""
    import faiss

    have = faiss.vector_to_array(_id_map(index).id_map)
    old = np.asarray(old_ids, np.int64)
    order = np.argsort(old)
    at = np.clip(np.searchsorted(old[order], have), 0, max(len(old) - 1, 0))
    if len(have) and (not len(old) or (old[order][at] != have).any()):
        raise IndexError_("a shard's index holds vectors its catalogue does not list")
    return np.asarray(new_ids, np.int64)[order][at]


def _ivf(index):
    import faiss

    try:
        return faiss.extract_index_ivf(_id_map(index).index)
    except RuntimeError:  # flat, hnsw: no inverted lists to put on disk
        raise IndexError_("only IVF indexes merge on disk (--kind ivfpq or ivfsq)") from None


def _empty_like(index):
    """An empty copy of `index` (trained, no vectors), whatever holds its lists: its
    header serialised with its lists swapped for empty ones for the moment. (Cloning
    fails on memory-mapped lists, and aborts the process on reset() when the lists are
    views of a mapped file, as vectors.read_faiss's are.)"""
    import faiss

    ivf = _ivf(index)
    lists, owned = ivf.invlists, ivf.own_invlists
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False
    ivf.replace_invlists(empty, False)
    try:
        header = faiss.serialize_index(index)
    finally:
        ivf.replace_invlists(lists, owned)
    out = faiss.deserialize_index(header)
    out.reset()
    return out


def _signature(index) -> str:
    """merge.trained_signature for indexes with memory-mapped lists too."""
    import faiss

    return hashlib.sha1(faiss.serialize_index(_empty_like(index)).tobytes()).hexdigest()


def _check_space(folder: Path, need: int) -> None:
    # FAISS writes the lists through a mapping of a sparse file: a full disk would kill
    # the process (SIGBUS) mid-merge, so a merge that cannot fit is refused up front.
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < need + TRAILER.size:
        raise WriteError(
            f"cannot write the merged inverted lists in {folder}: {need / 1e9:.2f} GB "
            f"needed, {free / 1e9:.2f} GB free"
        )


@contextmanager
def _quiet_stdout():
    import ctypes
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio's buffer, before stdout is back
        os.dup2(saved, 1)
        os.close(saved)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
