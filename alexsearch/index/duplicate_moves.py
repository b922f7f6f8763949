"""`alexsearch duplicates --move-to DIR`: move every group's other files out of the way.

Each file that is not its group's keep moves to DIR under its path relative to the
indexed folder holding it (DIR/<folder name>/<path inside it>), so two files of the same
name never meet and the way back is plain. Nothing is deleted and nothing is
overwritten: every target is checked before anything moves, and each move links the
file at its target (which fails if something is there) before unlinking the source
(across file systems: a copy beside the target, fsynced, then linked). A file changed
since it was indexed (size or modification time) is left where it is: it may no longer
be a duplicate.

The record of every move (DIR/alexsearch-moves-<time>.json) is written before the first
move with each one planned, and again after the last with what happened to each, so a
run that is killed leaves the plan beside the files it moved. `alexsearch index`
afterwards sees the moved files as deleted, or, when DIR lies inside an indexed folder,
as moved.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write, describe_os_error
from ..errors import UserError


@dataclass
class Move:
    source: str
    target: str
    keep: str  # the group's keep, which stays
    tier: str
    done: bool = False
    skipped: str = ""  # why it did not move

    def to_dict(self) -> dict:
        return {
            "from": self.source,
            "to": self.target,
            "keep": self.keep,
            "tier": self.tier,
            "moved": self.done,
            **({"skipped": self.skipped} if self.skipped else {}),
        }


@dataclass
class MoveRecord:
    record: str  # the JSON record's path
    moves: list[Move] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(m.done for m in self.moves)

    def to_dict(self) -> dict:
        return {"record": self.record, "moved": self.moved,
                "moves": [m.to_dict() for m in self.moves]}  # fmt: skip


def relative_target(path: str, roots: list[str], dest: Path) -> Path:
    """Where `path` goes under dest: beside its indexed folder's name, its path inside
    the outermost indexed folder holding it (a file indexed by itself: its name)."""
    ap = os.path.abspath(path)
    holding = [r for r in roots if ap == r or ap.startswith(r.rstrip(os.sep) + os.sep)]
    if holding:
        root = min(holding, key=len)
        if root != ap:
            rel = os.path.relpath(ap, root)
            return dest / (os.path.basename(root.rstrip(os.sep)) or "root") / rel
    return dest / os.path.basename(ap)


def plan(groups, roots: list[str], dest: Path, expected: dict[str, tuple[int, int]]) -> list[Move]:
    """The moves for `groups` (duplicates.Group): every member but the keep, once each.
    expected: path -> (size, mtime_ns) as indexed. Refuses (before anything moves) a
    target that exists or that two files would share."""
    dest = Path(os.path.abspath(dest))
    moves, seen, targets = [], set(), set()
    for g in groups:
        for m in g.files:
            if m.path == g.keep or m.path in seen:
                continue
            seen.add(m.path)
            target = relative_target(m.path, roots, dest)
            if os.path.lexists(target) or str(target) in targets:
                raise UserError(f"--move-to: {target} exists; nothing was moved (refusing to "
                                "overwrite)")  # fmt: skip
            targets.add(str(target))
            mv = Move(m.path, str(target), g.keep, g.tier)
            mv.skipped = _changed(m.path, expected.get(m.path))
            moves.append(mv)
    kept = {g.keep for g in groups}
    for mv in moves:  # a keep of one group is never moved as another's member
        if mv.source in kept and not mv.skipped:
            mv.skipped = "it is another group's keep"
    return moves


def _changed(path: str, indexed: tuple[int, int] | None) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot read it now: {describe_os_error(e)}"
    if indexed is not None and (st.st_size, st.st_mtime_ns) != tuple(indexed):
        return "changed since it was indexed (run alexsearch index first)"
    return ""


def move_all(moves: list[Move], dest: Path) -> MoveRecord:
    """Carry out `moves`, recording each (see the module's note)."""
    dest = Path(os.path.abspath(dest))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = dest / f"alexsearch-moves-{stamp}.json"
    n = 1
    while record.exists():
        n += 1
        record = dest / f"alexsearch-moves-{stamp}-{n}.json"
    rec = MoveRecord(str(record), moves)
    _write(rec)
    try:
        for mv in moves:
            if mv.skipped:
                continue
            try:
                _move(Path(mv.source), Path(mv.target))
                mv.done = True
            except FileExistsError:
                mv.skipped = "its target appeared meanwhile (not overwritten)"
            except OSError as e:
                mv.skipped = f"cannot move it: {describe_os_error(e)}"
    finally:
        _write(rec)
    return rec


def _write(rec: MoveRecord) -> None:
    text = json.dumps(rec.to_dict(), indent=2)
    atomic_write(rec.record, lambda f: f.write(text.encode()))


def _move(src: Path, dst: Path) -> None:
    """src to dst, never over an existing dst, never losing src: a hard link (atomic,
    refuses an existing target) then unlinking src; across file systems a copy beside
    dst, fsynced, linked into place, then src unlinked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        tmp = dst.with_name(f".{dst.name}.moving")
        try:
            shutil.copy2(src, tmp, follow_symlinks=False)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.link(tmp, dst)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    os.unlink(src)
