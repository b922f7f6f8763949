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


# --------------------------------------------------------------------------- info


@app.command()
def info(
    weights_path: Path = typer.Option(None, "--weights", help="Describe this checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Describe a checkpoint: architecture, parameter count, classes, preprocessing."""
    from . import weights

    path = weights_path or (Path(os.environ[WEIGHTS_ENV]) if os.environ.get(WEIGHTS_ENV) else None)
    if path is None:
        raise UserError("nothing to describe: give --weights CKPT")
    desc = {"weights": str(path), **weights.load(path).describe()}
    if as_json:
        print_json(desc)
    else:
        out.print(kv_table(f"weights {path}", desc))


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning expected failures into one line."""
    try:
        app(args=argv, standalone_mode=False)
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
