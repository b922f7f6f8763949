"""Hostile images and weights: one clear line each, a non-zero exit where fatal; never a
traceback, a hang, a memory blow-up, or pickled code run."""

import json
import os
import sqlite3
import unicodedata

import pytest
from caffe_proto import bvlc_net, bvlc_params, write
from corpora import bad_checkpoints, bad_images, photo_bytes
from figures import FIGURES
from helpers import no_traceback, one_line_error
from processes import cli, ok

from alexsearch.weights import checkpoint


def test_bad_image_corpus_indexes_reports_and_queries(env, tiny_ckpt, tmp_path):
    env = {**env, "ALEXSEARCH_WEIGHTS": str(tiny_ckpt)}
    root = tmp_path / "hostile"
    expect = bad_images(root, seed=3)
    FIGURES["bad_images"] += len(expect)
    ix = tmp_path / "ix ?#%&= weird"  # a folder name that breaks naive SQLite URIs
    r = cli("index", root, "--index", ix, "--json", "--workers", "1", env=env)
    ok(r)  # a real interpreter: and its peak RSS stayed under the cap (64 MP bomb inside)
    s = r.json()
    db = sqlite3.connect(ix / "catalogue.sqlite")
    rows = {p: (st, why) for p, st, why in db.execute("SELECT path, status, reason FROM files")}
    db.close()
    for rel, want in expect.items():
        p = os.path.join(str(root), rel)
        if want == "not indexed":
            assert p not in rows, rel
            continue
        assert p in rows, f"{rel} was silently dropped"
        status, why = rows[p]
        if want in ("ok", "failed"):
            assert status == want, (rel, why)
        if status == "failed":
            assert why and "\n" not in why and "Traceback" not in why, (rel, why)
    assert s["total_failed"] == sum(1 for v in rows.values() if v[0] == "failed")
    assert any("megapixel" in why for _, why in rows.values())
    # the index answers, and every bad file asked as a query gets its own error line
    bad = sorted(p for p, (st, _) in rows.items() if st == "failed")
    good = sorted(p for p, (st, _) in rows.items() if st == "ok")[0]
    r = cli("query", good, *bad, "--index", ix, "--json", "--k", "2", env=env)
    no_traceback(r)
    assert r.returncode == 2
    results = {x["query"]: x for x in r.json()}
    assert len(results[good]["neighbours"]) == 2
    assert all(results[b].get("error") for b in bad)
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) >= len(bad)
    info = json.loads(cli("info", "--index", ix, "--json", env=env).stdout)
    assert {f["path"] for f in info["failures"]} == set(bad)


@pytest.mark.parametrize("what", ["fifo", "loop", "dangling", "nothing"])
def test_hostile_path_arguments_are_one_line(fs, env, tiny_ckpt, tmp_path, what):
    env = {**env, "ALEXSEARCH_WEIGHTS": str(tiny_ckpt)}
    p = tmp_path / f"{what}.jpg"
    if what == "fifo":
        os.mkfifo(p)
    elif what == "loop":
        os.symlink(p.name, p)
    elif what == "dangling":
        os.symlink("gone.jpg", p)
    FIGURES["bad_images"] += 1
    r = fs.run("index", p, "--index", tmp_path / "ix", env=env)
    no_traceback(r)
    if r.returncode != 0:
        one_line_error(r)
    r = fs.run("query", p, "--index", tmp_path / "none", env=env)
    one_line_error(r)


def test_bad_checkpoints_are_refused_in_one_line_and_never_run_code(fs, env, tmp_path):
    marker = tmp_path / "PICKLE_CODE_RAN"
    root = tmp_path / "weights"
    expect = bad_checkpoints(root, marker, seed=5)
    good = checkpoint.load(root / "good.ckpt")
    FIGURES["bad_checkpoints"] += len(expect)
    for name, says in sorted(expect.items()):
        r = fs.run("info", "--weights", root / name, "--json")
        if name.startswith("bitflip") and r.returncode == 0:
            # a flip in bytes no reader uses (zip padding) is harmless: same tensors
            assert json.loads(r.stdout)["fingerprint"] == good.fingerprint, name
            continue
        line = one_line_error(r, says)
        assert str(root / name) in line or name == "missing.ckpt" and "missing" in line, line
    assert not marker.exists(), "pickled code was executed"
    # the same refusals stop `index` before it makes anything, and `query`
    for name in ("nan_weights.ckpt", "zip_pickle_code.ckpt", "bitflip_0.ckpt"):
        r = fs.run("index", tmp_path, "--index", tmp_path / "ix", "--weights", root / name)
        if r.returncode != 0:
            one_line_error(r)
            assert not (tmp_path / "ix").exists()
    assert not marker.exists()


def test_unicode_normalisation_of_names_is_kept(fs, env, tiny_ckpt, tmp_path):
    """The same name in NFC and NFD is two files on Linux: both are indexed, neither lost."""
    env = {**env, "ALEXSEARCH_WEIGHTS": str(tiny_ckpt)}
    d = tmp_path / "u"
    d.mkdir()
    for form in ("NFC", "NFD"):
        (d / unicodedata.normalize(form, "café.jpg")).write_bytes(photo_bytes("JPEG", 1))
    FIGURES["bad_images"] += 2
    s = fs.run("index", d, "--index", tmp_path / "ix", "--json", "--workers", "0", env=env)
    assert ok(s).json()["total_ok"] == 2


def test_damaged_caffemodel_import_is_one_line_and_leaves_no_output(fs, env, tmp_path):
    """A truncated and a bit-flipped V2 bvlc_alexnet: one line, non-zero, no output file.
    (The reader's wider fuzz is tests/test_caffemodel_fuzz.py.)"""
    full = tmp_path / "bvlc.caffemodel"
    write(full, bvlc_net(bvlc_params(seed=0), v1=False))
    raw = full.read_bytes()
    full.unlink()
    # cut inside fc6's weights; flip the net name's length (7 -> 5): the parse misaligns
    flipped = bytearray(raw[: 1 << 20])
    assert flipped[:2] == b"\x0a\x07"
    flipped[1] ^= 0x02
    cases = {
        "truncated.caffemodel": raw[: len(raw) // 2],
        "bitflipped.caffemodel": bytes(flipped) + raw[1 << 20 :],
    }
    for name, data in cases.items():
        src = tmp_path / name
        src.write_bytes(data)
        out = tmp_path / f"{name}.ckpt"
        r = fs.run("weights", "import", src, "--out", out, env=env)
        FIGURES["bad_inputs"] += 1
        one_line_error(r, name)
        assert not out.exists()
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(n for n in cases if (tmp_path / n).exists()), left  # no .tmp
