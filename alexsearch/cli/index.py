"""`alexsearch index`, `query` and `info`: build an index, search it, describe it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from ..images.files import DEFAULT_MAX_MEGAPIXELS
from ..index import BATCH
from .render import (
    RichProgress,
    err,
    failures_table,
    kv_table,
    out,
    print_json,
    print_label_result,
    print_results,
    save_grid,
)

INDEX_HELP = "Index folder (default: indexes/default)."


def index(
    paths: list[Path] = typer.Argument(..., help="Folders (searched recursively) or images."),
    index_dir: Path = typer.Option(None, "--index", help=INDEX_HELP),
    weights_path: Path = typer.Option(
        None, "--weights", help="Checkpoint (env ALEXSEARCH_WEIGHTS)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(BATCH, "--batch-size", min=1),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Decode processes (default: by device and cores)."
    ),
    kind: str = typer.Option(
        None, help="FAISS kind: flat (exact), hnsw, ivfpq, ivfsq, auto [the index's, else flat]."
    ),
    max_memory: str = typer.Option(None, "--max-memory", help="Budget for --kind auto, e.g. 2G."),
    exclude: list[str] = typer.Option([], "--exclude", help="Glob of names/paths to skip."),
    hidden: bool = typer.Option(False, "--hidden", help="Also walk hidden files and folders."),
    max_megapixels: float = typer.Option(
        DEFAULT_MAX_MEGAPIXELS, "--max-megapixels", help="Refuse larger images."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of stopping."),
    commit_every: int = typer.Option(256, "--commit-every", min=1, help="Files per commit."),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (bf16 on GPUs and CPUs with native bf16; $ALEXSEARCH_PRECISION pins it), "
        "fp32, bf16.",
    ),
    space: str = typer.Option(
        None, "--space", help="whitened (learn it, the default) or paper (raw fc7 only)."
    ),
    space_dim: int = typer.Option(None, "--space-dim", help="Whitened dimensions [256]."),
    shard: str = typer.Option(
        None, "--shard", help="I/N: only shard I of N of the photos (by path; merge them)."
    ),
    train_only: bool = typer.Option(
        False, "--train-only", help="Index a sample and learn the IVF training shards share."
    ),
    sample: int = typer.Option(
        None, "--sample", min=1, help="Photos --train-only samples [50000]."
    ),
    trained: Path = typer.Option(
        None, "--trained", help="An index made with --train-only: add to its training."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Index photos: extract fc7 of every image into an index (incremental)."""
    from .. import api

    with RichProgress() as progress:
        summary = api.build_index(
            paths,
            index_dir,
            weights_path,
            device,
            kind,
            progress,
            max_memory=max_memory,
            batch_size=batch_size,
            workers=workers,
            exclude=exclude,
            hidden=hidden,
            max_megapixels=max_megapixels,
            wait=wait,
            commit_every=commit_every,
            precision=precision,
            space=space,
            space_dim=space_dim,
            shard=shard,
            train_only=train_only,
            sample=sample,
            trained=trained,
        )
    if summary is None:  # another rank under torchrun: rank 0 speaks for all
        return
    if as_json:
        print_json(asdict(summary))
        return
    rows = {
        "index": summary.index_dir + (f" (shard {summary.shard})" if summary.shard else ""),
        "added": summary.added,
        "updated": summary.updated,
        "moved": summary.moved,
        "deleted": summary.deleted,
        "unchanged": summary.unchanged,
        "failed (this run)": len(summary.failed),
        "in index": f"{summary.total_ok} ok, {summary.total_failed} failed",
        "kind": summary.kind,
        "precision": summary.precision,
        "space": summary.space,
        "weights": f"{summary.weights} ({summary.fingerprint})",
        "time": f"{summary.seconds:.1f} s"
        + (f", {summary.images_per_s:.1f} img/s extracted" if summary.extracted else ""),
    }
    if summary.training:
        rows["training"] = summary.training
    if summary.reused:
        rows["reused"] = f"{summary.reused} files' fc7 copied from the training's sample"
    if summary.labelled:
        rows["labelled"] = f"{summary.labelled} files given their top-5 classes (from fc7)"
    out.print(kv_table("index", rows))
    if summary.failed:
        out.print(failures_table(summary.failed))
    for p, why in summary.skipped:
        err.print(f"skipped {p}: {why}", highlight=False)
    if summary.labels_note:
        err.print(summary.labels_note, highlight=False, soft_wrap=True)


