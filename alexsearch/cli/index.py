"""`alexsearch index`, `query` and `info`: build an index, search it, describe it."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from ..errors import UserError
from .render import err, failures_table, kv_table, out, print_json, progress_bar, save_grid


def _device(name: str):
    from ..net.devices import resolve_device

    return resolve_device(name)


def _load_model(weights_path, recorded: str | None = None, device: str = "cpu"):
    """(model, preprocess, fingerprint, path, layer) for the resolved weights."""
    from ..weights import checkpoint, locations

    path = locations.resolve(weights_path, recorded)
    ckpt = checkpoint.load(path)
    return ckpt.build(device), ckpt.preprocess, ckpt.fingerprint, path.resolve(), "fc7"


def index(
    paths: list[Path] = typer.Argument(..., help="Folders (searched recursively) or images."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    weights_path: Path = typer.Option(
        None, "--weights", help="Checkpoint (env ALEXSEARCH_WEIGHTS)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Decode processes (default: by device and cores)."
    ),
    kind: str = typer.Option("flat", help="FAISS kind: flat (exact), hnsw, ivfpq, ivfsq, auto."),
    max_memory: str = typer.Option(None, "--max-memory", help="Budget for --kind auto, e.g. 2G."),
    exclude: list[str] = typer.Option([], "--exclude", help="Glob of names/paths to skip."),
    hidden: bool = typer.Option(False, "--hidden", help="Also walk hidden files and folders."),
    max_megapixels: float = typer.Option(100.0, "--max-megapixels", help="Refuse larger images."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of stopping."),
    commit_every: int = typer.Option(256, "--commit-every", min=1, help="Files per commit."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Index photos: extract fc7 of every image into an index (incremental)."""
    import time

    from ..index import build, vectors
    from ..index import manifest as manifest_

    if kind not in vectors.KINDS:
        raise UserError(f"unknown --kind {kind!r}; choose from {', '.join(vectors.KINDS)}")
    idx = manifest_.resolve_dir(index_dir)
    recorded = None
    manifest = manifest_.read_manifest(idx) if idx.is_dir() else None
    if manifest:
        recorded = manifest["model"].get("weights")
    bar = progress_bar("indexing")
    task = None
    started = [0.0]

    def progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("extract", total=total, rate="")
            started[0] = time.perf_counter()
        rate = done / max(time.perf_counter() - started[0], 1e-9)
        bar.update(task, completed=done, rate=f"{rate:.1f} img/s")

    try:
        summary = build.run(
            paths,
            idx,
            # torch is imported only when a model is needed: a run with nothing to do is fast
            lambda: _load_model(weights_path, recorded, _device(device)),
            kind=kind,
            max_memory=_parse_bytes(max_memory),
            batch_size=batch_size,
            workers=workers,
            device=device,
            exclude=exclude,
            hidden=hidden,
            max_megapixels=max_megapixels,
            wait=wait,
            progress=progress,
            check_weights=_weights_differ(weights_path, manifest),
            commit_every=commit_every,
        )
    finally:
        if task is not None:
            bar.stop()
    if as_json:
        from dataclasses import asdict

        print_json(asdict(summary))
        return
    rows = {
        "index": summary.index_dir,
        "added": summary.added,
        "updated": summary.updated,
        "moved": summary.moved,
        "deleted": summary.deleted,
        "unchanged": summary.unchanged,
        "failed (this run)": len(summary.failed),
        "in index": f"{summary.total_ok} ok, {summary.total_failed} failed",
        "kind": summary.kind,
        "weights": f"{summary.weights} ({summary.fingerprint})",
        "time": f"{summary.seconds:.1f} s"
        + (f", {summary.images_per_s:.1f} img/s extracted" if summary.extracted else ""),
    }
    out.print(kv_table("index", rows))
    if summary.failed:
        out.print(failures_table(summary.failed))
    for p, why in summary.skipped:
        err.print(f"skipped {p}: {why}", highlight=False)


