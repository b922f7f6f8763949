"""One IVF training shared by the shards of a collection (`index --train-only`,
`--trained`), and what `merge` carries over instead of computing again: the shards'
inverted lists, their binary codes, their labels (issue 17)."""

import hashlib
import json
import sqlite3

import numpy as np
import pytest
from helpers import SAFETY_TIMEOUT, one_line_error, run_in_process
from make_shapes import make

import alexsearch
from alexsearch.index import merge, vectors
from alexsearch.index.catalogue import Catalogue
from alexsearch.index.manifest import read_manifest

SAMPLE = 280  # of 300 photos: the sample is a strict subset


def build(photos, index, ckpt, **kw):
    return alexsearch.build_index(photos, index, ckpt, device="cpu", precision="fp32", **kw)


def paths_of(index) -> set[str]:
    cat = Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        return set(cat.rows())
    finally:
        cat.close()


def vectors_by_path(index) -> dict[str, np.ndarray]:
    cat = Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        ok = cat.ok_files(4096)
        return {p: v.copy() for p, v in zip(ok.paths, ok.vectors, strict=True)}
    finally:
        cat.close()


def answers(index, queries, space, k=6):
    with alexsearch.open_index(index, precision="fp32") as ix:
        return [[(h.path, h.distance) for h in r.hits] for r in ix.query(queries, k, space=space)]


def same_answers(a, b):
    for ra, rb in zip(a, b, strict=True):
        assert [p for p, _ in ra] == [p for p, _ in rb]
        np.testing.assert_allclose([d for _, d in ra], [d for _, d in rb], rtol=1e-5, atol=1e-5)


def signature_of(index_dir, name) -> str:
    return merge.trained_signature(vectors.read_faiss(index_dir, name))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, init_ckpt):
    """300 photos; a training learnt from a sample of 280; shards 0/2 and 1/2 built
    from it; the whole folder built from it in one piece."""
    root = tmp_path_factory.mktemp("training")
    photos = root / "photos"
    make(photos, per_class=50, seed=1)
    t = root / "train"
    out = {"root": root, "photos": photos, "train": t, "init_ckpt": init_ckpt}
    out["train_summary"] = build(photos, t, init_ckpt, kind="ivfpq", train_only=True, sample=SAMPLE)
    for name, shard in (("s0", "0/2"), ("s1", "1/2"), ("one", None)):
        out[name] = root / name
        out[name + "_summary"] = build(photos, out[name], init_ckpt, shard=shard, trained=t)
    return out


def test_the_training_sample_is_the_same_on_every_machine(trained):
    photos = trained["photos"]
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    by_hash = sorted(
        files, key=lambda p: hashlib.sha1(p.relative_to(photos).as_posix().encode()).digest()
    )
    assert paths_of(trained["train"]) == {str(p) for p in by_hash[:SAMPLE]}
    s = trained["train_summary"]
    assert s.added == SAMPLE and s.kind == "ivfpq"
    t = read_manifest(trained["train"]).training
    assert (t.kind, t.sample, t.planned) == ("ivfpq", SAMPLE, 300)
    assert t.space_file and t.space_dim  # the whitened space is part of the training
    assert f"trained on {SAMPLE} vectors for 300" in s.training
    # the sample's photos are not extracted again by the shards: their fc7 is copied
    shards = [trained["s0_summary"], trained["s1_summary"]]
    assert sum(x.reused for x in shards) == SAMPLE == trained["one_summary"].reused
    assert sum(x.extracted for x in shards) == 300 - SAMPLE
    train_vecs = vectors_by_path(trained["train"])
    one_vecs = vectors_by_path(trained["one"])
    assert all(np.array_equal(one_vecs[p], v) for p, v in train_vecs.items())


