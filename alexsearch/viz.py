"""Pictures: first-layer kernels (paper Fig. 3), neighbour grids (Fig. 4), t-SNE maps and
training curves. Everything is drawn with Pillow; each function returns a PIL image and
the caller saves it (atomically).

Layout helpers (`kernel_tile_box`, `snap_to_grid`) are public so a caller (or a test) can
find what was drawn where without reading pixels back.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .errors import UserError

WHITE = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)
MUTED = (120, 120, 120)

# Tableau's categorical palette (matplotlib's tab10/tab20 order): distinguishable, familiar.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip


def font(size: int = 12) -> ImageFont.ImageFont:
    """DejaVu Sans when the system has it, else Pillow's built-in font."""
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def colour(i: int) -> tuple[int, int, int]:
    """The i-th category colour: the palette, then golden-ratio hues beyond it."""
    if i < len(PALETTE):
        return PALETTE[i]
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_w(draw: ImageDraw.ImageDraw, text: str, f) -> int:
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=f)
    return int(x1 - x0)


def _fit_text(draw, text: str, f, width: int) -> str:
    """`text` shortened with an ellipsis in the middle until it fits `width` pixels."""
    if _text_w(draw, text, f) <= width:
        return text
    keep = len(text)
    while keep > 3:
        keep -= 1
        short = text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
        if _text_w(draw, short, f) <= width:
            return short
    return "…"


# --------------------------------------------------------------------------- kernels (Fig. 3)


