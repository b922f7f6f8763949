"""The command line: parse, call the library, render. No logic a library caller would need.

Heavy imports (torch, faiss) happen inside commands so `--help` is instant.
Every UserError becomes one line on stderr and exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Semantic image search with the two-tower AlexNet of Krizhevsky, Sutskever & Hinton "
    "(NIPS 2012): train or load it, index a folder of photos, ask which look alike.",
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(no_args_is_help=True, help="Create, import and fetch network weights.")
app.add_typer(weights_app, name="weights")

out = Console()
err = Console(stderr=True)

WEIGHTS_ENV = "ALEXSEARCH_WEIGHTS"


def _version(value: bool) -> None:
    if value:
        print(f"alexsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(str(k), str(v))
    return table


# --------------------------------------------------------------------------- weights


@weights_app.command("init")
def weights_init(
    out_path: Path = typer.Option(..., "--out", help="Where to write the checkpoint."),
    classes: int = typer.Option(1000, "--classes", help="Number of output classes (fc8)."),
    seed: int = typer.Option(0, help="Random seed for the paper's N(0, 0.01) init."),
) -> None:
    """Write an untrained, paper-initialised two-tower checkpoint."""
    from . import weights

    ckpt = weights.init_checkpoint(classes, seed)
    weights.save(ckpt, out_path)
    out.print(
        f"wrote {out_path} ({ckpt.arch.name}, {classes} classes, fingerprint {ckpt.fingerprint})"
    )


@weights_app.command("import")
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
    from . import importers, weights

    target = out_path or importers.default_out(file)
    if target.resolve() == file.resolve():
        raise UserError(f"--out {target} is the file being imported; choose another path")
    ckpt = importers.import_file(file, mean, labels)
    weights.save(ckpt, target)
    _report_weights(target, ckpt, as_json)


@weights_app.command("fetch")
def weights_fetch(
    name: str = typer.Argument(..., help="bvlc (Caffe's bvlc_alexnet) or torchvision."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Download published weights, verify the checksum, import, make them the default."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from . import importers

    if name not in importers.SOURCES:
        raise UserError(f"unknown weights {name!r}; choose from {', '.join(importers.SOURCES)}")
    source = importers.SOURCES[name]
    bar = Progress(
        TextColumn(f"downloading {source.filename}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = None

    def progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("download", total=total)
        bar.update(task, completed=done, total=total)

    try:
        path, ckpt = importers.fetch(source, progress)
    finally:
        if task is not None:
            bar.stop()
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


# --------------------------------------------------------------------------- index, query


def _device(name: str):
    from .extract import resolve_device

    return resolve_device(name)


def _load_model(weights_path, recorded: str | None = None, device: str = "cpu"):
    """(model, preprocess, fingerprint, path, layer) for the resolved weights."""
    from . import weights

    path = weights.resolve(weights_path, recorded)
    ckpt = weights.load(path)
    return ckpt.build(device), ckpt.preprocess, ckpt.fingerprint, path.resolve(), "fc7"


def _progress(label: str):
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


@app.command()
def index(
    paths: list[Path] = typer.Argument(..., help="Folders (searched recursively) or images."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    weights_path: Path = typer.Option(
        None, "--weights", help="Checkpoint (env ALEXSEARCH_WEIGHTS)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Decode processes (default: by device and cores)."
    ),
    kind: str = typer.Option("flat", help="FAISS kind: flat (exact), hnsw, ivfpq, ivfsq, auto."),
    max_memory: str = typer.Option(None, "--max-memory", help="Budget for --kind auto, e.g. 2G."),
    exclude: list[str] = typer.Option([], "--exclude", help="Glob of names/paths to skip."),
    hidden: bool = typer.Option(False, "--hidden", help="Also walk hidden files and folders."),
    max_megapixels: float = typer.Option(100.0, "--max-megapixels", help="Refuse larger images."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of stopping."),
    commit_every: int = typer.Option(256, "--commit-every", min=1, help="Files per commit."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Index photos: extract fc7 of every image into an index (incremental)."""
    import time

    from . import indexer, store

    if kind not in store.KINDS:
        raise UserError(f"unknown --kind {kind!r}; choose from {', '.join(store.KINDS)}")
    idx = store.resolve_dir(index_dir)
    recorded = None
    manifest = store.read_manifest(idx) if idx.is_dir() else None
    if manifest:
        recorded = manifest["model"].get("weights")
    bar = _progress("indexing")
    task = None
    started = [0.0]

    def progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("extract", total=total, rate="")
            started[0] = time.perf_counter()
        rate = done / max(time.perf_counter() - started[0], 1e-9)
        bar.update(task, completed=done, rate=f"{rate:.1f} img/s")

    try:
        summary = indexer.run(
            paths,
            idx,
            # torch is imported only when a model is needed: a run with nothing to do is fast
            lambda: _load_model(weights_path, recorded, _device(device)),
            kind=kind,
            max_memory=_parse_bytes(max_memory),
            batch_size=batch_size,
            workers=workers,
            device=device,
            exclude=exclude,
            hidden=hidden,
            max_megapixels=max_megapixels,
            wait=wait,
            progress=progress,
            check_weights=_weights_differ(weights_path, manifest),
            commit_every=commit_every,
        )
    finally:
        if task is not None:
            bar.stop()
    if as_json:
        from dataclasses import asdict

        print_json(asdict(summary))
        return
    rows = {
        "index": summary.index_dir,
        "added": summary.added,
        "updated": summary.updated,
        "moved": summary.moved,
        "deleted": summary.deleted,
        "unchanged": summary.unchanged,
        "failed (this run)": len(summary.failed),
        "in index": f"{summary.total_ok} ok, {summary.total_failed} failed",
        "kind": summary.kind,
        "weights": f"{summary.weights} ({summary.fingerprint})",
        "time": f"{summary.seconds:.1f} s"
        + (f", {summary.images_per_s:.1f} img/s extracted" if summary.extracted else ""),
    }
    out.print(kv_table("index", rows))
    if summary.failed:
        out.print(_failures_table(summary.failed))
    for p, why in summary.skipped:
        err.print(f"skipped {p}: {why}", highlight=False)


