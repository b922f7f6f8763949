"""Two writers on one index, and readers while it is written."""

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from figures import FIGURES
from helpers import SAFETY_TIMEOUT, one_line_error
from processes import ok

from alexsearch.index import lock

OPTS = ("--workers", "0", "--batch-size", "2", "--commit-every", "2")


def holds_lock(ix, pid) -> bool:
    try:
        return (ix / ".lock").read_text().strip() == str(pid)
    except OSError:
        return False


def waiting_for_lock(ix, pid) -> bool:
    """Is process `pid` blocked in flock() on the writer lock of ix? (/proc/locks lists a
    blocked request as `N: -> FLOCK ADVISORY WRITE PID MAJ:MIN:INODE ...`.)"""
    inode = str((ix / ".lock").stat().st_ino)
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if f[1:3] == ["->", "FLOCK"] and f[5] == str(pid) and f[6].rsplit(":", 1)[1] == inode:
            return True
    return False


def wait_for(cond, child):
    """Until cond() holds or the child has exited (a net against hangs, not a timing)."""
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while not cond() and not child.exited() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


LOCKED = "is being written by another alexsearch process"


@pytest.fixture
def half_indexed(fs, env, photos, tmp_path):
    """A published index of 2 class folders, and a folder that has since gained 4 more."""
    tree = tmp_path / "p"
    for name in ("red_circles", "blue_squares"):
        shutil.copytree(photos / name, tree / name)
    ix = tmp_path / "ix"
    ok(fs.run("index", tree, "--index", ix, *OPTS, env=env))
    for name in ("green_triangles", "yellow_stripes", "purple_rings", "orange_stars"):
        shutil.copytree(photos / name, tree / name)
    return tree, ix


def test_two_index_runs_one_waits_one_stops_result_consistent(fs, env, half_indexed):
    """The test holds the writer lock, so the overlap is certain: a second writer stops in
    one line naming the holder; a --wait writer waits in the lock until it is released,
    then does the whole work once."""
    tree, ix = half_indexed
    me = f"pid {os.getpid()}"
    with lock.write_lock(ix):
        waiter = fs.start("index", tree, "--index", ix, "--json", "--wait", *OPTS, env=env)
        assert wait_for(lambda: waiting_for_lock(ix, waiter.pid), waiter), waiter.wait().stderr
        r_stop = fs.run("index", tree, "--index", ix, *OPTS, env=env)
        FIGURES["concurrent_writers"] += 2
        one_line_error(r_stop, LOCKED, me, "--wait")
        assert not waiter.exited() and waiting_for_lock(ix, waiter.pid)  # still waiting
        assert holds_lock(ix, os.getpid())  # the stopped writer took nothing over
    s = ok(waiter.wait()).json()
    assert s["added"] == s["extracted"] == 16 and s["total_ok"] == 24  # the 16 new files
    db = sqlite3.connect(ix / "catalogue.sqlite")
    paths = [p for (p,) in db.execute("SELECT path FROM files WHERE status='ok'")]
    db.close()
    assert len(paths) == len(set(paths)) == 24
    assert ok(fs.run("info", "--index", ix, "--json", env=env)).json()["files"] == 24


def test_query_during_index_answers_from_the_published_state(fs, env, half_indexed):
    tree, ix = half_indexed
    first = {str(p) for p in (tree / "red_circles").glob("*")} | {
        str(p) for p in (tree / "blue_squares").glob("*")
    }
    q = tree / "red_circles" / "000.jpg"
    a = fs.start("index", tree, "--index", ix, *OPTS, env=env)
    assert wait_for(lambda: holds_lock(ix, a.pid), a)
    answered_during = 0
    while not a.exited():
        r = ok(fs.run("query", q, "--index", ix, "--k", "30", "--json", env=env))
        hits = [h["path"] for h in r.json()[0]["neighbours"]]
        if not a.exited():
            answered_during += 1
            # the snapshot published before the run: its 8 files, less the query itself,
            # unless the run has published meanwhile (then all 24)
            assert set(hits) <= first and len(hits) == 7 or len(hits) == 23, hits
    FIGURES["queries_during_index"] += answered_during
    ok(a.wait())
    r = ok(fs.run("query", q, "--index", ix, "--k", "30", "--json", env=env))
    assert len(r.json()[0]["neighbours"]) == 23
    if answered_during == 0:
        pytest.skip("the index run finished before a query could start (machine too fast)")


def test_codes_during_index(fs, env, half_indexed):
    """`codes` while another writer holds the index (the test itself, so the overlap is
    certain): it stops in one line naming the holder, or waits in the lock with --wait and
    then encodes what is indexed; the next `index` keeps the codes current: every ok file
    has a code and `query --binary` answers."""
    tree, ix = half_indexed
    codes_args = ("codes", "--index", ix, "--bits", "32", "--epochs", "2", "--json")
    ok(fs.run(*codes_args, env=env))
    with lock.write_lock(ix):
        r_stop = fs.run(*codes_args, env=env)
        one_line_error(r_stop, LOCKED, f"pid {os.getpid()}", "--wait")
        waiter = fs.start(*codes_args, "--wait", env=env)
        assert wait_for(lambda: waiting_for_lock(ix, waiter.pid), waiter), waiter.wait().stderr
        FIGURES["concurrent_writers"] += 2
        assert not waiter.exited() and waiting_for_lock(ix, waiter.pid)  # still waiting
    assert ok(waiter.wait()).json()["encoded"] == 8  # the 8 files indexed so far
    assert codes_match_catalogue(ix) == 8
    s = ok(fs.run("index", tree, "--index", ix, "--json", *OPTS, env=env)).json()
    assert s["added"] == 16 and s["total_ok"] == 24
    assert codes_match_catalogue(ix) == 24  # the index run re-encoded, in step
    q = tree / "green_triangles" / "000.jpg"
    r = ok(fs.run("query", q, "--index", ix, "--binary", "--k", "5", "--json", env=env))
    assert len(r.json()[0]["neighbours"]) == 5


def codes_match_catalogue(ix) -> int:
    """The published codes cover exactly the catalogue's ok files; returns their count."""
    db = sqlite3.connect(ix / "catalogue.sqlite")
    ids = {i for (i,) in db.execute("SELECT id FROM files WHERE status='ok'")}
    db.close()
    m = json.loads((ix / "manifest.json").read_text())["codes"]
    assert m["count"] == len(ids)
    with np.load(ix / m["codes_file"]) as z:
        assert sorted(z["ids"].tolist()) == sorted(ids)
    return len(ids)
