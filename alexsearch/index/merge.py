"""`alexsearch merge SHARD... --index OUT`: one index from several.

The shards' catalogues are unioned into OUT's (new ids; each row's fc7 vector, digest,
thumbnail and failure reason are copied as they are, never recomputed), then OUT is
published like any index (build.publish: the FAISS snapshot, search space and binary
codes of the union, atomically, under OUT's lock). The catalogue update is one SQLite
transaction: a merge killed before its commit leaves OUT as it was, one killed after
it is finished by running it again.

Incremental: a row whose shard copy is unchanged (same path, size, mtime and indexing
time) is not rewritten, so merging again after one shard was updated rewrites only what
changed there, keeps the ids of the rest, and drops what no shard holds any more: the
same paths and vectors as indexing every photo at once. The files' top-5 classes
(labels) come along with them.

Refused, in one line: shards built with other weights, preprocessing, precision, kind
or search space than the first; two shards holding the same path; an OUT that is an
ordinary index (its own photos would be replaced) or was built with other weights.

Shards that share one training (training.py: `index --trained TRAIN`) are not trained
or encoded again: their published FAISS indexes are joined, inverted list by inverted
list (merge_faiss), renumbered to OUT's ids; so is the whitened space's. Shards whose
binary codes come from one autoencoder (byte for byte: `codes --autoencoder`, or the
training index's) have their codes carried over, not encoded again. Otherwise OUT is
built from the union's vectors (trained on them for an IVF kind without a training),
and its codes, if it has an autoencoder of its own, are encoded with it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import IndexError_, UserError
from .catalogue import Catalogue
from .lock import write_lock
from .manifest import CodesRecord, Manifest, open_existing, read_manifest, write_manifest
from .vectors import copy_index

COLUMNS = "path, size, mtime_ns, digest, status, reason, vector, thumb, indexed_at"


@dataclass
class MergeSummary:
    """What a merge did; its fields are the keys `alexsearch merge --json` prints."""

    index_dir: str
    shards: list[str] = field(default_factory=list)
    added: int = 0  # paths OUT did not hold before
    updated: int = 0  # rows a shard changed since the last merge
    deleted: int = 0  # paths no shard holds any more
    unchanged: int = 0
    total_ok: int = 0
    total_failed: int = 0
    kind: str = ""
    fingerprint: str = ""
    weights: str = ""
    precision: str = ""
    space: str = ""
    training: str = ""  # how the FAISS indexes were made: joined, added, or trained
    codes: str = ""  # the binary codes: carried over, encoded again, or why none
    seconds: float = 0.0


def check_compatible(ref: Manifest, ref_dir: Path, m: Manifest, d: Path) -> None:
    """Refuse an index whose vectors would not be comparable with `ref`'s, or that was
    built to another kind or search space: one line naming both and what differs."""
    what = None
    if m.model.fingerprint != ref.model.fingerprint:
        what = f"weights ({m.model.fingerprint} vs {ref.model.fingerprint})"
    elif m.dimension != ref.dimension or m.model.layer != ref.model.layer:
        what = f"layer ({m.model.layer} {m.dimension}-d vs {ref.model.layer} {ref.dimension}-d)"
    elif (m.preprocess.signature or None) != (ref.preprocess.signature or None):
        what = f"preprocessing ({m.preprocess.geometry} vs {ref.preprocess.geometry})"
    elif m.precision != ref.precision:
        what = f"precision ({m.precision} vs {ref.precision})"
    elif m.kind_requested != ref.kind_requested:
        what = f"kind ({m.kind_requested} vs {ref.kind_requested})"
    elif (m.space_requested, m.space_dim) != (ref.space_requested, ref.space_dim):
        what = (
            f"search space ({m.space_requested or 'none'} {m.space_dim or ''} vs "
            f"{ref.space_requested or 'none'} {ref.space_dim or ''})"
        )
    if what:
        raise IndexError_(
            f"cannot merge {d} with {ref_dir}: they were built with other {what}; "
            "index every shard with the same settings"
        )


def merge(
    shard_dirs, out_dir: Path, wait: bool = False, max_memory=None, on_disk: bool | None = None
) -> MergeSummary:
    """Merge the published indexes `shard_dirs` into the index at `out_dir`. on_disk:
    the joined inverted lists in .ivfdata files beside the index, memory-mapped
    (ondisk.py), never all in RAM; None: when the shards' indexes add up to more than
    `max_memory`. Only shards of one training are joined so (others are built anew)."""
    from .build import describe_published, publish, remove_replaced

    t0 = time.perf_counter()
    dirs = [Path(d) for d in shard_dirs]
    if not dirs:
        raise UserError("give the shard indexes to merge")
    real = [os.path.realpath(d) for d in dirs]
    if len(set(real)) != len(real):
        raise UserError("a shard is named twice")
    if os.path.realpath(out_dir) in real:
        raise UserError(f"--index {out_dir} is one of the shards: merge into another folder")
    manifests = [open_existing(d)[1] for d in dirs]
    ref, ref_dir = manifests[0], dirs[0]
    for d, m in zip(dirs[1:], manifests[1:], strict=True):
        check_compatible(ref, ref_dir, m, d)
    on_disk = _wants_on_disk(dirs, manifests, max_memory, on_disk)
    summary = MergeSummary(index_dir=str(out_dir), shards=[str(d) for d in dirs])
    with ExitStack() as stack:
        stack.enter_context(write_lock(out_dir, wait=wait))
        for d in dirs:  # no shard changes while it is read
            stack.enter_context(write_lock(d, wait=wait))
        manifests = [open_existing(d)[1] for d in dirs]  # as published now, under the locks
        for d, m in zip(dirs, manifests, strict=True):
            check_compatible(ref, ref_dir, m, d)
        out = read_manifest(out_dir)
        if out is None and (out_dir / "catalogue.sqlite").exists():
            if not _is_empty(out_dir / "catalogue.sqlite"):
                raise IndexError_(
                    f"{out_dir} holds an unfinished index of its own; merge into another folder"
                )
        if out is not None:
            if not out.merged_from:
                raise IndexError_(
                    f"{out_dir} is an index of its own photos, not a merge (merging would "
                    "replace them); merge into another folder"
                )
            check_compatible(ref, ref_dir, out, out_dir)
        _union(out_dir / "catalogue.sqlite", dirs, summary)
        if out is None:
            out = Manifest(
                model=ref.model,
                dimension=ref.dimension,
                preprocess=ref.preprocess,
                created=time.time(),
                precision=ref.precision,
                kind_requested=ref.kind_requested,
                space_requested=ref.space_requested,
                space_dim=ref.space_dim,
            )
        previous = out
        out = replace(out, merged_from=[os.path.abspath(d) for d in dirs], shard="")
        cat = Catalogue(out_dir / "catalogue.sqlite")
        try:
            pairs = [_id_pairs(out_dir / "catalogue.sqlite", d) for d in dirs]
            gen = out.generation + 1
            carried, summary.codes = _carry_codes(out_dir, dirs, manifests, pairs, gen)
            shared = _shared_training(manifests)
            if shared is not None:
                from .training import adopt

                adopt(out_dir, dirs[0], shared)
            out = replace(out, training=shared, codes=carried or out.codes)
            if carried is None and out.codes:
                summary.codes = f"encoded again with {out_dir}'s own autoencoder"
            published, summary.training = None, "trained on the union's vectors"
            if shared is not None and (carried is not None or not out.codes):
                published, why = _join_trained(out_dir, cat, out, dirs, manifests, pairs, on_disk)
                summary.training = why
            elif shared is not None:
                summary.training = f"shared training {shared.signature[:12]}: vectors added "
                summary.training += "to it again (to encode OUT's own codes)"
            if published is None and on_disk:
                raise IndexError_(
                    f"cannot merge on disk: {summary.training}; index the shards again "
                    "(alexsearch index) and merge again"
                )
            if published is None:
                published = publish(
                    out_dir, cat, out, ref.kind_requested, max_memory,
                    ref.space_requested or None, ref.space_dim or None,
                )  # fmt: skip
            if previous is not None:
                remove_replaced(out_dir, previous, published)
            summary.total_ok, summary.total_failed = cat.count()
        finally:
            cat.close()
    return describe_published(summary, published, t0)


def _id_pairs(out_path: Path, shard_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(shard ids, OUT ids) of the shard's ok files, by path, sorted by shard id."""
    import urllib.parse

    uri = f"file:{urllib.parse.quote(str(shard_dir / 'catalogue.sqlite'))}?mode=ro"
    db = sqlite3.connect(f"file:{urllib.parse.quote(str(out_path))}?mode=ro", uri=True)
    try:
        db.execute("ATTACH DATABASE ? AS shard", (uri,))
        rows = db.execute(
            "SELECT s.id, o.id FROM shard.files AS s JOIN main.files AS o ON o.path = s.path"
            " WHERE s.status = 'ok' ORDER BY s.id"
        ).fetchall()
    finally:
        db.close()
    pairs = np.asarray(rows, np.int64).reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _shared_training(manifests: list[Manifest]):
    """The training every shard was built from, or None when they do not share one."""
    first = manifests[0].training
    if first is None or any(
        m.training is None or m.training.signature != first.signature for m in manifests
    ):
        return None
    return first


