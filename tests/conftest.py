import os
from pathlib import Path

import pytest
import torch
from helpers import SHARED

from alexsearch.net.precision import PRECISION_ENV

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def paper_model():
    from alexsearch.net.alexnet import AlexNet

    torch.manual_seed(0)
    return AlexNet().eval()


@pytest.fixture(scope="session")
def init_ckpt(tmp_path_factory):
    """An untrained, paper-initialised 10-class checkpoint written through the CLI's library."""
    from alexsearch.weights import checkpoint

    path = tmp_path_factory.mktemp("weights") / "init10.ckpt"
    checkpoint.save(checkpoint.init_checkpoint(10, seed=1), path)
    return path


def shared_data(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} not present (../shared/data is absent)")
    return p


@pytest.fixture(scope="session", autouse=True)
def _fp32_unless_asked():
    """Tests compare vectors across paths (torch and numpy, index and query) at fp32's
    tolerance: pin `--precision auto` to fp32 on every machine, subprocesses included,
    so a CPU with native bf16 runs the same suite; tests of bf16 ask for it by name."""
    old = os.environ.get(PRECISION_ENV)
    os.environ[PRECISION_ENV] = "fp32"
    yield
    if old is None:
        os.environ.pop(PRECISION_ENV, None)
    else:
        os.environ[PRECISION_ENV] = old


@pytest.fixture(scope="session", autouse=True)
def _own_data_dir(tmp_path_factory):
    """Fetched default weights live under $ALEXSEARCH_HOME: keep the user's out of tests
    (and tests' out of the user's), subprocesses included."""
    old = os.environ.get("ALEXSEARCH_HOME")
    os.environ["ALEXSEARCH_HOME"] = str(tmp_path_factory.mktemp("alexsearch_home"))
    yield
    if old is None:
        os.environ.pop("ALEXSEARCH_HOME", None)
    else:
        os.environ["ALEXSEARCH_HOME"] = old
