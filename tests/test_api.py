"""The Python API (alexsearch.build_index / open_index), the one every front end calls:
it answers exactly as the CLI's --json does, stays light to import, and follows an
index that is updated while it is open."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli
from make_shapes import make
from PIL import Image

import alexsearch
from alexsearch.errors import IndexError_, UserError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def photos(tmp_path):
    make(tmp_path / "photos", per_class=2, seed=4)
    return tmp_path / "photos"


@pytest.fixture
def built(photos, init_ckpt, tmp_path):
    ix = tmp_path / "ix"
    alexsearch.build_index(photos, index=ix, weights=init_ckpt, device="cpu", workers=0)
    return ix


def test_readme_example_runs_as_written(tmp_path, init_ckpt):
    text = README.read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    make(tmp_path / "photos", per_class=2, seed=3)  # what the section says it expects
    os.symlink(init_ckpt, tmp_path / "net.ckpt")
    env = {k: v for k, v in os.environ.items() if k != "ALEXSEARCH_WEIGHTS"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "12 added" in r.stdout and (tmp_path / "indexes" / "photos" / "manifest.json").exists()
    lines = r.stdout.splitlines()
    hits = [line.split() for line in lines[1:-1]]
    assert [h[0] for h in hits] == ["1", "2", "3"]
    assert all(h[2].startswith(str(tmp_path / "photos")) for h in hits)
    assert r.stdout.splitlines()[-1].startswith("12 files; ")


def test_query_is_what_the_cli_prints(built, photos, init_ckpt):
    q = [photos / "red_circles" / "000.jpg", photos / "blue_squares" / "001.jpg"]
    with alexsearch.open_index(built, weights=init_ckpt) as ix:
        results = ix.query(q, k=4)
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}
    printed = json.loads(cli("query", *q, "--index", built, "--k", "4", "--json", env=env).stdout)
    assert [r.to_dict() for r in results] == printed
    hits = results[0].hits
    assert len(hits) == 4 and str(q[0]) not in [h.path for h in hits]  # itself left out
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)


def test_summary_fields_are_the_index_json_keys(photos, init_ckpt, tmp_path):
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": str(init_ckpt)}
    ix = tmp_path / "cli-ix"
    printed = json.loads(cli("index", photos, "--index", ix, "--json", env=env).stdout)
    seen = []
    summary = alexsearch.build_index(
        photos,
        index=tmp_path / "api-ix",
        weights=init_ckpt,
        progress=lambda *a, **f: seen.append((a, f)),
    )
    from dataclasses import asdict

    assert set(asdict(summary)) == set(printed) and summary.added == printed["added"] == 12
    # the progress protocol: (stage, done, total) and named figures, up to the total
    # then the top-5 classes of each photo, from its fc7 (index/labels.py)
    stages = [a[0] for a, _ in seen]
    assert set(stages) == {"extracting", "labelling"} and stages[-1] == "labelling"
    assert seen[-1][0][1:] == (12, 12)
    seen = [(a, f) for a, f in seen if a[0] == "extracting"]
    assert [a[1] for a, _ in seen] == sorted(a[1] for a, _ in seen) and seen[-1][0][1:] == (12, 12)
    assert all(f["img_per_s"] > 0 for _, f in seen)


def test_ids_paths_thumbnails_and_vectors(built, photos, init_ckpt):
    q = photos / "green_triangles" / "001.jpg"
    with alexsearch.open_index(built, weights=init_ckpt) as ix:
        me = ix.query(q, k=1, include_self=True)[0].hits[0]
        assert me.path == str(q) and me.distance < 1e-3
        assert ix.path(me.id) == str(q)
        thumb = ix.thumbnail(me.id)
        assert thumb.size == (32, 32) and thumb.mode == "RGB"
        # the thumbnail is the photo as indexing saw it: its mean colour is the photo's
        photo = np.asarray(Image.open(q).convert("RGB").resize((32, 32)), np.float32)
        assert np.abs(np.asarray(thumb, np.float32).mean((0, 1)) - photo.mean((0, 1))).max() < 12
        vec = ix.vector(me.id)
        assert vec.shape == (4096,) and vec.dtype == np.float32
        other = ix.query(q, k=1)[0].hits[0]
        assert np.linalg.norm(vec - ix.vector(other.id)) == pytest.approx(other.distance, 1e-4)
        for bad in (ix.path, ix.thumbnail, ix.vector):
            with pytest.raises(IndexError_, match="no indexed file with id 999999"):
                bad(999999)


def test_an_open_index_follows_new_generations(built, photos, init_ckpt, tmp_path):
    q = photos / "red_circles" / "000.jpg"
    with alexsearch.open_index(built, weights=init_ckpt) as ix:
        assert len(ix.query(q, k=50)[0].hits) == 11
        make(photos / "more", per_class=1, seed=9)  # 6 more photos, indexed meanwhile
        alexsearch.build_index(photos, index=built, weights=init_ckpt, workers=0)
        assert len(ix.query(q, k=50)[0].hits) == 17
        assert ix.info()["generation"] == 2 and ix.info()["files"] == 18


def test_bad_images_and_arguments(built, photos, init_ckpt, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with alexsearch.open_index(built, weights=init_ckpt) as ix:
        good, bad, raw = ix.query(
            [photos / "red_circles" / "000.jpg", tmp_path / "broken.jpg",
             (photos / "red_circles" / "001.jpg").read_bytes()],
            k=2,
        )  # fmt: skip
        assert len(good.hits) == 2 and not good.error
        assert bad.hits == [] and "not a recognised image" in bad.error
        assert raw.query == "" and len(raw.hits) == 2  # bytes: nothing to leave out by path
        with pytest.raises(UserError, match="--rerank 2 must be at least --k 3"):
            ix.query(photos / "red_circles" / "000.jpg", k=3, rerank=2)
        with pytest.raises(UserError, match="no binary codes yet"):
            ix.query(photos / "red_circles" / "000.jpg", binary=True)
    with pytest.raises(IndexError_, match="no index at"):
        alexsearch.open_index(tmp_path / "nothing")


def test_import_is_light_and_a_cpu_query_never_imports_torch(built, photos, init_ckpt):
    probe = (
        "import sys, json\n"
        "import alexsearch\n"
        "names = (alexsearch.build_index, alexsearch.open_index, alexsearch.Progress)\n"
        "light = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'faiss'))\n"
        "with alexsearch.open_index(sys.argv[1], weights=sys.argv[3]) as ix:\n"
        "    hits = ix.query(sys.argv[2], k=3)[0].hits\n"
        "torch = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
        "print(json.dumps([light, torch, len(hits)]))\n"
    )
    q = photos / "red_circles" / "000.jpg"
    r = subprocess.run(
        [sys.executable, "-c", probe, str(built), str(q), str(init_ckpt)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [[], [], 3]


def test_a_cpu_index_starts_decoding_before_torch_is_imported(photos, init_ckpt, tmp_path):
    """Decoding overlaps torch's import (~2 s, a fifth of a cold run of 1,000 photos): the
    decode threads are started while torch is not yet in the process, one per core."""
    probe = (
        "import sys, json, os\n"
        "from alexsearch.index import decoding\n"
        "seen = []\n"
        "init = decoding.DecodeAhead.__init__\n"
        "def spy(self, paths, pre, mp, threads, **kw):\n"
        "    seen.append(['torch' in sys.modules, threads])\n"
        "    init(self, paths, pre, mp, threads, **kw)\n"
        "decoding.DecodeAhead.__init__ = spy\n"
        "import alexsearch\n"
        "s = alexsearch.build_index(sys.argv[1], index=sys.argv[2], weights=sys.argv[3],"
        " device='cpu')\n"
        "print(json.dumps([seen, s.added, 'torch' in sys.modules, os.cpu_count()]))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(photos), str(tmp_path / "ix"), str(init_ckpt)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    seen, added, torch_in_the_end, cores = json.loads(r.stdout)
    assert seen == [[False, cores]] and added == 12 and torch_in_the_end
