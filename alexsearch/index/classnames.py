"""A checkpoint's class names as words a person searches with: each class's synonyms
and ImageNet synset id, which classes a WORD names, and the closest names to a WORD
that names none.

Class names come from the checkpoint: ImageNet's 1,000 for the published imports
(torchvision's list; Caffe's `synset_words.txt` through `weights import --labels`, whose
lines carry the synset id and the synonyms: "n02123045 tabby, tabby cat"), the folders'
names for a network trained here ("red_circles"). A checkpoint without names gets
"class N".

No WordNet noun hierarchy is used: no well-kept PyPI package ships its data for use
offline (`wn` downloads it at run time, nltk's data is not on PyPI), so "dog" does not
find the breeds. Instead a WORD matches a class when it is one of the class's names or
the last word(s) of one, the noun English puts last: "cat" finds "tabby cat" and
"tiger cat", "retriever" the retrievers.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from ..errors import UserError

_SYNSET = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ClassName:
    """One class: its display name (the first synonym), all its synonyms normalised,
    and its ImageNet synset id when the name carried one."""

    name: str
    synonyms: tuple[str, ...]
    synset: str = ""


def normalise(text: str) -> str:
    """Lower case, underscores and hyphens as spaces, single spaces: "Red_Circles" and
    "red circles" are the same words."""
    return " ".join(re.sub(r"[_\-]+", " ", text).lower().split())


def parse(raw: str, index: int) -> ClassName:
    """A class name as checkpoints store it -> ClassName ("n02123045 tabby, tabby cat":
    synset n02123045, synonyms "tabby" and "tabby cat"; "" -> "class N")."""
    text = (raw or "").strip()
    synset = ""
    head, _, rest = text.partition(" ")
    if _SYNSET.match(head):
        synset, text = head, rest.strip()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        parts = [f"class {index}"]
    synonyms = tuple(dict.fromkeys(normalise(p) for p in parts))
    return ClassName(parts[0], synonyms, synset)


def vocabulary(names: list[str], num_classes: int) -> list[ClassName]:
    """The checkpoint's classes (names missing or of another count: "class N" each)."""
    if len(names) != num_classes:
        names = [""] * num_classes
    return [parse(n, i) for i, n in enumerate(names)]


def matching(word: str, classes: list[ClassName]) -> list[int]:
    """The classes WORD names: a synonym equal to it, its synset id, or a synonym ending
    with its words ("cat" -> "tabby cat"). UserError listing the closest names when none."""
    w = normalise(word)
    if not w:
        raise UserError("--label needs a word")
    found = [
        i
        for i, c in enumerate(classes)
        if w == c.synset or any(s == w or s.endswith(" " + w) for s in c.synonyms)
    ]
    if not found:
        raise UserError(f"no class matches {word!r}; closest: {', '.join(closest(w, classes))}")
    return found


def closest(word: str, classes: list[ClassName], n: int = 5) -> list[str]:
    """The n class names nearest to WORD in spelling (difflib's ratio), best first."""
    by_synonym = {}
    for c in classes:
        for s in c.synonyms:
            by_synonym.setdefault(s, c.name)
    near = difflib.get_close_matches(normalise(word), list(by_synonym), n=n * 3, cutoff=0.0)
    return list(dict.fromkeys(by_synonym[s] for s in near))[:n]
