"""The command line's root: the commands by family, and the entry point that turns every
expected failure into one line on stderr (UserError: exit 2; Ctrl-C: 130).

Commands parse, call the library, and render; heavy imports (torch, faiss) happen inside
them, so `--help` is instant.
"""

from __future__ import annotations

import gc
import os
import sys

import typer

from .. import __version__
from ..errors import UserError
from . import classify, codes, duplicates, index, serve, train, viz, weights
from .render import err


def _no_type_for_flags() -> None:
    """typer's help labels every flag `<bool>` as if it took a value (`--version <bool>`):
    a flag takes none, so show no type for it."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag and not self.metavar else shown(self, ctx)

    option.display_type_rich = display_type_rich


_no_type_for_flags()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Semantic image search with the two-tower AlexNet of Krizhevsky, Sutskever & Hinton "
    "(NIPS 2012): train or load it, index a folder of photos, ask which look alike.",
    pretty_exceptions_enable=False,
)


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


weights_app = typer.Typer(no_args_is_help=True, help="Create, import and fetch network weights.")
weights_app.command("init")(weights.weights_init)
weights_app.command("import")(weights.weights_import)
weights_app.command("fetch")(weights.weights_fetch)
app.add_typer(weights_app, name="weights")

app.command("index")(index.index)
app.command("query")(index.query)
app.command("classify")(classify.classify)

# `eval` is a group: `alexsearch eval --data DIR` (classification error, its callback) and
# `alexsearch eval retrieval` (precision@k / mAP of an index).
eval_app = typer.Typer(
    invoke_without_command=True,
    help="Classification error (--data) or retrieval precision (eval retrieval).",
)
eval_app.callback()(train.eval_classification)
eval_app.command("retrieval")(train.eval_retrieval)
app.add_typer(eval_app, name="eval")
app.command("train")(train.train)
app.command("codes")(codes.codes)

viz_app = typer.Typer(
    no_args_is_help=True,
    help="Pictures: conv1 kernels, neighbour grids, t-SNE maps, training curves.",
)
viz_app.command("kernels")(viz.viz_kernels)
viz_app.command("neighbors")(viz.viz_neighbors)
viz_app.command("tsne")(viz.viz_tsne)
viz_app.command("curves")(viz.viz_curves)
app.add_typer(viz_app, name="viz")

app.command("duplicates")(duplicates.duplicates)
app.command("info")(index.info)
app.command("serve")(serve.serve)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning expected failures into one line."""
    try:
        _main(argv)
    finally:
        if argv is None:  # the process's own command line, so the process ends here:
            # Python's last collection at exit walks every object torch made (~0.6 s
            # after any command that imported it); frozen objects are left to the OS
            gc.freeze()


def _main(argv: list[str] | None) -> None:
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
        from ..atomic import describe_os_error

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
