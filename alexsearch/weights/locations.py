"""Where weights are, without torch: the data folder of fetched weights, the default
checkpoint `weights fetch` names, and which weights a command uses."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import atomic_write
from ..errors import WeightsError

HOME_ENV = "ALEXSEARCH_HOME"


def data_dir() -> Path:
    """Where fetched weights live: $ALEXSEARCH_HOME, else ~/.cache/alexsearch."""
    home = os.environ.get(HOME_ENV)
    return Path(home) if home else Path.home() / ".cache" / "alexsearch"


def _default_pointer() -> Path:
    return data_dir() / "weights" / "default"


def default_weights_path() -> Path | None:
    """The checkpoint `weights fetch` made the default, if it is still there."""
    try:
        named = _default_pointer().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(named) if named and Path(named).is_file() else None


def set_default(path: str | os.PathLike) -> None:
    text = f"{Path(path).resolve()}\n".encode()
    atomic_write(_default_pointer(), lambda f: f.write(text))


WEIGHTS_ENV = "ALEXSEARCH_WEIGHTS"


def resolve(explicit: str | os.PathLike | None, recorded: str | None = None) -> Path:
    """Which weights to use: --weights, else $ALEXSEARCH_WEIGHTS, else the weights an
    index recorded, else fetched default weights; otherwise say how to get some."""
    if explicit:
        return Path(explicit)
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    if recorded and Path(recorded).exists():
        return Path(recorded)
    found = default_weights_path()
    if found:
        return found
    raise WeightsError(
        "no weights given: pass --weights CKPT or set ALEXSEARCH_WEIGHTS; to get weights run "
        "`alexsearch weights fetch bvlc` (Caffe's published AlexNet), `alexsearch train`, or "
        "`alexsearch weights init --out CKPT` (untrained)"
        + (f"; the index was built with {recorded}, which is gone" if recorded else "")
    )
