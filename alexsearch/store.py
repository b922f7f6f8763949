"""The on-disk index: manifest, SQLite catalogue, FAISS vectors; locking; atomic writes.

An index is a folder:

    manifest.json         the commit point: format, model fingerprint, layer, dimension,
                          preprocessing, metric, FAISS kind, counts, times, and the name
                          of the current vectors file
    catalogue.sqlite      one row per file: id, path, size, mtime, content digest, status
                          (ok / failed and why), the fc7 vector and a 32x32 thumbnail.
                          WAL mode; the indexer commits in chunks, so a killed run
                          keeps what it committed and a rerun resumes.
    vectors-<gen>.faiss   FAISS index over the ok vectors, ids = catalogue ids; a new
                          generation is written aside and published by replacing the
                          manifest, so a reader never sees a half-written index.
    .lock                 held (flock) by the one process writing the index

The catalogue is the source of truth; the FAISS file is rebuilt from it at the end of
each indexing run (cheap next to extraction) in whatever kind the manifest asks for.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .errors import UserError

FORMAT = "alexsearch-index"
VERSION = 1
DEFAULT_DIR = Path("indexes") / "default"
KINDS = ("flat", "hnsw", "ivfpq", "ivfsq", "auto")


class IndexError_(UserError):
    """An index that is missing, locked, mismatched or damaged."""


def resolve_dir(index: str | os.PathLike | None) -> Path:
    return Path(index) if index else DEFAULT_DIR


@dataclass
class Row:
    id: int
    path: str
    size: int
    mtime_ns: int
    digest: str
    status: str
    reason: str


SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    reason TEXT NOT NULL DEFAULT '',
    vector BLOB,
    thumb BLOB,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_digest ON files (size, digest);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Catalogue:
    """The SQLite catalogue of one index."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        try:
            if readonly:
                self.db = _open_readonly(path)
            else:
                self.db = sqlite3.connect(path, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
                self.db.commit()
        except sqlite3.OperationalError as e:  # full disk, read-only folder, cannot open
            raise IndexError_(f"{path}: cannot use the catalogue ({_why(path, e)})") from None
        except sqlite3.DatabaseError as e:
            raise IndexError_(
                f"{path}: catalogue is not a readable SQLite database ({e})"
            ) from None

    def close(self) -> None:
        self.db.close()

    def rows(self, under: list[str] | None = None) -> dict[str, Row]:
        cur = self.db.execute("SELECT id, path, size, mtime_ns, digest, status, reason FROM files")
        out = {}
        for r in cur:
            row = Row(*r)
            if under is None or any(_is_under(row.path, root) for root in under):
                out[row.path] = row
        return out

    def count(self) -> tuple[int, int]:
        ok = self.db.execute("SELECT COUNT(*) FROM files WHERE status='ok'").fetchone()[0]
        bad = self.db.execute("SELECT COUNT(*) FROM files WHERE status='failed'").fetchone()[0]
        return ok, bad

    def failures(self) -> list[tuple[str, str]]:
        return list(
            self.db.execute("SELECT path, reason FROM files WHERE status='failed' ORDER BY path")
        )

    def paths(self, ids) -> dict[int, str]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        q = f"SELECT id, path FROM files WHERE id IN ({','.join('?' * len(ids))})"
        return dict(self.db.execute(q, ids))

    def id_of(self, path: str) -> int | None:
        r = self.db.execute("SELECT id FROM files WHERE path=? AND status='ok'", (path,)).fetchone()
        return r[0] if r else None

    def vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, dim)) of every ok file, by id."""
        cur = self.db.execute("SELECT id, vector FROM files WHERE status='ok' ORDER BY id")
        ids, blobs = [], []
        for i, blob in cur:
            ids.append(i)
            blobs.append(blob)
        vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
        return np.asarray(ids, dtype=np.int64), vecs

    def labelled(self) -> list[tuple[int, str, bytes]]:
        return list(
            self.db.execute("SELECT id, path, thumb FROM files WHERE status='ok' ORDER BY id")
        )

    def vector_of(self, file_id: int) -> np.ndarray:
        blob = self.db.execute("SELECT vector FROM files WHERE id=?", (file_id,)).fetchone()[0]
        return np.frombuffer(blob, dtype=np.float32)

    # -- writes (the caller holds the index lock and commits in chunks)

    def put(self, path, size, mtime_ns, digest, vector, thumb, reason="") -> None:
        status = "ok" if vector is not None else "failed"
        blob = None if vector is None else np.ascontiguousarray(vector, np.float32).tobytes()
        with _writing(self.path):
            self.db.execute(
                "INSERT INTO files (path, size, mtime_ns, digest, status, reason, vector, thumb,"
                " indexed_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(path) DO UPDATE SET"
                " size=excluded.size, mtime_ns=excluded.mtime_ns, digest=excluded.digest,"
                " status=excluded.status, reason=excluded.reason, vector=excluded.vector,"
                " thumb=excluded.thumb, indexed_at=excluded.indexed_at",
                (path, size, mtime_ns, digest, status, reason, blob, thumb or None, time.time()),
            )

    def move(self, file_id: int, new_path: str, size: int, mtime_ns: int) -> None:
        with _writing(self.path):
            self.db.execute(
                "UPDATE files SET path=?, size=?, mtime_ns=? WHERE id=?",
                (new_path, size, mtime_ns, file_id),
            )

    def delete(self, file_ids) -> None:
        with _writing(self.path):
            self.db.executemany("DELETE FROM files WHERE id=?", [(int(i),) for i in file_ids])

    def commit(self) -> None:
        with _writing(self.path):
            self.db.commit()


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection, also on read-only media, where SQLite cannot make the
    shared-memory file a WAL database needs: nobody can change the file there, so it is
    read as immutable. (The path is quoted: '?' or '#' in a folder name would cut it.)"""
    uri = f"file:{urllib.parse.quote(str(path))}"
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens lazily
        return db
    except sqlite3.OperationalError:
        db.close()
        if not path.exists() or not os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            raise
    db = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=30)
    db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    return db


