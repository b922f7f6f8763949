"""`alexsearch index` / `query` / `info --index` through the CLI, as a user runs them."""

import io
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from helpers import cli, one_line_error
from make_shapes import make
from PIL import Image

from alexsearch.index import lock, vectors


@pytest.fixture(scope="module")
def env(init_ckpt):
    e = dict(os.environ)
    e["ALEXSEARCH_WEIGHTS"] = str(init_ckpt)
    return e


@pytest.fixture
def photos(tmp_path):
    make(tmp_path / "photos", per_class=3, seed=1)
    return tmp_path / "photos"


def index_json(env, *args):
    return json.loads(cli("index", *args, "--json", "--workers", "1", env=env).stdout)


def test_index_query_info(env, photos, tmp_path):
    ix = tmp_path / "ix"
    # fp32 (IEEE, also on a GPU): the self-distance below is against the CPU query path,
    # which a bf16 index (auto's choice on GPUs and native-bf16 CPUs) sits ~0.2 away from
    s = index_json(env, photos, "--index", ix, "--precision", "fp32")
    assert s["added"] == 18 and s["total_ok"] == 18 and s["failed"] == [] and s["kind"] == "flat"
    info = json.loads(cli("info", "--index", ix, "--json", env=env).stdout)
    assert info["files"] == 18 and info["dimension"] == 4096 and info["bytes_on_disk"] > 18 * 4096

    q = photos / "red_circles" / "000.jpg"
    res = json.loads(cli("query", q, "--index", ix, "--k", "4", "--json", env=env).stdout)
    hits = res[0]["neighbours"]
    assert len(hits) == 4 and str(q) not in [h["path"] for h in hits]  # self excluded
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert all(a["distance"] <= b["distance"] for a, b in zip(hits, hits[1:], strict=False))
    # piped, the same neighbours in the same order as plain rows with whole paths
    plain = cli("query", q, "--index", ix, "--k", "4", env=env).stdout.splitlines()
    assert plain[0] == f"# query {q}"
    rows = [line.split("\t") for line in plain[1:]]
    assert rows == [[str(h["rank"]), f"{h['distance']:.3f}", h["path"]] for h in hits]
    # --paths: bare paths, one a line, for xargs and image viewers
    bare = cli("query", q, "--index", ix, "--k", "4", "--paths", env=env).stdout
    assert bare.splitlines() == [h["path"] for h in hits]
    # in a narrow terminal the table keeps each path's tail: the file name is whole
    tty = {**env, "TTY_COMPATIBLE": "1", "COLUMNS": "60", "NO_COLOR": "1"}
    table = cli("query", q, "--index", ix, "--k", "4", env=tty).stdout
    lines = [ln for ln in table.splitlines() if ln.startswith("│")]
    assert len(lines) == 4 and all(len(ln) <= 60 for ln in lines)
    for line, h in zip(lines, hits, strict=True):
        rank, dist, path = (c.strip() for c in line.strip("│ ").split("│"))
        assert (rank, dist) == (str(h["rank"]), f"{h['distance']:.3f}")
        assert path.startswith("…") and h["path"].endswith(path[1:])
        assert path.endswith(os.path.join(*h["path"].split(os.sep)[-2:]))  # folder/file
    # an image inside the index asked with --include-self finds itself at distance 0
    me = json.loads(
        cli("query", q, "--index", ix, "--k", "1", "--include-self", "--json", env=env).stdout
    )
    assert me[0]["neighbours"][0]["path"] == str(q) and me[0]["neighbours"][0]["distance"] < 1e-3


def test_query_from_outside_the_index(env, photos, tmp_path):
    ix = tmp_path / "ix"
    index_json(env, photos, "--index", ix)
    outside = tmp_path / "elsewhere.png"
    Image.open(photos / "blue_squares" / "001.jpg").save(outside)
    res = json.loads(cli("query", outside, "--index", ix, "--k", "3", "--json", env=env).stdout)
    assert len(res[0]["neighbours"]) == 3
    # a copy of an indexed photo lands on the original first
    assert res[0]["neighbours"][0]["path"].endswith("blue_squares/001.jpg")


