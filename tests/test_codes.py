"""Binary codes: the autoencoder (library) and `alexsearch codes` / `query --binary/--rerank`
and the index hook that keeps codes current (CLI, as a user runs them)."""

import json
import os
import sqlite3

import numpy as np
import pytest
from helpers import cli, one_line_error
from make_shapes import make

from alexsearch import errors
from alexsearch.index import autoencoder, codes


def clusters(n_per=25, k=4, dim=4096, seed=0):
    """k well-separated clusters of non-negative, fc7-like vectors."""
    rng = np.random.default_rng(seed)
    centres = np.maximum(rng.normal(0, 1, (k, dim)), 0) * 3
    x = np.concatenate([c + rng.normal(0, 0.3, (n_per, dim)) for c in centres])
    return np.maximum(x, 0).astype(np.float32), np.repeat(np.arange(k), n_per)


def test_codes_are_binary_deterministic_and_survive_save_load(tmp_path):
    x, _ = clusters()
    coder = autoencoder.train(x, bits=32, epochs=4, fingerprint="abc", seed=3)
    b = coder.bits01(x)
    assert b.shape == (len(x), 32) and set(np.unique(b)) <= {0, 1}
    packed = coder.encode(x)
    assert packed.shape == (len(x), 4) and packed.dtype == np.uint8
    assert np.array_equal(np.unpackbits(packed, axis=1), b)
    assert np.array_equal(coder.encode(x), packed)  # same input, same codes
    assert np.array_equal(coder.encode(x[7:8]), packed[7:8])  # alone or in a batch
    coder.save(tmp_path / "ae.pt")
    again = autoencoder.load(tmp_path / "ae.pt", "abc")
    assert np.array_equal(again.encode(x), packed)
    assert len(again.history) == 4 and all(0 <= e for e in again.history)
    # the same seed trains the same autoencoder
    assert np.array_equal(autoencoder.train(x, 32, 4, "abc", seed=3).encode(x), packed)


def test_clusters_give_hamming_neighbours_from_their_own_cluster():
    x, label = clusters()
    coder = autoencoder.train(x, bits=64, epochs=8, fingerprint="f")
    index = codes.build_binary_index(np.arange(len(x)) + 100, coder.encode(x), 64)
    dist, ids = codes.hamming_knn(index, coder.encode(x), 6)
    assert dist.dtype == np.int32 and (dist[:, 0] == 0).all()  # each finds its own code
    neighbours = ids[:, 1:] - 100
    assert (label[neighbours] == label[:, None]).all()
    # and codes of different clusters are far apart in bits
    far = codes.hamming_knn(index, coder.encode(x[:1]), len(x))[0][0]
    assert far[-1] >= 8


def test_bad_bits_and_refused_autoencoder(tmp_path):
    with pytest.raises(errors.CodesError, match="multiple of 8"):
        autoencoder.check_bits(30)
    x, _ = clusters(n_per=5)
    autoencoder.train(x, 16, 1, fingerprint="model-A").save(tmp_path / "a.pt")
    with pytest.raises(errors.CodesError, match="trained on features of weights model-A"):
        autoencoder.load(tmp_path / "a.pt", "model-B")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(errors.CodesError, match="not a readable autoencoder"):
        autoencoder.load(tmp_path / "junk.pt")


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def env(init_ckpt):
    return {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}


@pytest.fixture(scope="module")
def built(env, tmp_path_factory):
    """A small index of generated photos with 32-bit codes."""
    root = tmp_path_factory.mktemp("codes")
    make(root / "photos", per_class=2, seed=4)
    ix = root / "ix"
    cli("index", root / "photos", "--index", ix, "--workers", "1", "--json", env=env)
    r = cli("codes", "--index", ix, "--bits", "32", "--epochs", "3", "--json", env=env)
    return root, ix, json.loads(r.stdout)


def manifest_of(ix):
    return json.loads((ix / "manifest.json").read_text())


def ok_vectors(ix):
    db = sqlite3.connect(ix / "catalogue.sqlite")
    rows = db.execute("SELECT id, path, vector FROM files WHERE status='ok' ORDER BY id")
    return {i: (p, np.frombuffer(v, np.float32)) for i, p, v in rows}


def stored_codes(ix):
    m = manifest_of(ix)["codes"]
    with np.load(ix / m["codes_file"]) as z:
        return dict(zip(z["ids"].tolist(), map(bytes, z["codes"]), strict=True))


def test_codes_command_summary_and_files(built, env):
    _, ix, s = built
    assert s["bits"] == 32 and s["bytes_per_image"] == 4 and s["encoded"] == 12
    assert s["kind"] == "flat" and len(s["reconstruction_error"]) == 3
    m = manifest_of(ix)["codes"]
    assert m["bits"] == 32 and m["count"] == 12 and m["fingerprint"] == s["fingerprint"]
    for k in ("autoencoder", "codes_file", "index_file"):
        assert (ix / m[k]).is_file()
    # stored codes are what the saved autoencoder makes of the catalogue's vectors
    coder = autoencoder.load(ix / m["autoencoder"], s["fingerprint"])
    vecs = ok_vectors(ix)
    have = stored_codes(ix)
    assert set(have) == set(vecs)
    for i, (_, v) in vecs.items():
        assert have[i] == coder.encode(v[None])[0].tobytes()
    info = json.loads(cli("info", "--index", ix, "--json", env=env).stdout)
    assert info["codes"].startswith("32 bits (4 bytes an image), 12 encoded")