def _carry_codes(out_dir, dirs, manifests, pairs, gen) -> tuple[CodesRecord | None, str]:
    """OUT's codes from the shards', renumbered to OUT's ids, when every shard has codes
    from the same autoencoder (the same bytes); (None, why) otherwise."""
    import shutil

    from ..atomic import atomic_write
    from . import codes

    entries = [m.codes for m in manifests]
    if not any(entries):
        return None, "none (no shard has binary codes)"
    if not all(entries):
        missing = next(d for d, e in zip(dirs, entries, strict=True) if not e)
        return None, f"not carried: {missing} has no binary codes"
    try:
        digests = [_sha1(d / e.autoencoder) for d, e in zip(dirs, entries, strict=True)]
    except OSError as err:
        return None, f"not carried: an autoencoder is unreadable ({err})"
    if len(set(digests)) > 1:
        other = next(d for d, h in zip(dirs, digests, strict=True) if h != digests[0])
        return None, (
            f"not carried: {other} and {dirs[0]} encode with other autoencoders (give "
            "every shard the same one: alexsearch codes --autoencoder FILE)"
        )
    ids, packed, sig = [], [], []
    for d, e, (old, new) in zip(dirs, entries, pairs, strict=True):
        try:
            with np.load(d / e.codes_file) as z:
                c_ids, c_codes, c_sig = z["ids"], z["codes"], z["sig"]
        except (OSError, KeyError, ValueError) as err:
            return None, f"not carried: {d / e.codes_file} is unreadable ({err})"
        at = np.clip(np.searchsorted(old, c_ids), 0, max(len(old) - 1, 0))
        known = (old[at] == c_ids) if len(old) else np.zeros(len(c_ids), bool)
        ids.append(new[at[known]])
        packed.append(c_codes[known])
        sig.append(c_sig[known])
    first = entries[0]
    order = np.argsort(np.concatenate(ids), kind="stable")
    ids_all = np.concatenate(ids)[order]
    codes_all = np.concatenate(packed)[order]
    sig_all = np.concatenate(sig)[order]
    coder = f"autoencoder-{digests[0][:16]}.pt"
    if not (out_dir / coder).exists():
        with open(dirs[0] / first.autoencoder, "rb") as f:
            atomic_write(out_dir / coder, lambda o: shutil.copyfileobj(f, o, 1 << 20))
    npz, fname = codes._write_codes(out_dir, gen, ids_all, codes_all, sig_all, first.bits)
    record = replace(
        first,
        autoencoder=coder,
        codes_file=npz,
        index_file=fname,
        kind=codes.binary_kind(len(ids_all)),
        count=len(ids_all),
        reencoded=0,
        updated=time.time(),
    )
    return record, f"carried over: {len(ids_all)} {first.bits}-bit codes, none encoded again"