@dataclass(frozen=True)
class KernelLayout:
    """Where each conv1 kernel's tile sits: towers stacked, each a block of rows x cols."""

    n: int
    towers: int
    size: int  # kernel side (11)
    scale: int = 5
    cols: int = 8
    gap: int = 2
    tower_gap: int = 14
    margin: int = 8

    @property
    def per_tower(self) -> int:
        return self.n // self.towers

    @property
    def rows(self) -> int:
        return math.ceil(self.per_tower / self.cols)

    @property
    def tile(self) -> int:
        return self.size * self.scale

    def block_height(self) -> int:
        return self.rows * self.tile + (self.rows - 1) * self.gap

    def image_size(self) -> tuple[int, int]:
        w = 2 * self.margin + self.cols * self.tile + (self.cols - 1) * self.gap
        h = 2 * self.margin + self.towers * self.block_height()
        return w, h + (self.towers - 1) * self.tower_gap

    def box(self, index: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive, of kernel `index` (output channel of conv1)."""
        tower, j = divmod(index, self.per_tower)
        r, c = divmod(j, self.cols)
        x0 = self.margin + c * (self.tile + self.gap)
        y0 = (
            self.margin
            + tower * (self.block_height() + self.tower_gap)
            + r * (self.tile + self.gap)
        )
        return x0, y0, x0 + self.tile, y0 + self.tile


def conv1_kernels(state_dict: dict, channel_order: str = "RGB") -> np.ndarray:
    """conv1's kernels as (n, k, k, 3) float RGB; a clear error when there are none."""
    w = state_dict.get("conv1.weight")
    if w is None:
        raise UserError("the checkpoint has no conv1.weight: nothing to draw")
    shape = tuple(w.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[0] < 1:
        raise UserError(
            f"conv1.weight has shape {'x'.join(map(str, shape))}; expected N x 3 x K x K "
            "(RGB kernels)"
        )
    k = w.detach().float().cpu().numpy().transpose(0, 2, 3, 1)  # n, k, k, channels
    if channel_order.upper() == "BGR":  # Caffe-imported weights see BGR input
        k = k[..., ::-1]
    return np.ascontiguousarray(k)


def stretch(kernel: np.ndarray) -> np.ndarray:
    """One tile's contrast stretch to 0..255 over all its channels (a flat kernel: grey)."""
    lo, hi = float(kernel.min()), float(kernel.max())
    if hi - lo < 1e-12:
        return np.full(kernel.shape, 128, np.uint8)
    return np.round((kernel - lo) / (hi - lo) * 255).astype(np.uint8)


def kernel_layout(kernels: np.ndarray, towers: int, scale: int = 5) -> KernelLayout:
    n = len(kernels)
    towers = towers if towers > 1 and n % towers == 0 else 1
    return KernelLayout(n=n, towers=towers, size=kernels.shape[1], scale=scale)


def kernel_grid(kernels: np.ndarray, towers: int = 2, scale: int = 5) -> Image.Image:
    """The paper's Fig. 3: each kernel a contrast-stretched RGB tile, nearest-neighbour
    upscaled; tower 1's kernels in the upper block, tower 2's below, a gap between."""
    lay = kernel_layout(kernels, towers, scale)
    img = Image.new("RGB", lay.image_size(), WHITE)
    for i, k in enumerate(kernels):
        tile = Image.fromarray(stretch(k), "RGB").resize((lay.tile, lay.tile), Image.NEAREST)
        img.paste(tile, lay.box(i)[:2])
    return img


def kernels_picture(ckpt, scale: int = 5) -> Image.Image:
    """kernel_grid of a loaded weights.Checkpoint, towers and channel order taken from it."""
    k = conv1_kernels(ckpt.state_dict, ckpt.preprocess.channel_order)
    return kernel_grid(k, ckpt.arch.towers, scale)


# --------------------------------------------------------------------------- images


def load_tile(path: str, size: int, thumb: bytes | None = None) -> Image.Image | None:
    """`path` centre-cropped to size x size (as the network sees it), else the stored 32x32
    thumbnail upscaled, else None."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale, fast
            im = ImageOps.exif_transpose(im).convert("RGB")
            return ImageOps.fit(im, (size, size), Image.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError):
        pass
    if thumb:
        side = int(round(math.sqrt(len(thumb) / 3)))
        small = Image.frombytes("RGB", (side, side), thumb)
        return small.resize((size, size), Image.BILINEAR)
    return None


def _missing_tile(size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), (200, 200, 200))
    d = ImageDraw.Draw(tile)
    d.line((0, 0, size, size), fill=(150, 150, 150), width=2)
    d.line((0, size, size, 0), fill=(150, 150, 150), width=2)
    return tile


# --------------------------------------------------------------------------- neighbours (Fig. 4)


def neighbour_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, float]]]], tile: int = 128
) -> Image.Image:
    """One row per query: the query (framed), a gap, then its neighbours nearest first, each
    captioned with its distance and file name. Files that cannot be read show a cross."""
    if not rows:
        raise UserError("no query could be searched: nothing to draw")
    k = max((len(n) for _, n in rows), default=0)
    pad, sep, cap = 6, 18, 34
    f, fb = font(11), font(12)
    width = pad * 2 + sep + (k + 1) * tile + k * pad
    height = pad + len(rows) * (tile + cap + pad)
    img = Image.new("RGB", (width, height), WHITE)
    d = ImageDraw.Draw(img)
    for r, (query, hits) in enumerate(rows):
        y = pad + r * (tile + cap + pad)
        cells = [(query, None)] + list(hits)
        for c, (path, dist) in enumerate(cells):
            x = pad + c * (tile + pad) + (sep if c else 0)
            t = load_tile(path, tile) or _missing_tile(tile)
            img.paste(t, (x, y))
            if c == 0:
                d.rectangle(
                    (x - 3, y - 3, x + tile + 2, y + tile + 2), outline=(214, 39, 40), width=3
                )
                first = "query"
            else:
                first = f"{c}. d = {dist:.3f}"
            d.text((x, y + tile + 4), first, fill=INK, font=fb)
            parts = Path(path).parts[-2:]  # the folder tells 000.jpg from 000.jpg
            name = _fit_text(d, "/".join(parts), f, tile)
            d.text((x, y + tile + 19), name, fill=MUTED, font=f)
    return img


# --------------------------------------------------------------------------- t-SNE


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
    progress: Callable[[str, int, int], None] | None = None,
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
        report("affinities", 0, 0)  # the import alone takes seconds
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


def folder_labels(paths: Sequence[str]) -> list[str]:
    """Each file's parent folder name: the label of a labelled photo folder."""
    return [Path(p).parent.name or "." for p in paths]


@dataclass
class IndexMap:
    """An index's images and their 2-D t-SNE positions."""

    ids: np.ndarray
    paths: list[str]
    thumbs: list[bytes]
    coords: np.ndarray  # (n, 2)

    @property
    def labels(self) -> list[str]:
        return folder_labels(self.paths)


def index_tsne(index, method: str = DEFAULT_TSNE, threads=None, seed: int = 0, progress=None):
    """PCA 50 + t-SNE of every ok vector in an index (read-only)."""
    from . import store

    d, manifest = store.open_existing(index)
    cat = store.Catalogue(d / "catalogue.sqlite", readonly=True)
    try:
        ids, vecs = cat.vectors(int(manifest["dimension"]))
        rows = {i: (p, t) for i, p, t in cat.labelled()}
    finally:
        cat.close()
    if progress:
        progress("PCA to 50", 0, 1)
    coords = tsne_2d(pca50(vecs, seed), method, threads, seed, progress=progress)
    paths = [rows[int(i)][0] for i in ids]
    thumbs = [rows[int(i)][1] or b"" for i in ids]
    return IndexMap(ids, paths, thumbs, coords)


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
        d.text((lx + 20, ly), _fit_text(d, f"{name} ({counts[name]})", f, 190), fill=INK, font=f)
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
            t = load_tile("", tile, thumbs[i]) or _missing_tile(tile)
        img.paste(t, (c * tile, r * tile))
    return img


# --------------------------------------------------------------------------- training curves


SERIES = (  # key, legend, colour, dashed
    ("train_top1_err", "train top-1", PALETTE[0], True),
    ("val_top1_err", "val top-1", PALETTE[0], False),
    ("train_top5_err", "train top-5", PALETTE[1], True),
    ("val_top5_err", "val top-5", PALETTE[1], False),
)


def read_metrics(run_dir) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl (or that file itself), one per epoch, by epoch.
    Unreadable lines are skipped; a repeated epoch (a resumed run) keeps its last row."""
    p = Path(run_dir)
    if not p.exists():
        raise UserError(f"{p}: no such run folder")
    f = p / "metrics.jsonl" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"{p}: no metrics.jsonl in this folder (is it a training run folder?)")
    by_epoch: dict[float, dict] = {}
    for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        ep = row.get("epoch", n)
        if isinstance(ep, (int, float)) and not isinstance(ep, bool):
            by_epoch[float(ep)] = {**row, "epoch": ep}
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    if not any(_num(r.get(k)) is not None for r in rows for k, *_ in SERIES + (("lr",),)):
        raise UserError(f"{f}: no epochs with errors or a learning rate to draw")
    return rows


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step + 1e-9)) + 1)]


@dataclass
class _Axes:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the plot area
    x: tuple[float, float]
    y: tuple[float, float]
    log_y: bool = False

    def px(self, xv: float, yv: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        lo, hi = self.y
        if self.log_y:
            yv, lo, hi = math.log10(yv), math.log10(lo), math.log10(hi)
        fx = (xv - self.x[0]) / ((self.x[1] - self.x[0]) or 1)
        fy = (yv - lo) / ((hi - lo) or 1)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)


def _frame(d, ax: _Axes, xticks, yticks, ylabels, title, f) -> None:
    x0, y0, x1, y1 = ax.box
    for t, lab in zip(yticks, ylabels, strict=True):
        _, py = ax.px(ax.x[0], t)
        d.line((x0, py, x1, py), fill=GRID)
        d.text((x0 - 6 - _text_w(d, lab, f), py - 7), lab, fill=INK, font=f)
    for t in xticks:
        px, _ = ax.px(t, ax.y[0])
        d.line((px, y1, px, y1 + 4), fill=INK)
        lab = f"{t:g}"
        d.text((px - _text_w(d, lab, f) / 2, y1 + 6), lab, fill=INK, font=f)
    d.rectangle(ax.box, outline=INK)
    d.text((x0, y0 - 22), title, fill=INK, font=font(14))
    d.text(((x0 + x1) / 2 - 18, y1 + 24), "epoch", fill=MUTED, font=f)


def _polyline(d, pts, fill, dashed: bool, width: int = 2, dash: float = 6.0) -> None:
    """A line through pts (dots at each point when there are few); dashes run on along the
    whole path, so many short segments still read as dashed."""
    if len(pts) <= 60:
        for px, py in pts:
            d.ellipse((px - 3, py - 3, px + 3, py + 3), fill=fill)
    if not dashed:
        if len(pts) > 1:
            d.line(pts, fill=fill, width=width, joint="curve")
        return
    walked = 0.0  # path length so far: on while (walked // dash) is even
    for (ax_, ay), (bx, by) in zip(pts, pts[1:], strict=False):
        length = math.hypot(bx - ax_, by - ay)
        t = 0.0
        while t < length:
            step = min(dash - walked % dash, length - t)
            if int(walked // dash) % 2 == 0:
                f0, f1 = t / length, (t + step) / length
                d.line(
                    (ax_ + (bx - ax_) * f0, ay + (by - ay) * f0, ax_ + (bx - ax_) * f1,
                     ay + (by - ay) * f1),
                    fill=fill, width=width,
                )  # fmt: skip
            t += step
            walked += step


def curves(rows: list[dict], title: str = "") -> Image.Image:
    """Two panels over epochs: top-1/top-5 error (train dashed, val solid, in %) and the
    learning rate on a log scale. A missing value is skipped in its own series only."""
    f = font(12)
    w, h = 1100, 460
    img = Image.new("RGB", (w, h), WHITE)
    d = ImageDraw.Draw(img)
    if title:
        d.text((16, 10), title, fill=INK, font=font(15))
    epochs = [float(r["epoch"]) for r in rows]
    xlo, xhi = min(epochs), max(epochs)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    xticks = [t for t in nice_ticks(xlo, xhi, 6) if xlo <= t <= xhi]

    # errors, in percent
    series = []
    for key, name, col, dashed in SERIES:
        pts = [(e, _num(r.get(key))) for e, r in zip(epochs, rows, strict=True)]
        pts = [(e, v * 100) for e, v in pts if v is not None]
        if pts:
            series.append((name, col, dashed, pts))
    ax = _Axes((70, 70, 600, 400), (xlo, xhi), (0.0, 100.0))
    if series:
        top = max(v for *_, pts in series for _, v in pts)
        yt = nice_ticks(0, max(top, 1e-6) * 1.05, 5)
        ax.y = (0.0, yt[-1])
        _frame(d, ax, xticks, yt, [f"{t:g}%" for t in yt], "error", f)
        for _name, col, dashed, pts in series:
            _polyline(d, [ax.px(e, v) for e, v in pts], col, dashed)
        ly = 78
        for name, col, dashed, pts in series:
            _polyline(d, [(ax.box[2] - 120, ly + 7), (ax.box[2] - 96, ly + 7)], col, dashed)
            d.text((ax.box[2] - 90, ly), f"{name} {pts[-1][1]:.1f}%", fill=INK, font=f)
            ly += 18
    else:
        _frame(d, ax, xticks, [], [], "error (no error values recorded)", f)

    # learning rate, log scale
    lrs = [(e, _num(r.get("lr"))) for e, r in zip(epochs, rows, strict=True)]
    lrs = [(e, v) for e, v in lrs if v is not None and v > 0]
    ax2 = _Axes((720, 70, 1070, 400), (xlo, xhi), (1e-4, 1e-1), log_y=True)
    if lrs:
        lo = 10 ** math.floor(math.log10(min(v for _, v in lrs)))
        hi = 10 ** math.ceil(math.log10(max(v for _, v in lrs)))
        if hi <= lo:
            hi = lo * 10
        ax2.y = (lo / 10**0.06, hi * 10**0.06)  # keep the line off the frame
        decades = [10.0**k for k in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
        _frame(d, ax2, xticks, decades, [f"{t:g}" for t in decades], "learning rate (log)", f)
        _polyline(d, [ax2.px(e, v) for e, v in lrs], PALETTE[2], False)
    else:
        _frame(d, ax2, xticks, [], [], "learning rate (none recorded)", f)
    return img
