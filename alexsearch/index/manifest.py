"""The manifest of an index (manifest.json): its commit point.

An index is a folder:

    manifest.json         format, model fingerprint, layer, dimension, preprocessing,
                          metric, FAISS kind, counts, times, and the names of the current
                          vectors file and binary codes
    catalogue.sqlite      one row per file (catalogue.py), the source of truth
    vectors-<gen>.faiss   FAISS index over the ok vectors, ids = catalogue ids (vectors.py)
    space-<gen>.faiss, whiten-<gen>.faissvt   the whitened search space and its learnt
                          transform, when the index has one (spaces.py)
    codes-<gen>.*, autoencoder-<gen>.pt   binary codes, when built (codes.py)
    trained-<sig>.faiss, trained-space-<sig>.faiss, whiten-trained-<sig>.faissvt
                          a shared IVF training, when the index has one (training.py)
    vectors-<gen>.ivfdata, space-<gen>.ivfdata   the inverted lists of a merge made
                          `--on-disk`, memory-mapped beside their .faiss (ondisk.py)
    .lock                 held (flock) by the one process writing the index (lock.py)

A new generation is written aside and published by replacing the manifest, so a reader
never sees a half-written index. The FAISS file is rebuilt from the catalogue at the
end of each indexing run (cheap next to extraction) in the kind the manifest asks for.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..atomic import atomic_write
from ..errors import IndexError_

FORMAT = "alexsearch-index"
VERSION = 1
DEFAULT_DIR = Path("indexes") / "default"


def resolve_dir(index: str | os.PathLike | None) -> Path:
    return Path(index) if index else DEFAULT_DIR


def _known(cls, d: dict) -> dict:
    """The keys of `d` that `cls` has: fields a later minor version adds are ignored."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class ModelRecord:
    """The weights an index was built with."""

    fingerprint: str
    weights: str = ""  # the checkpoint's resolved path when it was built
    weights_signature: list = field(default_factory=list)  # [path, size, mtime_ns]
    layer: str = "fc7"


@dataclass
class PreprocessRecord:
    """How its photos became network input; `signature` decides comparability."""

    resize: int = 256
    crop: str = ""
    channel_order: str = "RGB"
    geometry: str = "not recorded"  # indexes made before it was recorded
    signature: str | None = None  # idem: such indexes are checked on the weights alone

    @classmethod
    def of(cls, pre) -> PreprocessRecord:
        return cls(
            resize=pre.resize,
            crop=f"centre {pre.input_size}",
            channel_order=pre.channel_order,
            geometry=pre.geometry(),
            signature=pre.signature(),
        )


@dataclass
class CodesRecord:
    """The binary codes (`alexsearch codes`) published with this generation."""

    bits: int
    bytes_per_image: int
    fingerprint: str  # of the weights whose fc7 the autoencoder learnt
    autoencoder: str  # file names, beside the manifest
    codes_file: str
    index_file: str
    kind: str  # "flat" or "ivf"
    count: int
    epochs: int = 0
    trained_on: int = 0
    reconstruction_error: list = field(default_factory=list)
    updated: float = 0.0
    reencoded: int = 0  # by the last indexing run

    def files(self) -> set[str]:
        return {self.autoencoder, self.codes_file, self.index_file}

    def describe(self) -> str:
        return (
            f"{self.bits} bits ({self.bytes_per_image} bytes an image), "
            f"{self.count} encoded, {self.kind}"
        )


@dataclass
class SpaceRecord:
    """The whitened search space (spaces.py) published with this generation."""

    name: str  # "whitened"
    dimension: int
    shrink: float
    sample: int  # vectors the transform was learnt from
    learnt_from: int  # ok vectors in the collection then
    generation: int  # the generation that learnt it
    transform_file: str
    index_file: str
    kind: str

    def files(self) -> set[str]:
        return {self.transform_file, self.index_file}

    def describe(self) -> str:
        return (
            f"{self.name} {self.dimension}-d (learnt at generation {self.generation} from "
            f"{self.sample} of {self.learnt_from} vectors, shrinkage {self.shrink:g}), {self.kind}"
        )


@dataclass
class TrainingRecord:
    """An IVF training shared by the shards of a collection (training.py): the empty
    trained indexes every publish adds to instead of training, named by its signature."""

    kind: str  # ivfpq or ivfsq
    signature: str  # SHA-1 of the files below: equal signatures merge without training
    planned: int  # the collection size it was sized for (its number of inverted lists)
    nlist: int
    sample: int  # vectors it was trained on
    paper_file: str  # the empty trained index over raw fc7
    space_file: str = ""  # the empty trained index of the whitened space, if any
    transform_file: str = ""  # the whitening it applies
    space_dim: int = 0
    source: str = ""  # the index it was learnt in (`index --train-only`)

    def files(self) -> set[str]:
        return {f for f in (self.paper_file, self.space_file, self.transform_file) if f}

    def describe(self) -> str:
        return (
            f"{self.kind}, {self.nlist} lists, trained on {self.sample} vectors for "
            f"{self.planned} ({self.signature[:12]}, from {self.source})"
        )


