"""`alexsearch viz kernels|neighbors|tsne|curves`: the paper's pictures."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from ..images.files import DEFAULT_MAX_MEGAPIXELS
from .render import RichProgress, err, out, print_json, save_grid, save_png


def viz_kernels(
    weights_path: Path = typer.Option(
        None, "--weights", help="Checkpoint (env ALEXSEARCH_WEIGHTS)."
    ),
    out_path: Path = typer.Option(Path("kernels.png"), "--out", help="PNG to write."),
    scale: int = typer.Option(5, "--scale", min=1, max=64, help="Pixels per kernel pixel."),
) -> None:
    """The conv1 kernels as RGB tiles, tower 1 above tower 2 (the paper's Fig. 3)."""
    from ..viz.kernels import kernels_of_weights

    save_png(kernels_of_weights(weights_path, scale), out_path)


def viz_neighbors(
    images: list[Path] = typer.Argument(..., help="Query images."),
    out_path: Path = typer.Option(..., "--out", help="PNG to write."),
    k: int = typer.Option(6, "--k", min=1, help="Neighbours per query."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    weights_path: Path = typer.Option(None, "--weights", help="(default: the index's weights)"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep the query itself."),
    max_megapixels: float = typer.Option(DEFAULT_MAX_MEGAPIXELS, "--max-megapixels"),
) -> None:
    """One row per query image: the query, then its k nearest indexed photos (Fig. 4)."""
    from .. import api

    with api.open_index(index_dir, weights_path, device, max_megapixels) as ix:
        results = ix.query(images, k, include_self=include_self)
    bad = [r for r in results if r.error]
    for r in bad:
        err.print(f"error: {r.query}: {r.error}", highlight=False, soft_wrap=True)
    if len(bad) < len(results):
        save_grid(results, out_path)
        out.print(f"wrote {out_path}", highlight=False)
    if bad:
        raise typer.Exit(2)


def viz_tsne(
    out_path: Path = typer.Option(..., "--out", help="PNG to write."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    thumbnails: bool = typer.Option(
        False, "--thumbnails", help="Images snapped to a grid by position, not a scatter."
    ),
    method: str = typer.Option("opentsne", help="opentsne (faster) or sklearn."),
    tile: int = typer.Option(64, "--tile", min=8, max=512, help="Thumbnail size in pixels."),
    max_images: int = typer.Option(
        2500, "--max-images", min=1, help="Thumbnail map: at most this many (a random sample)."
    ),
    size: int = typer.Option(900, "--size", min=200, max=8000, help="Scatter size in pixels."),
    threads: int = typer.Option(
        None, "--threads", min=1, help="(default: 1 below 2,000 images, else all cores)"
    ),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Also print the 2-D positions."),
) -> None:
    """t-SNE map of an index (PCA to 50, then t-SNE), coloured by parent folder."""
    import time

    from ..viz import tsne

    if method not in tsne.TSNE_METHODS:
        raise UserError(f"unknown --method {method!r}; choose from {', '.join(tsne.TSNE_METHODS)}")
    t0 = time.perf_counter()
    with RichProgress() as progress:
        m = tsne.index_tsne(index_dir, method, threads, seed, progress)
    t_embed = time.perf_counter() - t0
    if thumbnails:
        with err.status("placing thumbnails"):
            img, shown = tsne.thumbnail_picture(m, max_images, tile, seed)
    else:
        img, shown = tsne.scatter_picture(m, size, method), len(m.paths)
    save_png(img, out_path, quiet=as_json)
    if as_json:
        print_json(
            [
                {"id": int(i), "path": p, "x": float(x), "y": float(y)}
                for i, p, (x, y) in zip(m.ids, m.paths, m.coords, strict=True)
            ]
        )
    else:
        out.print(
            f"{len(m.paths)} images{f' ({shown} drawn)' if shown < len(m.paths) else ''}, "
            f"{len(set(m.labels))} folders, "
            f"t-SNE ({method}) {t_embed:.1f} s, total {time.perf_counter() - t0:.1f} s",
            highlight=False,
        )


def viz_curves(
    run_dir: Path = typer.Argument(..., help="A training run folder (holds metrics.jsonl)."),
    out_path: Path = typer.Option(Path("curves.png"), "--out", help="PNG to write."),
) -> None:
    """Train/val top-1 and top-5 error and the learning rate (log) by epoch."""
    from ..viz.curves import curves, read_metrics

    rows = read_metrics(run_dir)
    save_png(curves(rows, f"training run {run_dir} ({len(rows)} epochs)"), out_path)
