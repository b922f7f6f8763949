"""The writer lock of an index: one process writes it at a time; readers never wait."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import IndexError_


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