def test_incremental_add_modify_delete_move_nothing(env, photos, tmp_path):
    ix = tmp_path / "ix"
    index_json(env, photos, "--index", ix)
    db = sqlite3.connect(ix / "catalogue.sqlite")
    moved_src = photos / "green_triangles" / "000.jpg"
    old_id, old_vec = db.execute(
        "SELECT id, vector FROM files WHERE path=?", (str(moved_src),)
    ).fetchone()

    s = index_json(env, photos, "--index", ix)
    assert (s["added"], s["updated"], s["deleted"], s["moved"], s["unchanged"]) == (0, 0, 0, 0, 18)
    assert s["extracted"] == 0

    Image.new("RGB", (64, 64), (9, 9, 9)).save(photos / "red_circles" / "new.png")  # add
    Image.new("RGB", (70, 50), (250, 0, 0)).save(photos / "red_circles" / "001.jpg")  # modify
    (photos / "blue_squares" / "002.jpg").unlink()  # delete
    moved_dst = photos / "renamed_triangle.jpg"
    os.rename(moved_src, moved_dst)  # move
    s = index_json(env, photos, "--index", ix)
    assert (s["added"], s["updated"], s["deleted"], s["moved"]) == (1, 1, 1, 1)
    assert s["extracted"] == 2 and s["total_ok"] == 18
    new_id, new_vec = db.execute(
        "SELECT id, vector FROM files WHERE path=?", (str(moved_dst),)
    ).fetchone()
    assert new_id == old_id and new_vec == old_vec  # the vector was reused, not recomputed
    paths = {p for (p,) in db.execute("SELECT path FROM files")}
    assert str(photos / "blue_squares" / "002.jpg") not in paths
    res = json.loads(cli("query", moved_dst, "--index", ix, "--json", env=env).stdout)
    assert str(moved_dst) not in [h["path"] for h in res[0]["neighbours"]]  # known as itself


def _png_header(w, h):
    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_every_bad_file_kind_is_reported_and_the_run_goes_on(env, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (d / "zero.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (d / "text.jpg").write_text("not a picture")
    (d / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    photo.convert("RGBA").save(d / "alpha.png")
    photo.convert("L").save(d / "gray.jpg")
    photo.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (60, 80))).astype(np.uint16)).save(d / "deep.png")
    photo.save(d / "good.jpg")
    ix = tmp_path / "ix"
    s = index_json(env, d, "--index", ix)
    failed = {os.path.basename(p): why for p, why in s["failed"]}
    assert set(failed) == {"zero.jpg", "truncated.jpg", "text.jpg", "bomb.png"}
    assert "empty" in failed["zero.jpg"] and "megapixel" in failed["bomb.png"]
    assert "not a recognised image" in failed["text.jpg"]
    assert s["total_ok"] == 5 and s["total_failed"] == 4
    info = json.loads(cli("info", "--index", ix, "--json", env=env).stdout)
    assert {os.path.basename(f["path"]) for f in info["failures"]} == set(failed)
    table = cli("index", d, "--index", ix, env=env).stdout  # nothing changed: still listed
    assert "unchanged" in table


