"""Atomic file writes: a crash or a full disk never leaves a half-written file in place."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import UserError


class WriteError(UserError):
    """A file could not be written (full disk, read-only, permissions); nothing was replaced."""


class _Recording:
    """A file object that remembers the OSError its write() raised.

    Some writers (torch.save's zip writer) swallow the OSError of a failed write and
    raise their own, vaguer error later; this keeps the real cause for the message.
    """

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, b):
        try:
            return self._f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_os_error(e: OSError) -> str:
    """'no space left on device' rather than '[Errno 28] No space left on device'."""
    if e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return errno.errorcode.get(e.errno or 0, type(e).__name__)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(fileobj) on a temporary file beside `path`, then rename it over `path`.

    A crash or a full disk leaves any earlier `path` untouched and no temporary file.
    A failed write (full disk, file too large, read-only or forbidden folder) raises
    WriteError with one line naming the file and the cause. The file gets the mode an
    ordinary open() would give it (mkstemp's 0600 would hide it from other users).
    """
    path = Path(path)
    tmp = None
    rec = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            rec = _Recording(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        cause = rec.error if rec is not None and rec.error is not None else e
        if isinstance(cause, OSError):
            raise WriteError(
                f"cannot write {path}: {describe_os_error(cause)}; "
                f"any earlier {path.name} there is unchanged"
            ) from e
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