def _sha1(path: Path) -> str:
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wants_on_disk(dirs, manifests, max_memory, on_disk) -> bool:
    """Whether to merge into on-disk lists (see merge()); refused, before anything is
    written, for shards that do not share one training (nothing to join)."""
    if on_disk is None:
        files = [d / m.vectors_file for d, m in zip(dirs, manifests, strict=True)]
        size = sum(f.stat().st_size for f in files)
        on_disk = bool(max_memory) and size > max_memory and _shared_training(manifests)
    if on_disk and _shared_training(manifests) is None:
        raise UserError(
            "--on-disk joins the inverted lists of shards built from one training "
            "(index --trained): these were not; merge without --on-disk"
        )
    return bool(on_disk)


def _join_trained(
    out_dir, cat, out, dirs, manifests, pairs, on_disk=False
) -> tuple[Manifest | None, str]:  # fmt: skip
    """Publish OUT by joining the shards' FAISS indexes, all built from OUT's training
    (`out.training`): nothing trained or encoded again. (None, why) when a shard's
    published indexes do not hold exactly its catalogue's ok files (a run stopped
    before publishing), or OUT's codes would need encoding: OUT is then built from the
    union's vectors, added to the same training."""
    from .manifest import SpaceRecord
    from .spaces import SHRINK
    from .vectors import read_faiss, write_faiss

    t = out.training
    added = f"shared training {t.signature[:12]}: vectors added to it again"
    ok_ids = np.array([i for (i,) in cat.db.execute("SELECT id FROM files WHERE status='ok'")])
    if out.codes is not None and out.codes.count != len(ok_ids):
        return None, added + " (to encode the codes a shard has not published)"
    whitened = all(m.space is not None for m in manifests)
    if whitened and any(m.space.transform_file != t.transform_file for m in manifests):
        return None, added + " (a shard learnt its own whitening)"
    if out.space_requested != "paper" and t.space_file and not whitened:
        return None, added + " (a shard has no whitened space)"
    gen = out.generation + 1
    files = {"vectors": [m.vectors_file for m in manifests]}
    if whitened:
        files["space"] = [m.space.index_file for m in manifests]
    names = {}
    for prefix, shard_files in files.items():
        parts = []
        for d, name, (old, new) in zip(dirs, shard_files, pairs, strict=True):
            index = read_faiss(d, name)
            if not np.array_equal(np.sort(ids_of(index)), old):
                return None, added + f" ({d} has changes it has not published)"
            parts.append((index, old, new))
        if sum(len(o) for _, o, _ in parts) != len(ok_ids):
            return None, added + " (the shards' indexes miss files)"
        if on_disk:
            from . import ondisk

            lists = out_dir / ondisk.ivfdata_name(f"{prefix}-{gen}.faiss")
            merged = ondisk.merge_on_disk(parts, lists)
        else:
            merged = merge_faiss(parts)
        names[prefix] = write_faiss(out_dir, merged, gen, prefix)
    space, note = None, manifests[0].space_note
    if "space" in names:
        space = SpaceRecord(
            "whitened", t.space_dim, SHRINK, t.sample, t.sample, gen, t.transform_file,
            names["space"], t.kind,
        )  # fmt: skip
        note = ""
    ok, failed = cat.count()
    published = replace(
        out,
        kind=t.kind,
        kind_requested=t.kind,
        generation=gen,
        vectors_file=names["vectors"],
        counts={"ok": ok, "failed": failed},
        updated=time.time(),
        space=space,
        space_note=note,
    )
    write_manifest(out_dir, published)
    return published, (
        f"shared training {t.signature[:12]}: the shards' inverted lists joined"
        + (" on disk (memory-mapped .ivfdata)" if on_disk else "")
        + ", nothing trained or encoded again"
    )


