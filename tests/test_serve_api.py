"""`alexsearch serve`'s JSON API, in process through Starlette's TestClient: every
endpoint answers what the library answers, and every refusal is a 4xx JSON line (paths
that climb out, symlinks pointing out of the indexed folders, unknown ids, bad images,
oversized uploads, foreign Host headers, bad k); plus the command's start-up refusals."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from helpers import SAFETY_TIMEOUT, no_traceback, one_line_error, run_in_process
from make_shapes import make
from PIL import Image
from starlette.testclient import TestClient

import alexsearch
from alexsearch.serve.app import create_app

LOOP = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def site(tmp_path_factory, init_ckpt):
    """An index of 12 photos, plus a symlink inside the photos that points out of them."""
    root = tmp_path_factory.mktemp("serve")
    photos = root / "photos"
    make(photos, per_class=2, seed=4)
    outside = root / "private"
    outside.mkdir()
    make(outside / "x", per_class=1, seed=9)
    secret = sorted((outside / "x").rglob("*.jpg"))[0]
    (photos / "linked").mkdir()
    os.symlink(secret, photos / "linked" / "secret.jpg")  # indexed: walk follows links
    os.symlink(photos / "red_circles" / "000.jpg", photos / "linked" / "inside.jpg")
    ix = root / "ix"
    alexsearch.build_index(photos, index=ix, weights=init_ckpt, device="cpu", workers=0)
    return {"root": root, "photos": photos, "ix": ix, "weights": init_ckpt, "secret": secret}


@pytest.fixture
def opened(site):
    with alexsearch.open_index(site["ix"], weights=site["weights"]) as ix:
        yield ix


@pytest.fixture
def client(opened):
    with TestClient(create_app(opened), base_url=LOOP) as c:
        yield c


def id_of(ix, path) -> int:
    with ix._lock:  # the catalogue as the library sees it
        return ix._current().catalogue.id_of(str(path))


def refused(r, status: int, *fragments) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    for f in fragments:
        assert f in body["error"], (f, body)
    return body["error"]


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# -- what each endpoint answers


def test_info_is_the_librarys(client, opened):
    got = client.get("/api/info").json()
    want = opened.info()
    assert {k: got[k] for k in want} == want
    assert got["files"] == 14 and got["binary"] is None and got["max_upload"] == 25 * 1024**2


def test_query_by_id_in_every_encoding(client, opened, site):
    me = id_of(opened, site["photos"] / "blue_squares" / "000.jpg")
    want = opened.query_ids(me, k=4)[0].to_dict()
    assert want["query"].endswith("blue_squares/000.jpg")
    assert me not in [h["id"] for h in want["neighbours"]] and len(want["neighbours"]) == 4
    as_json = client.post("/api/query", json={"id": me, "k": 4})
    as_form = client.post("/api/query", data={"id": str(me), "k": "4"})
    as_multipart = client.post("/api/query", files={"id": (None, str(me)), "k": (None, "4")})
    for r in (as_json, as_form, as_multipart):
        assert r.status_code == 200, r.text
        assert r.json() == want
    d = [h["distance"] for h in want["neighbours"]]
    assert d == sorted(d)


def test_upload_is_what_query_json_prints(client, site, tmp_path, capsys):
    make(tmp_path / "new", per_class=1, seed=21)
    photo = sorted((tmp_path / "new").rglob("*.jpg"))[0]
    r = client.post("/api/query", files={"image": ("a.jpg", photo.read_bytes())}, data={"k": 5})
    assert r.status_code == 200, r.text
    printed = run_in_process(
        capsys, "query", photo, "--index", site["ix"], "--weights", site["weights"],
        "--k", "5", "--json",
    )  # fmt: skip
    want = json.loads(printed.stdout)[0]
    assert want["query"] == str(photo)
    assert r.json() == {**want, "query": ""}  # bytes have no path


def test_binary_without_codes_says_so(client, opened):
    r = client.post("/api/query", json={"id": 1, "k": 3, "binary": True})
    refused(r, 409, "alexsearch codes")


@pytest.mark.slow
def test_binary_codes_hamming_and_rerank(site, tmp_path):
    ix_dir = tmp_path / "ix"
    shutil.copytree(site["ix"], ix_dir)
    alexsearch.build_codes(ix_dir, bits=32, epochs=1)
    with alexsearch.open_index(ix_dir, weights=site["weights"]) as ix:
        c = TestClient(create_app(ix), base_url=LOOP)
        assert c.get("/api/info").json()["binary"] == {
            "bits": 32, "bytes_per_image": 4, "count": 14,
        }  # fmt: skip
        ham = c.post("/api/query", json={"id": 2, "k": 5, "binary": True}).json()
        assert ham == ix.query_ids(2, k=5, binary=True)[0].to_dict()
        bits = [h["distance"] for h in ham["neighbours"]]
        assert len(bits) == 5 and all(isinstance(b, int) and 0 <= b <= 32 for b in bits)
        rr = c.post("/api/query", data={"id": "2", "k": "5", "rerank": "10"}).json()
        assert rr == ix.query_ids(2, k=5, rerank=10)[0].to_dict()
        d = [h["distance"] for h in rr["neighbours"]]
        assert d == sorted(d) and any(isinstance(x, float) for x in d)
        photo = (site["photos"] / "red_circles" / "001.jpg").read_bytes()
        up = c.post("/api/query", files={"image": ("q.jpg", photo)}, data={"binary": "on"})
        assert up.status_code == 200 and isinstance(up.json()["neighbours"][0]["distance"], int)


def test_thumbnail_and_image_by_id(client, opened, site):
    path = site["photos"] / "green_triangles" / "001.jpg"
    me = id_of(opened, path)
    t = client.get(f"/api/thumb/{me}")
    assert t.status_code == 200 and t.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(t.content)).size == (32, 32)
    i = client.get(f"/api/image/{me}")
    assert i.status_code == 200 and i.headers["content-type"] == "image/jpeg"
    assert i.content == path.read_bytes()
    inside = id_of(opened, site["photos"] / "linked" / "inside.jpg")  # a link within: fine
    assert (
        client.get(f"/api/image/{inside}").content
        == (site["photos"] / "red_circles" / "000.jpg").read_bytes()
    )


def test_a_format_browsers_do_not_show_comes_as_jpeg(tmp_path, init_ckpt):
    photos = tmp_path / "p"
    make(photos, per_class=1, seed=5)
    src = sorted(photos.rglob("*.jpg"))[0]
    Image.open(src).save(photos / "scan.tiff")
    ix = tmp_path / "ix"
    alexsearch.build_index(photos, index=ix, weights=init_ckpt, device="cpu", workers=0)
    with alexsearch.open_index(ix, weights=init_ckpt) as opened:
        app = TestClient(create_app(opened), base_url=LOOP)
        r = app.get(f"/api/image/{id_of(opened, photos / 'scan.tiff')}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == Image.open(src).size


def test_map_is_cached_per_generation_and_follows_a_reindex(tmp_path, init_ckpt):
    photos = tmp_path / "p"
    make(photos, per_class=1, seed=6)
    ix_dir = tmp_path / "ix"
    alexsearch.build_index(photos, index=ix_dir, weights=init_ckpt, device="cpu", workers=0)
    with alexsearch.open_index(ix_dir, weights=init_ckpt) as opened:
        c = TestClient(create_app(opened), base_url=LOOP)
        m = c.get("/api/map").json()
        assert m["generation"] == 1 and len(m["points"]) == 6
        assert {p["label"] for p in m["points"]} == {d.name for d in photos.iterdir()}
        assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in m["points"])
        cache = ix_dir / "tsne-1-opentsne.json"
        assert json.loads(cache.read_text()) == m
        # an index updated while serving: the next request sees the new generation
        make(tmp_path / "more", per_class=1, seed=7)
        shutil.copytree(tmp_path / "more", photos / "more")
        alexsearch.build_index(photos, index=ix_dir, weights=init_ckpt, device="cpu", workers=0)
        assert c.get("/api/info").json()["files"] == 12
        m2 = c.get("/api/map").json()
        assert m2["generation"] == 2 and len(m2["points"]) == 12
        assert not cache.exists() and (ix_dir / "tsne-2-opentsne.json").exists()
        hits = c.post("/api/query", json={"id": m2["points"][0]["id"], "k": 11}).json()
        assert any("/more/" in h["path"] for h in hits["neighbours"])
    # a second server on the same generation reads the cache instead of computing
    with alexsearch.open_index(ix_dir, weights=init_ckpt) as opened:
        import alexsearch.viz.map_cache as mc

        def never(*a, **k):
            raise AssertionError("recomputed")

        old, mc.tsne_2d = mc.tsne_2d, never
        try:
            assert TestClient(create_app(opened), base_url=LOOP).get("/api/map").json() == m2
        finally:
            mc.tsne_2d = old


def test_every_answer_names_the_generation_it_answers_from(tmp_path, init_ckpt):
    """The header the page watches to notice a re-index published while it is open, and
    /api/generation, the cheap answer it asks when its tab is shown again."""
    photos = tmp_path / "p"
    make(photos, per_class=1, seed=6)
    ix_dir = tmp_path / "ix"
    alexsearch.build_index(photos, index=ix_dir, weights=init_ckpt, device="cpu", workers=0)
    with alexsearch.open_index(ix_dir, weights=init_ckpt) as opened:
        c = TestClient(create_app(opened), base_url=LOOP)

        def answers():
            return [
                c.get("/api/info"),
                c.get("/api/generation"),
                c.post("/api/query", json={"id": 1, "k": 3}),
                c.get("/api/label", params={"word": "class_0"}),
                c.get("/api/duplicates", params={"tier": "exact"}),
                c.get("/api/map"),
            ]

        for r in answers():
            assert r.status_code == 200, (r.url, r.text)
            assert r.headers["alexsearch-generation"] == "1", r.url
        assert c.get("/api/generation").json() == {"generation": 1}
        make(tmp_path / "more", per_class=1, seed=7)
        shutil.copytree(tmp_path / "more", photos / "more")
        alexsearch.build_index(photos, index=ix_dir, weights=init_ckpt, device="cpu", workers=0)
        for r in answers():
            assert r.headers["alexsearch-generation"] == "2", r.url
        assert c.get("/api/generation").json() == {"generation": 2}
        assert c.get("/api/info").json()["files"] == 12
        # an error names no generation: it is not an answer of the index
        assert "alexsearch-generation" not in c.get("/api/label").headers


def test_kernels_picture(client):
    from alexsearch.viz.kernels import KernelLayout

    r = client.get("/api/kernels")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == KernelLayout(96, 2, 11).image_size()


def test_the_page_is_shipped_and_fetches_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "/static/app.js" in page.text
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
    assert "http" not in page.text.replace("http-equiv", "")
    refused(client.get("/static/app.py"), 404)
    refused(client.get("/static/..%2fapp.py"), 404)


# -- refusals


@pytest.mark.parametrize(
    "url",
    [
        "/api/image/../../../../etc/passwd",
        "/api/image/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/api/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/image/%252e%252e%252fetc%252fpasswd",
        "/api/image//etc/passwd",
        "/api/image/%2Fetc%2Fpasswd",
        "/api/thumb/..%2f..%2fcatalogue.sqlite",
        "/api/image/1/../../catalogue.sqlite",
        "/api/image/-1",
        "/api/image/1.0",
        "/api/image/abc",
        "/api/image/999999",
        "/api/thumb/999999",
        "/api/nothing",
    ],
)
def test_paths_never_reach_files(client, url):
    r = client.get(url)
    refused(r, 404)
    assert b"root:" not in r.content and b"SQLite" not in r.content


def test_symlinks_out_of_the_indexed_folders_are_refused(client, opened, site, tmp_path):
    out_id = id_of(opened, site["photos"] / "linked" / "secret.jpg")
    assert out_id is not None  # indexed (walk follows links) but not served
    refused(client.get(f"/api/image/{out_id}"), 403, "outside the indexed folders")
    # a file swapped for a link after indexing, and a folder made a link
    victim = site["photos"] / "orange_stars" / "001.jpg"
    vid = id_of(opened, victim)
    saved = victim.read_bytes()
    victim.unlink()
    os.symlink(site["secret"], victim)
    try:
        refused(client.get(f"/api/image/{vid}"), 403, "outside")
    finally:
        victim.unlink()
        victim.write_bytes(saved)
    folder = site["photos"] / "purple_rings"
    fid = id_of(opened, folder / "000.jpg")
    moved = tmp_path / "elsewhere"
    shutil.move(folder, moved)
    os.symlink(moved, folder)
    try:
        refused(client.get(f"/api/image/{fid}"), 403, "outside")
    finally:
        folder.unlink()
        shutil.move(moved, folder)
    assert client.get(f"/api/image/{fid}").status_code == 200


def test_a_file_gone_since_indexing(client, opened, site):
    victim = site["photos"] / "yellow_stripes" / "001.jpg"
    vid = id_of(opened, victim)
    saved = victim.read_bytes()
    victim.unlink()
    try:
        refused(client.get(f"/api/image/{vid}"), 404, "cannot be read")
    finally:
        victim.write_bytes(saved)


def test_bad_uploads(client, site, opened):
    good = (site["photos"] / "red_circles" / "001.jpg").read_bytes()
    up = lambda data: client.post("/api/query", files={"image": ("x.jpg", data)})  # noqa: E731
    refused(up(b"hello, not a photo"), 400, "cannot be used", "not a recognised image")
    refused(up(good[: len(good) // 2]), 400, "cannot be used")
    refused(up(b""), 400, "empty")
    refused(client.post("/api/query", files={"image": ("x.jpg", b"\x00" * 4096)}), 400)


def test_the_upload_cap(opened, site):
    c = TestClient(create_app(opened, max_upload=20_000), base_url=LOOP)
    big = jpeg(Image.effect_noise((200, 200), 80).convert("RGB"))
    assert len(big) > 20_000
    refused(c.post("/api/query", files={"image": ("big.jpg", big)}), 413, "cap", "--max-upload")

    def chunks():  # no Content-Length: the cap holds on what arrives
        for _ in range(64):
            yield big[:4096]

    r = c.post("/api/query", content=chunks(), headers={"content-type": "multipart/form-data"})
    refused(r, 413, "cap")
    small = (site["photos"] / "red_circles" / "001.jpg").read_bytes()
    assert len(small) < 20_000
    assert c.post("/api/query", files={"image": ("s.jpg", small)}).status_code == 200


def test_the_megapixel_cap(site):
    with alexsearch.open_index(site["ix"], weights=site["weights"], max_megapixels=0.01) as ix:
        c = TestClient(create_app(ix), base_url=LOOP)
        r = c.post("/api/query", files={"image": ("x.jpg", jpeg(Image.new("RGB", (200, 100))))})
        refused(r, 400, "megapixel")


def test_uploads_stay_in_memory(client, site, monkeypatch):
    """A 2 MB upload (past Starlette's 1 MB spool) never rolls over to a file on disk."""
    import starlette.formparsers as fp

    class NoDisk(fp.SpooledTemporaryFile):
        def rollover(self):
            raise AssertionError("an upload was written to disk")

    monkeypatch.setattr(fp, "SpooledTemporaryFile", NoDisk)
    import numpy as np

    noisy = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) > 1024**2
    r = client.post("/api/query", files={"image": ("big.png", big)}, data={"k": "2"})
    assert r.status_code == 200, r.text


