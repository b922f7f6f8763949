"""The manifest of an index (manifest.json): its commit point.

An index is a folder:

    manifest.json         format, model fingerprint, layer, dimension, preprocessing,
                          metric, FAISS kind, counts, times, and the names of the current
                          vectors file and binary codes
    catalogue.sqlite      one row per file (catalogue.py), the source of truth
    vectors-<gen>.faiss   FAISS index over the ok vectors, ids = catalogue ids (vectors.py)
    codes-<gen>.*, autoencoder-<gen>.pt   binary codes, when built (codes.py)
    .lock                 held (flock) by the one process writing the index (lock.py)

A new generation is written aside and published by replacing the manifest, so a reader
never sees a half-written index. The FAISS file is rebuilt from the catalogue at the
end of each indexing run (cheap next to extraction) in the kind the manifest asks for.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..atomic import atomic_write
from ..errors import IndexError_
from .catalogue import Catalogue

FORMAT = "alexsearch-index"
VERSION = 1
DEFAULT_DIR = Path("indexes") / "default"


def resolve_dir(index: str | os.PathLike | None) -> Path:
    return Path(index) if index else DEFAULT_DIR


def read_manifest(index_dir: Path) -> dict | None:
    p = index_dir / "manifest.json"
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise IndexError_(f"{p}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexError_(f"{index_dir}: not an alexsearch index (manifest format)")
    if m.get("version", 0) > VERSION:
        raise IndexError_(f"{index_dir}: index format {m['version']} is newer than this tool")
    return m


def write_manifest(index_dir: Path, manifest: dict) -> None:
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    atomic_write(index_dir / "manifest.json", lambda f: f.write(body))


def open_existing(index: str | os.PathLike | None) -> tuple[Path, dict]:
    """The index folder and its manifest, or a clear message saying how to make one."""
    d = resolve_dir(index)
    m = read_manifest(d) if d.is_dir() else None
    if m is None and (d / "catalogue.sqlite").exists():
        raise IndexError_(
            f"the index at {d} is not complete yet (its first run was interrupted or is "
            "still running): run `alexsearch index` on the same photos to finish it"
        )
    if m is None:
        raise IndexError_(
            f"no index at {d}: build one with `alexsearch index PHOTOS"
            + (f" --index {d}`" if index else "`")
        )
    return d, m


def weights_signature(path) -> list:
    """(resolved path, size, mtime): the weights file an index was built with, unchanged."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return [str(p), -1, -1]
    return [str(p), st.st_size, st.st_mtime_ns]


def check_model(index_dir: Path, manifest: dict, fingerprint: str, pre, weights_path, fix):
    """Refuse weights other than the index's, and the same weights with other
    preprocessing (mean, channel order, geometry): either way their vectors would not be
    comparable. Indexes made before the preprocessing signature was recorded are checked
    on the weights alone."""
    have = manifest["model"]
    if have["fingerprint"] != fingerprint:
        raise IndexError_(
            f"{index_dir} was built with weights {have['fingerprint']} ({have.get('weights')}), "
            f"but {weights_path} holds {fingerprint}; {fix}"
        )
    recorded = manifest.get("preprocess", {})
    if recorded.get("signature") in (None, pre.signature()):
        return
    was, now = recorded.get("geometry"), pre.geometry()
    what = f"{was} vs {now}" if was != now else "mean, pixel scale or channel order"
    raise IndexError_(
        f"{index_dir} was built with these weights but other preprocessing ({what}) than "
        f"{weights_path}'s; {fix}"
    )


def disk_bytes(index_dir: Path) -> int:
    return sum(p.stat().st_size for p in index_dir.iterdir() if p.is_file())


def describe(index: str | os.PathLike | None) -> dict:
    """What `alexsearch info` shows about an index."""
    d, m = open_existing(index)
    cat = Catalogue(d / "catalogue.sqlite", readonly=True)
    try:
        ok, failed = cat.count()
        failures = [{"path": p, "reason": r} for p, r in cat.failures()]
    finally:
        cat.close()
    return {
        "index": str(d),
        "files": ok,
        "failed": failed,
        "weights": m["model"].get("weights"),
        "fingerprint": m["model"]["fingerprint"],
        "layer": m["model"].get("layer"),
        "geometry": m.get("preprocess", {}).get("geometry", "not recorded"),
        "dimension": m["dimension"],
        "kind": m["kind"],
        "metric": m["metric"],
        "generation": m["generation"],
        "bytes_on_disk": disk_bytes(d),
        "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("updated", 0))),
        "codes": _describe_codes(m.get("codes")),
        "failures": failures,
    }


def _describe_codes(entry: dict | None) -> str:
    """One line on the binary codes (`alexsearch codes`), or how to make them."""
    if not entry:
        return "none (alexsearch codes)"
    return (
        f"{entry['bits']} bits ({entry['bytes_per_image']} bytes an image), "
        f"{entry['count']} encoded, {entry['kind']}"
    )
