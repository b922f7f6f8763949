"""Shards of a collection: which files `alexsearch index --shard I/N` takes.

A file belongs to shard `sha1(path relative to the root it was found under) mod N`: the
relative path, with `/` separators, so every machine agrees whatever the mount point;
SHA-1 rather than Python's `hash()`, which is salted per process.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import UserError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'I/N' (0 <= I < N) -> (I, N); None stays None; a bad value is one line."""
    if spec is None or isinstance(spec, tuple):
        if spec is not None:
            _check(*spec, f"{spec[0]}/{spec[1]}")
        return spec
    m = _SPEC.match(str(spec))
    if not m:
        raise UserError(f"--shard {spec!r}: expected I/N, e.g. 0/4 (shard I of N, from 0)")
    i, n = int(m.group(1)), int(m.group(2))
    _check(i, n, spec)
    return i, n


def _check(i: int, n: int, spec) -> None:
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {spec}: I must be 0 to N-1 and N at least 1")


def shard_of(relative: str, n: int) -> int:
    """The shard of a file by its path relative to its root ('a/b.jpg')."""
    digest = hashlib.sha1(relative.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n


def relative_to_root(path: str, roots: list[Path]) -> str:
    """`path` relative to the deepest root it lies under (a root that is a file: its
    name), with '/' separators."""
    best = None
    for r in roots:
        root = os.path.abspath(r)
        if path == root:
            rel = os.path.basename(path)
        elif path.startswith(root.rstrip(os.sep) + os.sep):
            rel = path[len(root.rstrip(os.sep)) + 1 :]
        else:
            continue
        if best is None or len(root) > best[0]:
            best = (len(root), rel)
    rel = best[1] if best else os.path.basename(path)
    return rel.replace(os.sep, "/")


def select(files: list[tuple[str, int, int]], roots: list[Path], shard: tuple[int, int]):
    """The walked files (path, size, mtime_ns) that belong to `shard` = (I, N)."""
    i, n = shard
    if n == 1:
        return list(files)
    return [f for f in files if shard_of(relative_to_root(f[0], roots), n) == i]


def describe(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f"{shard[0]}/{shard[1]}"


def other_shard(index_dir, manifest, asked: str) -> str:
    """Why an index of one shard (or of all photos, or a merge) is not indexed as
    another: the files of the other shards would be dropped from it."""
    if manifest.merged_from:
        return (
            f"{index_dir} is a merge of {len(manifest.merged_from)} shard indexes: index "
            "the shards and merge them again, or index into another --index"
        )
    held = manifest.shard
    have = f"shard {held}" if held else "all its photos, not a shard"
    want = f"--shard {asked}" if asked else "every photo (no --shard)"
    return (
        f"{index_dir} holds {have}; indexing it with {want} would drop the others: "
        f"use {'--shard ' + held if held else 'no --shard'} or another --index"
    )
