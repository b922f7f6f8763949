"""`alexsearch index`: walk folders, diff against the catalogue, extract what changed.

Incremental by (size, mtime): unchanged files are not opened; new and changed files are
extracted; files gone from the walked folders are dropped, unless a new file has the
same content digest, in which case it is a move and keeps its vector. Work is committed
to the catalogue in chunks, so a killed run keeps what it committed and a rerun resumes.
The FAISS snapshot and manifest are published at the end, atomically.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..images.files import DEFAULT_MAX_MEGAPIXELS, hash_file
from ..images.folders import walk
from ..net.precision import combined, resolve_precision
from ..progress import Progress
from . import BATCH, codes, labels, shards, spaces, training, vectors
from .catalogue import Catalogue, Row
from .lock import write_lock
from .manifest import Manifest, check_model, read_manifest, weights_signature, write_manifest
from .network import LAYER, open_network

# Files decoded ahead on a CPU: what the threads finish while torch is imported and the
# network built (~2 s, ~3.5 ms a photo a thread), at ~150 KB a photo.
STARTUP_AHEAD = 512


@dataclass
class Plan:
    new: list[tuple[str, int, int]] = field(default_factory=list)  # path, size, mtime_ns
    changed: list[tuple[str, int, int]] = field(default_factory=list)
    gone: list[Row] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable folders etc.


@dataclass
class IndexSummary:
    """What an indexing run did; its fields are the keys `alexsearch index --json` prints."""

    index_dir: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable folders etc.
    total_ok: int = 0
    total_failed: int = 0
    kind: str = ""
    seconds: float = 0.0
    extracted: int = 0
    images_per_s: float = 0.0
    fingerprint: str = ""
    weights: str = ""
    precision: str = ""  # what the index's fc7 was computed in
    space: str = ""  # the search spaces it answers in (info's `space`)
    labelled: int = 0  # files given their top-5 classes this run (from their stored fc7)
    labels_note: str = ""  # why some files have no labels, when they could not be computed
    shard: str = ""  # "I/N" when the run indexed one shard of the photos (--shard)
    training: str = ""  # the shared IVF training it adds to (--trained, --train-only)
    reused: int = 0  # files whose fc7 was copied from the --trained index's sample


def plan(catalogue: Catalogue, roots: list[Path], files, problems) -> Plan:
    scope = [os.path.abspath(r) for r in roots]
    known = catalogue.rows(under=scope)
    p = Plan(skipped=problems)
    current = set()
    for path, size, mtime in files:
        current.add(path)
        row = known.get(path)
        if row is None:
            p.new.append((path, size, mtime))
        elif row.size != size or row.mtime_ns != mtime:
            p.changed.append((path, size, mtime))
        else:
            p.unchanged += 1
    p.gone = [row for path, row in known.items() if path not in current]
    return p


def run(
    roots: list[Path],
    index_dir: Path,
    weights=None,  # --weights; None: $ALEXSEARCH_WEIGHTS, the index's own, fetched default
    device: str = "auto",
    kind: str | None = None,  # None: what the index asked for before, else flat
    max_memory: int | None = None,
    batch_size: int = BATCH,
    workers: int | None = None,
    exclude: list[str] = (),
    hidden: bool = False,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    wait: bool = False,
    progress: Progress | None = None,
    commit_every: int = 256,  # files per catalogue transaction
    precision: str = "auto",  # fp32, or bf16 where the machine runs it natively
    space: str | None = None,  # whitened (learn it) or paper; None: as before, else whitened
    space_dim: int | None = None,  # the whitened dimension (spaces.DEFAULT_DIM)
    shard: tuple[int, int] | None = None,  # (I, N): only the files of shard I of N
    train_only: bool = False,  # index a sample and learn a shared training (training.py)
    sample: int | None = None,  # the sample's size (training.DEFAULT_SAMPLE)
    trained: Path | None = None,  # an index whose training to add to (training.py)
) -> IndexSummary:
    """`alexsearch index`: bring the index at `index_dir` up to date with `roots`."""
    from ..weights.locations import WEIGHTS_ENV

    t0 = time.perf_counter()
    resolve_precision(precision, "cpu")  # an unknown value fails before anything is done
    if kind is not None and kind not in vectors.KINDS:
        raise UserError(f"unknown --kind {kind!r}; choose from {', '.join(vectors.KINDS)}")
    spaces.check_space(space, space_dim)
    if train_only and trained is not None:
        raise UserError("--train-only learns a training; --trained adds to one: give one")
    if sample is not None and not train_only:
        raise UserError("--sample sizes the sample of --train-only")
    if train_only:
        training.check_kind(kind)
    source = training.source(trained) if trained is not None else None
    summary = IndexSummary(index_dir=str(index_dir))
    files, problems = walk(roots, exclude, hidden)  # bad paths fail before anything is made
    walked = bool(files)  # a shard may be empty: it is then an empty index
    planned = len(files)  # what a training is sized for: the whole collection
    if shard is not None:
        files = shards.select(files, roots, shard)
    if train_only:
        files = training.sample_files(files, roots, sample or training.DEFAULT_SAMPLE)
    summary.shard = shards.describe(shard)
    manifest = read_manifest(index_dir) if index_dir.is_dir() else None
    recorded = manifest.model.weights if manifest else None
    if not walked and not (index_dir / "catalogue.sqlite").exists():
        raise UserError(_no_images(roots, problems, hidden))
    network = None
    if manifest is None:
        # no folder without usable weights (read without torch: see network.py)
        network = open_network(weights, recorded, device, precision)
    # Weights named (explicitly or by the environment) that may differ from the index's
    # are checked even when there is nothing to extract.
    named = weights or os.environ.get(WEIGHTS_ENV)
    check_weights = bool(named and manifest) and (
        weights_signature(named) != manifest.model.weights_signature
    )
    with write_lock(index_dir, wait=wait):
        manifest = read_manifest(index_dir)
        if manifest is not None and (manifest.shard != summary.shard or manifest.merged_from):
            raise UserError(shards.other_shard(index_dir, manifest, summary.shard))
        cat = Catalogue(index_dir / "catalogue.sqlite")
        try:
            work = plan(cat, roots, files, problems)
            if not walked and not work.gone:
                raise UserError(_no_images(roots, problems, hidden))
            summary.unchanged = work.unchanged
            cat.add_roots([str(r) for r in roots])  # where the server may read files from
            summary.skipped = work.skipped
            if network is None and (work.new or work.changed or manifest is None or check_weights):
                network = open_network(weights, recorded, device, precision)
            if manifest is not None and network is not None:
                fix = "use the index's weights or another --index"
                check_model(
                    index_dir, manifest, network.fingerprint, network.preprocess,
                    network.weights, fix,
                )  # fmt: skip
            if train_only:
                adopted = manifest.training if manifest else None
            else:
                kind, adopted = _kind_and_training(index_dir, manifest, kind, source, network)
            coder = None  # the training index's autoencoder, for an index without codes
            if source is not None and not (manifest and manifest.codes):
                coder = training.adopt_codes(index_dir, *source)
            summary.moved, to_extract = _apply_moves_and_deletes(cat, work, summary)
            if to_extract and source is not None:
                summary.reused, to_extract = _reuse(cat, source, network, to_extract)
            if to_extract:
                _extract_into(
                    cat, network, to_extract, summary, batch_size, workers, max_megapixels,
                    progress, commit_every,
                )  # fmt: skip
            dim = manifest.dimension if manifest is not None else network.dimension
            summary.labelled, summary.labels_note = _label(
                cat, dim, network, weights, recorded, manifest, progress
            )
            changed = bool(to_extract or work.gone or summary.moved or manifest is None)
            if manifest is not None and kind != manifest.kind_requested:
                changed = True
            if adopted is not None and adopted != (manifest and manifest.training):
                changed = True  # another training: every vector is added to it again
            changed = changed or coder is not None
            if manifest is not None and _space_changed(manifest, space, space_dim):
                changed = True
            if train_only and (changed or adopted is None or adopted.kind != kind):
                adopted, changed = _learn(index_dir, cat, manifest, network, kind, planned,
                                          space, space_dim), True  # fmt: skip
            if changed:
                if manifest is None:
                    manifest = Manifest.new(
                        network.fingerprint, network.weights, LAYER, network.dimension,
                        network.preprocess, network.precision,
                    )  # fmt: skip
                elif to_extract:
                    manifest = replace(
                        manifest, precision=combined(manifest.precision, network.precision)
                    )
                manifest = replace(manifest, shard=summary.shard, training=adopted)
                if coder is not None:
                    manifest = replace(manifest, codes=coder)
                manifest = publish(index_dir, cat, manifest, kind, max_memory, space, space_dim)
            summary.total_ok, summary.total_failed = cat.count()
        finally:
            cat.close()
    summary.training = manifest.training.describe() if manifest.training else ""
    return describe_published(summary, manifest, t0)


def _kind_and_training(index_dir, manifest, kind, source, network):
    """(the kind to publish, the training to publish with or None). `--trained`'s
    training is copied in (checked against the index's model); an index that has one
    keeps it. Either way the training decides the kind: another --kind is refused."""
    have = manifest.training if manifest else None
    adopted = have
    if source is not None:
        src, src_manifest = source
        if manifest is not None:
            fingerprint, pre = manifest.model.fingerprint, manifest.preprocess.signature
        else:
            fingerprint, pre = network.fingerprint, network.preprocess.signature()
        training.check_model(src, src_manifest, fingerprint, pre, index_dir)
        adopted = training.adopt(index_dir, src, src_manifest.training)
    if adopted is None:
        return kind or (manifest.kind_requested if manifest else "flat"), None
    if kind is not None and kind != adopted.kind:
        raise UserError(
            f"{index_dir} adds to the {adopted.kind} training of {adopted.source}: "
            f"--kind {kind} would drop it; leave --kind out or index into another --index"
        )
    return adopted.kind, adopted


def _reuse(cat, source, network, todo):
    """(copied, still to extract): the files of `todo` that the --trained index holds
    as they are now (its sample) get their fc7, digest and thumbnail copied from it,
    not extracted again, when it computed them in this run's precision (its model was
    checked: training.check_model)."""
    src_dir, src_manifest = source
    if network is None or src_manifest.precision != network.precision:
        return 0, todo
    src = Catalogue(src_dir / "catalogue.sqlite", readonly=True)
    try:
        rows = src.extracted(todo)
    finally:
        src.close()
    for row in rows:
        cat.put(*row)
    cat.commit()
    done = {row[0] for row in rows}
    return len(rows), [f for f in todo if f[0] not in done]


def _learn(index_dir, cat, manifest, network, kind, planned, space, space_dim):
    """`--train-only`: the training learnt from the sample's vectors (training.py)."""
    dim = manifest.dimension if manifest is not None else network.dimension
    _, vecs = cat.vectors(dim)
    space = space or (manifest.space_requested if manifest else "") or spaces.DEFAULT_SPACE
    space_dim = space_dim or (manifest.space_dim if manifest else 0) or spaces.DEFAULT_DIM
    return training.learn(index_dir, vecs, kind, max(planned, len(vecs)), space, space_dim)


