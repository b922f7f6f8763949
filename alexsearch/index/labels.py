"""Each indexed photo's top-5 classes, computed from its stored fc7 at publish time.

fc8 is a linear layer on fc7 (the paper's last layer, then a softmax), so the classes
of a photo follow from the vector the catalogue already holds: no photo is decoded
again and the extraction forward is left as it is. An indexing run labels every ok file
that has no labels yet: the photos it just extracted, and every photo of an index made
before labels (its next `index` run). numpy only: 4 M multiply-adds a photo for 1,000
classes, beside the forward's ~700 M.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .catalogue import Catalogue

TOP = 5  # the paper's top-5
CHUNK = 4096  # photos labelled a step: 64 MB of fc7, 16 MB of scores for 1,000 classes


@dataclass
class Classifier:
    """fc8 of a checkpoint, on numpy: scores = fc7 @ weight.T + bias."""

    weight: np.ndarray  # float32 (classes, fc7)
    bias: np.ndarray  # float32 (classes,)
    names: list[str]  # as the checkpoint stores them (classnames.parse reads them)

    @classmethod
    def of(cls, ckpt) -> Classifier:
        """The classifier of a checkpoint read by weights.checkpoint (numpy or torch)."""
        sd = ckpt.state_dict
        names = list(ckpt.classes) if len(ckpt.classes) == ckpt.arch.num_classes else []
        if not names:  # no names in the checkpoint: say "class N"
            names = [f"class {i}" for i in range(ckpt.arch.num_classes)]
        return cls(_numpy(sd["fc8.weight"]), _numpy(sd["fc8.bias"]), names)

    def probabilities(self, fc7: np.ndarray) -> np.ndarray:
        """Softmax of fc8 for each row of fc7 (n, classes)."""
        z = np.asarray(fc7, np.float32) @ self.weight.T + self.bias
        z -= z.max(axis=1, keepdims=True)  # exp never overflows
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def top(self, fc7: np.ndarray, k: int = TOP) -> tuple[np.ndarray, np.ndarray]:
        """(classes int (n, k), probabilities float32 (n, k)), most probable first
        (k at most the number of classes)."""
        return top_classes(self.probabilities(fc7), k)


def top_classes(probs: np.ndarray, k: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes of each row of `probs` and their probabilities, best
    first (equal probabilities in the same order for the same scores). A partial
    selection, then a sort of the k: a full argsort of 1,000 classes took as long as fc8
    itself."""
    k = min(k, probs.shape[1])
    if k < probs.shape[1]:
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(k), probs.shape).copy()
    part.sort(axis=1)  # by class, so equal probabilities come lower class first
    got = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-got, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(got, order, axis=1)


def _numpy(t) -> np.ndarray:
    if type(t).__module__.split(".")[0] == "torch":
        return t.detach().float().cpu().numpy()
    return np.asarray(t, np.float32)


def fill(cat: Catalogue, dim: int, classifier: Callable[[], Classifier], progress=None) -> int:
    """Label every ok file of `cat` that has none, from its stored fc7, committing each
    chunk (a killed run keeps what it labelled). `classifier` is called only when some
    file needs labels. Returns how many files were labelled."""
    todo = cat.unlabelled()
    if not todo:
        return 0
    clf = classifier()
    done = 0
    for start in range(0, len(todo), CHUNK):
        ids, vecs = cat.vectors_of(todo[start : start + CHUNK], dim)
        classes, probs = clf.top(vecs)
        cat.put_labels(ids, classes, probs, clf.names)
        cat.commit()
        done += len(ids)
        if progress:
            progress("labelling", done, len(todo))
    return done