def merge(
    shards: list[Path] = typer.Argument(..., help="Shard indexes (index --shard I/N)."),
    index_dir: Path = typer.Option(None, "--index", help="The merged index [indexes/default]."),
    max_memory: str = typer.Option(None, "--max-memory", help="Budget for --kind auto, e.g. 2G."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of stopping."),
    on_disk: bool = typer.Option(
        None,
        "--on-disk/--in-memory",
        help="Join shards of one training into memory-mapped .ivfdata lists "
        "[on disk when they exceed --max-memory].",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Merge shard indexes into one (vectors carried over, never recomputed)."""
    from .. import api

    summary = api.merge_indexes(shards, index_dir, wait, max_memory, on_disk)
    if as_json:
        print_json(asdict(summary))
        return
    rows = {
        "index": summary.index_dir,
        "shards": ", ".join(summary.shards),
        "added": summary.added,
        "updated": summary.updated,
        "deleted": summary.deleted,
        "unchanged": summary.unchanged,
        "in index": f"{summary.total_ok} ok, {summary.total_failed} failed",
        "kind": summary.kind,
        "precision": summary.precision,
        "space": summary.space,
        "weights": f"{summary.weights} ({summary.fingerprint})",
        "training": summary.training,
        "codes": summary.codes,
        "time": f"{summary.seconds:.1f} s",
    }
    out.print(kv_table("merge", rows))


def query(
    images: list[Path] = typer.Argument(None, help="Query images (inside the index or not)."),
    k: int = typer.Option(
        None, "--k", min=1, help="Neighbours per query [6]; photos for --label alone [20]."
    ),
    index_dirs: list[Path] = typer.Option(
        None, "--index", help=INDEX_HELP + " Repeat it to answer over several (paper space)."
    ),
    weights_path: Path = typer.Option(None, "--weights", help="(default: the index's weights)"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep the query itself."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
    paths_only: bool = typer.Option(
        False, "--paths", help="Only the neighbours' paths, one a line (for xargs, viewers)."
    ),
    grid: Path = typer.Option(None, "--grid", help="Also draw query + neighbours to this PNG."),
    max_megapixels: float = typer.Option(DEFAULT_MAX_MEGAPIXELS, "--max-megapixels"),
    binary: bool = typer.Option(
        False, "--binary", help="Hamming k-NN over binary codes (alexsearch codes)."
    ),
    rerank: int = typer.Option(
        0, "--rerank", min=0, help="Re-rank a Hamming shortlist of N by exact fc7 distance."
    ),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (fp32 on a CPU, bf16 on a GPU), fp32, bf16."
    ),
    space: str = typer.Option(
        None, "--space", help="paper (L2 on raw fc7) or whitened [the index's: whitened]."
    ),
    expand: int = typer.Option(
        None, "--expand", min=0, help="Average the query with its top N, search again [0]."
    ),
    vectors: Path = typer.Option(
        None, "--vectors", help="Query with fc7 vectors instead (.npy, one row a query)."
    ),
    label: str = typer.Option(
        None,
        "--label",
        help="Only photos whose top-5 classes match WORD: a class name or synonym "
        "('tabby cat'), its last word ('cat'), or a synset id (n02123045). Alone: those "
        "photos, most probable first. Names only: no WordNet hierarchy is installed "
        "('dog' does not find the breeds).",
    ),
    min_prob: float = typer.Option(
        0.0, "--min-prob", min=0.0, max=1.0, help="With --label: at least this probability."
    ),
) -> None:
    """Find the k indexed photos that look most like each query image (or, with --label
    alone, the photos of a class)."""
    from .. import api
    from ..errors import UserError

    if vectors is not None:
        images = _load_vectors(vectors)
    elif not images and label is None:
        raise UserError("give query images (or --vectors FILE.npy, or --label WORD)")
    several = bool(index_dirs) and len(index_dirs) > 1
    if several and label is not None:
        raise UserError("--label answers over one index: merge the indexes first")
    index_dir = index_dirs[0] if index_dirs else None
    if vectors is None and not images:  # --label WORD alone
        if binary or rerank or grid is not None:
            raise UserError("--label alone lists photos: --binary, --rerank and --grid need images")
        with api.open_index(index_dir, weights_path, device, max_megapixels, precision) as ix:
            found = ix.query_label(label, k or 20, min_prob)
        if as_json:
            print_json(found.to_dict())
        else:
            print_label_result(found, paths_only)
        return
    if several:
        opened = api.open_indexes(index_dirs, weights_path, device, max_megapixels, precision)
        with opened as ix:
            results = ix.query(images, k or 6, binary, rerank, include_self, space, expand)
    else:
        with api.open_index(index_dir, weights_path, device, max_megapixels, precision) as ix:
            results = ix.query(
                images, k or 6, binary, rerank, include_self, space, expand, label, min_prob
            )
    if grid is not None and any(not r.error for r in results):
        save_grid(results, grid)
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        print_results(results, hamming=binary and not rerank, paths_only=paths_only)
        if grid is not None and not paths_only:
            out.print(f"grid written to {grid}", highlight=False)
    bad = [r for r in results if r.error]
    for r in bad:
        err.print(f"error: {r.query}: {r.error}", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(2)


def _load_vectors(path: Path):
    import numpy as np

    from ..errors import UserError

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"--vectors {path}: not a readable .npy array ({e})") from None


def info(
    weights_path: Path = typer.Option(None, "--weights", help="Describe this checkpoint."),
    index_dir: Path = typer.Option(None, "--index", help="Describe this index."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Describe a checkpoint (--weights) or an index (--index, the default index otherwise)."""
    if weights_path is not None:
        from ..weights import checkpoint

        desc = {"weights": str(weights_path), **checkpoint.load(weights_path).describe()}
        if as_json:
            print_json(desc)
        else:
            out.print(kv_table(f"weights {weights_path}", desc))
        return
    from .. import api

    with api.open_index(index_dir) as ix:
        desc = ix.info()
    if as_json:
        print_json(desc)
        return
    failures = desc.pop("failures")
    out.print(kv_table(f"index {desc['index']}", desc))
    if failures:
        out.print(failures_table([(f["path"], f["reason"]) for f in failures]))