def ids_of(index) -> np.ndarray:
    """The ids an alexsearch FAISS index holds, in its order."""
    import faiss

    return faiss.vector_to_array(_id_map(index).id_map)


def _is_empty(path: Path) -> bool:
    cat = Catalogue(path, readonly=True)
    try:
        return cat.count() == (0, 0)
    finally:
        cat.close()


def _union(out_path: Path, dirs: list[Path], summary: MergeSummary) -> None:
    """OUT's catalogue := the union of the shards' (one transaction; see the module)."""
    Catalogue(out_path).close()  # the schema, WAL mode
    db = sqlite3.connect(out_path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA temp_store=FILE")  # the paths of a large collection
        db.execute("CREATE TEMP TABLE seen (path TEXT PRIMARY KEY, shard INTEGER NOT NULL)")
        db.execute("BEGIN IMMEDIATE")
        roots = set(_roots(db))
        for j, d in enumerate(dirs):
            src = Catalogue(d / "catalogue.sqlite", readonly=True)
            try:
                roots |= set(src.roots())
                try:
                    db.executemany(
                        "INSERT INTO temp.seen (path, shard) VALUES (?, ?)",
                        ((p, j) for (p,) in src.db.execute("SELECT path FROM files")),
                    )
                except sqlite3.IntegrityError:
                    path, other = _overlap(db, src, j)
                    raise IndexError_(
                        f"cannot merge {d} with {dirs[other]}: both hold {path}; "
                        "shards must hold disjoint photos (index each with its own --shard I/N)"
                    ) from None
            finally:
                src.close()
        seen = db.execute("SELECT COUNT(*) FROM temp.seen").fetchone()[0]
        before = db.execute(
            "SELECT COUNT(*) FROM files WHERE path IN (SELECT path FROM temp.seen)"
        ).fetchone()[0]
        written = 0  # rows inserted or updated (rowcount: not the labels' triggers' deletes)
        for d in dirs:
            src = Catalogue(d / "catalogue.sqlite", readonly=True)
            try:
                written += db.executemany(
                    f"INSERT INTO files ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, "
                    "mtime_ns=excluded.mtime_ns, digest=excluded.digest, status=excluded.status,"
                    " reason=excluded.reason, vector=excluded.vector, thumb=excluded.thumb, "
                    "indexed_at=excluded.indexed_at WHERE files.indexed_at != excluded.indexed_at"
                    " OR files.size != excluded.size OR files.mtime_ns != excluded.mtime_ns "
                    "OR files.status != excluded.status",
                    src.db.execute(f"SELECT {COLUMNS} FROM files ORDER BY id"),
                ).rowcount
            finally:
                src.close()
        for d in dirs:  # after the files: a changed vector's trigger dropped its labels
            _copy_labels(db, d / "catalogue.sqlite")
        summary.added = seen - before
        summary.updated = written - summary.added
        summary.unchanged = seen - written
        cur = db.execute("DELETE FROM files WHERE path NOT IN (SELECT path FROM temp.seen)")
        summary.deleted = cur.rowcount
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('roots', ?) ON CONFLICT(key) DO UPDATE"
            " SET value=excluded.value",
            (json.dumps(sorted(roots)),),
        )
        db.execute("COMMIT")
    except sqlite3.OperationalError as e:
        raise IndexError_(f"cannot write {out_path} ({e}); it is unchanged") from None
    finally:
        db.close()  # an open transaction is rolled back


