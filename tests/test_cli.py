"""The command line as a user runs it: real processes, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from alexsearch import __version__


def run(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "alexsearch", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(r, pattern):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert pattern in lines[0], lines[0]


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"alexsearch {__version__}"
    r = run("--help")
    assert r.returncode == 0 and "weights" in r.stdout and "info" in r.stdout


def test_weights_init_then_info_json(tmp_path):
    ckpt = tmp_path / "w.ckpt"
    r = run("weights", "init", "--out", ckpt, "--classes", "12")
    assert r.returncode == 0, r.stderr
    r = run("info", "--weights", ckpt, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["parameters"] == 60_965_224 - 988 * 4096 - 988
    assert info["classes"] == 12 and info["towers"] == 2 and info["input_size"] == 224
    assert info["lrn"]["k"] == 2.0 and info["lrn"]["per_tower"] is True


@pytest.mark.parametrize(
    "content,message",
    [(None, "no such weights file"), (b"junk", "not a checkpoint")],
)
def test_info_bad_weights_one_line(tmp_path, content, message):
    path = tmp_path / "w.ckpt"
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(run("info", "--weights", path), message)
