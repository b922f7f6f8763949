"""What CLI tests share: running the command line as a user does, and the shape every
failure must have (one line on stderr, no traceback, the exit code of its kind)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# real photos beside the checkout (../shared/data); tests that use them skip without them
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAFETY_TIMEOUT = 900  # a net against hangs, never an assertion on speed
MAX_RSS_BYTES = 3 * 1024**3  # the cap on a run's peak resident set, where it was measured


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


def no_traceback(r) -> None:
    """No traceback and no internal error on stderr; a run that measured its peak resident
    set (tests/robustness's Run, `max_rss`) stayed under MAX_RSS_BYTES."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    max_rss = getattr(r, "max_rss", None)
    if max_rss is not None:
        assert max_rss < MAX_RSS_BYTES, f"peak RSS {max_rss / 2**30:.1f} GiB: {r.args}"


def one_line_error(r, *fragments, code: int = 2) -> str:
    """A refused command: exit `code` (2: bad input or a write the library refused, a
    UserError; 1: an OSError of the environment reaching the entry point), one line on
    stderr holding every fragment, no traceback (see no_traceback). Returns the line."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    no_traceback(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]
