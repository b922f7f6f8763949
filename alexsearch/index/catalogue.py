"""The catalogue of an index (SQLite): one row per file, the source of truth.

Each row: id, path, size, mtime, content digest, status (ok / failed and why), the fc7
vector and a 32x32 thumbnail; beside it each ok file's top-5 classes (`labels`, computed
from the stored fc7 at publish: index/labels.py), which triggers drop when a file's
vector changes or the file goes, so a label never outlives the vector it came from.
WAL mode; the indexer commits in chunks, so a killed run keeps what it committed and a
rerun resumes. Readers open it read-only (also on read-only media).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexError_


@dataclass
class OkFiles:
    """The indexed (ok) files of a catalogue, by id."""

    ids: np.ndarray  # int64 (n,)
    vectors: np.ndarray  # float32 (n, dim)
    paths: list[str]
    thumbs: list[bytes]  # 32x32 RGB, b"" when none was stored


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
CREATE TABLE IF NOT EXISTS labels (
    file_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    class INTEGER NOT NULL,
    prob REAL NOT NULL,
    PRIMARY KEY (file_id, rank)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_class ON labels (class, prob);
CREATE TRIGGER IF NOT EXISTS labels_of_deleted AFTER DELETE ON files
    BEGIN DELETE FROM labels WHERE file_id = OLD.id; END;
CREATE TRIGGER IF NOT EXISTS labels_of_new_vector AFTER UPDATE OF vector ON files
    BEGIN DELETE FROM labels WHERE file_id = OLD.id; END;
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

    def roots(self) -> list[str]:
        """The folders (and files) indexing was asked for, as absolute paths, over every
        run: what the catalogue's files may be read from (an empty list for catalogues
        written before they were recorded)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='roots'").fetchone()
        try:
            return [str(r) for r in json.loads(row[0])] if row else []
        except (ValueError, TypeError):
            return []

    def add_roots(self, roots: list[str]) -> None:
        """Record `roots` beside those of earlier runs (committed with the next commit)."""
        merged = sorted(set(self.roots()) | {os.path.abspath(r) for r in roots})
        with _writing(self.path):
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('roots', ?) ON CONFLICT(key) DO UPDATE"
                " SET value=excluded.value",
                (json.dumps(merged),),
            )

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

    def ok_files(self, dim: int) -> OkFiles:
        """Every ok file with its vector, path and thumbnail, by id: one read, so one
        consistent state even while a writer commits."""
        cur = self.db.execute(
            "SELECT id, vector, path, thumb FROM files WHERE status='ok' ORDER BY id"
        )
        ids, blobs, paths, thumbs = [], [], [], []
        for i, blob, path, thumb in cur:
            ids.append(i)
            blobs.append(blob)
            paths.append(path)
            thumbs.append(thumb or b"")
        vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
        return OkFiles(np.asarray(ids, dtype=np.int64), vecs, paths, thumbs)

    def vector_of(self, file_id: int) -> np.ndarray | None:
        """The fc7 vector of an ok file, None when there is no such file."""
        row = self.db.execute(
            "SELECT vector FROM files WHERE id=? AND status='ok'", (file_id,)
        ).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32)

    def path_and_thumb(self, file_id: int) -> tuple[str, bytes] | None:
        """(path, 32x32 RGB thumbnail) of a file, None when there is no such file."""
        row = self.db.execute("SELECT path, thumb FROM files WHERE id=?", (file_id,)).fetchone()
        return None if row is None else (row[0], row[1] or b"")

    def ok_path(self, file_id: int) -> str | None:
        """The path of an indexed (ok) file, None when there is no such file."""
        row = self.db.execute(
            "SELECT path FROM files WHERE id=? AND status='ok'", (file_id,)
        ).fetchone()
        return None if row is None else row[0]

    # -- labels: each ok file's top classes (index/labels.py computes them)

    def class_names(self) -> list[str] | None:
        """The class names the labels are numbered in (None before any were stored)."""
        row = self._meta("classes")
        try:
            return [str(c) for c in json.loads(row)] if row else None
        except (ValueError, TypeError):
            return None

    def unlabelled(self) -> list[int]:
        """Ids of ok files without labels (all of an index made before labels); for the
        writer, whose open added the labels table."""
        q = (
            "SELECT id FROM files WHERE status='ok' AND NOT EXISTS"
            " (SELECT 1 FROM labels WHERE file_id=files.id) ORDER BY id"
        )
        return [r[0] for r in self.db.execute(q)]

    def vectors_of(self, ids, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, fc7 float32 (n, dim)) of those of `ids` that are ok files, by id."""
        ids = [int(i) for i in ids]
        got, blobs = [], []
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 900]
            q = (
                f"SELECT id, vector FROM files WHERE status='ok' AND id IN"
                f" ({','.join('?' * len(chunk))}) ORDER BY id"
            )
            for i, blob in self.db.execute(q, chunk):
                got.append(i)
                blobs.append(blob)
        vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(got), dim)
        return np.asarray(got, dtype=np.int64), vecs

    def put_labels(self, ids, classes: np.ndarray, probs: np.ndarray, names: list[str]) -> None:
        """Store each file's top classes (row i of `classes` and `probs`, best first) and
        the names they are numbered in."""
        rows = [
            (int(f), r, int(c), float(p))
            for f, cs, ps in zip(ids, classes, probs, strict=True)
            for r, (c, p) in enumerate(zip(cs, ps, strict=True))
        ]
        with _writing(self.path):
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('classes', ?) ON CONFLICT(key) DO UPDATE"
                " SET value=excluded.value",
                (json.dumps(list(names)),),
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO labels (file_id, rank, class, prob) VALUES (?,?,?,?)",
                rows,
            )

    def labels_of(self, file_id: int) -> list[tuple[int, float]]:
        """(class, probability) of a file's top classes, best first ([] when none)."""
        return [
            (int(c), float(p))
            for c, p in self._labels_query(
                "SELECT class, prob FROM labels WHERE file_id=? ORDER BY rank", (int(file_id),)
            )
        ]

    def with_classes(self, classes, min_prob: float = 0.0) -> list[tuple[int, int, float]]:
        """(file id, class, probability) of every ok file with one of `classes` among its
        top classes at `min_prob` or more, its most probable such class, best first."""
        classes = [int(c) for c in classes]
        q = (
            "SELECT l.file_id, l.class, MAX(l.prob) FROM labels l JOIN files f ON f.id ="
            f" l.file_id WHERE f.status='ok' AND l.class IN ({','.join('?' * len(classes))})"
            " AND l.prob >= ? GROUP BY l.file_id ORDER BY MAX(l.prob) DESC, l.file_id"
        )
        return [
            (int(i), int(c), float(p))
            for i, c, p in self._labels_query(q, (*classes, float(min_prob)))
        ]

    def labels_with_paths(self) -> list[tuple[int, int, float, str]]:
        """(rank, class, probability, path) of every stored label (for merge)."""
        return self._labels_query(
            "SELECT l.rank, l.class, l.prob, f.path FROM labels l JOIN files f ON f.id = l.file_id",
            (),
        )

    def labelled_count(self) -> int:
        """How many ok files have labels."""
        q = (
            "SELECT COUNT(*) FROM files WHERE status='ok' AND EXISTS"
            " (SELECT 1 FROM labels WHERE file_id=files.id)"
        )
        rows = self._labels_query(q, ())
        return int(rows[0][0]) if rows else 0

    def _labels_query(self, q: str, args) -> list:
        """Rows of a query on labels; none from a catalogue made before labels and opened
        read-only (so the table was not added)."""
        try:
            return list(self.db.execute(q, args))
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def extracted(self, files) -> list[tuple]:
        """(path, size, mtime_ns, digest, vector (float32) or None, thumb, reason) of the
        ok rows among `files` [(path, size, mtime_ns)] that hold that very file (same
        size and mtime): another index's extraction of it, to be copied, not redone."""
        found = []
        files = list(files)
        for start in range(0, len(files), 900):  # SQLite's bound-parameter limit
            chunk = {p: (size, mtime) for p, size, mtime in files[start : start + 900]}
            q = (
                "SELECT path, size, mtime_ns, digest, vector, thumb, reason FROM files WHERE"
                f" status='ok' AND path IN ({','.join('?' * len(chunk))})"
            )
            for path, size, mtime, digest, blob, thumb, reason in self.db.execute(q, list(chunk)):
                if chunk[path] == (size, mtime):
                    vec = np.frombuffer(blob, dtype=np.float32)
                    found.append((path, size, mtime, digest, vec, thumb, reason))
        return found

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
    read as immutable. (The path is quoted: '?' or '#' in a folder name would cut it.)
    The connection may be used from any thread, one at a time (the caller serialises)."""
    uri = f"file:{urllib.parse.quote(str(path))}"
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens lazily
        return db
    except sqlite3.OperationalError:
        db.close()
        if not path.exists() or not os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            raise
    db = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=30, check_same_thread=False)
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