def test_shards_of_one_training_merge_without_training_and_answer_as_one_piece(trained, tmp_path):
    t = read_manifest(trained["train"]).training
    for name in ("s0", "s1", "one"):
        m = read_manifest(trained[name])
        assert m.kind == "ivfpq" and m.training.signature == t.signature
        assert m.space.transform_file == t.transform_file  # not learnt again per shard
    out = tmp_path / "all"
    s = alexsearch.merge_indexes([trained["s0"], trained["s1"]], out)
    assert "inverted lists joined, nothing trained or encoded again" in s.training, s.training
    assert s.kind == "ivfpq" and s.total_ok == 300
    m = read_manifest(out)
    # the merged indexes hold the training's very centroids and codebooks
    assert signature_of(out, m.vectors_file) == signature_of(trained["train"], t.paper_file)
    assert signature_of(out, m.space.index_file) == signature_of(trained["train"], t.space_file)
    queries = sorted(str(p) for p in trained["photos"].rglob("*") if p.is_file())[::37]
    for space in ("paper", "whitened"):
        same_answers(answers(out, queries, space), answers(trained["one"], queries, space))
    # one transform for all: the shards answer together in the whitened space, as merged
    with alexsearch.open_indexes([trained["s0"], trained["s1"]], precision="fp32") as mi:
        together = [[(h.path, h.distance) for h in r.hits]
                    for r in mi.query(queries, 6, space="whitened")]  # fmt: skip
    same_answers(together, answers(out, queries, "whitened"))
    # nothing stale: the folder holds what its manifest names, the catalogue and lock
    named = {m.vectors_file, *m.space.files(), *m.training.files(), "manifest.json"}
    left = {p.name for p in out.iterdir()} - named
    assert all(n.startswith(("catalogue.sqlite", ".lock")) for n in left), left


def test_a_shard_with_unpublished_rows_is_added_to_the_training_again(trained, tmp_path):
    """A shard whose last run was stopped before publishing holds rows its FAISS index
    lacks: the merge adds the union's vectors to the training rather than join stale
    lists (and still trains nothing)."""
    import shutil

    s1 = tmp_path / "s1"
    shutil.copytree(trained["s1"], s1)
    db = sqlite3.connect(s1 / "catalogue.sqlite")
    db.execute(
        "INSERT INTO files (path, size, mtime_ns, digest, status, reason, vector, thumb,"
        " indexed_at) SELECT path || '.copy.png', size, mtime_ns, digest, status, reason,"
        " vector, thumb, indexed_at FROM files WHERE status='ok' LIMIT 1"
    )
    db.commit()
    db.close()
    out = tmp_path / "all"
    s = alexsearch.merge_indexes([trained["s0"], s1], out)
    assert "vectors added to it again" in s.training and "not published" in s.training
    assert s.total_ok == 301
    m = read_manifest(out)
    t = read_manifest(trained["train"]).training
    assert signature_of(out, m.vectors_file) == signature_of(trained["train"], t.paper_file)
    queries = sorted(str(p) for p in trained["photos"].rglob("*") if p.is_file())[::50]
    a, b = answers(out, queries, "paper", k=3), answers(trained["one"], queries, "paper", k=3)
    for ra, rb in zip(a, b, strict=True):  # the copy is as near as its original
        np.testing.assert_allclose(ra[0][1], rb[0][1], rtol=1e-5, atol=1e-5)


def codes_by_path(index) -> dict[str, bytes]:
    m = read_manifest(index)
    with np.load(index / m.codes.codes_file) as z:
        ids, packed = z["ids"], z["codes"]
    cat = Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        paths = cat.paths(ids.tolist())
        return {paths[int(i)]: c.tobytes() for i, c in zip(ids, packed, strict=True)}
    finally:
        cat.close()


def labels_by_path(index) -> dict[str, list]:
    cat = Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        return {p: cat.labels_of(r.id) for p, r in cat.rows().items()}
    finally:
        cat.close()


