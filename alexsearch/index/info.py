"""What `alexsearch info --index` says about an index: published or not, its files and
failures, the weights and preprocessing it was built with, its kind, codes and size."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import IndexError_
from .catalogue import Catalogue
from .manifest import no_index, read_manifest


def disk_bytes(index_dir: Path) -> int:
    return sum(p.stat().st_size for p in index_dir.iterdir() if p.is_file())


def describe(index_dir: Path, named: bool = True) -> dict:
    """The index's state as a dict (what `info --index --json` prints). An index whose
    first run has not published yet (killed, or still running) is described by what its
    catalogue holds so far, with `published` False and a note saying how to finish it."""
    manifest = read_manifest(index_dir) if index_dir.is_dir() else None
    db = index_dir / "catalogue.sqlite"
    if manifest is None and not db.exists():
        raise IndexError_(no_index(index_dir, named))
    cat = Catalogue(db, readonly=True)
    try:
        ok, failed = cat.count()
        failures = [{"path": p, "reason": r} for p, r in cat.failures()]
        labelled, names = cat.labelled_count(), cat.class_names()
    finally:
        cat.close()
    if manifest is None:
        return {
            "index": str(index_dir),
            "published": False,
            "files": ok,
            "failed": failed,
            "note": "not yet published: run `alexsearch index` on the same photos to finish",
            "bytes_on_disk": disk_bytes(index_dir),
            "failures": failures,
        }
    m = manifest
    return {
        "index": str(index_dir),
        "published": True,
        "files": ok,
        "failed": failed,
        "weights": m.model.weights,
        "fingerprint": m.model.fingerprint,
        "layer": m.model.layer,
        "geometry": m.preprocess.geometry,
        "dimension": m.dimension,
        "kind": m.kind,
        "precision": m.precision,
        "metric": m.metric,
        "space": m.describe_space(),
        "generation": m.generation,
        "bytes_on_disk": disk_bytes(index_dir),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.updated)),
        "codes": m.codes.describe() if m.codes else "none (alexsearch codes)",
        "training": m.training.describe() if m.training else "",
        "labels": _labels(labelled, ok, names),
        "failures": failures,
    }


def _labels(labelled: int, ok: int, names: list[str] | None) -> str:
    """How many files have their top-5 classes (query --label), of how many classes."""
    if names is None:
        return "none yet (made before labels: `alexsearch index` computes them from fc7)"
    return f"top-5 of {len(names)} classes for {labelled} of {ok} files"
