"""The one progress protocol of every long job.

The library calls ``progress(stage, done, total, **figures)``: `stage` names what runs
("extracting", "epoch 3/90", ...), `done` of `total` units are finished (`total` is None
while unknown), and each figure is a number worth showing beside it (``img_per_s=41.2``,
``loss=2.31``). The CLI draws it with rich (cli/render.py); a notebook may pass
``print`` or a tqdm adapter; None means silence.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None, **figures: float) -> None: ...


def silent(stage: str, done: int, total: int | None, **figures: float) -> None:
    """The progress of a caller that wants none."""