def test_nothing_is_written(client, opened, site):
    def listing():
        return sorted(
            (str(p), p.stat().st_size, p.stat().st_mtime_ns)
            for p in site["root"].rglob("*")
            if p.is_file() and not p.name.startswith("tsne-") and not p.name.endswith("-shm")
        )

    before = listing()
    photo = (site["photos"] / "red_circles" / "001.jpg").read_bytes()
    client.post("/api/query", files={"image": ("x.jpg", photo)})
    client.post("/api/query", json={"id": 2})
    for url in ("/api/info", "/api/thumb/2", "/api/image/2", "/"):
        client.get(url)
    for method in (client.delete, client.put):
        refused(method("/api/image/2"), 405)
    assert listing() == before


@pytest.mark.parametrize(
    "host,ok",
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
        ("127.0.0.1", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example:8000", False),
        ("", False),
    ],
)
def test_host_header_on_loopback(client, host, ok):
    r = client.get("/api/info", headers={"host": host})
    if ok:
        assert r.status_code == 200, r.text
    else:
        refused(r, 403, "loopback", "DNS rebinding")


def test_host_header_is_not_checked_beyond_loopback(opened):
    c = TestClient(create_app(opened, loopback=False), base_url="http://photos.lan:8000")
    assert c.get("/api/info").status_code == 200


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"id": 1, "k": 0}, 400, "k must be between 1"),
        ({"id": 1, "k": -3}, 400, "k must be between 1"),
        ({"id": 1, "k": "abc"}, 400, "k must be a whole number"),
        ({"id": 1, "k": 2.5}, 400, "k must be a whole number"),
        ({"id": 1, "k": 100000}, 400, "k must be between 1 and 500"),
        ({"id": 1, "k": 6, "rerank": 3}, 400, "--rerank 3 must be at least --k 6"),
        ({"id": 1, "binary": "maybe"}, 400, "binary must be true or false"),
        ({"id": "x"}, 400, "id must be a whole number"),
        ({"id": 999999}, 404, "no indexed file with id 999999"),
        ({"k": 3}, 400, "send an image"),
    ],
)
def test_bad_query_fields(client, body, status, fragment):
    refused(client.post("/api/query", json=body), status, fragment)


