"""`alexsearch weights init|import|fetch`: make, import and download network weights."""

from __future__ import annotations

from pathlib import Path

import typer

from .render import RichProgress, kv_table, out, print_json


def weights_init(
    out_path: Path = typer.Option(..., "--out", help="Where to write the checkpoint."),
    classes: int = typer.Option(1000, "--classes", help="Number of output classes (fc8)."),
    seed: int = typer.Option(0, help="Random seed for the paper's N(0, 0.01) init."),
) -> None:
    """Write an untrained, paper-initialised two-tower checkpoint."""
    from ..weights import checkpoint

    ckpt = checkpoint.init_checkpoint(classes, seed)
    checkpoint.save(ckpt, out_path)
    out.print(
        f"wrote {out_path} ({ckpt.arch.name}, {classes} classes, fingerprint {ckpt.fingerprint})"
    )


def weights_import(
    file: Path = typer.Argument(..., help="A .caffemodel (V1 or V2) or torchvision .pth."),
    out_path: Path = typer.Option(
        None, "--out", help="Where to write the checkpoint (default: FILE with .ckpt)."
    ),
    mean: Path = typer.Option(None, "--mean", help="Caffe mean image (.binaryproto, BGR)."),
    labels: Path = typer.Option(None, "--labels", help="Class names, one per line."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Import published weights (Caffe's bvlc_alexnet, torchvision's alexnet)."""
    from ..weights import importers

    target, ckpt = importers.import_to(file, out_path, mean, labels)
    _report_weights(target, ckpt, as_json)


def weights_fetch(
    name: str = typer.Argument(..., help="bvlc (Caffe's bvlc_alexnet) or torchvision."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Download published weights, verify the checksum, import, make them the default."""
    from ..weights import fetch

    with RichProgress() as progress:
        path, ckpt = fetch.fetch(fetch.source_named(name), progress)
    _report_weights(path, ckpt, as_json, default=True)


def _report_weights(path: Path, ckpt, as_json: bool, default: bool = False) -> None:
    desc = {"weights": str(path), **ckpt.describe()}
    if default:
        desc["default"] = True
    if as_json:
        print_json(desc)
        return
    keys = ("architecture", "classes", "input_size", "channel_order", "geometry")
    rows = {k: desc[k] for k in keys}
    rows.update({k: v for k, v in ckpt.meta.items() if isinstance(v, str)})
    rows["fingerprint"] = ckpt.fingerprint
    out.print(kv_table(f"wrote {path}", rows))
    if default:
        out.print("now the default weights of `alexsearch index` and `alexsearch query`")