def test_query_binary_and_rerank(built, env):
    root, ix, _ = built
    q = root / "photos" / "red_circles" / "000.jpg"
    args = ("query", q, "--index", ix, "--json")
    binary = json.loads(cli(*args, "--binary", "--k", "4", env=env).stdout)[0]["neighbours"]
    assert len(binary) == 4 and str(q) not in [h["path"] for h in binary]
    d = [h["distance"] for h in binary]
    assert all(isinstance(x, int) and 0 <= x <= 32 for x in d) and d == sorted(d)
    me = json.loads(cli(*args, "--binary", "--k", "1", "--include-self", env=env).stdout)
    assert me[0]["neighbours"][0]["distance"] == 0  # its own code
    # a shortlist holding the whole index, re-ranked by exact fc7: the float answer
    exact = json.loads(cli(*args, "--k", "5", env=env).stdout)[0]["neighbours"]
    rr = json.loads(cli(*args, "--k", "5", "--rerank", "50", env=env).stdout)[0]["neighbours"]
    assert [h["path"] for h in rr] == [h["path"] for h in exact]
    assert [h["distance"] for h in rr] == pytest.approx([h["distance"] for h in exact], rel=1e-4)
    tty = {**env, "COLUMNS": "300", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    assert "Hamming bits" in cli("query", q, "--index", ix, "--binary", env=tty).stdout
    reranked = cli("query", q, "--index", ix, "--rerank", "50", env=tty).stdout
    assert "Hamming bits" not in reranked and "distance" in reranked  # re-ranked: fc7 L2
    one_line_error(cli(*args, "--rerank", "3", "--k", "6", env=env, check=False), "--rerank 3")


def test_query_without_codes_says_run_codes(env, tmp_path):
    make(tmp_path / "p", per_class=1, seed=5)
    ix = tmp_path / "ix"
    cli("index", tmp_path / "p", "--index", ix, "--workers", "1", env=env)
    q = tmp_path / "p" / "red_circles" / "000.jpg"
    r = cli("query", q, "--index", ix, "--binary", env=env, check=False)
    one_line_error(r, "alexsearch codes")
    info = json.loads(cli("info", "--index", ix, "--json", env=env).stdout)
    assert info["codes"] == "none (alexsearch codes)"
    r = cli("codes", "--index", ix, "--bits", "30", env=env, check=False)
    one_line_error(r, "multiple of 8")


def test_incremental_index_keeps_codes_in_step(env, tmp_path):
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    make(photos, per_class=1, seed=8)
    cli("index", photos, "--index", ix, "--workers", "1", env=env)
    cli("codes", "--index", ix, "--bits", "16", "--epochs", "2", env=env)
    before = stored_codes(ix)
    m0 = manifest_of(ix)["codes"]
    make(photos / "more", per_class=1, seed=9)  # 6 added
    gone = photos / "blue_squares" / "000.jpg"
    gone_id = next(i for i, (p, _) in ok_vectors(ix).items() if p == str(gone))
    gone.unlink()  # 1 deleted
    s = json.loads(cli("index", photos, "--index", ix, "--workers", "1", "--json", env=env).stdout)
    assert s["added"] == 6 and s["deleted"] == 1 and s["total_ok"] == 11
    m = manifest_of(ix)["codes"]
    assert m["autoencoder"] == m0["autoencoder"] and m["count"] == 11
    assert m["reencoded"] == 6  # only the new files went through the autoencoder
    assert not (ix / m0["codes_file"]).exists() and (ix / m["codes_file"]).exists()
    have, vecs = stored_codes(ix), ok_vectors(ix)
    assert set(have) == set(vecs) and gone_id not in have
    coder = autoencoder.load(ix / m["autoencoder"])
    for i, (_, v) in vecs.items():
        assert have[i] == coder.encode(v[None])[0].tobytes()
        if i in before:
            assert have[i] == before[i]
    new = photos / "more" / "red_circles" / "000.jpg"
    args = ("query", new, "--index", ix, "--binary", "--json")
    res = json.loads(cli(*args, "--include-self", "--k", "11", env=env).stdout)
    assert {h["path"]: h["distance"] for h in res[0]["neighbours"]}[str(new)] == 0  # own code
    every = json.loads(cli(*args, "--k", "40", env=env).stdout)[0]["neighbours"]
    assert len(every) == 10 and str(gone) not in [h["path"] for h in every]


def test_autoencoder_of_another_model_is_refused(built, env, tmp_path):
    _, ix_a, _ = built
    other = tmp_path / "other.ckpt"
    cli("weights", "init", "--out", other, "--classes", "10", "--seed", "77")
    make(tmp_path / "p", per_class=1, seed=6)
    ix_b = tmp_path / "ix"
    cli("index", tmp_path / "p", "--index", ix_b, "--weights", other, "--workers", "1", env=env)
    ae = ix_a / manifest_of(ix_a)["codes"]["autoencoder"]
    r = cli("codes", "--index", ix_b, "--autoencoder", ae, env=env, check=False)
    one_line_error(r, "was trained on features of weights")
    assert manifest_of(ix_a)["model"]["fingerprint"] in r.stderr
    assert "codes" not in manifest_of(ix_b)


def test_a_saved_autoencoder_keeps_its_own_bits_and_refuses_others(built, env, tmp_path):
    root, ix, s = built
    saved = tmp_path / "ae32.pt"
    saved.write_bytes((ix / manifest_of(ix)["codes"]["autoencoder"]).read_bytes())
    before = (ix / "manifest.json").read_bytes()
    r = cli("codes", "--index", ix, "--autoencoder", saved, "--bits", "64", env=env, check=False)
    one_line_error(r, f"{saved} makes 32-bit codes, not --bits 64")
    assert (ix / "manifest.json").read_bytes() == before  # nothing was published
    # without --bits it encodes with its own 32 bits and trains nothing
    r = json.loads(cli("codes", "--index", ix, "--autoencoder", saved, "--json", env=env).stdout)
    assert r["bits"] == 32 and r["epochs"] == 0 and r["encoded"] == s["encoded"]
