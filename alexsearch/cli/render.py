"""What every command shares: the consoles, JSON and key-value tables, the failures
table, the progress protocol drawn with rich, query results, and pictures written
atomically."""

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


def failures_table(failed: list[tuple[str, str]]) -> Table:
    table = Table(title="files that could not be indexed", title_justify="left")
    table.add_column("path")
    table.add_column("reason")
    for path, why in failed:
        table.add_row(path, why)
    return table


def figures_text(figures: dict) -> str:
    """img_per_s=41.23, loss=2.3026 -> 'img/s 41.2 · loss 2.303'."""
    parts = []
    for name, value in figures.items():
        label = name.replace("_per_s", "/s").replace("_", " ")
        parts.append(f"{label} {value:.4g}" if isinstance(value, float) else f"{label} {value}")
    return " · ".join(parts)


class RichProgress:
    """The library's progress protocol (alexsearch.progress) drawn on stderr: a bar per
    stage with its figures, count and ETA (a pulse while the total is unknown). A new
    stage replaces the ones before it, except stages named in `keep`, which stay and
    also print a line each time they advance (training's record of every epoch).

    Use as a context manager; nothing is drawn until the library first reports."""

    def __init__(self, keep: tuple[str, ...] = ()):
        self.keep = set(keep)
        self.bar = None
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int | None, **figures) -> None:
        if self.bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[figures]}"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
        text = figures_text(figures)
        if stage not in self.tasks:
            for name in [s for s in self.tasks if s not in self.keep]:
                self.bar.remove_task(self.tasks.pop(name))
            self.tasks[stage] = self.bar.add_task(stage, total=total, figures=text)
        self.bar.update(self.tasks[stage], completed=done, total=total, figures=text)
        if stage in self.keep:
            count = f"{done}/{total}" if total else str(done)
            line = f"{stage} {count}" + (f": {text}" if text else "")
            self.bar.console.print(line, highlight=False)

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_results(results, hamming: bool, paths_only: bool) -> None:
    """Query results: bare paths (--paths), a table per query in a terminal (the path's
    tail kept when it must be shortened: the file name is what a person needs), or
    plain tab-separated rows with whole paths when stdout is a pipe or a file."""
    good = [r for r in results if not r.error]
    if paths_only:
        for r in good:
            for h in r.hits:
                print(h.path)
        return
    labelled = any(h.label for r in good for h in r.hits)  # query IMAGE --label WORD
    if not out.is_terminal:
        for r in good:
            print(f"# query {r.query}")
            for h in r.hits:
                extra = f"{h.prob:.4f}\t{h.label}\t" if labelled else ""
                print(f"{h.rank}\t{_distance(h.distance)}\t{extra}{h.path}")
        return
    # what the rank and distance columns and borders leave (and prob and class)
    room = max(20, out.width - (50 if labelled else 26))
    for r in good:
        table = Table(title=f"query {r.query}", title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("Hamming bits" if hamming else "distance", justify="right")
        if labelled:
            table.add_column("prob", justify="right")
            table.add_column("class")
        table.add_column("path", no_wrap=True)
        for h in r.hits:
            path = h.path if len(h.path) <= room else "…" + h.path[-(room - 1) :]
            extra = [f"{h.prob:.4f}", h.label] if labelled else []
            table.add_row(str(h.rank), _distance(h.distance), *extra, path)
        out.print(table, highlight=False)


def print_label_result(found, paths_only: bool) -> None:
    """query --label WORD alone: the photos of the class, most probable first, as
    print_results draws neighbours (bare paths, a table, or tab-separated rows)."""
    if paths_only:
        for h in found.hits:
            print(h.path)
        return
    if not out.is_terminal:
        print(f"# label {found.word}: {', '.join(found.classes)}")
        for h in found.hits:
            print(f"{h.rank}\t{h.prob:.4f}\t{h.label}\t{h.path}")
    else:
        table = Table(title=f"label {found.word}: {', '.join(found.classes)}", title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("prob", justify="right")
        table.add_column("class")
        table.add_column("path", no_wrap=True)
        room = max(20, out.width - 40)
        for h in found.hits:
            path = h.path if len(h.path) <= room else "…" + h.path[-(room - 1) :]
            table.add_row(str(h.rank), f"{h.prob:.4f}", h.label, path)
        out.print(table, highlight=False)
    if not found.hits:
        err.print(f"no indexed photo has {found.word!r} among its top-5 classes", highlight=False)
    if found.unlabelled:
        err.print(
            f"{found.unlabelled} indexed photos have no labels yet: `alexsearch index` computes "
            "them from their stored fc7",
            highlight=False,
        )


def print_classifications(results) -> None:
    """classify: each image's top classes (a table in a terminal, else tab-separated)."""
    for r in results:
        if r.error:
            continue
        if not out.is_terminal:
            print(f"# image {r.image}")
            for i, (name, p) in enumerate(r.classes, 1):
                print(f"{i}\t{p:.4f}\t{name}")
            continue
        table = Table(title=f"{r.image} ({r.crops})", title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("prob", justify="right")
        table.add_column("class")
        for i, (name, p) in enumerate(r.classes, 1):
            table.add_row(str(i), f"{p:.4f}", name)
        out.print(table, highlight=False)


def _distance(d) -> str:
    return str(d) if isinstance(d, int) else f"{d:.3f}"


def save_png(img, path: Path, quiet: bool = False) -> None:
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    if not quiet:
        out.print(f"wrote {path} ({img.width}x{img.height})", highlight=False)


def save_grid(results, path: Path) -> None:
    """The paper's Fig. 4 for these results: each query beside its neighbours."""
    from ..viz.neighbours import neighbour_grid

    rows = [(r.query, [(h.path, h.distance) for h in r.hits]) for r in results if not r.error]
    img = neighbour_grid(rows)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
