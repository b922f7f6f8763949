"""The command line as a user runs it: real processes, exit codes, one-line errors."""

import json
from functools import partial

import pytest
from test_index import cli, one_line_error

from alexsearch import __version__

run = partial(cli, check=False)


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
    one_line_error(run("info", "--weights", path), message)
