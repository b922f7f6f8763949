"""Disks that fail writes: a small RAM disk (full, or remounted read-only), a filesystem
filled to a few bytes, a process whose file-size limit stops its writes.

- `tmpfs()`: mount a small RAM disk; skips the test where mounting is not permitted.
- `remount()`: make a mount read-only or writable again.
- `fill()`: fill a filesystem until a given number of bytes is free.
- `limit_file_size()`: in a child before exec, make writes past N bytes fail with EFBIG.
- `tmp_leftovers()`: the temporary files an interrupted atomic write left.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """Mount a small RAM disk at path (root only); skips the test where that is refused."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}"
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, readonly: bool) -> None:
    mode = "ro" if readonly else "rw"
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem at path until `leave` bytes are free; returns the filler file."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / ".filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def limit_file_size(nbytes: int) -> None:
    """Writes past nbytes fail with EFBIG (SIGXFSZ ignored so the write returns the error)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