def test_bad_query_bodies(client):
    refused(
        client.post("/api/query", content=b"{nope", headers={"content-type": "application/json"}),
        400,
        "JSON",
    )  # noqa: E501
    refused(
        client.post("/api/query", content=b"[1]", headers={"content-type": "application/json"}),
        400,
        "object",
    )  # noqa: E501
    refused(client.post("/api/query", content=b"x", headers={"content-type": "text/plain"}), 415)
    refused(client.get("/api/query"), 405, "GET is not allowed")


def test_a_bug_still_answers_json(opened, monkeypatch):
    def broken():
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(opened, "info", broken)
    c = TestClient(create_app(opened), base_url=LOOP, raise_server_exceptions=False)
    refused(c.get("/api/info"), 500, "internal error: ZeroDivisionError")


# -- the command's start-up refusals and its life


def test_serve_refuses_at_start_up(site, tmp_path, capsys):
    from alexsearch.weights import checkpoint

    r = run_in_process(capsys, "serve", "--index", tmp_path / "none", check=False)
    one_line_error(r, "no index at", "alexsearch index")
    half = tmp_path / "half"
    half.mkdir()
    from alexsearch.index.catalogue import Catalogue

    Catalogue(half / "catalogue.sqlite").close()
    r = run_in_process(capsys, "serve", "--index", half, check=False)
    one_line_error(r, "not complete yet")
    other = tmp_path / "other.ckpt"
    checkpoint.save(checkpoint.init_checkpoint(10, seed=2), other)
    r = run_in_process(capsys, "serve", "--index", site["ix"], "--weights", other, check=False)
    one_line_error(r, "was built with weights")
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        port = held.getsockname()[1]
        r = run_in_process(
            capsys, "serve", "--index", site["ix"], "--weights", site["weights"], "--port", port,
            check=False,
        )  # fmt: skip
        one_line_error(r, f"port {port} on 127.0.0.1 is already in use", "--port")
    finally:
        held.close()
    r = run_in_process(capsys, "serve", "--index", site["ix"], "--max-upload", "lots", check=False)
    one_line_error(r, "--max-upload 'lots'")
    r = run_in_process(capsys, "serve", "--index", site["ix"], "--device", "tpu", check=False)
    one_line_error(r, "--device 'tpu'", "auto, cpu, cuda")


