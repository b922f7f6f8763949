"""What CLI tests share: running the command line as a user does, and the shape every
failure must have (one line on stderr, no traceback, the exit code of its kind)."""

from __future__ import annotations

import os
import subprocess
import sys

SAFETY_TIMEOUT = 900  # a net against hangs, never an assertion on speed


def cli(*args, env=None, check=True, cwd=None) -> subprocess.CompletedProcess:
    """`python -m alexsearch ARGS` in a fresh process (check: a non-zero exit fails).
    `env` replaces the environment when given (os.environ otherwise)."""
    r = subprocess.run(
        [sys.executable, "-m", "alexsearch", *map(str, args)],
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ),
        cwd=cwd,
        timeout=SAFETY_TIMEOUT,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def run_in_process(capsys, *args, check=True) -> subprocess.CompletedProcess:
    """The same entry as the console script, in this process: no second torch import."""
    from alexsearch.cli.app import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    got = capsys.readouterr()
    r = subprocess.CompletedProcess(args, code, got.out, got.err)
    if check:
        assert code == 0, got.err
    return r


def one_line_error(r, *fragments, code: int = 2) -> str:
    """A refused command: exit `code` (2: bad input, UserError; 1: the environment, such
    as a full disk), one line on stderr holding every fragment, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]
