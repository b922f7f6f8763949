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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..images.files import DEFAULT_MAX_MEGAPIXELS, hash_file
from ..images.folders import walk
from . import codes, vectors
from .catalogue import Catalogue, Row
from .lock import write_lock
from .manifest import FORMAT, VERSION, check_model, read_manifest, weights_signature, write_manifest


@dataclass
class Plan:
    new: list[tuple[str, int, int]] = field(default_factory=list)  # path, size, mtime_ns
    changed: list[tuple[str, int, int]] = field(default_factory=list)
    gone: list[Row] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable folders etc.


@dataclass
class Summary:
    index_dir: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_ok: int = 0
    total_failed: int = 0
    kind: str = ""
    seconds: float = 0.0
    extracted: int = 0
    images_per_s: float = 0.0
    fingerprint: str = ""
    weights: str = ""


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
    load_model: Callable,  # () -> (model, preprocess, fingerprint, weights path, layer)
    kind: str = "flat",
    max_memory: int | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "cpu",
    exclude: list[str] = (),
    hidden: bool = False,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    wait: bool = False,
    progress: Callable | None = None,  # progress(done, total) during extraction
    check_weights: bool = False,  # weights were named explicitly: verify even if no work
    commit_every: int = 256,  # files per catalogue transaction
) -> Summary:
    t0 = time.perf_counter()
    summary = Summary(index_dir=str(index_dir))
    files, problems = walk(roots, exclude, hidden)  # bad paths fail before anything is made
    model_info = None
    if not (index_dir / "manifest.json").exists():
        model_info = load_model()  # a new index: no folder is made without usable weights
    with write_lock(index_dir, wait=wait):
        manifest = read_manifest(index_dir)
        cat = Catalogue(index_dir / "catalogue.sqlite")
        try:
            work = plan(cat, roots, files, problems)
            summary.unchanged = work.unchanged
            summary.skipped = work.skipped
            if model_info is None and (
                work.new or work.changed or manifest is None or check_weights
            ):
                model_info = load_model()
                _check_same_model(index_dir, manifest, model_info)
            summary.moved, to_extract = _apply_moves_and_deletes(cat, work, summary)
            if to_extract:
                _extract_into(
                    cat,
                    model_info,
                    to_extract,
                    summary,
                    batch_size,
                    workers,
                    device,
                    max_megapixels,
                    progress,
                    commit_every,
                )
            changed = bool(to_extract or work.gone or summary.moved or manifest is None)
            if manifest is not None and kind != manifest.get("kind_requested", "flat"):
                changed = True
            if changed:
                manifest = _publish(index_dir, cat, manifest, model_info, kind, max_memory)
            summary.total_ok, summary.total_failed = cat.count()
        finally:
            cat.close()
    summary.kind = manifest["kind"]
    summary.fingerprint = manifest["model"]["fingerprint"]
    summary.weights = manifest["model"].get("weights", "")
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_same_model(index_dir: Path, manifest: dict | None, model_info) -> None:
    if manifest is not None:
        _, pre, fp, wpath, _ = model_info
        check_model(
            index_dir, manifest, fp, pre, wpath, "use the index's weights or another --index"
        )


def _apply_moves_and_deletes(cat: Catalogue, work: Plan, summary: Summary):
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
    cat, model_info, todo, summary, batch_size, workers, device, max_mp, progress, commit_every
):
    from .extract import extract

    model, pre, _, _, _ = model_info
    meta = {p: (s, m) for p, s, m in todo}
    done = 0
    t = time.perf_counter()
    pending = 0
    for batch in extract(model, pre, [p for p, _, _ in todo], batch_size, workers, device, max_mp):
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
        if progress:
            progress(done, len(todo))
    cat.commit()
    summary.extracted = done
    summary.images_per_s = done / max(time.perf_counter() - t, 1e-9)


def _publish(index_dir, cat, manifest, model_info, kind, max_memory) -> dict:
    """Build the FAISS snapshot from the catalogue and publish it with a new manifest."""
    if manifest is None:
        model, pre, fp, wpath, layer = model_info
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": time.time(),
            "model": {
                "fingerprint": fp,
                "weights": str(wpath),
                "weights_signature": weights_signature(wpath),
                "layer": layer,
            },
            "dimension": int(model.cfg.fc_units[-1]),  # fc7's width: 4096 in the paper
            "preprocess": {
                "resize": pre.resize,
                "crop": f"centre {pre.input_size}",
                "channel_order": pre.channel_order,
                "geometry": pre.geometry(),
                "signature": pre.signature(),
            },
            "metric": "L2",
            "generation": 0,
        }
    ids, vecs = cat.vectors(manifest["dimension"])
    chosen = vectors.choose_kind(kind, len(ids), manifest["dimension"], max_memory)
    index = vectors.build_faiss(chosen, ids, vecs)
    gen = manifest.get("generation", 0) + 1
    old = manifest.get("vectors_file")
    name = vectors.write_faiss(index_dir, index, gen)
    ok, failed = cat.count()
    old_codes = manifest.get("codes")
    if old_codes:  # keep the binary codes in step (see codes.py)
        manifest = {**manifest, "codes": codes.refresh(index_dir, old_codes, ids, vecs, gen)}
    manifest = {
        **manifest,
        "kind": chosen,
        "kind_requested": kind,
        "generation": gen,
        "vectors_file": name,
        "counts": {"ok": ok, "failed": failed},
        "updated": time.time(),
    }
    write_manifest(index_dir, manifest)
    if old_codes:
        codes.remove_stale(index_dir, old_codes, manifest["codes"])
    if old and old != name:
        try:  # readers that opened the old manifest a moment ago may still read it: harmless
            (index_dir / old).unlink()
        except FileNotFoundError:
            pass
    return manifest