def test_merge_carries_the_codes_of_one_autoencoder_and_the_labels(trained, tmp_path, capsys):
    import shutil

    s0, s1, other = tmp_path / "s0", tmp_path / "s1", tmp_path / "s1-other"
    shutil.copytree(trained["s0"], s0)
    shutil.copytree(trained["s1"], s1)
    shutil.copytree(trained["s1"], other)
    alexsearch.build_codes(s0, bits=64, epochs=2)
    coder = s0 / read_manifest(s0).codes.autoencoder
    alexsearch.build_codes(s1, autoencoder=coder)
    alexsearch.build_codes(other, bits=64, epochs=2, seed=5)  # an autoencoder of its own

    out = tmp_path / "all"
    r = run_in_process(capsys, "merge", s0, s1, "--index", out, "--json")
    s = json.loads(r.stdout)
    assert s["codes"] == "carried over: 300 64-bit codes, none encoded again", s["codes"]
    assert "joined" in s["training"]
    merged = codes_by_path(out)
    assert merged == {**codes_by_path(s0), **codes_by_path(s1)} and len(merged) == 300
    m = read_manifest(out)
    assert (out / m.codes.autoencoder).read_bytes() == coder.read_bytes()
    with alexsearch.open_index(out) as ix:  # the carried codes answer Hamming queries
        hits = ix.query_ids([ix._current().catalogue.id_of(next(iter(merged)))], 3, binary=True)
    assert hits[0].hits and hits[0].hits[0].distance >= 0
    labels = labels_by_path(out)
    assert labels == {**labels_by_path(s0), **labels_by_path(s1)}
    assert all(len(v) == 5 for v in labels.values())  # every photo kept its top-5

    out2 = tmp_path / "all-other"
    s = alexsearch.merge_indexes([s0, other], out2)
    assert s.codes.startswith("not carried") and str(other) in s.codes
    assert read_manifest(out2).codes is None


def test_training_options_are_refused_in_one_line(trained, init_ckpt, tmp_path, capsys):
    from alexsearch.weights import checkpoint

    photos, t = trained["photos"], trained["train"]
    ix = tmp_path / "ix"
    for args, what in (
        (("--train-only", "--kind", "flat"), "--train-only trains an IVF kind"),
        (("--train-only", "--trained", t), "give one"),
        (("--sample", "5"), "--sample sizes the sample of --train-only"),
        (("--trained", tmp_path / "missing"), "no index at"),
        (("--trained", t, "--kind", "flat"), "would drop it"),
    ):
        r = run_in_process(capsys, "index", photos, "--index", ix, "--weights", init_ckpt,
                           "--device", "cpu", *args, check=False)  # fmt: skip
        one_line_error(r, what)
    plain = tmp_path / "plain"
    build(photos, plain, init_ckpt, shard="0/8")
    r = run_in_process(capsys, "index", photos, "--index", ix, "--weights", init_ckpt,
                       "--device", "cpu", "--trained", plain, check=False)  # fmt: skip
    one_line_error(r, "holds no training")
    other_w = tmp_path / "other.ckpt"
    checkpoint.save(checkpoint.init_checkpoint(10, seed=2), other_w)
    args = ("--weights", other_w, "--device", "cpu", "--trained", t, "--shard", "0/8")
    r = run_in_process(capsys, "index", photos, "--index", ix, *args, check=False)
    one_line_error(r, "learnt from weights")
    assert not (ix / "manifest.json").exists()
    info = json.loads(run_in_process(capsys, "info", "--index", trained["s0"], "--json").stdout)
    assert info["training"].startswith("ivfpq") and str(t) in info["training"]