def _failures_table(failed: list[tuple[str, str]]) -> Table:
    table = Table(title="files that could not be indexed", title_justify="left")
    table.add_column("path")
    table.add_column("reason")
    for path, why in failed:
        table.add_row(path, why)
    return table


def _weights_differ(weights_path, manifest) -> bool:
    """Were weights named that may differ from the index's? (Checked before trusting them.)"""
    from . import store

    named = weights_path or os.environ.get(WEIGHTS_ENV)
    if not named or manifest is None:
        return False
    return store.weights_signature(named) != manifest["model"].get("weights_signature")


def _parse_bytes(text: str | None) -> int | None:
    if not text:
        return None
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().rstrip("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise UserError(f"--max-memory {text!r}: expected a size like 512M or 4G") from None


@app.command()
def query(
    images: list[Path] = typer.Argument(..., help="Query images (inside the index or not)."),
    k: int = typer.Option(6, "--k", min=1, help="Neighbours per query."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    weights_path: Path = typer.Option(None, "--weights", help="(default: the index's weights)"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep the query itself."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
    grid: Path = typer.Option(None, "--grid", help="Also draw query + neighbours to this PNG."),
    max_megapixels: float = typer.Option(100.0, "--max-megapixels"),
    binary: bool = typer.Option(
        False, "--binary", help="Hamming k-NN over binary codes (alexsearch codes)."
    ),
    rerank: int = typer.Option(
        0, "--rerank", min=0, help="Re-rank a Hamming shortlist of N by exact fc7 distance."
    ),
) -> None:
    """Find the k indexed photos that look most like each query image."""
    from . import search

    if rerank and rerank < k:
        raise UserError(f"--rerank {rerank} must be at least --k {k}")
    searcher = search.Searcher(index_dir)
    try:
        if binary or rerank:
            searcher.open_codes()  # before the model: no codes -> say so at once
        recorded = searcher.manifest["model"].get("weights")
        embed, fp, pre, wpath = search.embedder(weights_path, recorded, device, max_megapixels)
        searcher.check_model(fp, wpath, pre)
        paths = [str(i) for i in images]
        results = search.query(searcher, embed, paths, k, include_self, binary, rerank)
    finally:
        searcher.close()
    if grid is not None:
        _draw_grid(results, grid)
    if as_json:
        print_json(search.result_dicts(results))
    else:
        for r in results:
            table = Table(title=f"query {r.query}", title_justify="left")
            table.add_column("rank", justify="right")
            table.add_column("distance", justify="right")
            table.add_column("path")
            if binary and not rerank:
                table.columns[1].header = "Hamming bits"
            for h in r.hits:
                dist = str(h.distance) if isinstance(h.distance, int) else f"{h.distance:.3f}"
                table.add_row(str(h.rank), dist, h.path)
            if r.error:
                err.print(f"[red]error:[/red] {r.query}: {r.error}", highlight=False)
            else:
                out.print(table)
        if grid is not None:
            out.print(f"grid written to {grid}")
    bad = [r for r in results if r.error]
    if bad:
        if as_json:
            for r in bad:
                err.print(f"error: {r.query}: {r.error}", highlight=False)
        raise typer.Exit(2)


def _draw_grid(results, path: Path) -> None:
    from . import viz
    from .weights import atomic_write

    rows = [(r.query, [(h.path, h.distance) for h in r.hits]) for r in results if not r.error]
    img = viz.neighbour_grid(rows)
    atomic_write(path, lambda f: img.save(f, format="PNG"))


# --------------------------------------------------------------------------- train, eval
# `eval` is a group: `alexsearch eval --data DIR` (classification error, its callback) and
# `alexsearch eval retrieval` (precision@k / mAP of an index).

eval_app = typer.Typer(
    invoke_without_command=True,
    help="Classification error (--data) or retrieval precision (eval retrieval).",
)
app.add_typer(eval_app, name="eval")


class _TrainProgress:
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


@app.command()
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
    workers: int = typer.Option(None, "--workers", min=0, help="Decode processes (2)."),
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
    from . import train as training

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
    if resume is not None:
        cfg = training.resume_config(resume, given)
    else:
        if data_dir is None:
            raise UserError("give --data DIR (with train/ and val/) or --resume RUN_DIR")
        cfg = training.TrainConfig(data=str(data_dir), val=str(val) if val else None)
        cfg.out = str(out_dir or training.default_run_dir())
        for key, value in given.items():
            if value is not None:
                setattr(cfg, key, value)
    if data_dir is not None and resume is not None and str(data_dir) != cfg.data:
        cfg.data = str(data_dir)  # the same images moved elsewhere
    reporter = _TrainProgress() if not as_json else None
    try:
        result = training.run(cfg, reporter, resume=resume is not None)
    finally:
        if reporter:
            reporter.stop()
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


@eval_app.callback()
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
    workers: int = typer.Option(2, "--workers", min=0, help="Decode processes."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate at most N images."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
) -> None:
    """Top-1/top-5 error on a labelled folder: centre crop and the paper's ten crops."""
    if ctx.invoked_subcommand is not None:
        return
    if data_dir is None:
        raise UserError("give --data DIR (a labelled folder), or use `alexsearch eval retrieval`")
    from . import evaluate, weights

    ckpt = weights.load(weights.resolve(weights_path))
    bar = _progress("evaluating")
    task = None

    def progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("eval", total=total, rate="")
        bar.update(task, completed=done)

    try:
        result = evaluate.classify(
            ckpt, data_dir, batch_size, workers, _device(device), limit, progress
        )
    finally:
        if task is not None:
            bar.stop()
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


# --------------------------------------------------------------------------- codes


@app.command()
def codes(
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    bits: int = typer.Option(256, "--bits", help="Code length (a multiple of 8)."),
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
    import time

    from . import codes as codes_

    bar = _progress("autoencoder")
    task = None
    started = time.perf_counter()

    def progress(epoch, total, error):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("train", total=total, rate="")
        rate = epoch / max(time.perf_counter() - started, 1e-9)
        bar.update(task, completed=epoch, rate=f"{rate:.2f} epoch/s, error {error:.4f}")

    try:
        summary = codes_.build(index_dir, bits, epochs, seed, autoencoder, wait, progress)
    finally:
        if task is not None:
            bar.stop()
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


@eval_app.command("retrieval")
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
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
) -> None:
    """Leave-one-out precision@1/6/10 and mAP of an index, parent folder as label, beside
    a pixel-space baseline (L2 between 32x32 thumbnails)."""
    from . import evaluate

    bar = _progress("training")
    tasks = {}

    def progress(label, done, total):
        if not tasks:
            bar.start()
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total, rate=label)
        bar.update(tasks[label], completed=done)

    try:
        res = evaluate.retrieval(
            index_dir,
            binary,
            epochs=epochs,
            rerank=rerank,
            max_queries=max_queries,
            seed=seed,
            progress=progress,
        )
    finally:
        if tasks:
            bar.stop()
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
    for k in ("precision@1", "precision@6", "precision@10", "mAP"):
        table.add_column(k, justify="right")
    for r in res["rows"]:
        table.add_row(
            r["method"],
            str(r["bytes_per_image"]),
            *(f"{r[k]:.3f}" for k in ("precision@1", "precision@6", "precision@10", "mAP")),
        )
    out.print(table)
    if res["left_out_single"]:
        err.print(f"{res['left_out_single']} files alone in their folder were not queried")


# --------------------------------------------------------------------------- viz

viz_app = typer.Typer(
    no_args_is_help=True,
    help="Pictures: conv1 kernels, neighbour grids, t-SNE maps, training curves.",
)
app.add_typer(viz_app, name="viz")


def _save_png(img, path: Path, quiet: bool = False) -> None:
    from .atomic import atomic_write

    atomic_write(path, lambda f: img.save(f, format="PNG"))
    if not quiet:
        out.print(f"wrote {path} ({img.width}x{img.height})", highlight=False)


@viz_app.command("kernels")
def viz_kernels(
    weights_path: Path = typer.Option(
        None, "--weights", help="Checkpoint (env ALEXSEARCH_WEIGHTS)."
    ),
    out_path: Path = typer.Option(Path("kernels.png"), "--out", help="PNG to write."),
    scale: int = typer.Option(5, "--scale", min=1, max=64, help="Pixels per kernel pixel."),
) -> None:
    """The conv1 kernels as RGB tiles, tower 1 above tower 2 (the paper's Fig. 3)."""
    from . import viz, weights

    ckpt = weights.load(weights.resolve(weights_path))
    _save_png(viz.kernels_picture(ckpt, scale), out_path)


@viz_app.command("neighbors")
def viz_neighbors(
    images: list[Path] = typer.Argument(..., help="Query images."),
    out_path: Path = typer.Option(..., "--out", help="PNG to write."),
    k: int = typer.Option(6, "--k", min=1, help="Neighbours per query."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    weights_path: Path = typer.Option(None, "--weights", help="(default: the index's weights)"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep the query itself."),
    max_megapixels: float = typer.Option(100.0, "--max-megapixels"),
) -> None:
    """One row per query image: the query, then its k nearest indexed photos (Fig. 4)."""
    from . import search

    searcher = search.Searcher(index_dir)
    try:
        recorded = searcher.manifest["model"].get("weights")
        embed, fp, pre, wpath = search.embedder(weights_path, recorded, device, max_megapixels)
        searcher.check_model(fp, wpath, pre)
        results = search.query(searcher, embed, [str(i) for i in images], k, include_self)
    finally:
        searcher.close()
    bad = [r for r in results if r.error]
    for r in bad:
        err.print(f"[red]error:[/red] {r.query}: {r.error}", highlight=False, soft_wrap=True)
    if len(bad) < len(results):
        _draw_grid(results, out_path)
        out.print(f"wrote {out_path}", highlight=False)
    if bad:
        raise typer.Exit(2)


@viz_app.command("tsne")
def viz_tsne(
    out_path: Path = typer.Option(..., "--out", help="PNG to write."),
    index_dir: Path = typer.Option(
        None, "--index", help="Index folder (default: indexes/default)."
    ),
    thumbnails: bool = typer.Option(
        False, "--thumbnails", help="Images snapped to a grid by position, not a scatter."
    ),
    method: str = typer.Option("opentsne", help="opentsne (faster) or sklearn."),
    tile: int = typer.Option(64, "--tile", min=8, max=512, help="Thumbnail size in pixels."),
    max_images: int = typer.Option(
        2500, "--max-images", min=1, help="Thumbnail map: at most this many (a random sample)."
    ),
    size: int = typer.Option(900, "--size", min=200, max=8000, help="Scatter size in pixels."),
    threads: int = typer.Option(
        None, "--threads", min=1, help="(default: 1 below 2,000 images, else all cores)"
    ),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Also print the 2-D positions."),
) -> None:
    """t-SNE map of an index (PCA to 50, then t-SNE), coloured by parent folder."""
    import time

    import numpy as np
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from . import viz

    if method not in viz.TSNE_METHODS:
        raise UserError(f"unknown --method {method!r}; choose from {', '.join(viz.TSNE_METHODS)}")
    t0 = time.perf_counter()
    bar = Progress(
        SpinnerColumn(),
        TextColumn("t-SNE {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("loading", total=None, count="")

    def progress(stage, done, total):  # no count yet: a spinner; then a bar of iterations
        count = f"{done}/{total} iterations" if done else ""
        bar.update(
            task, description=stage, completed=done, total=total if done else None, count=count
        )

    with bar:
        m = viz.index_tsne(index_dir, method, threads, seed, progress)
    t_embed = time.perf_counter() - t0
    where = str(index_dir or "indexes/default")
    shown = len(m.paths)
    if thumbnails:
        keep = np.arange(len(m.paths))
        if len(keep) > max_images:
            keep = np.sort(np.random.default_rng(seed).choice(len(keep), max_images, False))
            shown = len(keep)
        with err.status("placing thumbnails"):
            img = viz.thumbnail_map(
                m.coords[keep], [m.paths[i] for i in keep], [m.thumbs[i] for i in keep], tile
            )
    else:
        title = f"t-SNE of {len(m.paths)} images in {where} ({method})"
        img = viz.scatter(m.coords, m.labels, size, title)
    _save_png(img, out_path, quiet=as_json)
    if as_json:
        print_json(
            [
                {"id": int(i), "path": p, "x": float(x), "y": float(y)}
                for i, p, (x, y) in zip(m.ids, m.paths, m.coords, strict=True)
            ]
        )
    else:
        out.print(
            f"{len(m.paths)} images{f' ({shown} drawn)' if shown < len(m.paths) else ''}, "
            f"{len(set(m.labels))} folders, "
            f"t-SNE ({method}) {t_embed:.1f} s, total {time.perf_counter() - t0:.1f} s",
            highlight=False,
        )


@viz_app.command("curves")
def viz_curves(
    run_dir: Path = typer.Argument(..., help="A training run folder (holds metrics.jsonl)."),
    out_path: Path = typer.Option(Path("curves.png"), "--out", help="PNG to write."),
) -> None:
    """Train/val top-1 and top-5 error and the learning rate (log) by epoch."""
    from . import viz

    rows = viz.read_metrics(run_dir)
    _save_png(viz.curves(rows, f"training run {run_dir} ({len(rows)} epochs)"), out_path)


# --------------------------------------------------------------------------- info


@app.command()
def info(
    weights_path: Path = typer.Option(None, "--weights", help="Describe this checkpoint."),
    index_dir: Path = typer.Option(None, "--index", help="Describe this index."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Describe a checkpoint (--weights) or an index (--index, the default index otherwise)."""
    from . import store

    if weights_path is not None:
        from . import weights

        desc = {"weights": str(weights_path), **weights.load(weights_path).describe()}
        if as_json:
            print_json(desc)
        else:
            out.print(kv_table(f"weights {weights_path}", desc))
        return
    desc = store.describe(index_dir)
    if as_json:
        print_json(desc)
        return
    failures = desc.pop("failures")
    out.print(kv_table(f"index {desc['index']}", desc))
    if failures:
        out.print(_failures_table([(f["path"], f["reason"]) for f in failures]))


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning expected failures into one line."""
    try:
        # Without standalone mode click returns (not raises) the code of typer.Exit(n).
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except OSError as e:  # the environment, not a bug: full disk, read-only, permissions
        from .atomic import describe_os_error

        where = f"{e.filename}: " if e.filename else ""
        err.print(
            f"[red]error:[/red] {where}{describe_os_error(e)}", highlight=False, soft_wrap=True
        )
        sys.exit(1)
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click's usage errors
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("ALEXSEARCH_DEBUG"):
            raise
        err.print(
            f"[red]internal error:[/red] {type(e).__name__}: {e} "
            "(set ALEXSEARCH_DEBUG=1 for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
