"""`alexsearch codes`: binary codes for an index (the paper's deep autoencoder)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .render import RichProgress, kv_table, out, print_json


def codes(
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    bits: int = typer.Option(
        None, "--bits", help="Code length, a multiple of 8 (256; a given --autoencoder's own)."
    ),
    epochs: int = typer.Option(50, "--epochs", min=1, help="Training epochs."),
    seed: int = typer.Option(0, "--seed", help="Random seed (init, batches, noise)."),
    autoencoder: Path = typer.Option(
        None, "--autoencoder", help="Use this saved autoencoder instead of training one."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of stopping."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Binary codes: train the paper's deep autoencoder on the index's fc7 vectors, encode
    every vector, and build a Hamming index (query --binary / --rerank use it)."""
    from .. import api

    with RichProgress() as progress:
        summary = api.build_codes(index_dir, bits, epochs, seed, autoencoder, wait, progress)
    if as_json:
        from dataclasses import asdict

        print_json(asdict(summary))
        return
    errs = summary.reconstruction_error
    rows = {
        "index": summary.index_dir,
        "codes": f"{summary.bits} bits = {summary.bytes_per_image} bytes per image (fc7: 16384)",
        "encoded": summary.encoded,
        "binary index": summary.kind,
        "autoencoder": summary.autoencoder,
        "features of": summary.fingerprint,
        "time": f"{summary.seconds:.1f} s ({summary.train_seconds:.1f} s training)",
    }
    out.print(kv_table("codes", rows))
    if errs:
        table = Table(
            title="reconstruction error from the binary codes (fraction of fc7 variance)",
            title_justify="left",
        )
        table.add_column("epoch", justify="right")
        table.add_column("error", justify="right")
        for i, e in enumerate(errs, 1):
            table.add_row(str(i), f"{e:.4f}")
        out.print(table)
