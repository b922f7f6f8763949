"""The t-SNE map of one published generation of an index, computed once and cached
beside it (`tsne-<generation>-<method>.json`), for a page that draws it as points.

Only the photos of that generation are mapped (the ids in its FAISS file), so rows a
writer has committed for the next one are not. Writing the cache is best effort: a
folder that cannot be written keeps the map in the caller's memory only. Writing it
removes the caches of earlier generations (the only files this module ever makes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import UserError
from ..images.folders import label_of
from ..index.catalogue import Catalogue
from ..progress import Progress
from .tsne import _unit, pca50, tsne_2d


def cache_path(index_dir: Path, generation: int, method: str) -> Path:
    return index_dir / f"tsne-{generation}-{method}.json"


def load_or_compute(index_dir: Path, snap, method: str, lock, progress: Progress | None = None):
    """The map of snapshot `snap`'s generation: {"generation", "method", "points":
    [{"id", "x", "y", "label", "name"}]}, x and y in [0, 1]. `lock` guards `snap`."""
    gen = snap.manifest.generation
    path = cache_path(index_dir, gen, method)
    cached = _read(path, gen, method)
    if cached is not None:
        return cached
    import faiss

    with lock:
        wanted = set(faiss.vector_to_array(snap.index.id_map).tolist())
    cat = Catalogue(index_dir / "catalogue.sqlite", readonly=True)  # this thread's own
    try:
        ok = cat.ok_files(snap.manifest.dimension)
    finally:
        cat.close()
    keep = np.array([int(i) in wanted for i in ok.ids], bool)
    ids = ok.ids[keep]
    paths = [p for p, k in zip(ok.paths, keep, strict=True) if k]
    coords = _unit(tsne_2d(pca50(ok.vectors[keep]), method, progress=progress))
    points = [
        {
            "id": int(i),
            "x": round(float(x), 5),
            "y": round(float(y), 5),
            "label": label_of(p),
            "name": os.path.basename(p),
        }
        for i, p, (x, y) in zip(ids, paths, coords, strict=True)
    ]
    result = {"generation": gen, "method": method, "points": points}
    _write(index_dir, path, result)
    return result


def _read(path: Path, gen: int, method: str) -> dict | None:
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("generation") != gen or m.get("method") != method:
        return None
    if not isinstance(m.get("points"), list):
        return None
    return m


def _write(index_dir: Path, path: Path, result: dict) -> None:
    body = json.dumps(result, separators=(",", ":")).encode()
    try:
        atomic_write(path, lambda f: f.write(body))
    except (OSError, UserError):  # read-only or full: the map stays in memory
        return
    for old in index_dir.glob("tsne-*.json"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass
