"""Sharded indexing (`index --shard I/N`), `merge`, and `query` over several indexes
(issue 17): the pieces equal one index built at once."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import SAFETY_TIMEOUT, one_line_error, run_in_process
from make_shapes import make

import alexsearch
from alexsearch.index.catalogue import Catalogue


def build(photos, index, ckpt, **kw):
    return alexsearch.build_index(photos, index, ckpt, device="cpu", precision="fp32", **kw)


def by_path(index) -> dict[str, np.ndarray]:
    cat = Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        ok = cat.ok_files(4096)
        return {p: v.copy() for p, v in zip(ok.paths, ok.vectors, strict=True)}
    finally:
        cat.close()


def ids_by_path(index) -> dict[str, int]:
    cat = Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        return {p: r.id for p, r in cat.rows().items()}
    finally:
        cat.close()


def answers(index, queries, k=5, space="paper"):
    """[(path, distance)...] per query image: the hits as a user reads them."""
    with alexsearch.open_index(index, precision="fp32") as ix:
        return [[(h.path, h.distance) for h in r.hits] for r in ix.query(queries, k, space=space)]


def same_answers(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert [p for p, _ in ra] == [p for p, _ in rb]
        np.testing.assert_allclose([d for _, d in ra], [d for _, d in rb], rtol=1e-4, atol=1e-4)


def same_vectors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for p in a:
        np.testing.assert_allclose(a[p], b[p], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def built(tmp_path_factory, init_ckpt):
    """Shard 0/2, shard 1/2 and the whole folder at once, each indexed on its own."""
    root = tmp_path_factory.mktemp("shards")
    photos = root / "photos"
    make(photos, per_class=3, seed=1)
    out = {"root": root, "photos": photos}
    for name, shard in (("s0", "0/2"), ("s1", "1/2"), ("all", None)):
        out[name] = root / name
        out[name + "_summary"] = build(photos, out[name], init_ckpt, shard=shard)
    return out


def test_shards_split_the_photos_by_relative_path_and_merge_into_the_whole(built, tmp_path, capsys):
    s0, s1, whole = by_path(built["s0"]), by_path(built["s1"]), by_path(built["all"])
    assert s0 and s1 and not set(s0) & set(s1) and set(s0) | set(s1) == set(whole)
    assert built["s0_summary"].shard == "0/2" and built["s0_summary"].added == len(s0)
    info = json.loads(run_in_process(capsys, "info", "--index", built["s0"], "--json").stdout)
    assert info["files"] == len(s0)  # an ordinary index of its shard, queryable alone

    # the same shard of the same photos under another mount point: the same files
    moved = tmp_path / "elsewhere" / "pics"
    shutil.copytree(built["photos"], moved)
    from alexsearch.images.folders import walk
    from alexsearch.index import shards

    files, _ = walk([moved])
    picked = {f[0][len(str(moved)) :] for f in shards.select(files, [moved], (0, 2))}
    assert picked == {p[len(str(built["photos"])) :] for p in s0}

    merged = tmp_path / "merged"
    r = run_in_process(capsys, "merge", built["s0"], built["s1"], "--index", merged, "--json")
    summary = json.loads(r.stdout)
    assert (summary["added"], summary["deleted"], summary["total_ok"]) == (len(whole), 0, 18)
    same_vectors(by_path(merged), whole)  # carried over as they were extracted
    queries = sorted(whole)[::4] + [str(built["photos"] / "red_circles" / "000.jpg")]
    same_answers(answers(merged, queries), answers(built["all"], queries))

    # again, with nothing changed: nothing rewritten, the same ids
    ids = ids_by_path(merged)
    r = run_in_process(capsys, "merge", built["s0"], built["s1"], "--index", merged, "--json")
    again = json.loads(r.stdout)
    assert (again["added"], again["updated"], again["deleted"], again["unchanged"]) == (
        0, 0, 0, 18,
    )  # fmt: skip
    assert ids_by_path(merged) == ids


def test_remerge_after_a_shard_changed_equals_indexing_everything_at_once(
    built, init_ckpt, tmp_path, capsys
):
    root = tmp_path
    photos = root / "photos"
    shutil.copytree(built["photos"], photos)
    for name, shard in (("s0", "0/2"), ("s1", "1/2")):
        build(photos, root / name, init_ckpt, shard=shard)
    merged = root / "merged"
    alexsearch.merge_indexes([root / "s0", root / "s1"], merged)
    before = ids_by_path(merged)

    # change the collection: one photo replaced, one deleted, one new
    files = sorted(p for p in photos.rglob("*.jpg"))
    changed, deleted = files[0], files[1]
    make(root / "extra", per_class=1, seed=7)
    new = photos / "red_circles" / "new.jpg"
    shutil.copy(root / "extra" / "blue_squares" / "000.jpg", changed)
    shutil.copy(root / "extra" / "green_triangles" / "000.jpg", new)
    deleted.unlink()
    for name, shard in (("s0", "0/2"), ("s1", "1/2")):
        build(photos, root / name, init_ckpt, shard=shard)
    s = alexsearch.merge_indexes([root / "s0", root / "s1"], merged)
    assert (s.added, s.updated, s.deleted, s.total_ok) == (1, 1, 1, 18)
    whole = root / "whole"
    build(photos, whole, init_ckpt)
    same_vectors(by_path(merged), by_path(whole))
    qs = [str(changed), str(new), str(files[5])]
    same_answers(answers(merged, qs), answers(whole, qs))
    after = ids_by_path(merged)
    kept = set(before) - {str(deleted)}
    assert all(after[p] == before[p] for p in kept)  # unchanged rows keep their ids
    assert str(deleted) not in after


def test_merge_refuses_other_weights_preprocessing_precision_kind_and_overlaps(
    built, init_ckpt, tmp_path, capsys
):
    from alexsearch.weights import checkpoint

    few = tmp_path / "few"
    make(few, per_class=1, seed=3)
    other_w = tmp_path / "other.ckpt"
    checkpoint.save(checkpoint.init_checkpoint(10, seed=2), other_w)
    ck = checkpoint.load(init_ckpt)
    mean_w = tmp_path / "mean.ckpt"
    checkpoint.save(replace(ck, preprocess=replace(ck.preprocess, mean=[0.0] * 3)), mean_w)
    build(few, tmp_path / "w", other_w)
    build(few, tmp_path / "pre", mean_w)
    alexsearch.build_index(few, tmp_path / "bf16", init_ckpt, device="cpu", precision="bf16")
    hnsw = tmp_path / "hnsw"
    shutil.copytree(built["s1"], hnsw)
    build(built["photos"], hnsw, init_ckpt, shard="1/2", kind="hnsw")  # republished only

    out = tmp_path / "out"
    for other, what in (
        (tmp_path / "w", "weights"),
        (tmp_path / "pre", "preprocessing"),
        (tmp_path / "bf16", "precision (bf16 vs fp32)"),
        (hnsw, "kind (hnsw vs flat)"),
    ):
        r = run_in_process(capsys, "merge", built["s0"], other, "--index", out, check=False)
        one_line_error(r, "cannot merge", str(other), what)
    r = run_in_process(capsys, "merge", built["s0"], built["all"], "--index", out, check=False)
    one_line_error(r, "both hold", str(built["photos"]))
    assert not (out / "manifest.json").exists()  # nothing was published

    # an ordinary index is not overwritten by a merge; a shard named twice is refused
    r = run_in_process(capsys, "merge", built["s0"], built["s1"], "--index", built["all"],
                       check=False)  # fmt: skip
    one_line_error(r, "not a merge")
    r = run_in_process(capsys, "merge", built["s0"], built["s0"], "--index", out, check=False)
    one_line_error(r, "named twice")
    r = run_in_process(capsys, "index", few, "--index", out, "--shard", "2/2", check=False)
    one_line_error(r, "--shard 2/2")
    # a shard's index is not re-indexed as another shard or as the whole (it would drop
    # the other shards' photos), nor a merge as an ordinary index
    for index, shard, what in (
        (built["s0"], (), "holds shard 0/2"),
        (built["s0"], ("--shard", "1/2"), "holds shard 0/2"),
        (built["all"], ("--shard", "0/2"), "holds all its photos"),
    ):
        r = run_in_process(capsys, "index", built["photos"], "--index", index, *shard,
                           check=False)  # fmt: skip
        one_line_error(r, what)
    merged = tmp_path / "merged"
    alexsearch.merge_indexes([built["s0"], built["s1"]], merged)
    r = run_in_process(capsys, "index", built["photos"], "--index", merged, check=False)
    one_line_error(r, "is a merge of 2 shard indexes")


def test_query_over_several_indexes_answers_as_their_merge(built, init_ckpt, tmp_path, capsys):
    merged = tmp_path / "merged"
    alexsearch.merge_indexes([built["s0"], built["s1"]], merged)
    photos = built["photos"]
    qs = [photos / "red_circles" / "000.jpg", photos / "blue_squares" / "001.jpg"]

    def query(*indexes, extra=()):
        args = [a for ix in indexes for a in ("--index", ix)]
        r = run_in_process(capsys, "query", *qs, *args, "--k", "7", "--json", *extra)
        return json.loads(r.stdout)

    over = query(built["s0"], built["s1"])
    one = query(merged)
    for a, b in zip(over, one, strict=True):
        assert a["query"] == b["query"] and a["space"] == "paper"
        assert [h["path"] for h in a["neighbours"]] == [h["path"] for h in b["neighbours"]]
        assert a["query"] not in [h["path"] for h in a["neighbours"]]  # itself left out
        np.testing.assert_allclose(
            [h["distance"] for h in a["neighbours"]],
            [h["distance"] for h in b["neighbours"]],
            rtol=1e-4,
        )
        assert [h["rank"] for h in a["neighbours"]] == list(range(1, 8))
        # each hit names the index it came from, where its id is valid
        for h in a["neighbours"]:
            assert h["path"] in by_path(
                built["s0"] if h["index"] == str(built["s0"]) else built["s1"]
            )
    # with itself kept, each query is its own nearest, from the shard that holds it
    me = query(built["s0"], built["s1"], extra=("--include-self",))
    assert [r["neighbours"][0]["path"] for r in me] == [str(q) for q in qs]
    # vectors too, answered alike
    with alexsearch.open_indexes([built["s0"], built["s1"]]) as ix:
        vec = by_path(built["all"])[str(qs[0])]
        got = ix.query(vec[None], k=7)[0].hits
    assert [h.path for h in got][1:] == [h["path"] for h in one[0]["neighbours"]][:6]

    # refused: other weights, whitened spaces not learnt alike, binary codes
    few = tmp_path / "few"
    make(few, per_class=1, seed=3)
    from alexsearch.weights import checkpoint

    other_w = tmp_path / "other.ckpt"
    checkpoint.save(checkpoint.init_checkpoint(10, seed=2), other_w)
    build(few, tmp_path / "w", other_w)
    r = run_in_process(capsys, "query", qs[0], "--index", built["s0"], "--index", tmp_path / "w",
                       check=False)  # fmt: skip
    one_line_error(r, "not comparable", "weights")
    for extra, what in (
        (("--space", "whitened"), "no whitened space"),
        (("--binary",), "merge the indexes"),
        (("--expand", "2"), "merge the indexes"),
    ):
        r = run_in_process(capsys, "query", qs[0], "--index", built["s0"], "--index",
                           built["s1"], *extra, check=False)  # fmt: skip
        one_line_error(r, what)


def torchrun(*args, env):
    """`torchrun --standalone --nproc_per_node=2 -m alexsearch ARGS`, started."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "alexsearch", *map(str, args)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