def describe_published(summary, manifest: Manifest, t0: float):
    """Fill a summary's (index's or merge's) fields that the published manifest decides,
    and the seconds since t0."""
    summary.kind = manifest.kind
    summary.fingerprint = manifest.model.fingerprint
    summary.weights = manifest.model.weights
    summary.precision = manifest.precision
    summary.space = manifest.describe_space()
    summary.seconds = time.perf_counter() - t0
    return summary


def _label(cat, dim, network, weights, recorded, manifest, progress) -> tuple[int, str]:
    """Give every ok file without labels its top-5 classes from its stored fc7 (new
    files, and all of an index made before labels), with the network's fc8, or the
    index's weights' when the run loaded no network. Returns (labelled, note): weights
    that cannot be had leave the files unlabelled and say why, as a run with nothing
    to extract needs no weights."""

    def classifier() -> labels.Classifier:
        if network is not None:
            return labels.Classifier.of(network.ckpt)
        from ..weights import checkpoint, locations
        from ..weights.checkpoint_file import Unsupported

        path = locations.resolve(weights, recorded)
        try:
            ckpt = checkpoint.read(path)
        except Unsupported:
            ckpt = checkpoint.load(path)
        if ckpt.fingerprint != manifest.model.fingerprint:
            raise UserError(
                f"{path} ({ckpt.fingerprint}) are not the index's weights "
                f"({manifest.model.fingerprint}); pass those with --weights"
            )
        return labels.Classifier.of(ckpt)

    try:
        return labels.fill(cat, dim, classifier, progress), ""
    except UserError as e:
        return 0, f"labels not computed: {e}"