@contextmanager
def _writing(path: Path):
    """A catalogue write that fails (full disk, read-only) is one line naming the file.

    SQLite rolls the open transaction back, so the catalogue keeps its last commit.
    """
    try:
        yield
    except sqlite3.OperationalError as e:
        raise IndexError_(
            f"cannot write {path} ({_why(path, e)}); it keeps the files committed before"
        ) from None


def _why(path: Path, e: sqlite3.Error) -> str:
    """SQLite reports a full disk as 'disk I/O error' when its shared memory file cannot
    grow; say what the user can act on."""
    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < 256 * 1024:
            return f"no space left on device: {e}"
    except OSError:
        pass
    return str(e)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------- manifest


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


# --------------------------------------------------------------------------- locking


@contextmanager
def write_lock(index_dir: Path, wait: bool = False):
    """Hold the index's writer lock; a second writer waits (wait=True) or stops clearly."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise IndexError_(
                f"{index_dir} is being written by another alexsearch process (pid {holder}); "
                "wait for it to finish, or pass --wait"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _sweep_temporaries(index_dir)
        yield
    finally:
        os.close(fd)  # releases the flock


def _sweep_temporaries(index_dir: Path) -> None:
    """Remove what a killed writer's atomic writes left (`.NAME.*.tmp`); only a writer
    makes them, and we hold the lock, so none of them is in use."""
    for p in index_dir.glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------- FAISS


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


def build_faiss(kind: str, ids: np.ndarray, vecs: np.ndarray):
    """A FAISS index of `kind` over vecs with the given ids (IDMap2 keeps id -> vector)."""
    import faiss

    n, dim = vecs.shape
    if kind == "flat":
        inner = faiss.IndexFlatL2(dim)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, 32)
        inner.hnsw.efSearch = 64
    elif kind in ("ivfpq", "ivfsq"):
        nlist = int(max(1, min(4096, 4 * np.sqrt(max(n, 1)))))
        if n < 39 * nlist or n < 256:
            raise IndexError_(
                f"--kind {kind} needs more vectors to train on than {n}; use --kind flat "
                "(exact) or --kind auto for a collection this small"
            )
        pca = min(256, dim)
        code = "PQ32" if kind == "ivfpq" else "SQ8"
        inner = faiss.index_factory(dim, f"PCA{pca},IVF{nlist},{code}")
        # A sample trains PCA and k-means as well as every vector, at a fraction of the cost.
        cap = max(50_000, 64 * nlist)
        train = vecs[np.random.default_rng(0).choice(n, cap, replace=False)] if n > cap else vecs
        inner.train(np.ascontiguousarray(train))
        faiss.extract_index_ivf(inner).nprobe = min(nlist, 16)
    else:
        raise IndexError_(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    index = faiss.IndexIDMap2(inner)
    if n:
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return index


def write_faiss(index_dir: Path, index, generation: int) -> str:
    import faiss

    name = f"vectors-{generation}.faiss"
    buf = faiss.serialize_index(index)
    atomic_write(index_dir / name, lambda f: f.write(buf.tobytes()))
    return name


def read_faiss(index_dir: Path, manifest: dict):
    import faiss

    p = index_dir / manifest["vectors_file"]
    try:
        # Memory-mapped: opening costs nothing whatever the size (a flat 100k index is
        # 1.6 GB), pages come from the page cache, and a file a writer unlinks meanwhile
        # stays readable through the mapping.
        return faiss.read_index(str(p), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise IndexError_(
            f"{p}: unreadable vectors file ({str(e).splitlines()[0][:120]})"
        ) from None


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
