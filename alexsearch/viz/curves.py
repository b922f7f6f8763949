"""Training curves: train and validation top-1/top-5 error and the learning rate (log
scale) by epoch, read from a run's metrics.jsonl."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import UserError
from .draw import GRID, INK, MUTED, PALETTE, WHITE, font, text_width

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
        d.text((x0 - 6 - text_width(d, lab, f), py - 7), lab, fill=INK, font=f)
    for t in xticks:
        px, _ = ax.px(t, ax.y[0])
        d.line((px, y1, px, y1 + 4), fill=INK)
        lab = f"{t:g}"
        d.text((px - text_width(d, lab, f) / 2, y1 + 6), lab, fill=INK, font=f)
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