def committed(index) -> int:
    p = index / "catalogue.sqlite"
    if not p.exists():
        return 0
    try:
        cat = Catalogue(p, readonly=True)
    except Exception:
        return 0
    try:
        return sum(cat.count())
    except sqlite3.Error:
        return 0
    finally:
        cat.close()


def test_torchrun_two_gloo_ranks_index_like_one_process_and_resume_after_kill_9(
    built, init_ckpt, tmp_path, capsys
):
    root = str(Path(alexsearch.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALEXSEARCH_WEIGHTS": str(init_ckpt),
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    out = tmp_path / "out"
    args = ("index", built["photos"], "--index", out, "--device", "cpu", "--json",
            "--batch-size", "1", "--commit-every", "1")  # fmt: skip
    # kill -9 rank 1 once it has committed its first photo (its shard's lock names it)
    p = torchrun(*args, env=env)
    rank1 = out / "shards" / "rank-1-of-2"
    while p.poll() is None and committed(rank1) < 1:
        time.sleep(0.02)
    assert p.poll() is None, "rank 1 finished before it could be killed"
    os.kill(int((rank1 / ".lock").read_text().strip()), signal.SIGKILL)
    p.communicate(timeout=SAFETY_TIMEOUT)
    assert p.returncode != 0 and not (out / "manifest.json").exists()
    done = committed(rank1) + committed(out / "shards" / "rank-0-of-2")
    assert 1 <= committed(rank1) < len(by_path(built["s1"]))

    p = torchrun(*args, env=env)
    stdout, stderr = p.communicate(timeout=SAFETY_TIMEOUT)
    assert p.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)  # only rank 0 prints
    assert summary["extracted"] == 18 - done  # nothing committed is extracted again
    assert summary["total_ok"] == 18
    same_vectors(by_path(out), by_path(built["all"]))
    qs = [str(built["photos"] / "red_circles" / "000.jpg"), sorted(by_path(out))[7]]
    same_answers(answers(out, qs), answers(built["all"], qs))
