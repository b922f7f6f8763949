"""Answering over several indexes without merging them (`query --index A --index B`):
each index is searched for the k nearest, and the answers are combined by distance.

Distances are comparable only between vectors of the same network and preprocessing,
in the same space. The paper space (L2 on raw fc7) is the same for every such index,
so it is what several indexes answer in by default. A whitened space is learnt per
index from its own photos (spaces.py): two shards learn two transforms, and distances
measured through one are not distances measured through the other. Whitened is used
only when every index holds the very same transform (byte for byte), else refused.
Hamming codes likewise belong to one autoencoder each: over several indexes, merge.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import IndexError_, UserError
from .manifest import Manifest
from .search import Hit


def check_comparable(dirs: list[Path], manifests: list[Manifest]) -> None:
    """Refuse indexes whose fc7 vectors are not comparable with the first's (one line)."""
    ref, ref_dir = manifests[0], dirs[0]
    for d, m in zip(dirs[1:], manifests[1:], strict=True):
        what = None
        if m.model.fingerprint != ref.model.fingerprint:
            what = f"weights ({m.model.fingerprint} vs {ref.model.fingerprint})"
        elif (m.model.layer, m.dimension) != (ref.model.layer, ref.dimension):
            what = f"layer ({m.model.layer} {m.dimension}-d vs {ref.model.layer} {ref.dimension}-d)"
        elif (m.preprocess.signature or None) != (ref.preprocess.signature or None):
            what = f"preprocessing ({m.preprocess.geometry} vs {ref.preprocess.geometry})"
        if what:
            raise IndexError_(
                f"cannot query {d} with {ref_dir}: they were built with other {what}, "
                "so their distances are not comparable"
            )


def common_space(dirs: list[Path], manifests: list[Manifest], requested: str | None) -> str:
    """The space several indexes answer in: paper unless whitened is asked for, and
    whitened only when all share one transform (see the module)."""
    from .spaces import check_space

    check_space(requested)
    if requested != "whitened":
        return "paper"
    first = None
    for d, m in zip(dirs, manifests, strict=True):
        if m.space is None:
            raise IndexError_(f"{d} has no whitened space: query several indexes in paper")
        body = (d / m.space.transform_file).read_bytes()
        if first is None:
            first = body
        elif body != first:
            raise IndexError_(
                f"{d} and {dirs[0]} learnt different whitened spaces, whose distances are "
                "not comparable: query several indexes with --space paper (their default), "
                "or merge them"
            )
    return "whitened"


def check_options(binary: bool, rerank: int, expand: int | None) -> None:
    if binary or rerank:
        raise UserError(
            "--binary/--rerank answer from one index's codes: merge the indexes first "
            "(alexsearch merge)"
        )
    if expand:
        raise UserError("--expand answers from one index: merge the indexes first")


def combine(per_index: list[list[Hit]], labels: list[str], k: int) -> list[Hit]:
    """The k nearest of several indexes' hits for one query (ties: the earlier index),
    ranked again, each naming its index (ids are per index)."""
    pool = [
        (h.distance, j, h.rank, h)
        for j, hits in enumerate(per_index)
        for h in hits
    ]  # fmt: skip
    pool.sort(key=lambda t: t[:3])
    return [
        Hit(r + 1, h.distance, h.path, h.id, index=labels[j])
        for r, (_, j, _, h) in enumerate(pool[:k])
    ]
