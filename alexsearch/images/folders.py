"""The image files under folders: the walk `index` does (recursive, symlink-loop safe,
hidden files and --exclude globs), the labelled layout training and evaluation read
(root/<class>/<image>), and the label of a photo (its parent folder's name)."""

from __future__ import annotations

import fnmatch
import os
import stat as stat_
from pathlib import Path

from ..errors import UserError
from .files import is_image_name, is_raw_name


def label_of(path: str | os.PathLike) -> str:
    """A photo's label: the name of the folder it sits in ("." for a file at "/").
    Retrieval evaluation scores by it and t-SNE maps colour by it."""
    return Path(path).parent.name or "."


def walk(
    roots: list[Path],
    exclude: list[str] = (),
    hidden: bool = False,
) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """Image files under `roots` (files may be given directly): [(abs path, size, mtime_ns)].

    Follows symlinks but visits each real folder once, so symlink loops are safe.
    `exclude`: glob patterns matched against the name and the path relative to the root.
    Returns the files and [(path, reason)] for folders that could not be read.
    """
    found: dict[str, tuple[str, int, int]] = {}
    problems: list[tuple[str, str]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def excluded(rel: str, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in exclude)

    def add(path: str, st: os.stat_result) -> None:
        found[path] = (path, st.st_size, st.st_mtime_ns)

    for root in roots:
        root = Path(os.path.abspath(root))
        try:
            st = root.stat()
        except OSError as e:
            raise UserError(
                f"{root}: {e.strerror.lower() if e.strerror else 'cannot read'}"
            ) from None
        if stat_.S_ISREG(st.st_mode):
            if is_image_name(root.name):
                add(str(root), st)
            else:
                problems.append((str(root), "not an image file name"))
            continue
        stack = [root]
        while stack:
            d = stack.pop()
            try:
                dst = d.stat()
                key = (dst.st_dev, dst.st_ino)
                if key in seen_dirs:
                    continue
                seen_dirs.add(key)
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as e:
                problems.append((str(d), e.strerror.lower() if e.strerror else "cannot read"))
                continue
            for e in entries:
                if not hidden and e.name.startswith("."):
                    continue
                rel = os.path.relpath(e.path, root)
                if exclude and excluded(rel, e.name):
                    continue
                try:
                    if e.is_dir(follow_symlinks=True):
                        stack.append(Path(e.path))
                    elif is_image_name(e.name) and e.is_file(follow_symlinks=True):
                        add(e.path, e.stat(follow_symlinks=True))
                except OSError as err:
                    problems.append((e.path, err.strerror.lower() if err.strerror else "error"))
    return sorted(_without_raw_twins(found).values()), problems


def _without_raw_twins(found: dict) -> dict:
    """Drop a RAW file that has a developed twin beside it (IMG_1.CR2 beside IMG_1.JPG):
    the camera's two files of one photo, which would be each other's duplicate."""
    developed = {os.path.splitext(p)[0].lower() for p in found if not is_raw_name(p)}
    return {
        p: v
        for p, v in found.items()
        if not (is_raw_name(p) and os.path.splitext(p)[0].lower() in developed)
    }


def labelled_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """The ImageFolder layout: root/<class>/**/<image>. Returns (classes, [(path, label)]).

    Raises ValueError with a clear reason when the folder is missing, has no class
    folders, or a class folder holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    samples = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
        if not found:
            raise ValueError(f"{root / cls}: class folder holds no images")
        samples += [(p, label) for p in found]
    return classes, samples
