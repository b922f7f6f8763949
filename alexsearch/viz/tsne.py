"""t-SNE maps of an index: PCA to 50, then t-SNE (openTSNE, or scikit-learn's), drawn
as points coloured by folder or as thumbnails snapped to a grid (`snap_to_grid` says
which cell each photo took)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError
from ..images.folders import label_of
from ..index.catalogue import Catalogue
from ..index.manifest import open_existing
from ..progress import Progress
from .draw import INK, MUTED, WHITE, colour, fit_text, font, load_tile, missing_tile

TSNE_METHODS = ("opentsne", "sklearn")
DEFAULT_TSNE = "opentsne"  # 2-6x faster than scikit-learn at 10k points (bench/tsne.py)


def pca50(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """PCA to at most 50 dimensions (t-SNE's customary first step: denoises, speeds kNN)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, np.float32)
    n_comp = min(50, x.shape[0], x.shape[1])
    if n_comp < 2 or x.shape[1] <= n_comp:
        return x
    solver = "randomized" if x.shape[0] > 500 else "full"
    return PCA(n_comp, svd_solver=solver, random_state=seed).fit_transform(x).astype(np.float32)


def _perplexity(n: int, wanted: float) -> float:
    return float(max(1.0, min(wanted, (n - 1) / 3)))


def tsne_2d(
    x: np.ndarray,
    method: str = DEFAULT_TSNE,
    threads: int | None = None,
    seed: int = 0,
    perplexity: float = 30.0,
    progress: Progress | None = None,
) -> np.ndarray:
    """2-D t-SNE of the rows of x. progress(stage, done, total) reports the optimisation
    (openTSNE only; scikit-learn gives no callback, so it reports start and end)."""
    n = len(x)
    if n < 4:
        raise UserError(f"t-SNE needs at least 4 images; got {n}")
    # Small sets: one thread. Per-iteration thread barriers cost more than the work below a
    # few thousand points, and far more on a busy machine (72 points: 1 s vs 28 s, 2 threads).
    threads = threads or (1 if n < 2000 else os.cpu_count() or 1)
    perp = _perplexity(n, perplexity)
    report = progress or (lambda *a: None)
    if method == "opentsne":
        report("affinities", 0, None)  # the import alone takes seconds
        from openTSNE import TSNE

        ee, it, every = 250, 500, 10
        done = [0]

        def tick(iteration, error, embedding):
            done[0] += every
            report("optimising", min(done[0], ee + it), ee + it)
            return False

        emb = TSNE(
            perplexity=perp,
            early_exaggeration_iter=ee,
            n_iter=it,
            n_jobs=threads,
            random_state=seed,
            callbacks=tick,
            callbacks_every_iters=every,
            verbose=False,
        ).fit(np.asarray(x, np.float64))
        report("optimising", ee + it, ee + it)
        return np.asarray(emb, np.float64)
    if method == "sklearn":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        report("optimising", 0, 1)
        # n_jobs covers only the neighbour search; the gradient runs on OpenMP's own threads
        with threadpool_limits(threads):
            y = TSNE(
                perplexity=perp, init="pca", learning_rate="auto", n_jobs=threads,
                random_state=seed,
            ).fit_transform(np.asarray(x, np.float32))  # fmt: skip
        report("optimising", 1, 1)
        return np.asarray(y, np.float64)
    raise UserError(f"unknown t-SNE method {method!r}; choose from {', '.join(TSNE_METHODS)}")


@dataclass
class IndexMap:
    """An index's images and their 2-D t-SNE positions."""

    ids: np.ndarray
    paths: list[str]
    thumbs: list[bytes]
    coords: np.ndarray  # (n, 2)
    index: str = ""  # the index folder it maps

    @property
    def labels(self) -> list[str]:
        return [label_of(p) for p in self.paths]


def index_tsne(
    index, method: str = DEFAULT_TSNE, threads=None, seed: int = 0, progress: Progress | None = None
):
    """PCA 50 + t-SNE of every ok vector in an index (read-only)."""
    d, manifest = open_existing(index)
    cat = Catalogue(d / "catalogue.sqlite", readonly=True)
    try:
        ok = cat.ok_files(manifest.dimension)
    finally:
        cat.close()
    if progress:
        progress("PCA to 50", 0, None)
    coords = tsne_2d(pca50(ok.vectors, seed), method, threads, seed, progress=progress)
    return IndexMap(ok.ids, ok.paths, ok.thumbs, coords, str(d))


def _unit(coords: np.ndarray) -> np.ndarray:
    """Coordinates scaled into [0, 1] on both axes together (keeps the aspect ratio)."""
    c = np.asarray(coords, np.float64)
    lo = c.min(0)
    span = float((c.max(0) - lo).max()) or 1.0
    u = (c - lo) / span
    return u + (1 - u.max(0)) / 2  # centre the shorter axis


def scatter(
    coords: np.ndarray, labels: Sequence[str], size: int = 900, title: str = ""
) -> Image.Image:
    """Points coloured by label, with a legend (label and count) to the right."""
    names = sorted(set(labels), key=lambda s: (-list(labels).count(s), s))
    index = {name: i for i, name in enumerate(names)}
    ss = 2  # draw at twice the size, then downsample: smooth dots without matplotlib
    n = len(coords)
    radius = 4 if n <= 1000 else 3 if n <= 5000 else 2 if n <= 20000 else 1.5
    legend_rows = min(len(names), 40)
    f = font(13)
    head = 34 if title else 10
    plot = size - 20
    width, height = size + 230, max(size + head - 10, head + 22 * legend_rows + 40)
    big = Image.new("RGB", (width * ss, height * ss), WHITE)
    d = ImageDraw.Draw(big)
    u = _unit(coords)
    x = (10 + u[:, 0] * plot) * ss
    y = (head + (1 - u[:, 1]) * plot) * ss
    order = np.random.default_rng(0).permutation(n)  # no class painted over all the others
    r = radius * ss
    for i in order:
        d.ellipse((x[i] - r, y[i] - r, x[i] + r, y[i] + r), fill=colour(index[labels[i]]))
    img = big.resize((width, height), Image.LANCZOS)
    d = ImageDraw.Draw(img)
    if title:
        d.text((10, 8), title, fill=INK, font=font(15))
    counts = {name: 0 for name in names}
    for lab in labels:
        counts[lab] += 1
    lx, ly = size + 10, head
    for name in names[:legend_rows]:
        d.rectangle((lx, ly + 3, lx + 12, ly + 15), fill=colour(index[name]))
        d.text((lx + 20, ly), fit_text(d, f"{name} ({counts[name]})", f, 190), fill=INK, font=f)
        ly += 22
    if len(names) > legend_rows:
        d.text((lx, ly), f"… {len(names) - legend_rows} more labels", fill=MUTED, font=f)
    return img


def snap_to_grid(coords: np.ndarray, side: int, exact_up_to: int = 3000) -> np.ndarray:
    """A distinct cell (row-major index into side x side) for each point, near its t-SNE
    position: an optimal assignment (scipy's linear_sum_assignment) up to `exact_up_to`
    points, a greedy nearest-free-cell search beyond (the assignment is cubic)."""
    n = len(coords)
    if n > side * side:
        raise ValueError(f"{n} points do not fit a {side}x{side} grid")
    u = _unit(coords) * (side - 1)  # (x, y) in cell units; row 0 at the top
    pos = np.stack([(side - 1) - u[:, 1], u[:, 0]], axis=1)  # (row, col)
    if n <= exact_up_to:
        from scipy.optimize import linear_sum_assignment
        from scipy.spatial.distance import cdist

        rr, cc = np.divmod(np.arange(side * side), side)
        cells = np.stack([rr, cc], axis=1).astype(np.float64)
        _, cell = linear_sum_assignment(cdist(pos, cells, "sqeuclidean"))
        return cell.astype(np.int64)
    taken = np.zeros((side, side), bool)
    out = np.empty(n, np.int64)
    for i in np.random.default_rng(0).permutation(n):
        pr, pc = pos[i]
        r0, c0 = int(round(pr)), int(round(pc))
        rad = 0
        while True:
            a, b = max(0, r0 - rad), min(side, r0 + rad + 1)
            c, e = max(0, c0 - rad), min(side, c0 + rad + 1)
            free = np.argwhere(~taken[a:b, c:e])
            if len(free):
                free = free + (a, c)
                best = free[np.argmin(((free - (pr, pc)) ** 2).sum(1))]
                taken[best[0], best[1]] = True
                out[i] = best[0] * side + best[1]
                break
            rad += 1
    return out


def thumbnail_map(
    coords: np.ndarray,
    paths: Sequence[str],
    thumbs: Sequence[bytes] | None = None,
    tile: int = 64,
) -> Image.Image:
    """Every image at a grid cell near its t-SNE position (the paper-era 't-SNE grid')."""
    n = len(coords)
    side = max(1, math.ceil(math.sqrt(n)))
    cells = snap_to_grid(coords, side)
    img = Image.new("RGB", (side * tile, side * tile), WHITE)
    thumbs = thumbs or [b""] * n
    for i, cell in enumerate(cells):
        r, c = divmod(int(cell), side)
        t = load_tile(paths[i], tile, thumbs[i]) if tile > 32 else None
        if t is None:
            t = load_tile("", tile, thumbs[i]) or missing_tile(tile)
        img.paste(t, (c * tile, r * tile))
    return img


def scatter_picture(m: IndexMap, size: int = 900, method: str = DEFAULT_TSNE):
    """The map as points coloured by folder, titled with what it shows."""
    title = f"t-SNE of {len(m.paths)} images in {m.index} ({method})"
    return scatter(m.coords, m.labels, size, title)


def thumbnail_picture(m: IndexMap, max_images: int = 2500, tile: int = 64, seed: int = 0):
    """(picture, images drawn): thumbnails on a grid by position, at most `max_images`
    of them (a fixed random sample beyond)."""
    keep = np.arange(len(m.paths))
    if len(keep) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), max_images, False))
    img = thumbnail_map(
        m.coords[keep], [m.paths[i] for i in keep], [m.thumbs[i] for i in keep], tile
    )
    return img, len(keep)
