"""`alexsearch classify`: each image's top-5 classes with their probabilities."""

from __future__ import annotations

from pathlib import Path

import typer

from ..images.files import DEFAULT_MAX_MEGAPIXELS
from .render import err, print_classifications, print_json


def classify(
    images: list[Path] = typer.Argument(..., help="Images to classify."),
    weights_path: Path = typer.Option(
        None, "--weights", help="Checkpoint (env ALEXSEARCH_WEIGHTS; else the fetched default)."
    ),
    ten_crop: bool = typer.Option(
        False, "--ten-crop", help="Average the softmax over the paper's ten crops (torch)."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (fp32 on a CPU, bf16 on a GPU), fp32, bf16."
    ),
    max_megapixels: float = typer.Option(DEFAULT_MAX_MEGAPIXELS, "--max-megapixels"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
) -> None:
    """Top-5 classes of each image, with their probabilities (the centre crop, as the
    index stores them, or the paper's ten-crop average)."""
    from .. import api

    results = api.classify(images, weights_path, ten_crop, device, max_megapixels, precision)
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        print_classifications(results)
    bad = [r for r in results if r.error]
    for r in bad:
        err.print(f"error: {r.image}: {r.error}", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(2)