def test_torchrun_ranks_of_an_ivf_kind_add_to_one_training_of_rank_0(trained, init_ckpt, tmp_path):
    from test_shards import torchrun, torchrun_env

    from alexsearch.index.distributed import training_dir

    out = tmp_path / "out"
    args = ("index", trained["photos"], "--index", out, "--device", "cpu", "--precision",
            "fp32", "--kind", "ivfpq", "--sample", SAMPLE, "--json")  # fmt: skip
    p = torchrun(*args, env=torchrun_env(init_ckpt))
    stdout, stderr = p.communicate(timeout=SAFETY_TIMEOUT)
    assert p.returncode == 0, stderr[-3000:]
    s = json.loads(stdout)  # rank 0 alone
    assert s["total_ok"] == 300 and s["kind"] == "ivfpq"
    # rank 0's sample is extracted once: the shards copy its vectors
    assert (s["reused"], s["extracted"]) == (SAMPLE, 300 - SAMPLE)
    got, want = vectors_by_path(out), vectors_by_path(trained["one"])
    assert sorted(got) == sorted(want)
    for p in got:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-4, atol=1e-5)
    assert "inverted lists joined, nothing trained or encoded again" in s["training"]
    t = read_manifest(training_dir(out)).training
    assert (t.sample, t.planned) == (SAMPLE, 300)
    m = read_manifest(out)
    assert m.training.signature == t.signature
    assert signature_of(out, m.vectors_file) == signature_of(training_dir(out), t.paper_file)
    assert paths_of(out) == paths_of(trained["one"])


def test_shards_take_the_training_index_autoencoder_and_merge_carries_their_codes(
    trained, init_ckpt, tmp_path
):
    import shutil

    t, s0, s1 = tmp_path / "train", tmp_path / "s0", tmp_path / "s1"
    for src, dst in ((trained["train"], t), (trained["s0"], s0), (trained["s1"], s1)):
        shutil.copytree(src, dst)
    alexsearch.build_codes(t, bits=32, epochs=2)
    coder = (t / read_manifest(t).codes.autoencoder).read_bytes()
    for shard, spec in ((s0, "0/2"), (s1, "1/2")):
        s = build(trained["photos"], shard, init_ckpt, shard=spec, trained=t)
        assert s.extracted == 0  # nothing to extract: the codes come from stored fc7
        m = read_manifest(shard)
        assert m.codes.count == s.total_ok and (shard / m.codes.autoencoder).read_bytes() == coder
    s = alexsearch.merge_indexes([s0, s1], tmp_path / "all")
    assert s.codes == "carried over: 300 32-bit codes, none encoded again", s.codes
    leftovers = [p.name for p in s0.iterdir() if p.name.startswith("codes-0")]
    assert not leftovers  # the empty codes a shard started from are gone


def test_merge_on_disk_answers_as_in_memory_and_needs_one_training(trained, tmp_path, capsys):
    shards = [trained["s0"], trained["s1"]]
    memory, disk, auto = tmp_path / "memory", tmp_path / "disk", tmp_path / "auto"
    alexsearch.merge_indexes(shards, memory)
    r = run_in_process(capsys, "merge", *shards, "--index", disk, "--on-disk", "--json")
    assert "joined on disk" in json.loads(r.stdout)["training"]
    m = read_manifest(disk)
    for name in (m.vectors_file, m.space.index_file):
        assert (disk / name).with_suffix(".ivfdata").is_file()
    queries = sorted(str(p) for p in trained["photos"].rglob("*") if p.is_file())[::41]
    for space in ("paper", "whitened"):
        same_answers(answers(disk, queries, space), answers(memory, queries, space))
    # past --max-memory the lists go to disk by themselves
    s = alexsearch.merge_indexes(shards, auto, max_memory="1K")
    assert "on disk" in s.training
    # merged again in memory: the old generation's lists go with it
    r = run_in_process(capsys, "merge", *shards, "--index", disk, "--in-memory", "--json")
    assert "on disk" not in json.loads(r.stdout)["training"]
    assert not list(disk.glob("*.ivfdata"))
    same_answers(answers(disk, queries, "paper"), answers(memory, queries, "paper"))
    # shards trained apart have no lists to join: refused before anything is written
    plain = [tmp_path / "p0", tmp_path / "p1"]
    for d, spec in zip(plain, ("0/8", "1/8"), strict=True):
        build(trained["photos"], d, trained["init_ckpt"], shard=spec)
    r = run_in_process(capsys, "merge", *plain, "--index", tmp_path / "no", "--on-disk",
                       check=False)  # fmt: skip
    one_line_error(r, "--on-disk joins the inverted lists of shards built from one training")
    assert not (tmp_path / "no").exists()