def _weights_differ(weights_path, manifest) -> bool:
    """Were weights named that may differ from the index's? (Checked before trusting them.)"""
    from ..index.manifest import weights_signature
    from ..weights.locations import WEIGHTS_ENV

    named = weights_path or os.environ.get(WEIGHTS_ENV)
    if not named or manifest is None:
        return False
    return weights_signature(named) != manifest["model"].get("weights_signature")


def _parse_bytes(text: str | None) -> int | None:
    if not text:
        return None
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().rstrip("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise UserError(f"--max-memory {text!r}: expected a size like 512M or 4G") from None


def query(
    images: list[Path] = typer.Argument(..., help="Query images (inside the index or not)."),
    k: int = typer.Option(6, "--k", min=1, help="Neighbours per query."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    weights_path: Path = typer.Option(None, "--weights", help="(default: the index's weights)"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep the query itself."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
    grid: Path = typer.Option(None, "--grid", help="Also draw query + neighbours to this PNG."),
    max_megapixels: float = typer.Option(100.0, "--max-megapixels"),
    binary: bool = typer.Option(
        False, "--binary", help="Hamming k-NN over binary codes (alexsearch codes)."
    ),
    rerank: int = typer.Option(
        0, "--rerank", min=0, help="Re-rank a Hamming shortlist of N by exact fc7 distance."
    ),
) -> None:
    """Find the k indexed photos that look most like each query image."""
    from ..index import search

    if rerank and rerank < k:
        raise UserError(f"--rerank {rerank} must be at least --k {k}")
    searcher = search.Searcher(index_dir)
    try:
        if binary or rerank:
            searcher.open_codes()  # before the model: no codes -> say so at once
        recorded = searcher.manifest["model"].get("weights")
        embed, fp, pre, wpath = search.embedder(weights_path, recorded, device, max_megapixels)
        searcher.check_model(fp, wpath, pre)
        paths = [str(i) for i in images]
        results = search.query(searcher, embed, paths, k, include_self, binary, rerank)
    finally:
        searcher.close()
    if grid is not None:
        save_grid(results, grid)
    if as_json:
        print_json(search.result_dicts(results))
    else:
        for r in results:
            table = Table(title=f"query {r.query}", title_justify="left")
            table.add_column("rank", justify="right")
            table.add_column("distance", justify="right")
            table.add_column("path")
            if binary and not rerank:
                table.columns[1].header = "Hamming bits"
            for h in r.hits:
                dist = str(h.distance) if isinstance(h.distance, int) else f"{h.distance:.3f}"
                table.add_row(str(h.rank), dist, h.path)
            if r.error:
                err.print(f"[red]error:[/red] {r.query}: {r.error}", highlight=False)
            else:
                out.print(table)
        if grid is not None:
            out.print(f"grid written to {grid}")
    bad = [r for r in results if r.error]
    if bad:
        if as_json:
            for r in bad:
                err.print(f"error: {r.query}: {r.error}", highlight=False)
        raise typer.Exit(2)


def info(
    weights_path: Path = typer.Option(None, "--weights", help="Describe this checkpoint."),
    index_dir: Path = typer.Option(None, "--index", help="Describe this index."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Describe a checkpoint (--weights) or an index (--index, the default index otherwise)."""
    from ..index import manifest as manifest_

    if weights_path is not None:
        from ..weights import checkpoint

        desc = {"weights": str(weights_path), **checkpoint.load(weights_path).describe()}
        if as_json:
            print_json(desc)
        else:
            out.print(kv_table(f"weights {weights_path}", desc))
        return
    desc = manifest_.describe(index_dir)
    if as_json:
        print_json(desc)
        return
    failures = desc.pop("failures")
    out.print(kv_table(f"index {desc['index']}", desc))
    if failures:
        out.print(failures_table([(f["path"], f["reason"]) for f in failures]))