def _copy_labels(db, shard_db: Path) -> None:
    """The shard's top-5 classes of its files onto OUT's rows of the same paths, and
    the class names they are numbered in (the shards share weights, so names)."""
    src = Catalogue(shard_db, readonly=True)
    try:
        names = src.class_names()
        if names is None:
            return  # a shard made before labels: its files are labelled by no one
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('classes', ?) ON CONFLICT(key) DO UPDATE"
            " SET value=excluded.value",
            (json.dumps(names),),
        )
        db.executemany(
            "INSERT OR REPLACE INTO labels (file_id, rank, class, prob) "
            "SELECT id, ?, ?, ? FROM files WHERE path = ?",
            src.labels_with_paths(),
        )
    finally:
        src.close()


def _roots(db) -> list[str]:
    row = db.execute("SELECT value FROM meta WHERE key='roots'").fetchone()
    try:
        return [str(r) for r in json.loads(row[0])] if row else []
    except (ValueError, TypeError):
        return []


def _overlap(db, src: Catalogue, j: int) -> tuple[str, int]:
    """(a path of shard `j` that an earlier shard holds, that shard) (the rows of `j`
    inserted before the failing one are in temp.seen too)."""
    for (path,) in src.db.execute("SELECT path FROM files"):
        row = db.execute(
            "SELECT shard FROM temp.seen WHERE path=? AND shard!=?", (path, j)
        ).fetchone()
        if row is not None:
            return path, row[0]
    raise AssertionError("no overlapping path")  # the insert that failed had one


