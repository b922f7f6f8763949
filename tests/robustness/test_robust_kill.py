"""kill -9 at seeded random moments: nothing committed is lost, the index answers, a rerun
finishes the work without redoing what was committed.

Each chain kills a sequence of `alexsearch index` runs on one index (each run resuming
the one killed before it), checking after every kill, then lets a last run finish. One
chain starts from nothing (kills before the first publish), one from a published index
whose folder has since gained, lost and changed files.
"""

import json
import os
import random
import shutil
import time

import numpy as np
from disks import tmp_leftovers
from figures import FIGURES
from helpers import one_line_error
from PIL import Image
from processes import count_rows, kill_when, ok, rows_since

import alexsearch
from alexsearch.weights import checkpoint

# Full-size paper network (kills land in its 230 MB load too) / a narrow one (cheap runs).
TRIALS_FULL, TRIALS_NARROW = 4, 16
INDEX_OPTS = ("--workers", "0", "--batch-size", "2", "--commit-every", "2")


def rows_of(ix):
    """{path: (size, mtime_ns, status, vector)} committed in the index's catalogue."""
    import sqlite3

    db = sqlite3.connect(f"file:{ix / 'catalogue.sqlite'}?mode=ro", uri=True)
    try:
        return {
            p: (s, m, st, None if v is None else np.frombuffer(v, np.float32))
            for p, s, m, st, v in db.execute(
                "SELECT path, size, mtime_ns, status, vector FROM files"
            )
        }
    finally:
        db.close()


def learn(expected, ix):
    """Remember the vectors a complete run computed, keyed by file version."""
    for p, (s, m, _, v) in rows_of(ix).items():
        expected[(p, s, m)] = v


def check_after_kill(fs, env, ix, weights, expected, before, tree):
    """The invariants of a killed run; returns how many committed rows were lost."""
    assert count_rows(ix / "catalogue.sqlite") >= 0  # opens
    rows = rows_of(ix) if (ix / "catalogue.sqlite").exists() else {}
    lost = 0
    for p, (s, m, _, _) in before.items():
        # a row committed before the run, whose file is unchanged, must still be there
        if p in tree and tree[p] == (s, m) and p not in rows:
            lost += 1
    for p, (s, m, st, v) in rows.items():
        assert (p, s, m) in expected, f"a row for a file version nobody indexed: {p}"
        want = expected[(p, s, m)]
        if st == "ok":  # the vector is whole and right (not torn, not from another file)
            assert want is not None and np.allclose(v, want, rtol=1e-3, atol=1e-3), p
    committed_ok = sum(1 for v in rows.values() if v[2] == "ok")
    if not (ix / "manifest.json").exists():
        r = fs.run("info", "--index", ix, "--json", env=env)
        if not (ix / "catalogue.sqlite").exists():
            one_line_error(r, "no index at")
            return lost
        # killed before its first publish: info says how far it got; query refuses
        info = ok(r).json()
        assert info["published"] is False and info["files"] == committed_ok
        r = fs.run("query", sorted(tree)[0], "--index", ix, env=env)
        one_line_error(r, "not complete yet")
        return lost
    r = ok(fs.run("info", "--index", ix, "--json", env=env))
    info = r.json()
    assert info["published"] is True and info["files"] == committed_ok
    # the published snapshot answers, and its ids still map to the right files
    with alexsearch.open_index(ix, weights=weights) as index:
        q = sorted(tree)[0]
        res = index.query(q, k=3, include_self=True)[0]
        assert not res.error
        published = json.loads((ix / "manifest.json").read_text())["counts"]["ok"]
        # ids of files a later (killed) run deleted are left out: one file is deleted here
        assert min(3, published) - 1 <= len(res.hits) <= min(3, published)
        qv = expected[(q, *tree[q])]
        for h in res.hits:
            # the snapshot may hold an older version of a file changed since it was
            # published: the distance is to one of the versions indexed under that path
            dists = [
                float(np.linalg.norm(qv - v))
                for (p, _, _), v in expected.items()
                if p == h.path and v is not None
            ]
            assert any(abs(d - h.distance) < 1e-2 * max(1, d) for d in dists), h
    return lost


