"""`alexsearch train` and `alexsearch eval` (classification error; retrieval precision)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import UserError
from .render import RichProgress, err, kv_table, out, print_json


def train(
    data_dir: Path = typer.Option(
        None, "--data", help="DIR with train/ and val/ (ImageFolder: <split>/<class>/<image>)."
    ),
    val: Path = typer.Option(None, "--val", help="Validation folder, if not DIR/val."),
    out_dir: Path = typer.Option(None, "--out", help="Run folder (default: runs/<timestamp>)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this folder."),
    epochs: int = typer.Option(None, "--epochs", min=0, help="Epochs in all (paper: 90)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="(paper: 128)"),
    lr: float = typer.Option(None, "--lr", help="Initial learning rate (paper: 0.01)."),
    patience: int = typer.Option(
        None, "--patience", min=1, help="Epochs without a better val error before lr/10 (3)."
    ),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Decode processes (2 on a CPU; a GPU: one a core, <= 8)."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Use at most N images per split."),
    seed: int = typer.Option(None, "--seed", help="Seed for init, data order, augmentation (0)."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:0,cuda:1 (auto)."),
    stats_samples: int = typer.Option(
        None, "--stats-samples", min=1, help="Images for the mean & PCA (10000)."
    ),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile (off)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Train the paper's network on a labelled folder (SGD, plateau schedule, checkpoints)."""
    from ..train import config, loop

    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience,
        "workers": workers,
        "limit": limit,
        "seed": seed,
        "device": device,
        "stats_samples": stats_samples,
        "compile": compile_,
    }
    cfg = config.settings(data_dir, val, out_dir, resume, given)
    with RichProgress(keep=("epochs", "resumed after epoch")) as progress:
        result = loop.run(cfg, None if as_json else progress, resume=resume is not None)
    if result.rank != 0:  # under torchrun the first process speaks for all
        return
    if as_json:
        from dataclasses import asdict

        print_json(asdict(result))
        return
    rows = {
        "run": result.run_dir,
        "plan": result.plan,
        "images": f"{result.train_images} train, {result.val_images} val, {result.classes} classes",
        "epochs": result.epochs_done,
        "time": f"{result.seconds:.0f} s",
        "final lr": f"{result.lr:g}",
    }
    if result.last:
        rows["last epoch"] = (
            f"loss {result.last['train_loss']:.4f}, val top-1 {result.last['val_top1_err']:.3f},"
            f" top-5 {result.last['val_top5_err']:.3f}, {result.last['img_per_s']:.1f} img/s"
        )
    if result.best_epoch is not None:
        rows["best (centre crop)"] = (
            f"epoch {result.best_epoch}: val top-1 {result.best_val_top1_err:.3f}, "
            f"top-5 {result.best_val_top5_err:.3f}"
        )
    rows["checkpoints"] = f"{result.run_dir}/best.ckpt, {result.run_dir}/last.ckpt"
    rows["final weights"] = result.fingerprint
    if len(result.replica_fingerprints) > 1:
        same = len(set(result.replica_fingerprints)) == 1
        rows["replicas"] = f"{len(result.replica_fingerprints)}, " + (
            "identical" if same else "DIFFERENT: " + ", ".join(result.replica_fingerprints)
        )
    rows["skipped images"] = len(result.skipped)
    out.print(kv_table("train", rows))
    for p, why in result.skipped[:10]:
        err.print(f"skipped {p}: {why}", highlight=False)
    if len(result.skipped) > 10:
        err.print(f"... and {len(result.skipped) - 10} more unreadable images", highlight=False)


def eval_classification(
    ctx: typer.Context,
    data_dir: Path = typer.Option(
        None, "--data", help="Labelled folder (<class>/<image>); DIR/val if it has one."
    ),
    weights_path: Path = typer.Option(
        None, "--weights", help="Checkpoint (env ALEXSEARCH_WEIGHTS)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Decode processes (2 on a CPU; a GPU: one a core, <= 8)."
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32 (IEEE, as training validates), bf16 or auto."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate at most N images."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
) -> None:
    """Top-1/top-5 error on a labelled folder: centre crop and the paper's ten crops."""
    if ctx.invoked_subcommand is not None:
        return
    if data_dir is None:
        raise UserError("give --data DIR (a labelled folder), or use `alexsearch eval retrieval`")
    from ..evaluate import classification

    with RichProgress() as progress:
        result = classification.evaluate_weights(
            weights_path, data_dir, batch_size, workers, device, limit, progress, precision
        )
    if as_json:
        print_json(result.to_dict())
    else:
        table = Table(title=f"classification error on {result.folder}", title_justify="left")
        table.add_column("crops")
        table.add_column("top-1 error", justify="right")
        table.add_column("top-5 error", justify="right")
        table.add_row("centre", f"{result.centre_top1_err:.4f}", f"{result.centre_top5_err:.4f}")
        table.add_row(
            "ten-crop", f"{result.ten_crop_top1_err:.4f}", f"{result.ten_crop_top5_err:.4f}"
        )
        out.print(table)
        out.print(
            f"{result.images} images, classes matched {result.mapping}, "
            f"{len(result.skipped)} unreadable skipped",
            highlight=False,
        )
    for p, why in result.skipped:
        err.print(f"skipped {p}: {why}", highlight=False)


def eval_retrieval(
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    binary: bool = typer.Option(
        False, "--binary", help="Add 32-, 64- and 256-bit code rows (autoencoders trained here)."
    ),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Autoencoder epochs [50]."),
    rerank: int = typer.Option(
        0, "--rerank", min=0, help="With --binary: add a row re-ranking the top N by fc7 L2."
    ),
    max_queries: int = typer.Option(
        5000, "--max-queries", min=1, help="Sample this many query files when there are more."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the query sample and autoencoders."),
    expand: list[int] = typer.Option(
        None, "--expand", min=0, help="Rows for whitened + expansion by N (repeatable) [1]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
) -> None:
    """Leave-one-out precision@1/6/10 and mAP of an index, parent folder as label: a row
    per search space (paper L2, cosine, whitened, whitened + expansion) with bytes per
    image and query latency, beside a pixel-space baseline (L2 between 32x32 thumbnails)."""
    from ..evaluate import retrieval

    with RichProgress() as progress:
        res = retrieval.retrieval(
            index_dir,
            binary,
            epochs=epochs,
            rerank=rerank,
            max_queries=max_queries,
            seed=seed,
            progress=progress,
            expand=tuple(expand) if expand else None,
        )
    if as_json:
        print_json(res)
        return
    sample = f", a sample of {res['queries']}" if res["sampled"] else ""
    table = Table(
        title=f"retrieval, leave-one-out: {res['files']} files, {res['labels']} labels "
        f"(parent folders), {res['queries']} queries{sample}",
        title_justify="left",
    )
    table.add_column("method")
    table.add_column("bytes/image", justify="right")
    for k in ("precision@1", "precision@6", "precision@10", "mAP", "query ms"):
        table.add_column(k, justify="right")
    for r in res["rows"]:
        table.add_row(
            r["method"],
            str(r["bytes_per_image"]),
            *(f"{r[k]:.3f}" for k in ("precision@1", "precision@6", "precision@10", "mAP")),
            f"{r['query_ms']:.2f}" if "query_ms" in r else "",
        )
    out.print(table)
    if res["left_out_single"]:
        err.print(f"{res['left_out_single']} files alone in their folder were not queried")
