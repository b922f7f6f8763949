"""The command line as a user runs it: real processes, exit codes, one-line errors."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli, one_line_error

import alexsearch
from alexsearch import __version__


def run(*args, env=None):
    return cli(*args, env={**os.environ, **(env or {})}, check=False)


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


def test_help_shows_no_value_for_flags():
    for args in (("--help",), ("query", "--help"), ("index", "--help")):
        r = run(*args, env={"COLUMNS": "120"})
        assert r.returncode == 0 and "<bool>" not in r.stdout, r.stdout
    assert "<int range>" in run("query", "--help").stdout  # options that take one still say so


def test_the_library_imports_without_torch():
    """The torch-free paths import nothing of torch until a call needs it: the package,
    the image stack, the checkpoint reader, the importers, the index readers, pictures."""
    probe = (
        "import sys\n"
        "import alexsearch, alexsearch.api, alexsearch.images.decode, alexsearch.net.numpy_net\n"
        "import alexsearch.weights.checkpoint, alexsearch.weights.importers\n"
        "import alexsearch.weights.fetch, alexsearch.index.search, alexsearch.index.build\n"
        "import alexsearch.index.codes, alexsearch.viz.neighbours, alexsearch.viz.kernels\n"
        "import alexsearch.cli.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'faiss')))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_package_checks_with_exceptions_not_asserts():
    """`python -O` drops assert statements: a check the package relies on must raise."""
    root = Path(alexsearch.__file__).parent
    found = [
        f"{p.relative_to(root)}:{node.lineno}"
        for p in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == []
