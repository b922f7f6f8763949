"""The public Python API, the one every front end calls (the CLI, a server, a notebook).

    import alexsearch

    summary = alexsearch.build_index(["photos"], index="indexes/photos", weights="net.ckpt")
    with alexsearch.open_index("indexes/photos") as ix:
        for hit in ix.query(["cat.jpg"], k=6)[0].hits:
            print(hit.rank, hit.distance, hit.path)

Which weights: `weights=`, else $ALEXSEARCH_WEIGHTS, else (for a query) the weights the
index records, else those `alexsearch weights fetch` made the default. Weights or
preprocessing other than the index's are refused. On the CPU a query runs the network
on numpy and never imports torch; `import alexsearch` imports neither torch nor FAISS.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np

from .errors import IndexError_, NotFoundError, UserError
from .images.decode import ImageError
from .images.files import DEFAULT_MAX_MEGAPIXELS
from .index import BATCH, info, manifest
from .index.build import IndexSummary
from .index.search import LabelHit, LabelResult, QueryResult, Snapshot
from .progress import Progress

ImageLike = str | os.PathLike | bytes  # a file, or the bytes of one


def build_index(
    paths,
    index: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    kind: str | None = None,
    progress: Progress | None = None,
    *,
    max_memory: int | str | None = None,
    batch_size: int = BATCH,
    workers: int | None = None,
    exclude: list[str] = (),
    hidden: bool = False,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    wait: bool = False,
    commit_every: int = 256,
    precision: str = "auto",
    space: str | None = None,
    space_dim: int | None = None,
    shard: str | tuple[int, int] | None = None,
    train_only: bool = False,
    sample: int | None = None,
    trained: str | os.PathLike | None = None,
) -> IndexSummary:
    """Index photos (folders, searched recursively, or files) into `index` (default
    indexes/default): what `alexsearch index` runs. Incremental: only new and changed
    files are extracted. Returns the summary `index --json` prints.

    max_memory: the budget of kind="auto" in bytes, or a size such as "4G". progress:
    called as progress("extracting", done, total, img_per_s=...). precision: "fp32",
    "bf16", or "auto" (bf16 on a GPU or a CPU with native bf16, fp32 elsewhere).
    space: "whitened" (learn the whitened search space at publish, the default) or
    "paper" (raw fc7 only); None keeps what the index asked for before. space_dim: the
    whitened dimension (default 256). shard: "I/N" or (I, N), only the photos whose
    path relative to its root hashes to shard I of N (index/shards.py): an ordinary
    index of that shard, which merge_indexes() unions with the others. kind: "flat"
    (exact), "hnsw", "ivfpq", "ivfsq" or "auto"; None keeps the index's, flat for a new one.

    train_only: index a sample of the photos (`sample` of them, default 50,000, the
    same on every machine) and learn from it, once, an IVF training for the whole
    collection (kind "ivfpq" or "ivfsq"). trained: such an index; this one then copies
    its training and adds its vectors to it instead of training, so shards built from
    one training merge without training or encoding again (index/training.py).

    Under torchrun (RANK, WORLD_SIZE set) each process indexes shard RANK/WORLD_SIZE
    under `index`/shards and rank 0 merges them into `index` (index/distributed.py):
    rank 0 returns the summary, the other ranks None."""
    from .index import build, distributed, shards

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    run = build.run
    if distributed.under_torchrun():
        if shard is not None:
            raise UserError("--shard: under torchrun each rank takes shard RANK/WORLD_SIZE")
        if train_only:
            raise UserError(
                "--train-only: under torchrun rank 0 learns the training of an IVF kind "
                "itself (OUT/training); run --train-only without torchrun for --trained"
            )
        run = distributed.build
    return run(
        [Path(p) for p in paths],
        manifest.resolve_dir(index),
        weights=weights,
        device=device,
        kind=kind,
        max_memory=parse_bytes(max_memory),
        batch_size=batch_size,
        workers=workers,
        exclude=list(exclude),
        hidden=hidden,
        max_megapixels=max_megapixels,
        wait=wait,
        progress=progress,
        commit_every=commit_every,
        precision=precision,
        space=space,
        space_dim=space_dim,
        trained=None if trained is None else Path(trained),
        sample=sample,
        **(
            {}
            if run is not build.run
            else {"shard": shards.parse_shard(shard), "train_only": train_only}
        ),
    )


def merge_indexes(
    shards,
    index: str | os.PathLike | None = None,
    wait: bool = False,
    max_memory: int | str | None = None,
    on_disk: bool | None = None,
):
    """One index at `index` from the shard indexes `shards` (what `alexsearch merge`
    runs): catalogues unioned with new ids, vectors, codes and labels carried over,
    published atomically; merging again after a shard changed updates only what changed.
    Shards built from one training (build_index(trained=...)) are joined list by list,
    nothing trained or encoded again; on_disk puts those lists in memory-mapped .ivfdata
    files (None: when the shards' indexes exceed max_memory). Shards built with other
    weights, preprocessing, precision, kind or space, or holding the same path, are
    refused. Returns the summary `merge --json` prints."""
    from .index import merge

    if isinstance(shards, (str, os.PathLike)):
        shards = [shards]
    return merge.merge(
        [Path(s) for s in shards], manifest.resolve_dir(index), wait, parse_bytes(max_memory),
        on_disk,
    )  # fmt: skip


def build_codes(
    index: str | os.PathLike | None = None,
    bits: int | None = None,
    epochs: int = 50,
    seed: int = 0,
    autoencoder: str | os.PathLike | None = None,
    wait: bool = False,
    progress: Progress | None = None,
):
    """Binary codes for an index (what `alexsearch codes` runs): train the paper's deep
    autoencoder on its fc7 vectors (or use a saved one), encode every vector, publish a
    Hamming index. bits: 256 when training; a given autoencoder's own otherwise (a
    different explicit `bits` is refused). Returns the summary `codes --json` prints."""
    from .index import codes

    ae = Path(autoencoder) if autoencoder is not None else None
    return codes.build(index, bits, epochs, seed, ae, wait, progress)


def classify(
    images: list[ImageLike] | ImageLike,
    weights: str | os.PathLike | None = None,
    ten_crop: bool = False,
    device: str = "cpu",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    precision: str = "auto",
):
    """Each image's top-5 classes with their probabilities (what `alexsearch classify`
    prints): a list of Classification (`.classes`: (name, probability), best first;
    `.error` for an unreadable image; `.to_dict()` is what `classify --json` prints).
    The centre crop by default, computed as indexing computes the classes it stores
    (on the CPU without torch); ten_crop: the paper's average of the softmax over ten
    crops, as `alexsearch eval`. Weights: `weights`, else $ALEXSEARCH_WEIGHTS, else the
    fetched default."""
    from .evaluate.predict import classify_images
    from .weights import locations

    if isinstance(images, (str, os.PathLike, bytes)):
        images = [images]
    path = locations.resolve(weights)
    return classify_images(images, path, ten_crop, device, max_megapixels, precision)


def open_index(
    index: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    precision: str = "auto",
) -> Index:
    """An index to query and describe (read-only). Raises IndexError_ when there is none
    at `index` (default indexes/default). precision: what a query's fc7 is computed in;
    "auto" is fp32 on the CPU (no torch) and bf16 on a GPU; any agrees with any index."""
    return Index(index, weights, device, max_megapixels, precision)


def open_indexes(
    indexes,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    precision: str = "auto",
) -> MultiIndex:
    """Several indexes queried as one, without merging them (`query --index A --index
    B`): each answers its k nearest, combined by distance. They must share weights and
    preprocessing; they answer in the paper space (see index/multi.py for why)."""
    return MultiIndex(list(indexes), weights, device, max_megapixels, precision)


class MultiIndex:
    """Several indexes opened for reading and queried together (index/multi.py)."""

    def __init__(
        self, indexes, weights=None, device="cpu", max_megapixels=DEFAULT_MAX_MEGAPIXELS,
        precision="auto",
    ):  # fmt: skip
        from .index import multi

        if not indexes:
            raise UserError("give at least one --index")
        real = [os.path.realpath(manifest.resolve_dir(d)) for d in indexes]
        if len(set(real)) != len(real):
            raise UserError("an index is named twice")
        self.parts = []
        try:
            for d in indexes:
                self.parts.append(Index(d, weights, device, max_megapixels, precision))
            dirs = [p.dir for p in self.parts]
            multi.check_comparable(dirs, [p._current().manifest for p in self.parts])
        except BaseException:
            self.close()
            raise

    def query(
        self,
        images: list[ImageLike] | ImageLike,
        k: int = 6,
        binary: bool = False,
        rerank: int | None = None,
        include_self: bool = False,
        space: str | None = None,
        expand: int | None = None,
    ) -> list[QueryResult]:
        """Index.query() over every index: the k nearest of them all, each hit naming
        its index (`Hit.index`; ids are per index). An image inside one of them is left
        out of its own results unless `include_self`. Paper space unless whitened is
        asked and every index holds the same transform; no binary codes or expansion."""
        from .index import multi

        if isinstance(images, (str, os.PathLike, bytes)):
            images = [images]
        _check_k(k, rerank)
        multi.check_options(binary, rerank, expand)
        with self._locked() as snaps:
            dirs = [p.dir for p in self.parts]
            space = multi.common_space(dirs, [s.manifest for s in snaps], space)
        if isinstance(images, np.ndarray):
            vecs = np.asarray(images, np.float32)
            results = [QueryResult("") for _ in range(len(np.atleast_2d(vecs)))]
            searched, vecs = results, list(np.atleast_2d(vecs))
            dim = self.parts[0]._current().manifest.dimension
            if vecs and len(vecs[0]) != dim:
                raise UserError(f"query vectors of {len(vecs[0])}: expected rows of {dim}")
        else:
            first = self.parts[0]
            with first._lock:
                embedder = first._embedder_for(first._current())
            results, searched, vecs = _embed_images(embedder, images)
        self._search_all(searched, vecs, k, include_self, space)
        for res in results:
            res.space, res.expand = space, 0
        return results

    def query_ids(
        self,
        refs,
        k: int = 6,
        binary: bool = False,
        rerank: int | None = None,
        include_self: bool = False,
        space: str | None = None,
        expand: int | None = None,
    ) -> list[QueryResult]:
        """query() for photos already in the indexes, each named "PART:ID" (its index's
        position and its catalogue id there; or a (part, id) pair): its stored fc7
        searched in every index, itself left out unless `include_self`. NotFoundError for
        a part or id that names no indexed file; UserError for a malformed name."""
        from .index import multi

        if isinstance(refs, (str, tuple)):
            refs = [refs]
        _check_k(k, rerank)
        multi.check_options(binary, rerank, expand)
        with self._locked() as snaps:
            space = multi.common_space([p.dir for p in self.parts], [s.manifest for s in snaps],
                                       space)  # fmt: skip
            results, vecs = [], []
            for r in refs:
                part, file_id = self._resolve(r)
                cat = snaps[part].catalogue
                path, vec = cat.ok_path(file_id), cat.vector_of(file_id)
                if path is None or vec is None:
                    raise NotFoundError(f"no indexed file with id {file_id} in index {part}")
                results.append(QueryResult(query=path))
                vecs.append(vec)
        self._search_all(results, vecs, k, include_self, space)
        for res in results:
            res.space, res.expand = space, 0
        return results

    def query_label(self, word: str, k: int = 20, min_prob: float = 0.0) -> LabelResult:
        """Index.query_label() over every index: the k most probable photos of them all
        (each hit naming its index and part); the probabilities come from the same
        weights' fc8 in every index, so they compare as they are."""
        from .index import multi

        _check_k(k, None)
        found = [p.query_label(word, k, min_prob) for p in self.parts]
        return multi.combine_labels(found, [str(p.dir) for p in self.parts], k)

    def info(self) -> dict:
        """What the indexes are together: totals of files, failures (each naming its
        index) and bytes, what they share, and each one's own `info()` under `parts`."""
        from .index import multi

        return multi.describe([p.info() for p in self.parts])

    def generation(self) -> tuple[int, ...]:
        """Each index's current generation (each follows its own updates)."""
        return tuple(p.generation() for p in self.parts)

    def codes(self) -> None:
        """None: binary codes belong to one index each (merge to search them)."""
        return None

    def load_network(self) -> None:
        """Load the network now and check it against the indexes (they share weights)."""
        self.parts[0].load_network()

    def path(self, ref) -> str:
        """The path of photo `ref` ("PART:ID")."""
        part, file_id = self._resolve(ref)
        return self.parts[part].path(file_id)

    def thumbnail_png(self, ref) -> bytes:
        """The stored thumbnail (PNG) of photo `ref` ("PART:ID")."""
        part, file_id = self._resolve(ref)
        return self.parts[part].thumbnail_png(file_id)

    def image(self, ref) -> tuple[bytes, str]:
        """Index.image() of photo `ref` ("PART:ID"), read only from inside its index's
        indexed folders."""
        part, file_id = self._resolve(ref)
        return self.parts[part].image(file_id)

    def kernels_png(self) -> bytes:
        """The conv1 kernels of the indexes' weights (one set: they share weights)."""
        return self.parts[0].kernels_png()

    def duplicates(self, *args, **kwargs):
        """Refused: duplicates are found among one index's photos."""
        from .index import multi

        raise UserError(f"duplicates are found within one index: {multi.MERGE_FIRST}")

    def tsne_map(self, *args, **kwargs):
        """Refused: the t-SNE map is laid out over one index's photos."""
        from .index import multi

        raise UserError(f"the t-SNE map is drawn over one index: {multi.MERGE_FIRST}")

    def _resolve(self, ref) -> tuple[int, int]:
        from .index import multi

        if isinstance(ref, tuple):
            return multi.parse_ref(multi.ref(*(int(x) for x in ref)), len(self.parts))
        return multi.parse_ref(ref, len(self.parts))

    def _search_all(self, searched, vecs, k, include_self, space) -> None:
        """Fill each result's hits: the k nearest of its vector over every index, an
        indexed query (by its path) left out of its own results unless include_self."""
        from .index import multi

        if not searched:
            return
        per_index = []
        with self._locked() as snaps:
            for snap in snaps:
                exclude = [
                    None if include_self or not r.query else snap.catalogue.id_of(r.query)
                    for r in searched
                ]
                per_index.append(snap.search(np.stack(vecs), k, exclude, space, 0))
        labels = [str(p.dir) for p in self.parts]
        for i, res in enumerate(searched):
            res.hits = multi.combine([found[i] for found in per_index], labels, k)

    def _locked(self):
        """Every part's current snapshot, each under its lock, as a context manager."""
        from contextlib import ExitStack, contextmanager

        @contextmanager
        def hold():
            with ExitStack() as stack:
                snaps = []
                for p in self.parts:
                    stack.enter_context(p._lock)
                    snaps.append(p._current())
                yield snaps

        return hold()

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def __enter__(self) -> MultiIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Index:
    """An index opened for reading. Each query answers from the latest published
    generation (a writer publishing meanwhile is picked up, never seen half-written);
    the network is loaded at the first query by image (or by `load_network`) and kept.

    Safe to share between threads (a server's): the snapshot and its SQLite connection
    are used under one lock, images are embedded outside it."""

    def __init__(
        self, index, weights=None, device="cpu", max_megapixels=DEFAULT_MAX_MEGAPIXELS,
        precision="auto",
    ):  # fmt: skip
        self.dir = manifest.resolve_dir(index)
        self._precision = precision
        self._named = index is not None
        self._weights = weights
        self._device = device
        self._max_megapixels = max_megapixels
        self._snapshot: Snapshot | None = None
        self._embedder = None
        self._lock = threading.RLock()  # the snapshot, its catalogue, the embedder's loading
        self._map_lock = threading.Lock()  # one t-SNE computation at a time
        self._maps: dict[tuple[int, str], dict] = {}
        self._kernels: bytes | None = None
        if manifest.read_manifest(self.dir) is None and not self._catalogue_exists():
            raise IndexError_(manifest.no_index(self.dir, self._named))

    # -- reading

    def info(self) -> dict:
        """What `alexsearch info --index --json` prints: files, failures with reasons,
        weights, geometry, kind, codes, bytes on disk; `published` False (and a note)
        while the first indexing run has not finished."""
        return info.describe(self.dir, self._named)

    def query(
        self,
        images: list[ImageLike] | ImageLike,
        k: int = 6,
        binary: bool = False,
        rerank: int | None = None,
        include_self: bool = False,
        space: str | None = None,
        expand: int | None = None,
        label: str | None = None,
        min_prob: float = 0.0,
    ) -> list[QueryResult]:
        """The k nearest indexed photos of each image, nearest first: one QueryResult per
        image (its `to_dict()` is what `query --json` prints). An image that cannot be
        read gets an `error` instead of hits. An image that is itself in the index is
        left out of its own results unless `include_self`. `images` may also be fc7
        vectors (a float array, one row per query, the index's dimension): they are
        searched as they are, without the network.

        space: "paper" (Euclidean on raw fc7, as the paper) or "whitened"; None: the
        index's default (whitened when it has learnt one). expand=N: average query
        expansion with the first N neighbours; None: spaces.DEFAULT_EXPAND in the
        whitened space, 0 in paper. Each result says which space and expansion answered.
        binary: Hamming k-NN over the binary codes (`alexsearch codes`); rerank=N: a
        Hamming shortlist of N re-ranked by exact fc7 distance.
        label: only photos whose top-5 classes match this word (see query_label), with
        at least `min_prob`, searched exactly among them (no expansion); each hit then
        says its matching class and probability."""
        if isinstance(images, (str, os.PathLike, bytes)):
            images = [images]
        rerank = _check_k(k, rerank)
        with self._lock:
            snap = self._current()
            space, expand = _space_for(snap, space, expand, binary, rerank, label)
            match = _label_match(snap, label, min_prob)
            if isinstance(images, np.ndarray):
                if binary or rerank:
                    raise UserError("query vectors are searched as fc7, not as binary codes")
                return self._query_vectors(snap, images, k, space, expand, match)
            embedder = self._embedder_for(snap)
        # outside the lock: other threads' queries go on meanwhile
        results, searched, vecs = _embed_images(embedder, images)
        with self._lock:
            snap = self._current()
            exclude = [
                None if include_self or not r.query else snap.catalogue.id_of(r.query)
                for r in searched
            ]
            self._search(snap, searched, vecs, exclude, k, binary, rerank, space, expand, match)
        for res in results:
            res.space, res.expand = space, expand
        if embedder.precision != snap.manifest.precision:  # allowed: the vectors agree
            for res in results:
                res.precision = embedder.precision
                res.index_precision = snap.manifest.precision
        return results

    def query_ids(
        self,
        file_ids: list[int] | int,
        k: int = 6,
        binary: bool = False,
        rerank: int | None = None,
        include_self: bool = False,
        space: str | None = None,
        expand: int | None = None,
        label: str | None = None,
        min_prob: float = 0.0,
    ) -> list[QueryResult]:
        """query() for photos already in the index, by catalogue id: their stored fc7
        (no network, no decoding). Each result is what query() gives for that file's
        path (`query` is the path; itself left out unless `include_self`). An id with no
        indexed file raises NotFoundError."""
        if isinstance(file_ids, int):
            file_ids = [file_ids]
        rerank = _check_k(k, rerank)
        with self._lock:
            snap = self._current()
            space, expand = _space_for(snap, space, expand, binary, rerank, label)
            match = _label_match(snap, label, min_prob)
            results, vecs = [], []
            for i in file_ids:
                path, vec = snap.catalogue.ok_path(int(i)), snap.catalogue.vector_of(int(i))
                if path is None or vec is None:
                    raise NotFoundError(f"no indexed file with id {i}")
                results.append(QueryResult(query=path))
                vecs.append(vec)
            exclude = [None if include_self else int(i) for i in file_ids]
            self._search(snap, results, vecs, exclude, k, binary, rerank, space, expand, match)
        for res in results:
            res.space, res.expand = space, expand
        return results

    def query_label(self, word: str, k: int = 20, min_prob: float = 0.0) -> LabelResult:
        """The indexed photos whose top-5 classes (computed at index time from fc7 and the
        weights' fc8) hold a class `word` names, most probable first, at most k, each with
        at least `min_prob` (what `query --label WORD --json` prints via to_dict()).
        `word` matches a class's names and synonyms ("tabby" or "tabby cat"), the last
        word(s) of one ("cat": "tabby cat", "tiger cat"), or an ImageNet synset id when
        the names carry them; no WordNet hierarchy (index/classnames.py says why). A
        word that names no class raises UserError listing the closest names."""
        _check_k(k, None)
        with self._lock:
            snap = self._current()
            match = snap.match_label(word, min_prob)
            ids = list(match.photos)[:k]
            paths = snap.catalogue.paths(ids)
        hits = [
            LabelHit(r + 1, match.photos[i][1], match.photos[i][0], paths[i], i)
            for r, i in enumerate(i for i in ids if i in paths)
        ]
        return LabelResult(word, match.classes, hits, match.unlabelled)

    def labels(self, file_id: int) -> list[dict]:
        """An indexed photo's top-5 classes, most probable first: [{"label", "prob"}]
        ([] for a photo indexed before labels, until the next `index` run)."""
        with self._lock:
            snap = self._current()
            if snap.catalogue.ok_path(int(file_id)) is None:
                raise NotFoundError(f"{self.dir}: no indexed file with id {file_id}")
            top = snap.catalogue.labels_of(int(file_id))
            vocab = snap.vocabulary() if top else []
        return [{"label": vocab[c].name, "prob": p} for c, p in top]

    def _query_vectors(
        self, snap: Snapshot, vecs, k, space, expand, match=None
    ) -> list[QueryResult]:
        vecs = np.asarray(vecs, np.float32)
        if vecs.ndim == 1:
            vecs = vecs[None]
        if vecs.ndim != 2 or vecs.shape[1] != snap.manifest.dimension:
            raise UserError(
                f"query vectors of shape {vecs.shape}: expected rows of "
                f"{snap.manifest.dimension} (the index's fc7)"
            )
        if match is not None:
            found = snap.search_among(vecs, k, match, None, space)
        else:
            found = snap.search(vecs, k, None, space, expand)
        return [QueryResult("", hits, space=space, expand=expand) for hits in found]

    def duplicates(
        self,
        tier: str | None = None,
        threshold: float | None = None,
        keep: str = "largest",
        progress: Progress | None = None,
        space: str | None = None,
    ):
        """Groups of duplicate photos (what `alexsearch duplicates --json` prints is its
        `to_dict()`): a `Report` whose `groups` each have a `tier` (exact: same bytes;
        near: the same photo resized, re-encoded, cropped, framed...; similar: another
        shot of the scene), the `keep` path and `files` (every member, the keep first,
        with its fc7 distance and pHash bits to the keep and the signal that put it
        there). tier: the loosest tier shown ("exact", "near" the default, "similar").
        threshold: the fc7 cosine distance of that tier (default: the benchmark's).
        keep: largest (most pixels, then the oldest file), oldest, newest, smallest.
        space: the fc7 space compared (None: the index's, whitened where it has one;
        "paper": raw fc7 centred), each with its own default thresholds. From the
        stored fc7 and thumbnails only: nothing is decoded."""
        from .index import duplicates

        with self._lock:
            snap = self._current()
            photos = duplicates.photos_of(snap, space)
        return duplicates.report(photos, tier, threshold, keep, progress)

    def move_duplicates(self, report, to: str | os.PathLike):
        """Move every file of `report` (from duplicates()) that is not its group's keep
        to folder `to`, keeping its path relative to its indexed folder; returns the
        `MoveRecord` also written there as JSON (none when there is nothing to move).
        Refuses, before moving anything, a target that exists; never deletes; a file
        changed since indexing stays."""
        from .index import duplicate_moves

        with self._lock:
            cat = self._current().catalogue
            roots = cat.roots()
            rows = cat.rows()
        expected = {p: (r.size, r.mtime_ns) for p, r in rows.items()}
        dest = Path(to)
        if dest.exists() and not dest.is_dir():
            raise UserError(f"--move-to {dest}: not a folder")
        moves = duplicate_moves.plan(report.groups, roots, dest, expected)
        if not moves:  # nothing to move: no folder made, no record written
            return duplicate_moves.MoveRecord("", [])
        return duplicate_moves.move_all(moves, dest)

    def load_network(self) -> None:
        """Load the network now (what the first query by image would do) and check it
        against the index: a server's start-up, so a mismatch is said before serving."""
        with self._lock:
            self._embedder_for(self._current())

    def codes(self) -> dict | None:
        """The binary codes of the current generation ({"bits", "bytes_per_image",
        "count"}), None when it has none (`alexsearch codes` makes them)."""
        with self._lock:
            c = self._current().manifest.codes
        return None if c is None else {"bits": c.bits, "bytes_per_image": c.bytes_per_image,
                                       "count": c.count}  # fmt: skip

    def generation(self) -> int:
        """The generation queries answer from now (it grows with each published update)."""
        with self._lock:
            return self._current().manifest.generation

    def path(self, file_id: int) -> str:
        """The path of catalogue id `file_id` (IndexError_ if the index has no such file)."""
        return self._row(file_id)[0]

    def thumbnail(self, file_id: int):
        """The stored 32x32 thumbnail of `file_id` as a PIL image (what indexing saw)."""
        from PIL import Image

        thumb = self._row(file_id)[1]
        if not thumb:
            raise IndexError_(f"{self.dir}: file {file_id} has no thumbnail (it failed)")
        side = int(round((len(thumb) / 3) ** 0.5))
        return Image.frombytes("RGB", (side, side), thumb)

    def vector(self, file_id: int) -> np.ndarray:
        """The fc7 vector (float32, 4096) the index holds for `file_id`."""
        with self._lock:
            vec = self._current().catalogue.vector_of(int(file_id))
        if vec is None:
            raise NotFoundError(f"{self.dir}: no indexed file with id {file_id}")
        return vec

    def thumbnail_png(self, file_id: int) -> bytes:
        """thumbnail(file_id) as PNG bytes."""
        buf = io.BytesIO()
        self.thumbnail(file_id).save(buf, format="PNG")
        return buf.getvalue()

    def image(self, file_id: int) -> tuple[bytes, str]:
        """(bytes, media type) of indexed file `file_id`'s own file, read only from inside
        the folders that were indexed (index/originals.py: a symlink pointing out is
        OutsideError); formats browsers do not show come as JPEG. NotFoundError for an
        id with no indexed file; OSError when the file cannot be read now."""
        from .index.originals import read_original

        with self._lock:
            cat = self._current().catalogue
            path = cat.ok_path(int(file_id))
            roots = cat.roots()
        if path is None:
            raise NotFoundError(f"no indexed file with id {file_id}")
        return read_original(path, roots, self._max_megapixels)

    def tsne_map(self, method: str = "opentsne", progress: Progress | None = None) -> dict:
        """Every indexed photo's 2-D t-SNE position (PCA to 50, then t-SNE) in the current
        generation: {"generation", "method", "points": [{"id", "x", "y", "label", "name"}]}
        (x, y in [0, 1]; label: the parent folder). Computed once per generation and
        cached beside the index (`tsne-<generation>.json`; kept in memory when the
        folder cannot be written)."""
        from .viz import map_cache

        with self._lock:
            snap = self._current()
            gen = snap.manifest.generation
        key = (gen, method)
        with self._map_lock:
            if key not in self._maps:
                self._maps = {key: map_cache.load_or_compute(self.dir, snap, method, self._lock,
                                                             progress)}  # fmt: skip
            return self._maps[key]

    def kernels_png(self) -> bytes:
        """The conv1 kernels of the index's weights as a PNG (the paper's Fig. 3)."""
        if self._kernels is None:
            from .viz.kernels import kernels_picture
            from .weights import checkpoint, locations

            with self._lock:
                recorded = self._current().manifest.model.weights or None
            img = kernels_picture(checkpoint.read(locations.resolve(self._weights, recorded)))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            self._kernels = buf.getvalue()
        return self._kernels

    def close(self) -> None:
        with self._lock:
            if self._snapshot is not None:
                self._snapshot.close()
                self._snapshot = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- behind the API

    def _catalogue_exists(self) -> bool:
        return (self.dir / "catalogue.sqlite").exists()

    def _current(self) -> Snapshot:
        """The snapshot of the latest published generation (reopened after a publish)."""
        published = manifest.read_manifest(self.dir)
        if published is None:
            if self._catalogue_exists():
                raise IndexError_(manifest.not_published(self.dir))
            raise IndexError_(manifest.no_index(self.dir, self._named))
        if self._snapshot is None or published.generation != self._snapshot.manifest.generation:
            fresh = Snapshot(self.dir)
            self.close()
            self._snapshot = fresh
            if self._embedder is not None:
                self._check(self._embedder)
        return self._snapshot

    def _search(
        self, snap, results, vecs, exclude, k, binary, rerank, space, expand, match=None
    ) -> None:
        """Fill each result's hits: the k nearest of its vector (under the lock), among
        the photos of a label's `match` when given."""
        if not vecs:
            return
        if match is not None:
            found = snap.search_among(np.stack(vecs), k, match, exclude, space)
        elif binary or rerank:
            found = snap.search_codes(np.stack(vecs), k, exclude, rerank)
        else:
            found = snap.search(np.stack(vecs), k, exclude, space, expand)
        for res, hits in zip(results, found, strict=True):
            res.hits = hits

    def _embedder_for(self, snap: Snapshot):
        if self._embedder is None:
            from .index.embed import open_embedder
            from .weights import locations

            path = locations.resolve(self._weights, snap.manifest.model.weights or None)
            embedder = open_embedder(path, self._device, self._max_megapixels, self._precision)
            self._check(embedder)
            self._embedder = embedder
        return self._embedder

    def _check(self, embedder) -> None:
        snap = self._snapshot
        fix = "query with the index's weights or rebuild the index"
        manifest.check_model(
            self.dir,
            snap.manifest,
            embedder.fingerprint,
            embedder.preprocess,
            embedder.weights,
            fix,
        )

    def _row(self, file_id: int) -> tuple[str, bytes]:
        with self._lock:
            row = self._current().catalogue.path_and_thumb(int(file_id))
        if row is None:
            raise NotFoundError(f"{self.dir}: no indexed file with id {file_id}")
        return row


def _embed_images(embedder, images):
    """fc7 of each query image (a path or the bytes of an upload): a result per image,
    the results that could be embedded, and their vectors in the same order (an image
    that cannot be decoded keeps its error in its result)."""
    results, searched, vecs = [], [], []
    for img in images:
        if isinstance(img, bytes):
            res, source = QueryResult(query=""), io.BytesIO(img)
        else:
            res = QueryResult(query=os.path.abspath(img))
            source = res.query
        results.append(res)
        try:
            vecs.append(embedder.embed(source))
        except ImageError as e:
            res.error = str(e)
            continue
        searched.append(res)
    return results, searched, vecs


def _space_for(snap: Snapshot, space, expand, binary, rerank, label=None) -> tuple[str, int]:
    """The space and expansion a query answers in (opening the codes a Hamming search
    needs, before the network: no codes -> said at once)."""
    from .index import spaces

    if expand is not None and expand < 0:
        raise UserError("--expand must be 0 or more")
    if label is not None and (binary or rerank):
        raise UserError("--label searches fc7 exactly: not with --binary or --rerank")
    if label is not None and expand:
        raise UserError("--label searches exactly among the label's photos: no --expand")
    if binary or rerank:
        snap.open_codes()
        return ("hamming" if not rerank else "paper"), 0
    space = snap.space(space)
    if label is not None:
        return space, 0
    if expand is None:
        expand = spaces.DEFAULT_EXPAND if space == "whitened" else 0
    return space, expand


def _label_match(snap: Snapshot, label, min_prob):
    """The photos a query's --label restricts it to (None: no label), said before the
    network loads: a word naming no class, or an index without labels, fails at once."""
    if label is None:
        return None
    return snap.match_label(label, min_prob)


def _check_k(k, rerank) -> int:
    """rerank as an int (0: none), after refusing a k or rerank that cannot be used."""
    if k < 1:
        raise UserError("--k must be at least 1")
    rerank = rerank or 0
    if rerank < 0:
        raise UserError("--rerank must not be negative")
    if rerank and rerank < k:
        raise UserError(f"--rerank {rerank} must be at least --k {k}")
    return rerank


def parse_bytes(size: int | str | None, option: str = "--max-memory") -> int | None:
    """512M, 4G, 1.5T or a plain number of bytes -> bytes (None stays None); `option`
    names the setting in the error."""
    if size is None or isinstance(size, int):
        return size
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = size.strip().lower().rstrip("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise UserError(f"{option} {size!r}: expected a size like 512M or 4G") from None
