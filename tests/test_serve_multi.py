"""`alexsearch serve --index A --index B`: the JSON API over several indexes without
merging them (issue 17), in process through Starlette's TestClient. Its answers are the
answers of `alexsearch merge`'s merged index for the same photos; a photo is reached by
"PART:ID"; hostile references are 4xx one-liners; incomparable indexes are refused at
start-up in one line."""

import io
import shutil

import numpy as np
import pytest
from helpers import one_line_error, run_in_process
from make_shapes import make
from PIL import Image
from starlette.testclient import TestClient

import alexsearch
from alexsearch.index.catalogue import Catalogue
from alexsearch.serve.app import create_app

LOOP = "http://127.0.0.1:8000"
K = 7


def build(photos, index, ckpt, **kw):
    return alexsearch.build_index(photos, index, ckpt, device="cpu", workers=0, **kw)


def ids_by_path(index) -> dict[str, int]:
    cat = Catalogue(index / "catalogue.sqlite", readonly=True)
    try:
        return {p: r.id for p, r in cat.rows().items() if r.status == "ok"}
    finally:
        cat.close()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, init_ckpt):
    """Shards 0/2 and 1/2 of 18 photos, each an ordinary index, and their merge."""
    root = tmp_path_factory.mktemp("multiserve")
    photos = root / "photos"
    make(photos, per_class=3, seed=1)
    for i in (0, 1):
        build(photos, root / f"s{i}", init_ckpt, shard=f"{i}/2")
    alexsearch.merge_indexes([root / "s0", root / "s1"], root / "merged")
    build(photos, root / "all", init_ckpt)  # for labels, which a merge does not carry yet
    return {"root": root, "photos": photos, "parts": [root / "s0", root / "s1"],
            "merged": root / "merged", "all": root / "all", "weights": init_ckpt}  # fmt: skip


@pytest.fixture(scope="module")
def refs(shards) -> dict[str, str]:
    """Each photo's path -> its "PART:ID" over the two shards."""
    out = {}
    for j, part in enumerate(shards["parts"]):
        out.update({p: f"{j}:{i}" for p, i in ids_by_path(part).items()})
    return out


@pytest.fixture
def client(shards):
    with alexsearch.open_indexes(shards["parts"], weights=shards["weights"]) as ix:
        with TestClient(create_app(ix), base_url=LOOP) as c:
            yield c


@pytest.fixture
def merged(shards):
    with alexsearch.open_index(shards["merged"], weights=shards["weights"]) as ix:
        yield ix


def refused(r, *statuses) -> str:
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    return body["error"]


def same_hits(got: list[dict], want, refs=None):
    """Served hits against the merged index's: the same paths and distances, in order."""
    assert [h["path"] for h in got] == [h.path for h in want]
    np.testing.assert_allclose(
        [h["distance"] for h in got], [h.distance for h in want], rtol=1e-4, atol=1e-4
    )
    assert [h["rank"] for h in got] == list(range(1, len(want) + 1))
    if refs is not None:  # each hit names the part its id belongs to
        assert [f"{h['part']}:{h['id']}" for h in got] == [refs[h["path"]] for h in got]


def test_both_shards_hold_photos(shards, refs):
    parts = {r.split(":")[0] for r in refs.values()}
    assert parts == {"0", "1"} and len(refs) == 18
    assert set(refs) == set(ids_by_path(shards["merged"]))


def test_query_by_reference_answers_as_the_merged_index(client, merged, refs, shards):
    merged_ids = ids_by_path(shards["merged"])
    for path in sorted(refs)[::3]:
        r = client.post("/api/query", json={"id": refs[path], "k": K})
        assert r.status_code == 200, r.text
        got = r.json()
        want = merged.query_ids(merged_ids[path], k=K, space="paper")[0]
        assert got["query"] == path and got["space"] == "paper"
        assert path not in [h["path"] for h in got["neighbours"]]  # itself left out
        same_hits(got["neighbours"], want.hits, refs)
        assert {h["index"] for h in got["neighbours"]} <= {str(p) for p in shards["parts"]}
    # the form encoding of the page names the photo the same way
    form = client.post("/api/query", data={"id": refs[path], "k": str(K)})
    assert form.json() == got


