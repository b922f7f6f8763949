"""Fetch published weights: download (or take a file put in place by hand), verify the
published checksum, import, and make the result the default weights.

Fetched files and their checkpoints live under the data folder ($ALEXSEARCH_HOME, else
~/.cache/alexsearch): downloads/<published name> and weights/<source>.ckpt, and
weights/default names the checkpoint that index and query use when given none.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError
from ..progress import Progress
from .checkpoint import Checkpoint, save
from .importers import import_file
from .locations import data_dir, set_default


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    algorithm: str  # hashlib name
    digest: str  # the whole hex digest, or its published prefix
    filename: str
    description: str

    @property
    def url_env(self) -> str:
        """An environment variable that replaces the URL (a mirror, or a test's server)."""
        return f"ALEXSEARCH_FETCH_URL_{self.name.upper()}"

    def resolved_url(self) -> str:
        return os.environ.get(self.url_env) or self.url


SOURCES = {
    "bvlc": Source(
        "bvlc",
        "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
        "sha1",
        "9116a64c0fbe4459d18f4bb6b56d647b63920377",
        "bvlc_alexnet.caffemodel",
        "Caffe's bvlc_alexnet (the paper's two towers)",
    ),
    "torchvision": Source(
        "torchvision",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "sha256",
        "7be5be79",  # torchvision names its files with the SHA-256's first 8 hex digits
        "alexnet-owt-7be5be79.pth",
        "torchvision's alexnet (one tower)",
    ),
}


def source_named(name: str) -> Source:
    if name not in SOURCES:
        raise WeightsError(f"unknown weights {name!r}; choose from {', '.join(SOURCES)}")
    return SOURCES[name]


def download_path(source: Source) -> Path:
    return data_dir() / "downloads" / source.filename


def checkpoint_path(source: Source) -> Path:
    return data_dir() / "weights" / f"{source.name}.ckpt"


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _offline_hint(source: Source, url: str) -> str:
    return (
        f"download {url} by hand and put it at {download_path(source)}, then run "
        f"`alexsearch weights fetch {source.name}` again (or `alexsearch weights import FILE`)"
    )


def download(source: Source, progress: Progress | None = None, timeout: float = 10.0) -> Path:
    """Download `source` into the data folder and verify its checksum.

    The bytes go to a temporary file beside the destination and are hashed as they
    come; only a file whose checksum matches is renamed into place, so a failed or
    refused download leaves nothing behind. Progress is reported in MB.
    `timeout` bounds the connection and each read, so an offline machine fails at once.
    """
    url = source.resolved_url()
    dest = download_path(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.new(source.algorithm)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = response.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else None
                    done = 0
                    stage = f"downloading {source.filename} (MB)"
                    mb = 1 << 20
                    total_mb = -(-total // mb) if total else None
                    if progress:
                        progress(stage, 0, total_mb)
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(stage, -(-done // mb), total_mb)
            except urllib.error.HTTPError as e:
                raise WeightsError(
                    f"cannot download {url}: HTTP {e.code} {e.reason}; "
                    + _offline_hint(source, url)
                ) from None
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                raise WeightsError(
                    f"cannot download {url} ({reason}); " + _offline_hint(source, url)
                ) from None
            f.flush()
            os.fsync(f.fileno())
        got = h.hexdigest()
        if not got.startswith(source.digest):
            raise WeightsError(
                f"refused {url}: its {source.algorithm} is {got}, not the published "
                f"{source.digest}; nothing was kept"
            )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def fetch(
    source: Source, progress: Progress | None = None, timeout: float = 10.0
) -> tuple[Path, Checkpoint]:
    """Download (unless already there and intact), verify, import, make it the default.

    Returns the checkpoint's path and the checkpoint.
    """
    raw = download_path(source)
    if raw.is_file():  # fetched before, or put there by hand
        got = _digest(raw, source.algorithm)
        if not got.startswith(source.digest):
            raise WeightsError(
                f"{raw}: its {source.algorithm} is {got}, not the published {source.digest}; "
                "delete it and fetch again"
            )
    else:
        raw = download(source, progress, timeout)
    ckpt = import_file(raw)
    ckpt.meta.update(source=source.description, url=source.resolved_url())
    ckpt.meta[source.algorithm] = source.digest
    out = checkpoint_path(source)
    save(ckpt, out)
    set_default(out)
    return out, ckpt