def _space_changed(manifest: Manifest, space: str | None, dim: int | None) -> bool:
    """A run asks for another search space than the published one (an index made before
    search spaces asks for the whitened one by default)."""
    want = space or manifest.space_requested or spaces.DEFAULT_SPACE
    want_dim = dim or manifest.space_dim or spaces.DEFAULT_DIM
    return want != manifest.space_requested or (
        want == "whitened" and want_dim != manifest.space_dim
    )


def _no_images(roots: list[Path], problems: list[tuple[str, str]], hidden: bool) -> str:
    where = ", ".join(str(r) for r in roots)
    why = f"; {problems[0][0]}: {problems[0][1]}" if problems else ""
    hint = "" if hidden else " (hidden files and folders are skipped without --hidden)"
    return f"no images found under {where}{hint}{why}"


def _apply_moves_and_deletes(cat: Catalogue, work: Plan, summary: IndexSummary):
    """Match new files to vanished ones by content; delete the rest. Returns (moved, todo)."""
    todo = list(work.changed)
    summary.updated = len(work.changed)
    by_content: dict[tuple[int, str], Row] = {}
    for row in work.gone:
        if row.status == "ok" and row.digest:
            by_content.setdefault((row.size, row.digest), row)
    moved = 0
    for path, size, mtime in work.new:
        row = None
        if by_content and any(k[0] == size for k in by_content):
            try:
                row = by_content.pop((size, hash_file(path)), None)
            except OSError:
                row = None
        if row is not None:
            cat.move(row.id, path, size, mtime)
            moved += 1
        else:
            todo.append((path, size, mtime))
    moved_ids = {r.id for r in work.gone} - {r.id for r in by_content.values()}
    gone = [r.id for r in work.gone if r.id not in moved_ids]
    cat.delete(gone)
    cat.commit()
    summary.deleted = len(gone)
    summary.added = len(todo) - len(work.changed)
    return moved, todo