def test_upload_answers_as_the_merged_index(client, merged, refs, tmp_path):
    make(tmp_path / "new", per_class=1, seed=21)
    for photo in sorted((tmp_path / "new").rglob("*.jpg"))[:2]:
        r = client.post("/api/query", files={"image": ("a.jpg", photo.read_bytes())},
                        data={"k": K})  # fmt: skip
        assert r.status_code == 200, r.text
        want = merged.query(photo.read_bytes(), k=K, space="paper")[0]
        same_hits(r.json()["neighbours"], want.hits, refs)
        assert len({h["part"] for h in r.json()["neighbours"]}) == 2  # from both shards


def test_thumbnails_and_originals_by_reference(client, merged, refs, shards):
    merged_ids = ids_by_path(shards["merged"])
    for path in sorted(refs)[:4] + sorted(refs)[-4:]:
        i = client.get(f"/api/image/{refs[path]}")
        assert i.status_code == 200 and i.headers["content-type"] == "image/jpeg"
        assert i.content == open(path, "rb").read()
        t = client.get(f"/api/thumb/{refs[path]}")
        assert t.status_code == 200 and t.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(t.content)).size == (32, 32)
        assert t.content == merged.thumbnail_png(merged_ids[path])  # the same photo's


def test_info_reports_the_parts_and_their_totals(client, merged, shards):
    got = client.get("/api/info").json()
    one = merged.info()
    assert got["files"] == one["files"] == 18 and got["failed"] == 0
    assert got["index"] == [str(p) for p in shards["parts"]]
    assert [p["index"] for p in got["parts"]] == got["index"]
    assert sum(p["files"] for p in got["parts"]) == 18 and all(p["files"] for p in got["parts"])
    assert got["fingerprint"] == one["fingerprint"] and got["binary"] is None
    assert got["generation"] == [1, 1]


def test_label_combines_the_parts_by_probability(client, shards):
    # every photo's top-5 of the untrained net's 10 classes ("class_N"): a class some hold
    whole = alexsearch.open_index(shards["all"], weights=shards["weights"])
    word = next(f"class {n}" for n in range(10) if whole.query_label(f"class {n}", k=1).hits)
    for k in (4, 50):
        want = whole.query_label(word, k=k)
        r = client.get("/api/label", params={"word": word, "k": k})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["classes"] == want.classes and got["unlabelled"] == want.unlabelled
        # most probable first, as one index of them all (ties may fall in another order)
        # (a shard's fc8 ran in other batches than the whole's: the 6th decimal may differ)
        np.testing.assert_allclose([h["prob"] for h in got["photos"]],
                                   [h.prob for h in want.hits], atol=2e-6)  # fmt: skip
        by_path = {h.path: h.prob for h in want.hits}
        assert k == 4 or all(
            abs(by_path.get(h["path"], -1) - h["prob"]) <= 2e-6 for h in got["photos"]
        )
        assert [h["rank"] for h in got["photos"]] == list(range(1, len(want.hits) + 1))
        assert {h["part"] for h in got["photos"]} <= {0, 1}
    assert len(got["photos"]) > 4 and {h["part"] for h in got["photos"]} == {0, 1}
    whole.close()


@pytest.mark.parametrize(
    "url, statuses",
    [
        ("/api/image/2:0", (404,)),  # no third index
        ("/api/thumb/9:1", (404,)),
        ("/api/image/0:999999", (404,)),  # no such id in that index
        ("/api/thumb/1:999999", (404,)),
        ("/api/image/0:99999999999999999999999", (404,)),  # out of range
        ("/api/thumb/0:" + "9" * 5000, (404,)),  # past what int() parses
        ("/api/thumb/" + "9" * 5000 + ":1", (404,)),
        ("/api/image/3", (400,)),  # a bare id is ambiguous over several indexes
        ("/api/thumb/abc", (400,)),
        ("/api/image/-1:2", (400,)),
        ("/api/image/0:-1", (400,)),
        ("/api/image/0:1.0", (400,)),
        ("/api/image/0:1:2", (400,)),
        ("/api/image/%C2%B9:1", (400,)),  # a superscript one is a digit to str.isdigit
        ("/api/image/../../etc/passwd", (404,)),
        ("/api/image/..%2f..%2fcatalogue.sqlite", (404,)),
        ("/api/thumb/0:1/../../catalogue.sqlite", (404,)),
    ],
)
def test_hostile_references_are_refused(client, url, statuses):
    r = client.get(url)
    refused(r, *statuses)
    assert b"root:" not in r.content and b"SQLite" not in r.content


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"id": "5:1"}, 404, "no index 5"),
        ({"id": "0:99999"}, 404, "no indexed file"),
        ({"id": "0:" + "9" * 5000}, 404, "no indexed file"),
        ({"id": 3}, 400, "PART:ID"),
        ({"id": "x"}, 400, "PART:ID"),
        ({"id": "0:1", "binary": True}, 400, "alexsearch merge"),
        ({"id": "0:1", "rerank": 50}, 400, "alexsearch merge"),
        ({"id": "0:1", "label": "class 1"}, 400, "alexsearch merge"),
        ({"id": "0:1", "k": 0}, 400, "k must be"),
    ],
)
def test_bad_query_references(client, body, status, fragment):
    assert fragment in refused(client.post("/api/query", json=body), status)


