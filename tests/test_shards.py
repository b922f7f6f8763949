"""Sharded indexing (`index --shard I/N`), `merge`, and `query` over several indexes
(issue 17): the pieces equal one index built at once."""

import json
import os
import re
import shutil
import signal
import socket
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
from alexsearch.index import distributed
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


def torchrun(*args, env, launch=("--standalone", "--nproc_per_node=2"), **popen):
    """`torchrun LAUNCH -m alexsearch ARGS`, started (stdout, stderr: pipes unless given)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *map(str, launch),
           "-m", "alexsearch", *map(str, args)]  # fmt: skip
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(cmd, text=True, env=env, **popen)


def torchrun_env(init_ckpt) -> dict:
    """The environment of a torchrun test: this checkout, the test weights, one thread."""
    root = str(Path(alexsearch.__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "ALEXSEARCH_WEIGHTS": str(init_ckpt),
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}  # fmt: skip


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
    env = torchrun_env(init_ckpt)
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


def two_nodes(photos, outs, env, logs: Path):
    """Two torchrun launchers on this machine as two nodes of one rank each (static
    rendezvous on a free port, node 0 hosting it): node N runs `alexsearch index PHOTOS
    --index outs[N]`, its worker's stdout and stderr kept apart under logs/nodeN (the
    launcher's own report of a failed worker would hide them). Returns, per node, the
    exit code, what its worker wrote and the launcher's log: [(code, stdout, stderr, log)]."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for node, out in enumerate(outs):
        launch = ("--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
                  "--master_addr=127.0.0.1", f"--master_port={port}",
                  "--log-dir", logs / f"node{node}", "--redirects=3")  # fmt: skip
        log = open(logs / f"launcher{node}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((torchrun("index", photos, "--index", out, "--device", "cpu", "--json",
                               env=env, launch=launch, stdout=log, stderr=log), log))  # fmt: skip
    got = []
    for node, (p, log) in enumerate(procs):
        p.wait(timeout=SAFETY_TIMEOUT)
        log.close()

        def worker(name, node=node):
            (path,) = (logs / f"node{node}").rglob(name)
            return path.read_text()

        launcher = (logs / f"launcher{node}.log").read_text()
        got.append((p.returncode, worker("stdout.log"), worker("stderr.log"), launcher))
    return got


def test_two_torchrun_nodes_sharing_out_index_like_one_process_and_refuse_an_out_not_shared(
    built, init_ckpt, tmp_path, capsys
):
    env = torchrun_env(init_ckpt)
    out = tmp_path / "out"
    out.mkdir()
    # node 1 names the shared OUT otherwise (another mount point): still shared
    (tmp_path / "mnt").symlink_to(out)
    (tmp_path / "logs").mkdir()
    nodes = two_nodes(built["photos"], [out, tmp_path / "mnt"], env, tmp_path / "logs")
    (c0, out0, _, _), (c1, out1, _, _) = nodes
    assert (c0, c1) == (0, 0), nodes
    summary = json.loads(out0)  # node 0 alone prints the summary
    assert out1 == "" and summary["total_ok"] == 18 and summary["extracted"] == 18
    same_vectors(by_path(out), by_path(built["all"]))
    # each rank took its shard by RANK (node 1's LOCAL_RANK is 0 too)
    for rank, shard in ((0, "s0"), (1, "s1")):
        assert sorted(by_path(out / "shards" / f"rank-{rank}-of-2")) == sorted(
            by_path(built[shard])
        )
    # each rank removed its run's token file; the shards merge by hand alike, with one
    # left beside a shard as by a rank killed
    assert not list((out / "shards").rglob(".torchrun-*"))
    distributed.write_token(out, 1, 2)
    r = run_in_process(capsys, "merge", *sorted((out / "shards").glob("rank-*")), "--index",
                       tmp_path / "by-hand", "--json")  # fmt: skip
    assert json.loads(r.stdout)["total_ok"] == 18
    same_vectors(by_path(tmp_path / "by-hand"), by_path(built["all"]))

    # each node on its own disk: node 0's OUT holds an old copy of rank 1's shard (the
    # path rank 1 writes to, as node 0 names it; an old token file in it), node 1 writes
    # to its own OUT
    alone, other = tmp_path / "alone", tmp_path / "other-disk"
    stale = alone / "shards" / "rank-1-of-2"
    shutil.copytree(out / "shards" / "rank-1-of-2", stale)
    before = ids_by_path(stale)
    (tmp_path / "logs2").mkdir()
    nodes = two_nodes(built["photos"], [alone, other], env, tmp_path / "logs2")
    for code, stdout, stderr, launcher in nodes:  # every rank stops, one line, first
        assert code != 0 and stdout == "", nodes
        assert re.search(r"exitcode\s*:\s*2\b", launcher), launcher  # the worker's: 2
        one_line_error(
            subprocess.CompletedProcess((), 2, stdout, stderr),
            f"cannot see the shard folder of rank 1 on {socket.gethostname()}",
            str(stale),
            "must be on storage every node shares",
            "--shard I/N",
        )
    assert not (alone / "manifest.json").exists() and ids_by_path(stale) == before
    assert committed(alone / "shards" / "rank-0-of-2") == 0
    assert committed(other / "shards" / "rank-1-of-2") == 0


def test_a_rank_takes_the_gpu_of_its_local_rank_not_of_its_rank(monkeypatch):
    """Node 1 of two with 2 GPUs each: RANK 3 is this machine's second process. (This
    machine may have no GPU: torch.cuda answers as a 2-GPU machine would.)"""
    import torch

    from alexsearch.errors import UserError

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.rank_device("auto") == "cuda:1" and chosen == [1]
    assert distributed.rank_device("cpu") == "cpu"
    # more processes on a node than it has GPUs: one line saying so
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match=r"LOCAL_RANK 2 on .* 2 GPU\(s\).*--nproc_per_node=2"):
        distributed.rank_device("cuda")
    with pytest.raises(UserError, match="each rank takes its own GPU"):
        distributed.rank_device("cuda:3")


def test_rank_0_sees_a_shard_folder_only_by_this_runs_token(tmp_path):
    """What the torchrun check reads (the two-node test above runs it end to end): a
    folder holding the token file its rank sent is seen; a missing folder, or one
    holding only another run's token, is not; and the line before a merge says how to
    merge by hand."""
    out = tmp_path / "out"
    tokens = [distributed.write_token(out, r, 3) for r in range(3)]
    assert len(set(tokens)) == 3 and distributed.unseen_shards(out, tokens, 0) == []
    other_run = distributed.write_token(out, 1, 3)  # a second run there: both seen
    assert other_run not in tokens and distributed.unseen_shards(out, tokens, 0) == []
    distributed.drop_token(out, 1, 3, tokens[1])
    assert distributed.unseen_shards(out, tokens, 0) == [1]
    shutil.rmtree(out / "shards" / "rank-2-of-3")
    assert distributed.unseen_shards(out, tokens, 0) == [1, 2]
    line = distributed.not_shared(out, [1, 2], ["a", "b", "c"], merging=True)
    assert "rank 0 on a cannot see the shard folders of rank 1 on b, rank 2 on c" in line
    assert f"alexsearch merge {out}/shards/rank-*-of-3 --index {out}" in line