def test_serve_runs_warns_beyond_loopback_and_stops_on_ctrl_c(site):
    import urllib.request

    p = subprocess.Popen(
        [sys.executable, "-m", "alexsearch", "serve", "--index", str(site["ix"]),
         "--weights", str(site["weights"]), "--host", "0.0.0.0", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = p.stdout.readline()
        assert "serving" in line and "(14 photos)" in line, line
        url = line.split(" at ")[1].split()[0]
        port = url.rsplit(":", 1)[1].strip("/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=60) as r:
            assert json.load(r)["files"] == 14
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=SAFETY_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "stopped" in out
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    no_traceback(r)
    warning = err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: bound to 0.0.0.0"), err


def test_serving_runs_each_request_on_one_blas_thread(monkeypatch):
    """Concurrent uploads each run the network: on one BLAS thread apiece they share the
    cores instead of oversubscribing them; the limit is lifted when serving stops."""
    import uvicorn
    from threadpoolctl import threadpool_info

    from alexsearch.serve import run

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: seen.append(blas_threads()))
    before = blas_threads()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        run.serve(lambda *a: None, sock, say=lambda s: None)
    assert seen == [{1}] and blas_threads() == before


def _serve(site, *args, env=None):
    """A real `alexsearch serve` on a free loopback port: (process, its printed URL)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "alexsearch", "serve", "--index", str(site["ix"]),
         "--weights", str(site["weights"]), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    line = p.stdout.readline()
    assert " at http://" in line, (line, p.poll())
    return p, line.split(" at ")[1].split()[0]


def _stop(p) -> tuple[str, str]:
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=SAFETY_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    no_traceback(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return out, err


def test_open_hands_the_page_to_the_browser(site, tmp_path):
    """--open gives the page's URL to this machine's browser once the server answers:
    Python's webbrowser, which takes $BROWSER first (here a script that records its
    argument). Without any browser it says so in one line and keeps serving; bound to
    0.0.0.0 it opens the loopback address, the one a browser here can reach."""
    import time
    import urllib.request

    seen = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    mv = shutil.which("mv")  # the browser runs with the bare PATH below
    browser.write_text(
        f'#!/bin/sh\nprintf %s "$1" > "{seen}.part" && {mv} "{seen}.part" "{seen}"\n'
    )
    browser.chmod(0o755)
    bare = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "TERM")}
    (tmp_path / "empty").mkdir()
    bare["PATH"] = str(tmp_path / "empty")  # no xdg-open, firefox, lynx... to fall back on

    p, url = _serve(site, "--open", env={**bare, "BROWSER": str(browser)})
    try:
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while not seen.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen.read_text() == url and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=60) as r:  # the page, from the opened URL
            assert r.status == 200 and 'id="file"' in r.read().decode()
    finally:
        out, err = _stop(p)
    assert err == "" and "stopped" in out

    p, url = _serve(site, "--open", "--host", "0.0.0.0", env={**bare, "BROWSER": "/bin/false"})
    try:
        assert p.stderr.readline().startswith("warning: bound to 0.0.0.0")
        said = p.stderr.readline().strip()
        port = url.rsplit(":", 1)[1].strip("/")
        assert said == (
            f"--open: no browser could be started here; open http://127.0.0.1:{port}/ yourself"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=60) as r:
            assert json.load(r)["files"] == 14  # still serving
    finally:
        _stop(p)
    assert url == f"http://0.0.0.0:{port}/"


def test_uploads_embed_at_most_one_a_core_at_a_time(opened, site, monkeypatch):
    """Concurrent uploads queue for the network, one running a core at a time (bench/
    serve_load.py: upload p95 284 -> 196 ms under 8 clients on 2 cores), and each still
    gets its own answer."""
    import asyncio
    import threading
    import time

    import httpx2 as httpx

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    app = create_app(opened)
    real, lock, running, most = opened.query, threading.Lock(), [0], [0]

    def query(image, *a, **kw):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.2)  # hold the slot, so that unlimited uploads would overlap
            return real(image, *a, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(opened, "query", query)
    photos = sorted(site["photos"].rglob("*.jpg"))[:6]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOOP) as c:
            ups = [c.post("/api/query", files={"image": ("q.jpg", p.read_bytes())},
                          data={"k": "3"}) for p in photos]  # fmt: skip
            by_id = c.post("/api/query", json={"id": 1, "k": 3})
            return await asyncio.gather(by_id, *ups)

    first, *answers = asyncio.run(go())
    assert first.status_code == 200 and most[0] == 2
    for p, r in zip(photos, answers, strict=True):
        assert r.status_code == 200, r.text
        assert r.json() == {**opened.query(p.read_bytes(), k=3)[0].to_dict(), "query": ""}


# -- duplicates (issue 16)


def test_duplicates_is_what_duplicates_json_prints_and_cached(tmp_path, init_ckpt, monkeypatch):
    from dup_photos import make_library

    files = make_library(tmp_path / "lib")
    ix_dir = tmp_path / "ix"
    alexsearch.build_index(tmp_path / "lib", index=ix_dir, weights=init_ckpt, device="cpu",
                           workers=0)  # fmt: skip
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "lib").rglob("*"))
    with alexsearch.open_index(ix_dir, weights=init_ckpt) as opened:
        c = TestClient(create_app(opened), base_url=LOOP)
        for tier in ("exact", "near", "similar"):
            r = c.get("/api/duplicates", params={"tier": tier})
            assert r.status_code == 200, r.text
            assert r.json() == {**opened.duplicates(tier).to_dict(), "generation": 1}
        got = c.get("/api/duplicates").json()  # near by default
        assert got["tiers"] == ["exact", "near"]
        by = {g["tier"]: g for g in got["groups"]}
        original = str(files["originals"][0])
        assert by["exact"]["keep"] == original
        assert {f["path"] for f in by["exact"]["files"]} == {original, str(files["copy"][0])}
        planted = {str(files[t][0]) for t in ("reencode", "resize", "crop")}
        assert {f["path"] for f in by["near"]["files"]} == planted | {original}
        # every member carries the catalogue id its thumbnail is fetched by
        for f in by["near"]["files"]:
            assert f["id"] == id_of(opened, f["path"])
            thumb = c.get(f"/api/thumb/{f['id']}")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        # asked again on the same generation: from the cache, not found again
        monkeypatch.setattr(opened, "duplicates", lambda *a, **k: 1 / 0)
        assert c.get("/api/duplicates", params={"tier": "near"}).json() == got
        monkeypatch.undo()
        # a new generation published while serving: found again, with the new photo
        shutil.copyfile(files["originals"][1], tmp_path / "lib" / "copies" / "p01 copy.jpg")
        alexsearch.build_index(tmp_path / "lib", index=ix_dir, weights=init_ckpt,
                               device="cpu", workers=0)  # fmt: skip
        again = c.get("/api/duplicates", params={"tier": "exact"}).json()
        assert again["generation"] == 2 and len(again["groups"]) == 2
    # read-only: every file is where it was (plus the copy this test made)
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "lib").rglob("*"))
    assert set(after) - set(before) == {
        (tmp_path / "lib/copies/p01 copy.jpg").relative_to(tmp_path)
    }
    assert set(before) <= set(after)


@pytest.mark.parametrize("query", ["tier=nearr", "tier=EXACT", "tier=%00"])
def test_duplicates_bad_tier(client, query):
    err = refused(client.get("/api/duplicates?" + query), 400, "tier must be one of")
    assert "exact, near, similar" in err


def test_duplicates_only_get(client):
    refused(client.post("/api/duplicates", json={"tier": "near"}), 405)