def test_what_belongs_to_one_index_asks_for_a_merge(client):
    for url in ("/api/duplicates", "/api/map"):
        assert "alexsearch merge" in refused(client.get(url), 400)
    k = client.get("/api/kernels")  # one set of weights: the kernels are theirs
    assert k.status_code == 200 and k.headers["content-type"] == "image/png"


def test_a_part_reindexed_while_serving_is_picked_up(shards, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(shards["photos"], photos)
    parts = [tmp_path / "s0", tmp_path / "s1"]
    for i, p in enumerate(parts):
        build(photos, p, shards["weights"], shard=f"{i}/2")
    with alexsearch.open_indexes(parts, weights=shards["weights"]) as ix:
        c = TestClient(create_app(ix), base_url=LOOP)
        before = c.get("/api/info").json()
        make(photos / "more", per_class=2, seed=7)
        build(photos, parts[0], shards["weights"], shard="0/2")
        after = c.get("/api/info").json()
        added = {p for p in ids_by_path(parts[0]) if "/more/" in p}  # its shard's new photos
        assert added and after["files"] == before["files"] + len(added)
        assert after["generation"] == [2, 1]
        assert c.get("/api/info").headers["alexsearch-generation"] == "2,1"
        assert c.get("/api/generation").json() == {"generation": [2, 1]}
        new = sorted(added)[0]
        ref = f"0:{ids_by_path(parts[0])[new]}"
        hits = c.post("/api/query", json={"id": ref, "k": 30}).json()["neighbours"]
        assert len(hits) == after["files"] - 1 and new not in [h["path"] for h in hits]
        assert c.get(f"/api/image/{ref}").content == open(new, "rb").read()


def test_serve_refuses_indexes_that_cannot_be_compared(shards, tmp_path, capsys):
    from alexsearch.weights import checkpoint

    few = tmp_path / "few"
    make(few, per_class=1, seed=3)
    other_w = tmp_path / "other.ckpt"
    checkpoint.save(checkpoint.init_checkpoint(10, seed=2), other_w)
    build(few, tmp_path / "w", other_w)
    s0, s1 = shards["parts"]
    r = run_in_process(capsys, "serve", "--index", s0, "--index", tmp_path / "w", check=False)
    one_line_error(r, "not comparable", "weights")
    r = run_in_process(capsys, "serve", "--index", s0, "--index", s0, check=False)
    one_line_error(r, "named twice")
    r = run_in_process(capsys, "serve", "--index", s0, "--index", tmp_path / "none", check=False)
    one_line_error(r, "no index at")


def test_serve_command_over_two_indexes(shards):
    """The real command: it names both indexes and their total, and answers over both."""
    import json
    import signal
    import subprocess
    import sys
    import urllib.request

    from helpers import SAFETY_TIMEOUT, no_traceback

    s0, s1 = shards["parts"]
    p = subprocess.Popen(
        [sys.executable, "-m", "alexsearch", "serve", "--index", str(s0), "--index", str(s1),
         "--weights", str(shards["weights"]), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = p.stdout.readline()
        assert f"serving {s0}, {s1} (18 photos in 2 indexes) at http://" in line, line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/info", timeout=60) as r:
            assert [x["files"] for x in json.load(r)["parts"]] == [
                len(ids_by_path(s0)), len(ids_by_path(s1))
            ]  # fmt: skip
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=SAFETY_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    no_traceback(subprocess.CompletedProcess(p.args, p.returncode, out, err))