def touch_some(root, tree, rng, expected):
    """New mtimes for a seeded half of the files: same content, so the same vectors."""
    for p in rng.sample(sorted(tree), len(tree) // 2):
        size, mtime = tree[p]
        os.utime(p, ns=(mtime + 10**9, mtime + 10**9))
        expected[(p, size, mtime + 10**9)] = expected[(p, size, mtime)]
    return snapshot_tree(root)


def snapshot_tree(root):
    tree = {}
    for dp, _, fns in os.walk(root):
        for f in fns:
            st = os.stat(os.path.join(dp, f))
            tree[os.path.join(dp, f)] = (st.st_size, st.st_mtime_ns)
    return tree


def run_chain(fs, env, ix, tree_root, weights, expected, rng, trials):
    """`trials` kill -9s of successive runs on ix, checked; then a run that finishes."""
    tree = snapshot_tree(tree_root)
    total = len(tree)
    t0 = time.monotonic()  # how long a whole run takes sets the range of kill delays
    ok(fs.run("index", tree_root, "--index", ix.parent / "ref", *INDEX_OPTS, env=env))
    learn(expected, ix.parent / "ref")
    max_delay = 1.2 * (time.monotonic() - t0)
    for _ in range(trials):
        rows = rows_of(ix) if (ix / "catalogue.sqlite").exists() else {}
        if sum(1 for p, v in tree.items() if p not in rows or rows[p][:2] != v) < total // 3:
            tree = touch_some(
                tree_root, tree, rng, expected
            )  # give the next run work to be killed in
        before = rows_of(ix) if (ix / "catalogue.sqlite").exists() else {}
        todo = sum(1 for p, v in tree.items() if p not in before or before[p][:2] != v)
        since = time.time()
        child = fs.start("index", tree_root, "--index", ix, *INDEX_OPTS, env=env)
        moment = kill_when(
            child,
            rng,
            max_delay,
            todo,
            lambda since=since: rows_since(ix / "catalogue.sqlite", since),
            "committed row",
        )
        r = child.wait()
        FIGURES["kill_trials_mid_run"] += r.returncode == -9
        assert r.returncode in (0, -9), (moment, r.stderr)
        lost = check_after_kill(fs, env, ix, weights, expected, before, tree)
        FIGURES["data_lost"] += lost
        assert lost == 0, f"killed {moment}: {lost} committed rows lost"
    # a rerun finishes the work, redoing nothing that was committed and unchanged
    rows = rows_of(ix) if (ix / "catalogue.sqlite").exists() else {}
    todo = sum(1 for p, v in tree.items() if p not in rows or rows[p][:2] != v)
    r = ok(fs.run("index", tree_root, "--index", ix, "--json", *INDEX_OPTS, env=env))
    s = r.json()
    assert s["extracted"] == todo
    final = rows_of(ix)
    assert set(final) == set(tree)
    for p, (sz, m, st, v) in final.items():
        want = expected[(p, sz, m)]
        assert st == "ok" and np.allclose(v, want, rtol=1e-3, atol=1e-3), p
    assert tmp_leftovers(ix) == []  # temporary files of killed writes are swept
    manifest = json.loads((ix / "manifest.json").read_text())
    vector_files = sorted(p.name for p in ix.glob("vectors-*.faiss"))
    assert vector_files == [manifest["vectors_file"]]


def test_kill_index_from_nothing(fs, env, photos, init_ckpt, tmp_path):
    rng = random.Random(1)
    tree = tmp_path / "p"
    shutil.copytree(photos, tree)
    expected = {}
    run_chain(fs, env, tmp_path / "ix", tree, init_ckpt, expected, rng, TRIALS_FULL)


def test_kill_incremental_index_with_adds_deletes_changes(fs, env, photos, tiny_ckpt, tmp_path):
    env = {**env, "ALEXSEARCH_WEIGHTS": str(tiny_ckpt)}
    rng = random.Random(2)
    tree = tmp_path / "p"
    shutil.copytree(photos / "red_circles", tree / "red_circles")
    shutil.copytree(photos / "blue_squares", tree / "blue_squares")
    ix = tmp_path / "ix"
    expected = {}
    ok(fs.run("index", tree, "--index", ix, *INDEX_OPTS, env=env))
    learn(expected, ix)
    # the folder changes: 16 new files, one deleted, one rewritten
    for name in ("green_triangles", "yellow_stripes", "purple_rings", "orange_stars"):
        shutil.copytree(photos / name, tree / name)
    (tree / "red_circles" / "000.jpg").unlink()
    Image.new("RGB", (80, 60), (5, 250, 5)).save(tree / "blue_squares" / "001.jpg")
    run_chain(fs, env, ix, tree, tiny_ckpt, expected, rng, TRIALS_NARROW)


def _train_state(run_dir):
    return checkpoint.load(run_dir / "last.ckpt").state_dict


def test_kill_train_resumes_from_last_checkpoint(fs, env, tmp_path):
    """kill -9 `alexsearch train` at seeded moments (a delay into the run, or as a
    checkpoint's temporary file appears); each time last.ckpt, if there, loads whole,
    metrics.jsonl parses line by line, and `train --resume` ends with the weights of an
    uninterrupted run."""
    import torch
    from make_shapes import make

    data = tmp_path / "data"
    make(data / "train", per_class=1, seed=3)  # 6 classes, one image each
    make(data / "val", per_class=1, seed=4)
    args = ("--data", data, "--epochs", "2", "--batch-size", "3", "--workers", "0")
    args += ("--device", "cpu", "--seed", "5", "--stats-samples", "6")
    t0 = time.monotonic()
    ok(fs.run("train", *args, "--out", tmp_path / "straight", "--json", env=env))
    max_delay = 1.1 * (time.monotonic() - t0)
    want = _train_state(tmp_path / "straight")
    rng = random.Random(3)
    for trial in range(3):
        run_dir = tmp_path / f"cut{trial}"
        child = fs.start("train", *args, "--out", run_dir, env=env)
        seen: set = set()

        def tmp_files_seen(run_dir=run_dir, seen=seen) -> int:
            seen.update(tmp_leftovers(run_dir) if run_dir.exists() else [])
            return len(seen)

        # a delay into the run, or while a checkpoint's temporary file is being written
        moment = kill_when(child, rng, max_delay, 3, tmp_files_seen, "temporary file")
        r = child.wait()
        FIGURES["kill_trials_mid_run"] += r.returncode == -9
        assert r.returncode in (0, -9), (moment, r.stderr)
        if (run_dir / "last.ckpt").exists():
            checkpoint.load(run_dir / "last.ckpt")  # never half-written
        if (run_dir / "metrics.jsonl").exists():
            rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
            assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1)), moment
        if (run_dir / "last.ckpt").exists():
            s = ok(fs.run("train", "--resume", run_dir, "--json", env=env)).json()
        else:  # killed before the first checkpoint: nothing to resume, start again
            s = ok(fs.run("train", *args, "--out", run_dir, "--json", env=env)).json()
        assert s["epochs_done"] == 2, moment
        got = _train_state(run_dir)
        assert all(torch.equal(want[k], got[k]) for k in want), f"killed {moment}"
        assert tmp_leftovers(run_dir) == [], moment