@dataclass
class Manifest:
    """manifest.json: what a published generation of an index is."""

    model: ModelRecord
    dimension: int
    preprocess: PreprocessRecord
    format: str = FORMAT
    version: int = VERSION
    created: float = 0.0
    metric: str = "L2"
    generation: int = 0
    kind: str = ""
    kind_requested: str = "flat"
    vectors_file: str = ""
    counts: dict = field(default_factory=lambda: {"ok": 0, "failed": 0})
    updated: float = 0.0
    codes: CodesRecord | None = None
    precision: str = "fp32"  # what fc7 was computed in: fp32, bf16, or both ("bf16+fp32")
    space: SpaceRecord | None = None  # the whitened space, when learnt
    space_requested: str = ""  # "" in indexes made before search spaces: they answer in paper
    space_dim: int = 0  # the whitened dimension asked for
    space_note: str = ""  # why a whitened space was asked for but the index answers in paper
    shard: str = ""  # "I/N": the index holds shard I of N of its photos (index --shard)
    merged_from: list = field(default_factory=list)  # the shard indexes `merge` unioned
    training: TrainingRecord | None = None  # a shared IVF training (index --trained)

    def default_space(self) -> str:
        """The space a query answers in when it names none."""
        return self.space.name if self.space else "paper"

    def describe_space(self) -> str:
        """What `info` says about the search spaces."""
        if self.space:
            return f"{self.space.describe()}; paper (raw fc7, L2) also"
        if not self.space_requested:
            return "paper (made before search spaces: re-index to learn the whitened one)"
        return "paper" + (f" ({self.space_note})" if self.space_note else "")

    @classmethod
    def new(
        cls, fingerprint: str, weights: Path, layer: str, dimension: int, pre, precision="fp32"
    ) -> Manifest:
        """The manifest of an index about to be built with these weights."""
        return cls(
            model=ModelRecord(fingerprint, str(weights), weights_signature(weights), layer),
            dimension=int(dimension),
            preprocess=PreprocessRecord.of(pre),
            created=time.time(),
            precision=precision,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("codes", "space", "training"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        d = _known(cls, d)
        d["model"] = ModelRecord(**_known(ModelRecord, d["model"]))
        d["preprocess"] = PreprocessRecord(**_known(PreprocessRecord, d.get("preprocess") or {}))
        if d.get("codes"):
            d["codes"] = CodesRecord(**_known(CodesRecord, d["codes"]))
        if d.get("space"):
            d["space"] = SpaceRecord(**_known(SpaceRecord, d["space"]))
        if d.get("training"):
            d["training"] = TrainingRecord(**_known(TrainingRecord, d["training"]))
        return cls(**d)


def read_manifest(index_dir: Path) -> Manifest | None:
    """The published manifest, None when there is none yet; IndexError_ when unusable."""
    p = index_dir / "manifest.json"
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise IndexError_(f"{p}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexError_(f"{index_dir}: not an alexsearch index (manifest format)")
    if m.get("version", 0) > VERSION:
        raise IndexError_(f"{index_dir}: index format {m['version']} is newer than this tool")
    try:
        return Manifest.from_dict(m)
    except (KeyError, TypeError, AttributeError) as e:
        raise IndexError_(f"{p}: malformed manifest ({type(e).__name__}: {e})") from None


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    body = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
    atomic_write(index_dir / "manifest.json", lambda f: f.write(body))


def not_published(index_dir: Path) -> str:
    return (
        f"the index at {index_dir} is not complete yet (its first run was interrupted or is "
        "still running): run `alexsearch index` on the same photos to finish it"
    )


def no_index(index_dir: Path, named: bool) -> str:
    return f"no index at {index_dir}: build one with `alexsearch index PHOTOS" + (
        f" --index {index_dir}`" if named else "`"
    )


def open_existing(index: str | os.PathLike | None) -> tuple[Path, Manifest]:
    """The index folder and its manifest, or a clear message saying how to make one."""
    d = resolve_dir(index)
    m = read_manifest(d) if d.is_dir() else None
    if m is None and (d / "catalogue.sqlite").exists():
        raise IndexError_(not_published(d))
    if m is None:
        raise IndexError_(no_index(d, index is not None))
    return d, m


def weights_signature(path) -> list:
    """(resolved path, size, mtime): the weights file an index was built with, unchanged."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return [str(p), -1, -1]
    return [str(p), st.st_size, st.st_mtime_ns]


def check_model(index_dir: Path, manifest: Manifest, fingerprint: str, pre, weights_path, fix):
    """Refuse weights other than the index's, and the same weights with other
    preprocessing (mean, channel order, geometry): either way their vectors would not be
    comparable. Indexes made before the preprocessing signature was recorded are checked
    on the weights alone."""
    have = manifest.model
    if have.fingerprint != fingerprint:
        raise IndexError_(
            f"{index_dir} was built with weights {have.fingerprint} ({have.weights}), "
            f"but {weights_path} holds {fingerprint}; {fix}"
        )
    recorded = manifest.preprocess
    if recorded.signature in (None, pre.signature()):
        return
    was, now = recorded.geometry, pre.geometry()
    what = f"{was} vs {now}" if was != now else "mean, pixel scale or channel order"
    raise IndexError_(
        f"{index_dir} was built with these weights but other preprocessing ({what}) than "
        f"{weights_path}'s; {fix}"
    )
