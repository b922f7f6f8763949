"""A bounded load test of `alexsearch serve` on loopback: 8 concurrent clients send 500
queries by id, then 100 by upload, to a server over an index of the CIFAR-10 test set
(10,000 photos of ../shared/data); prints p50/p95 latency, errors and the server's
resident memory before and after, beside the targets (2 CPU cores: by id p95 <= 100 ms,
by upload p95 <= 300 ms, errors 0, memory growth < 5%), and beside a baseline from the
same run: the same queries through the library in this process from as many threads, no
HTTP. Prints the CPU and its flags first.

    python bench/serve_load.py [--cache /tmp/alexsearch-serve-bench] [--data ../shared/data]
        [--clients 8]

The index is built once into the cache folder (~20 minutes on a shared 2-core CPU), with an
untrained paper-initialised network (the cost of a query does not depend on training);
uploads are CIFAR-10 training photos, which are not in the index.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from index_throughput import cpu_description  # bench/: the CPU and its flags

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TARGETS = {"id_p95_ms": 100.0, "upload_p95_ms": 300.0, "rss_growth": 0.05}


def prepare(cache: Path, data: Path = SHARED) -> tuple[Path, Path, list[Path]]:
    """(index, weights, upload photos) in `cache`, made the first time from `data`."""
    archive = data / "cifar10-jpeg.tar.gz"
    if not archive.exists():
        sys.exit(f"{archive} not found (../shared/data is absent; give --data DIR)")
    cache.mkdir(parents=True, exist_ok=True)
    test, uploads = cache / "cifar10" / "test", cache / "uploads"
    if not test.exists() or not uploads.exists():
        print(f"extracting the CIFAR-10 test set and 100 training photos into {cache}")
        with tarfile.open(archive) as tar:
            members, train = [], []
            for m in tar:
                if m.isfile() and "/test/" in m.name:
                    members.append(m)
                elif m.isfile() and "/train/" in m.name and len(train) < 100:
                    train.append(m)
            tar.extractall(cache, members=members, filter="data")
            uploads.mkdir(exist_ok=True)
            for m in train:
                (uploads / f"{len(list(uploads.iterdir())):03d}.jpg").write_bytes(
                    tar.extractfile(m).read()
                )
    weights = cache / "init10.ckpt"
    if not weights.exists():
        from alexsearch.weights import checkpoint

        checkpoint.save(checkpoint.init_checkpoint(10, seed=0), weights)
    index = cache / "index"
    if not (index / "manifest.json").exists():
        print("indexing the 10,000 test photos (once; a few minutes on a CPU)")
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "alexsearch", "index", str(test), "--index", str(index),
             "--weights", str(weights), "--device", "cpu"],
            check=True,
        )  # fmt: skip
        print(f"indexed in {time.perf_counter() - t0:.0f} s")
    return index, weights, sorted(uploads.glob("*.jpg"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def multipart(fields: dict, image: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def run_clients(host, port, requests, clients: int) -> tuple[list[float], list[str]]:
    """Send `requests` ([(body, content type)]) from `clients` threads, each on its own
    keep-alive connection: (latencies in s, errors)."""
    lock = threading.Lock()
    queue = list(requests)
    latencies, errors = [], []

    def client():
        conn = http.client.HTTPConnection(host, port, timeout=600)
        while True:
            with lock:
                if not queue:
                    break
                body, ctype = queue.pop()
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/query", body, {"Content-Type": ctype})
                r = conn.getresponse()
                data = r.read()
                dt = time.perf_counter() - t0
                ok = r.status == 200 and json.loads(data).get("neighbours")
                with lock:
                    latencies.append(dt)
                    if not ok:
                        errors.append(f"{r.status} {data[:100]!r}")
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    errors.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=600)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def in_process(index: Path, weights: Path, ids, images, clients: int, k: int) -> dict:
    """The baseline: the same queries through the library in this process from `clients`
    threads, each on one BLAS thread (what the server's requests cost without HTTP)."""
    from threadpoolctl import threadpool_limits

    import alexsearch

    out = {}
    with alexsearch.open_index(index, weights=weights) as ix, threadpool_limits(1, "blas"):
        ix.load_network()
        for name, items, call in [("by id", ids, ix.query_ids), ("by upload", images, ix.query)]:
            call(items[0], k=k)
            lock, queue, lat = threading.Lock(), list(items), []

            def client(call=call, queue=queue, lat=lat, lock=lock):
                while True:
                    with lock:
                        if not queue:
                            return
                        item = queue.pop()
                    t0 = time.perf_counter()
                    call(item, k=k)
                    with lock:
                        lat.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[name] = (lat, time.perf_counter() - t0)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] * 1000 if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/alexsearch-serve-bench"))
    ap.add_argument("--data", type=Path, default=SHARED, help="folder of cifar10-jpeg.tar.gz")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--by-id", type=int, default=500)
    ap.add_argument("--by-upload", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    index, weights, photos = prepare(a.cache, a.data)
    cmd = [sys.executable, "-m", "alexsearch", "serve", "--index", str(index),
           "--weights", str(weights), "--port", "0"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = urlparse(line.split(" at ")[1].split()[0])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        conn.request("GET", "/api/info")
        files = json.loads(conn.getresponse().read())["files"]
        conn.close()
        rng = random.Random(0)
        ids = [rng.randint(1, files) for _ in range(a.by_id)]
        images = [photos[i % len(photos)].read_bytes() for i in range(a.by_upload)]
        by_id = [(json.dumps({"id": i, "k": a.k}).encode(), "application/json") for i in ids]
        uploads = [multipart({"k": a.k}, image) for image in images]
        # warm-up at the same concurrency: the mapped index paged in, the network loaded,
        # and each server thread's allocator arena made (growth after that is a leak)
        run_clients(url.hostname, url.port, by_id[:32] + uploads[:16], a.clients)
        rss0 = rss_bytes(server.pid)
        t0 = time.perf_counter()
        lat_id, err_id = run_clients(url.hostname, url.port, by_id, a.clients)
        t_id = time.perf_counter() - t0
        t0 = time.perf_counter()
        lat_up, err_up = run_clients(url.hostname, url.port, uploads, a.clients)
        t_up = time.perf_counter() - t0
        rss1 = rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=120)
    base = in_process(index, weights, ids, images, a.clients, a.k)
    growth = (rss1 - rss0) / rss0 if rss0 else float("nan")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{cpu_description()}")
    print(f"{files} photos indexed, {a.clients} clients, k={a.k} "
          f"(load average {load} at the end)")  # fmt: skip
    print(f"{'':18}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'errors':>8}{'q/s':>7}   target")
    for name, lat, err, t, target in [
        ("by id", lat_id, err_id, t_id, f"p95 <= {TARGETS['id_p95_ms']:.0f} ms, 0 errors"),
        ("by upload", lat_up, err_up, t_up,
         f"p95 <= {TARGETS['upload_p95_ms']:.0f} ms, 0 errors"),
    ]:  # fmt: skip
        print(f"{name:18}{len(lat):>6}{pct(lat, 50):>9.1f}{pct(lat, 95):>9.1f}{len(err):>8}"
              f"{len(lat) / t:>7.1f}   {target}")  # fmt: skip
    print(f"{'server RSS':18}{rss0 / 2**20:>8.0f} MB before, {rss1 / 2**20:.0f} MB after: "
          f"{growth * 100:+.1f}%   target < {TARGETS['rss_growth'] * 100:.0f}%")  # fmt: skip
    for name, (lat, t) in base.items():
        print(f"{name + ', library':18}{len(lat):>6}{pct(lat, 50):>9.1f}{pct(lat, 95):>9.1f}"
              f"{'':>8}{len(lat) / t:>7.1f}   baseline: in process, no HTTP")  # fmt: skip
    for e in (err_id + err_up)[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
