"""Fixtures of the fault suite; tests/conftest.py's (init_ckpt, shared_data) apply too."""

import os

import pytest
from corpora import tiny_checkpoint
from figures import FIGURES
from processes import Forkserver


@pytest.fixture(scope="session")
def env(init_ckpt):
    e = dict(os.environ)
    e["ALEXSEARCH_WEIGHTS"] = str(init_ckpt)
    e["COLUMNS"] = "200"
    return e


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A narrow network (8..16 channels, fc 32): same code paths, millisecond loads."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.ckpt")


@pytest.fixture(scope="session")
def fs(tmp_path_factory):
    """One forkserver for the session: CLI runs without an interpreter start each."""
    server = Forkserver(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """24 small procedural photos in 6 class folders (read-only by convention)."""
    from make_shapes import make

    root = tmp_path_factory.mktemp("photos") / "p"
    make(root, per_class=4, seed=7)
    return root


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("robustness figures")
        for key in sorted(FIGURES):
            terminalreporter.write_line(f"{key}: {FIGURES[key]}")