def _extract_into(
    cat, network, todo, summary, batch_size, workers, max_mp, progress, commit_every
) -> None:
    meta = {p: (s, m) for p, s, m in todo}
    done = pending = 0
    t = time.perf_counter()
    first = None  # (time, count) when the first batch came out: the steady rate's start
    paths = [p for p, _, _ in todo]
    with _decoding(network, paths, workers, max_mp, batch_size) as items:
        from .extract import extract  # imports torch (~1.7 s): decoding runs meanwhile

        model, device = network.model(), network.device()
        batches = extract(model, network.preprocess, items, batch_size, device, network.precision)
        for batch in batches:
            for r in batch:
                size, mtime = meta[r.path]
                cat.put(r.path, size, mtime, r.digest, r.vector, r.thumb, r.reason)
                if r.vector is None:
                    summary.failed.append((r.path, r.reason))
            done += len(batch)
            pending += len(batch)
            if pending >= commit_every:
                cat.commit()
                pending = 0
            if first is None:
                first = (time.perf_counter(), done)
            if progress:
                rate = done / max(time.perf_counter() - t, 1e-9)
                progress("extracting", done, len(todo), img_per_s=rate)
    cat.commit()
    summary.extracted = done
    t0, n0 = first if first and done > first[1] else (t, 0)
    summary.images_per_s = (done - n0) / max(time.perf_counter() - t0, 1e-9)


def _decoding(network, paths: list[str], workers: int | None, max_mp: float, batch_size: int):
    """The decoded files, in order, as a context manager. On a CPU without --workers: a
    thread per core, started before torch is imported (decoding.py needs no torch), with
    room for what they decode meanwhile; else extract.decoding's choice for the device."""
    pre = network.preprocess
    if network.device_spec == "cpu" and not workers:
        from .decoding import DecodeAhead, decode_threads  # Pillow: not for a re-index

        return DecodeAhead(paths, pre, max_mp, decode_threads(), ahead=STARTUP_AHEAD)
    from .extract import decoding, default_workers
    from .gpu_decode import gpu_jpeg_wanted

    if workers is None:
        workers = default_workers(network.device())
    gpu_jpeg = network.device_spec != "cpu" and gpu_jpeg_wanted(
        pre, network.device().type, network.precision
    )
    return decoding(paths, pre, max_mp, workers, batch_size=batch_size, gpu_jpeg=gpu_jpeg)


def publish(
    index_dir: Path, cat: Catalogue, manifest: Manifest, kind: str, max_memory=None,
    space: str | None = None, space_dim: int | None = None,
):  # fmt: skip
    """Build the FAISS snapshot of the catalogue's ok vectors in `kind`, the whitened
    search space over them (unless `space` is paper; None keeps what the manifest asked
    for, whitened for an index made before search spaces), keep the binary codes in
    step, and publish all with the next generation of `manifest` (the caller holds the
    index's lock). An index with a shared training (training.py) adds its vectors to
    the trained indexes in the training's kind instead of training. Returns the
    published manifest."""
    ids, vecs = cat.vectors(manifest.dimension)
    trained = None
    if manifest.training:
        chosen = manifest.training.kind
        paper, pca, space_index = training.read(index_dir, manifest.training)
        trained = (manifest.training, pca, space_index)
        index = vectors.build_faiss(chosen, ids, vecs, trained=paper)
    else:
        chosen = vectors.choose_kind(kind, len(ids), manifest.dimension, max_memory)
        index = vectors.build_faiss(chosen, ids, vecs)
    gen = manifest.generation + 1
    name = vectors.write_faiss(index_dir, index, gen)
    space = space or manifest.space_requested or spaces.DEFAULT_SPACE
    space_dim = space_dim or manifest.space_dim or spaces.DEFAULT_DIM
    new_space, note = spaces.refresh(
        index_dir, manifest.space, space, space_dim, ids, vecs, chosen, gen, trained
    )
    ok, failed = cat.count()
    old_codes = manifest.codes
    new_codes = codes.refresh(index_dir, old_codes, ids, vecs, gen) if old_codes else None
    published = replace(
        manifest,
        kind=chosen,
        kind_requested=kind,
        generation=gen,
        vectors_file=name,
        counts={"ok": ok, "failed": failed},
        updated=time.time(),
        codes=new_codes,
        space=new_space,
        space_requested=space,
        space_dim=space_dim,
        space_note=note,
    )
    write_manifest(index_dir, published)
    remove_replaced(index_dir, manifest, published)
    return published


def remove_replaced(index_dir: Path, old: Manifest, new: Manifest) -> None:
    """Delete the files of generation `old` that `new` (just published) no longer names:
    vectors, search space, codes, a training it was built from. Readers that opened the
    old manifest a moment ago keep reading through their memory maps: harmless."""
    keep = set(new.training.files() if new.training else ())
    keep |= {new.vectors_file} | (new.space.files() if new.space else set())
    keep |= new.codes.files() if new.codes else set()
    stale = {old.vectors_file} | (old.space.files() if old.space else set())
    stale |= old.codes.files() if old.codes else set()
    stale |= old.training.files() if old.training else set()
    from .ondisk import ivfdata_name

    for f in stale - keep - {""}:
        # a merged index's inverted lists may lie beside its .faiss (ondisk.py)
        for name in (f, ivfdata_name(f)) if f.endswith(".faiss") else (f,):
            try:
                (index_dir / name).unlink()
            except FileNotFoundError:
                pass
