"""Failing writes (full disk, file size limit, read-only, forbidden): the previous index or
checkpoint is intact, and one line says what happened."""

import hashlib
import json
import os
import shutil

import pytest
from disks import fill, remount, tmp_leftovers, tmpfs
from figures import FIGURES
from helpers import one_line_error
from processes import ok

DISK_FULL = ("no space left on device", "database or disk is full")


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_write_on_a_full_disk_keeps_the_old_one(fs, tiny_ckpt, tmp_path):
    with tmpfs(tmp_path / "disk", "8m") as disk:
        old = disk / "w.ckpt"
        shutil.copy(tiny_ckpt, old)
        before = digest(old)
        r = fs.run("weights", "init", "--out", old, "--classes", "3")  # 230 MB: cannot fit
        FIGURES["write_failures"] += 1
        line = one_line_error(r, "no space left on device", str(old))
        assert "unchanged" in line
        assert digest(old) == before and tmp_leftovers(disk) == []
        ok(fs.run("info", "--weights", old))


def test_checkpoint_write_past_the_file_size_limit(fs, tiny_ckpt, tmp_path):
    old = tmp_path / "w.ckpt"
    shutil.copy(tiny_ckpt, old)
    before = digest(old)
    r = fs.run("weights", "init", "--out", old, "--classes", "3", fsize_limit=4 * 2**20)
    FIGURES["write_failures"] += 1
    one_line_error(r, "file too large", str(old))
    assert digest(old) == before and tmp_leftovers(tmp_path) == []


def test_checkpoint_write_on_a_read_only_disk(fs, tiny_ckpt, tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        old = disk / "w.ckpt"
        shutil.copy(tiny_ckpt, old)
        remount(disk, readonly=True)
        r = fs.run("weights", "init", "--out", old, "--classes", "3")
        FIGURES["write_failures"] += 1
        one_line_error(r, "read-only file system")
        ok(fs.run("info", "--weights", old))
        remount(disk, readonly=False)


def _published(ix):
    m = json.loads((ix / "manifest.json").read_text())
    return m, digest(ix / "manifest.json"), digest(ix / m["vectors_file"])


def test_index_on_a_full_disk_keeps_the_published_index(fs, env, photos, tiny_ckpt, tmp_path):
    """Fill the disk to several levels and index more photos each time: whichever write
    fails (catalogue, vectors, manifest), the published index is the one before, it
    answers queries, no committed row is lost, and a run with room finishes the work."""
    env = {**env, "ALEXSEARCH_WEIGHTS": str(tiny_ckpt)}
    tree = tmp_path / "p"
    shutil.copytree(photos / "red_circles", tree / "red_circles")
    q = tree / "red_circles" / "000.jpg"
    with tmpfs(tmp_path / "disk", "4m") as disk:
        ix = disk / "ix"
        ok(fs.run("index", tree, "--index", ix, "--workers", "0", env=env))
        failures, stages = 0, set()
        for leave, folder in zip(
            (0, 2048, 8192, 24576, 65536, 131072),
            ("blue_squares", "green_triangles", "yellow_stripes", "purple_rings", "orange_stars"),
            strict=False,
        ):
            shutil.copytree(photos / folder, tree / folder)
            manifest, m_digest, v_digest = _published(ix)
            import sqlite3

            db = sqlite3.connect(ix / "catalogue.sqlite")
            rows_before = {p for (p,) in db.execute("SELECT path FROM files")}
            db.close()
            filler = fill(disk, leave)
            r = fs.run(
                "index", tree, "--index", ix, "--workers", "0", "--commit-every", "2", env=env
            )
            if r.returncode != 0:
                failures += 1
                FIGURES["write_failures"] += 1
                line = one_line_error(r)
                assert any(s in line for s in DISK_FULL), line
                stages.add(line.split("cannot write ")[-1].split()[0].rsplit("/", 1)[-1])
                assert _published(ix)[1:] == (m_digest, v_digest)  # untouched
            filler.unlink()
            db = sqlite3.connect(ix / "catalogue.sqlite")
            rows_after = {p for (p,) in db.execute("SELECT path FROM files")}
            db.close()
            lost = len(rows_before - rows_after)
            FIGURES["data_lost"] += lost
            assert lost == 0
            res = ok(fs.run("query", q, "--index", ix, "--k", "3", "--json", env=env)).json()
            assert len(res[0]["neighbours"]) == 3
        assert failures >= 3, stages
        print("write failures hit:", sorted(stages))
        s = ok(fs.run("index", tree, "--index", ix, "--json", "--workers", "0", env=env)).json()
        assert s["total_ok"] == len(list(tree.rglob("*.jpg")))
        assert tmp_leftovers(ix) == []


def test_read_only_index_answers_and_refuses_writes_in_one_line(
    fs, env, photos, tiny_ckpt, tmp_path
):
    env = {**env, "ALEXSEARCH_WEIGHTS": str(tiny_ckpt)}
    with tmpfs(tmp_path / "disk", "4m") as disk:
        ix = disk / "ix"
        ok(fs.run("index", photos / "red_circles", "--index", ix, "--workers", "0", env=env))
        remount(disk, readonly=True)
        try:
            r = fs.run("index", photos / "blue_squares", "--index", ix, env=env)
            FIGURES["write_failures"] += 1
            one_line_error(r, "read-only file system", code=1)  # a raw OSError: the lock file
            q = photos / "red_circles" / "001.jpg"
            res = ok(fs.run("query", q, "--index", ix, "--k", "2", "--json", env=env)).json()
            assert len(res[0]["neighbours"]) == 2
            assert ok(fs.run("info", "--index", ix, "--json", env=env)).json()["files"] == 4
        finally:
            remount(disk, readonly=False)


def test_forbidden_folder_is_one_line(fs, env, photos, tiny_ckpt, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop root's writes")
    env = {**env, "ALEXSEARCH_WEIGHTS": str(tiny_ckpt)}
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    r = fs.run("index", photos / "red_circles", "--index", locked / "ix", env=env)
    FIGURES["write_failures"] += 1
    one_line_error(r, "permission denied", code=1)  # a raw OSError: making the index folder
    r = fs.run("weights", "init", "--out", locked / "w.ckpt", "--classes", "3")
    one_line_error(r, "permission denied")  # the checkpoint's atomic write: a WriteError