def test_fingerprint_mismatch_is_refused(env, photos, tmp_path):
    ix = tmp_path / "ix"
    index_json(env, photos, "--index", ix)
    other = tmp_path / "other.ckpt"
    cli("weights", "init", "--out", other, "--classes", "10", "--seed", "99")
    r = cli(
        "query",
        photos / "red_circles" / "000.jpg",
        "--index",
        ix,
        "--weights",
        other,
        env=env,
        check=False,
    )
    one_line_error(r, "was built with weights")
    manifest = json.loads((ix / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] in r.stderr and str(other) in r.stderr
    r = cli("index", photos, "--index", ix, "--weights", other, env=env, check=False)
    one_line_error(r, "was built with weights")


def test_second_writer_stops_with_a_clear_message(env, photos, tmp_path):
    ix = tmp_path / "ix"
    index_json(env, photos, "--index", ix)
    with lock.write_lock(ix):
        r = cli("index", photos, "--index", ix, env=env, check=False)
    one_line_error(r, "is being written by another alexsearch process")
    # and a query during the write still answers from the published snapshot
    with lock.write_lock(ix):
        r = cli("query", photos / "red_circles" / "000.jpg", "--index", ix, "--json", env=env)
    assert len(json.loads(r.stdout)[0]["neighbours"]) == 6


def test_killed_run_leaves_an_index_that_answers_and_a_rerun_completes(env, tmp_path):
    photos = tmp_path / "p"
    make(photos / "a", per_class=2, seed=2)
    ix = tmp_path / "ix"
    index_json(env, photos, "--index", ix)
    make(photos / "b", per_class=5, seed=3)  # 30 more files to index
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alexsearch",
            "index",
            str(photos),
            "--index",
            str(ix),
            "--batch-size",
            "2",
            "--commit-every",
            "2",
            "--workers",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = ix / "catalogue.sqlite"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM files").fetchone()[0]
        if n >= 12 + 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = sqlite3.connect(db).execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert 12 < committed < 42
    res = json.loads(
        cli(
            "query", photos / "a" / "red_circles" / "000.jpg", "--index", ix, "--json", env=env
        ).stdout
    )
    assert len(res[0]["neighbours"]) == 6  # the last published state answers
    s = index_json(env, photos, "--index", ix)
    assert s["extracted"] == 42 - committed and s["total_ok"] == 42


def test_bad_paths_and_missing_index(env, tmp_path):
    one_line_error(
        cli("index", tmp_path / "nope", "--index", tmp_path / "ix", env=env, check=False),
        "no such file",
    )
    one_line_error(
        cli("query", tmp_path / "x.jpg", "--index", tmp_path / "none", env=env, check=False),
        "no index at",
    )
    # a folder without images says so, without loading the network or making an index
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("not a photo")
    (tmp_path / "d" / ".hidden.jpg").write_bytes(b"")
    e = {k: v for k, v in env.items() if k != "ALEXSEARCH_WEIGHTS"}
    r = cli("index", tmp_path / "d", "--index", tmp_path / "ix", env=e, check=False)
    one_line_error(r, f"no images found under {tmp_path / 'd'}")
    assert "--hidden" in r.stderr and not (tmp_path / "ix").exists()
    # with images but no weights: say how to get some, and make nothing
    Image.new("RGB", (40, 30)).save(tmp_path / "d" / "a.png")
    r = cli("index", tmp_path / "d", "--index", tmp_path / "ix", env=e, check=False)
    one_line_error(r, "no weights given")
    assert not (tmp_path / "ix").exists()


def test_kinds_hnsw_and_too_small_for_ivf(env, photos, tmp_path):
    ix = tmp_path / "ix"
    s = index_json(env, photos, "--index", ix, "--kind", "hnsw")
    assert s["kind"] == "hnsw" and json.loads((ix / "manifest.json").read_text())["kind"] == "hnsw"
    q = photos / "red_circles" / "000.jpg"
    res = json.loads(
        cli("query", q, "--index", ix, "--k", "1", "--include-self", "--json", env=env).stdout
    )
    assert res[0]["neighbours"][0]["path"] == str(q)  # HNSW over 18 vectors is still exact
    r = cli("index", photos, "--index", ix, "--kind", "ivfpq", env=env, check=False)
    one_line_error(r, "needs more vectors to train on")
    assert json.loads((ix / "manifest.json").read_text())["kind"] == "hnsw"  # old state kept


def test_auto_kind_policy():
    d = 4096
    assert vectors.choose_kind("flat", 10**7, d, None) == "flat"  # an explicit kind is kept
    assert vectors.choose_kind("auto", 1_000, d, None) == "flat"
    assert vectors.choose_kind("auto", 30_000, d, None) == "flat"  # a 480 MB scan: still exact
    assert vectors.choose_kind("auto", 100_000, d, None) == "ivfsq"  # 1.6 GB: compress
    assert vectors.choose_kind("auto", 1_000_000, d, 100 * 1024**2) == "ivfpq"  # tight budget


def test_ivf_kind_answers_like_exact_on_clustered_vectors(tmp_path):
    """A compressed kind, built and read back as a query reads it (memory-mapped)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 512)).astype(np.float32) * 4
    labels = rng.integers(0, 50, 30_000)
    vecs = centres[labels] + rng.standard_normal((30_000, 512)).astype(np.float32)
    ids = np.arange(100, 30_100, dtype=np.int64)
    index = vectors.build_faiss("ivfsq", ids, vecs)
    name = vectors.write_faiss(tmp_path, index, 1)
    back = vectors.read_faiss(tmp_path, name)
    _, got = back.search(vecs[:200], 5)
    same = labels[got - 100] == labels[:200, None]
    assert same.mean() > 0.95 and (got[:, 0] == ids[:200]).mean() > 0.9


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_line(env, photos, tmp_path):
    r = cli("index", photos, "--index", tmp_path / "ix", "--device", "cuda", env=env, check=False)
    one_line_error(r, "CUDA is not available on this machine")
    r = cli("index", photos, "--index", tmp_path / "ix", "--device", "tpu", env=env, check=False)
    one_line_error(r, "expected auto, cpu, cuda or cuda:N")


def test_info_describes_an_index_whose_first_run_never_published(env, photos, tmp_path):
    """What a first run killed before publishing leaves: rows committed, no manifest."""
    from alexsearch.index.catalogue import Catalogue

    ix = tmp_path / "ix"
    ix.mkdir()
    cat = Catalogue(ix / "catalogue.sqlite")
    first = photos / "red_circles" / "000.jpg"
    st = first.stat()
    cat.put(str(first), st.st_size, st.st_mtime_ns, "d", np.ones(4096, np.float32), b"")
    cat.put(str(photos / "bad.jpg"), 3, 1, "", None, b"", "not a recognised image format")
    cat.commit()
    cat.close()
    info = json.loads(cli("info", "--index", ix, "--json", env=env).stdout)
    assert info["published"] is False and (info["files"], info["failed"]) == (1, 1)
    assert "run `alexsearch index` on the same photos to finish" in info["note"]
    assert info["failures"] == [
        {"path": str(photos / "bad.jpg"), "reason": "not a recognised image format"}
    ]
    assert "not yet published" in cli("info", "--index", ix, env=env).stdout
    one_line_error(cli("query", first, "--index", ix, env=env, check=False), "not complete yet")
    s = index_json(env, photos, "--index", ix)  # finishing it publishes
    assert s["total_ok"] == 18 and s["unchanged"] == 1
    assert json.loads(cli("info", "--index", ix, "--json", env=env).stdout)["published"] is True
