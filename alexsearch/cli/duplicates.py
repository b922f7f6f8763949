"""`alexsearch duplicates`: groups of duplicate photos in an index, drawn, moved aside."""

from __future__ import annotations

from pathlib import Path

import typer

from .render import RichProgress, out, print_json, save_png

INDEX_HELP = "Index folder (default: indexes/default)."


def duplicates(
    index_dir: Path = typer.Option(None, "--index", help=INDEX_HELP),
    tier: str = typer.Option(
        "near",
        "--tier",
        help="Loosest tier shown: exact (same bytes), near (resized, re-encoded, cropped, "
        "framed...: the default, with exact), similar (another shot of the scene: all three).",
    ),
    threshold: float = typer.Option(
        None,
        "--threshold",
        help="fc7 cosine distance of that tier [whitened space: near 0.2, similar 0.6; "
        "paper: 0.05, 0.3].",
    ),
    space: str = typer.Option(
        None, "--space", help="fc7 space compared: whitened [the index's] or paper (raw fc7)."
    ),
    keep: str = typer.Option(
        "largest",
        "--keep",
        help="Which file of a group stays: largest (most pixels, then oldest), oldest, "
        "newest, smallest.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable groups."),
    grid: Path = typer.Option(None, "--grid", help="Draw each group as a row (keep first)."),
    move_to: Path = typer.Option(
        None, "--move-to", help="Move every file but each group's keep here (never deletes)."
    ),
) -> None:
    """Find duplicate photos: exact copies, near copies (and similar shots when asked)."""
    from .. import api

    with api.open_index(index_dir) as ix:
        with RichProgress() as progress:
            report = ix.duplicates(tier, threshold, keep, progress, space)
        if grid is not None and report.groups:
            from ..viz.duplicates import duplicate_grid

            save_png(duplicate_grid(report.groups), grid, quiet=as_json)
        moved = ix.move_duplicates(report, move_to) if move_to is not None else None
    if as_json:
        print_json({**report.to_dict(), **({"moves": moved.to_dict()} if moved else {})})
        return
    print_groups(report)
    if moved is not None and not moved.record:
        out.print("nothing to move", highlight=False)
    elif moved is not None:
        out.print(f"moved {moved.moved} files to {move_to}; record: {moved.record}",
                  highlight=False)  # fmt: skip
        for m in moved.moves:
            if m.skipped:
                out.print(f"left {m.source}: {m.skipped}", highlight=False)


def print_groups(report) -> None:
    """A table per group in a terminal; tab-separated rows (group, tier, role, distance,
    pHash bits, signal, path) when stdout is a pipe or a file."""
    from rich.table import Table

    if not report.groups:
        out.print(f"no duplicates among {report.files} photos ({', '.join(report.tiers)})",
                  highlight=False)  # fmt: skip
        return
    plain = not out.is_terminal
    for n, g in enumerate(report.groups, 1):
        table = Table(title=f"group {n}: {g.tier}", title_justify="left")
        for col in ("", "distance", "pHash bits", "signal", "path"):
            table.add_column(col, no_wrap=col == "path")
        for m in g.files:
            role = "keep" if m.path == g.keep else "dup"
            row = (role, f"{m.distance:.3f}", str(m.hash_distance), m.signal, m.path)
            if plain:
                print("\t".join((str(n), g.tier, *row)))
            else:
                table.add_row(*row)
        if not plain:
            out.print(table, highlight=False)
    dups = sum(len(g.files) - 1 for g in report.groups)
    summary = f"{len(report.groups)} groups, {dups} duplicates among {report.files} photos"
    if plain:
        print(f"# {summary}")
    else:
        out.print(summary, highlight=False)
