"""Check that a command line of bench/gpu.sh parses, without running it:

    python bench/parse_check.py -m alexsearch train --data D --epochs 3 ...
    python bench/parse_check.py bench/train_throughput.py --device cuda ...

`-m alexsearch ...`: typer's click command resolves every subcommand and parses its
options (types, choices, unknown options) without calling it. A bench script: its
`parser()` parses the arguments. Exit 0 when they parse, 2 with the parser's message."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's alexsearch


def check_cli(args: list[str]) -> None:
    import typer

    from alexsearch.cli.app import app

    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("alexsearch", list(args), resilient_parsing=False)
    while hasattr(cmd, "resolve_command"):  # a group (typer carries its own click)
        protected = getattr(ctx, "_protected_args", None)
        if protected is None:
            protected = ctx.protected_args
        rest = [*protected, *ctx.args]
        if not rest:
            return
        name, sub, rest = cmd.resolve_command(ctx, rest)
        if sub is None:
            raise ValueError(f"no command {name!r}")
        cmd, ctx = sub, sub.make_context(name, rest, parent=ctx)


def check_script(path: str, args: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("_checked", Path(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.parser().parse_args(args)


def main() -> None:
    argv = sys.argv[1:]
    try:
        if argv[:2] == ["-m", "alexsearch"]:
            check_cli(argv[2:])
        else:
            check_script(argv[0], argv[1:])
    except Exception as e:  # noqa: BLE001 - click's and argparse's errors alike
        sys.exit(f"does not parse: {' '.join(argv)}: {e}")


if __name__ == "__main__":
    main()
