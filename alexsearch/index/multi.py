"""Answering over several indexes without merging them (`query --index A --index B`):
each index is searched for the k nearest, and the answers are combined by distance.

Distances are comparable only between vectors of the same network and preprocessing,
in the same space. The paper space (L2 on raw fc7) is the same for every such index,
so it is what several indexes answer in by default. A whitened space is learnt per
index from its own photos (spaces.py): two shards learn two transforms, and distances
measured through one are not distances measured through the other. Whitened is used
only when every index holds the very same transform (byte for byte), else refused.
Hamming codes likewise belong to one autoencoder each: over several indexes, merge.

A photo is named across several indexes by its part (the index's position, from 0) and
its catalogue id there, written "PART:ID" (`ref`): ids alone are per index. Label
probabilities come from the same weights' fc8 in every part, so they compare as they are.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import IndexError_, NotFoundError, UserError
from .manifest import Manifest
from .search import Hit, LabelHit, LabelResult

MERGE_FIRST = "merge the indexes first (alexsearch merge)"


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
        Hit(r + 1, h.distance, h.path, h.id, index=labels[j], part=j)
        for r, (_, j, _, h) in enumerate(pool[:k])
    ]


def combine_labels(per_index: list[LabelResult], labels: list[str], k: int) -> LabelResult:
    """The k most probable photos of several indexes' answers to one --label word (ties:
    the earlier index), ranked again, each naming its index and part."""
    pool = [(-h.prob, j, h.rank, h) for j, res in enumerate(per_index) for h in res.hits]
    pool.sort(key=lambda t: t[:3])
    hits = [
        LabelHit(r + 1, h.prob, h.label, h.path, h.id, index=labels[j], part=j)
        for r, (_, j, _, h) in enumerate(pool[:k])
    ]
    first = per_index[0]
    return LabelResult(first.word, first.classes, hits, sum(r.unlabelled for r in per_index))


def ref(part: int, file_id: int) -> str:
    """The name of photo `file_id` of index `part` over several indexes ("1:42")."""
    return f"{part}:{file_id}"


def parse_ref(text, parts: int) -> tuple[int, int]:
    """(part, id) of a reference "PART:ID"; UserError when it is not one, NotFoundError
    when it names no index among the `parts` (an id is looked up by its index)."""
    t = str(text).strip()
    head, sep, tail = t.partition(":")
    if not (sep and head.isdigit() and tail.isdigit() and head.isascii() and tail.isascii()):
        raise UserError(
            f"a photo over several indexes is named PART:ID (such as 0:12); got {t[:40]!r}"
        )
    if len(head) > 6 or int(head) >= parts:
        raise NotFoundError(f"no index {head[:12]}: the parts are 0 to {parts - 1}")
    if len(tail) > 18:  # past any catalogue id (SQLite's are 64-bit)
        raise NotFoundError(f"no indexed file with id {tail[:24]}... in index {head}")
    return int(head), int(tail)


def describe(infos: list[dict]) -> dict:
    """What several indexes are, as `info --json` describes one: the totals (files,
    failed, bytes on disk, failures each naming its index), what they share (the
    first's weights and geometry, checked alike at opening), and each part's own."""
    first = infos[0]
    shared = ("weights", "fingerprint", "layer", "geometry", "dimension", "metric")
    out = {
        "index": [i["index"] for i in infos],
        "published": all(i["published"] for i in infos),
        "files": sum(i["files"] for i in infos),
        "failed": sum(i["failed"] for i in infos),
        **{key: first[key] for key in shared if key in first},
        "kind": ", ".join(sorted({str(i.get("kind")) for i in infos})),
        "precision": ", ".join(sorted({str(i.get("precision")) for i in infos})),
        "space": "paper (several indexes answer in the paper space)",
        "generation": [i.get("generation") for i in infos],
        "bytes_on_disk": sum(i["bytes_on_disk"] for i in infos),
        "codes": f"none over several indexes: {MERGE_FIRST}",
        "failures": [{**f, "index": i["index"]} for i in infos for f in i["failures"]],
        "parts": [{key: v for key, v in i.items() if key != "failures"} for i in infos],
    }
    return out