# --------------------------------------------------------------------------- FAISS indexes


def trained_signature(index) -> str:
    """SHA-1 of an index emptied of its vectors: what it was trained to (PCA, coarse
    centroids, codebooks). Indexes with equal signatures share one training and can be
    merged without training again."""
    import hashlib

    import faiss

    empty = copy_index(index)
    empty.reset()
    return hashlib.sha1(faiss.serialize_index(empty).tobytes()).hexdigest()


def _id_map(index):
    """The IndexIDMap2 of one of vectors.build_faiss's indexes (maybe inside a transform)."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    if not isinstance(index, faiss.IndexIDMap2):
        raise IndexError_(f"cannot merge a {type(index).__name__}: not an alexsearch index")
    return index


def renumber(index, old_ids, new_ids) -> None:
    """Give the vectors of `index` new ids: old_ids[k] becomes new_ids[k] (in place)."""
    import faiss
    import numpy as np

    idmap = _id_map(index)
    have = faiss.vector_to_array(idmap.id_map)
    order = np.argsort(old_ids)
    at = np.searchsorted(np.asarray(old_ids)[order], have)
    faiss.copy_array_to_vector(np.asarray(new_ids, np.int64)[order][at], idmap.id_map)
    idmap.construct_rev_map()


def merge_faiss(parts):
    """One index from shards' indexes trained alike (vectors.build_faiss with the same
    `trained`), their codes carried over as they are, not encoded again: FAISS
    merge_from (what faiss.contrib's merge_into calls), inverted list by inverted list
    for the IVF kinds. parts: [(index, old_ids, new_ids)], each renumbered to the merged
    catalogue's ids first. Shards trained apart are refused: their codes would mean
    other things."""

    if not parts:
        raise UserError("nothing to merge")
    signatures = {trained_signature(p[0]) for p in parts}
    if len(signatures) > 1:
        raise IndexError_(
            "the shards' indexes were trained apart (other centroids or codebooks): "
            "train once and build every shard from it"
        )
    out = copy_index(parts[0][0])
    renumber(out, parts[0][1], parts[0][2])
    for index, old, new in parts[1:]:
        part = copy_index(index)
        renumber(part, old, new)
        _append(out, part)
    return out


def _append(out, part) -> None:
    """Move `part`'s vectors into `out`. IndexIDMap2.merge_from would merge the inner
    IVFs without offsetting their sequential ids, so the inverted lists are merged here
    with the offset (IndexIVF.merge_from's add_id) and the id maps concatenated."""
    import faiss
    import numpy as np

    om, pm = _id_map(out), _id_map(part)
    n0 = om.ntotal
    try:
        ivf_o, ivf_p = faiss.extract_index_ivf(om.index), faiss.extract_index_ivf(pm.index)
    except RuntimeError:  # flat, hnsw: no inverted lists; adding again costs the same
        raise IndexError_("only IVF indexes merge without rebuilding") from None
    ivf_o.merge_from(ivf_p, n0)
    ids = np.concatenate([faiss.vector_to_array(om.id_map), faiss.vector_to_array(pm.id_map)])
    faiss.copy_array_to_vector(ids.astype(np.int64), om.id_map)
    total = ivf_o.ntotal
    for level in (faiss.downcast_index(out), om, faiss.downcast_index(om.index)):
        level.ntotal = total
    om.construct_rev_map()
