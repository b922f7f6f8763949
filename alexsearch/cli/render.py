"""What every command shares: the consoles, JSON and key-value tables, the failures
table, progress bars on stderr, and writing a PNG atomically."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..atomic import atomic_write

out = Console()
err = Console(stderr=True)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(str(k), str(v))
    return table


def progress_bar(label: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def failures_table(failed: list[tuple[str, str]]) -> Table:
    table = Table(title="files that could not be indexed", title_justify="left")
    table.add_column("path")
    table.add_column("reason")
    for path, why in failed:
        table.add_row(path, why)
    return table


class TrainProgress:
    """Draws a training run (alexsearch.train.Reporter) with rich on stderr."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
        )
        self.task = None
        self.phase = ""

    def _task(self, description: str, total: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, info="")
        else:
            self.bar.reset(self.task, total=total, description=description, info="")

    def stats(self, done: int, total: int) -> None:
        if self.phase != "stats":
            self.phase = "stats"
            self._task("mean & PCA", total)
        self.bar.update(self.task, completed=done)

    def epoch_start(self, epoch: int, epochs: int, batches: int, lr: float) -> None:
        self.phase = "epoch"
        self._task(f"epoch {epoch}/{epochs} lr {lr:g}", batches)
        self.batches = 0

    def batch(self, done: int, loss: float, img_per_s: float) -> None:
        self.batches += 1
        info = f"loss {loss:.4f}  {img_per_s:.1f} img/s"
        self.bar.update(self.task, completed=self.batches, info=info)

    def validating(self, batches: int) -> None:
        self.bar.update(self.task, info="validating...")

    def epoch_end(self, row: dict) -> None:
        self.bar.console.print(
            f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, train top-1 "
            f"{row['train_top1_err']:.3f}, val top-1 {row['val_top1_err']:.3f} top-5 "
            f"{row['val_top5_err']:.3f}, {row['img_per_s']:.1f} img/s, {row['seconds']:.0f} s",
            highlight=False,
        )

    def note(self, text: str) -> None:
        self.bar.console.print(text, highlight=False)

    def stop(self) -> None:
        if self.task is not None:
            self.bar.stop()


def save_png(img, path: Path, quiet: bool = False) -> None:
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    if not quiet:
        out.print(f"wrote {path} ({img.width}x{img.height})", highlight=False)


def save_grid(results, path: Path) -> None:
    from ..viz.neighbours import neighbour_grid

    rows = [(r.query, [(h.path, h.distance) for h in r.hits]) for r in results if not r.error]
    img = neighbour_grid(rows)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
