"""Indexing throughput: cold `alexsearch index` beside the peer a user would write.

Prints the CPU's flags first, then for each photo set, as fresh processes run one after
the other (`--repeats` times, interleaved, medians reported):

- `alexsearch index` at `--precision auto` and at `fp32` (end to end: process start,
  weights, decode, forward, catalogue, FAISS), with its steady extraction rate;
- the peer: torchvision's `alexnet`, PIL + torchvision transforms (Resize 256,
  CenterCrop 224, ToTensor, Normalize), a DataLoader with a worker per core, eager
  fp32, fc7 into a flat FAISS index;
- the paper network's forward alone (batch 128, channels_last, freed memory kept as
  indexing does) at each precision, in a fresh process, on synthetic input;

then img/s, the ratio to the peer, and the steady end-to-end rate over the forward-only
rate. Photo sets: (a) the 1,000 ImageNet photos of ../shared/data; (b) phone photos
made from them: 200 upscaled to 4032x3024, JPEG quality 90 with an EXIF orientation
tag, and 50 of those as HEIC; (b') its 200 JPEGs alone (HEIC has no reduced-size
decode, so its 50 files weigh more than the 200 JPEGs). Then a re-index with nothing
changed. Between the two,
"choices": the measurements behind the defaults (batch size, the allocator setting,
and decoding serially, on one thread, on a thread per core or in worker processes).

    python bench/index_throughput.py [--photos DIR] [--repeats 2] [--limit N]
                                     [--skip-phone | --only-phone] [--skip-choices]
                                     [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "imagenet-sample.tar"
PHONE_CACHE = Path(tempfile.gettempdir()) / "alexsearch-bench-phone"  # made once, kept


DEVICE = "cpu"  # --device: where `alexsearch index`, the peer and the forward run


def peer(photos: str, workers: int, device: str = "cpu") -> dict:
    """The usual eager loop; run in its own process by main()."""
    t0 = time.perf_counter()
    import faiss
    import torch
    import torchvision
    import torchvision.transforms as T
    from PIL import Image

    from alexsearch.images.files import is_image_name

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    fc7 = torch.nn.Sequential(
        model.features, model.avgpool, torch.nn.Flatten(), *model.classifier[:6]
    ).to(device)
    tf = T.Compose(
        [
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(photos) for f in fs if is_image_name(f)
    )

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            if files[i].lower().endswith((".heic", ".heif")):
                import pillow_heif

                pillow_heif.register_heif_opener()
            return tf(Image.open(files[i]).convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=32, num_workers=workers)
    index = faiss.IndexFlatL2(4096)
    with torch.no_grad():
        for x in loader:
            index.add(fc7(x.to(device)).cpu().numpy())
    return {"images": index.ntotal, "seconds": time.perf_counter() - t0}


def cold(cmd: list[str], env=None) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed: {r.stderr.strip()[-500:]}")
    return r.stdout, seconds


def run_ours(photos: str, weights: str, index_dir: str, precision: str) -> dict:
    shutil.rmtree(index_dir, ignore_errors=True)
    env = {**os.environ, "ALEXSEARCH_WEIGHTS": weights}
    cmd = [sys.executable, "-m", "alexsearch", "index", photos, "--index", index_dir]
    cmd += ["--device", DEVICE]
    out, seconds = cold([*cmd, "--precision", precision, "--json"], env)
    s = json.loads(out)
    again_out, again = cold([*cmd, "--json"], env)  # nothing changed: the incremental path
    if json.loads(again_out)["unchanged"] != s["total_ok"] + s["total_failed"]:
        sys.exit("a re-index with nothing changed re-did work")
    return {
        "images": s["total_ok"],
        "failed": s["total_failed"],
        "seconds": seconds,
        "steady": s["images_per_s"],
        "precision": s["precision"],
        "again": again,
    }


def forward_only(precision: str, batch: int = 128, keep_freed: bool = True, batches=6) -> float:
    """img/s of the paper network's forward, channels_last, at `precision`, on DEVICE, in
    a fresh process (glibc's allocator settings are per process: net/memory.py)."""
    args = [precision, DEVICE, str(batch), str(int(keep_freed)), str(batches)]
    out, _ = cold([sys.executable, __file__, "--as-forward", *args])
    return float(out)


def _forward_rate(precision: str, batch: int, keep_freed: bool, batches: int, device: str):
    import torch

    from alexsearch.index.extract import autocast
    from alexsearch.net.memory import reuse_freed_memory
    from alexsearch.weights import checkpoint

    if keep_freed:
        reuse_freed_memory()
    dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    model = checkpoint.init_checkpoint(1000).build(dev).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(dev, precision):
        model.features(x)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(batches):
            y = model.features(x)
        y.sum().item()  # waits for the device
    return batch * batches / (time.perf_counter() - t0)


def choices(photos: str, weights: str, n: int = 384) -> None:
    """The measurements behind the defaults: batch size and allocator (forward alone, fresh
    processes), and how decoding runs beside the network (in this process, steady img/s
    of extraction after its first batch, on the first n photos)."""
    from alexsearch.index import extract as ex
    from alexsearch.index.decoding import DecodeAhead, decode_threads
    from alexsearch.net.precision import resolve_precision
    from alexsearch.weights import checkpoint

    prec = resolve_precision("auto", "cpu")
    print(f"\nchoices, at {prec} (auto):")
    print("  forward alone, img/s:      glibc default   freed memory kept (net/memory.py)")
    for batch in (32, 128):
        a, b = forward_only(prec, batch, False), forward_only(prec, batch, True)
        print(f"    batch {batch:3d}               {a:10.1f} {b:17.1f}")
    ckpt = checkpoint.read(weights)
    model, pre = ckpt.build("cpu"), ckpt.preprocess
    names = sorted(f for f in os.listdir(photos) if not f.endswith(".md"))[:n]
    paths = [os.path.join(photos, f) for f in names]
    cores = os.cpu_count() or 1

    def steady(items) -> float:
        done, t = 0, None
        for batch in ex.extract(model, pre, items, 128, precision=prec):
            done += len(batch)
            if t is None:
                t, first = time.perf_counter(), done
        return (done - first) / (time.perf_counter() - t)

    print(f"  decoding beside the network, {len(paths)} photos, batch 128, steady img/s:")
    rows = [("decoded between batches (serial)", 0), ("one thread beside", 1)]
    rows.append((f"a thread per core beside ({cores}; ours)", decode_threads()))
    for label, threads in rows:
        with DecodeAhead(paths, pre, 1000.0, threads) as items:
            print(f"    {label:40s} {steady(items):8.1f}")
    with ex.decoding(paths, pre, 1000.0, workers=cores) as items:
        print(f"    {f'{cores} DataLoader worker processes':40s} {steady(items):8.1f}")
    jpeg_decoders(paths)


def jpeg_decoders(paths: list[str]) -> None:
    """Pillow (draft mode, as indexing decodes) beside simplejpeg (libjpeg-turbo's scale
    factors, from the bytes in memory), ms a JPEG on one thread."""
    import io

    from alexsearch.images.decode import decode

    jpegs = [open(p, "rb").read() for p in paths if p.lower().endswith((".jpg", ".jpeg"))]
    try:
        import simplejpeg
    except ImportError:
        print("  JPEG decoders: simplejpeg is not installed; skipped")
        return

    def ms(fn) -> float:
        t0 = time.perf_counter()
        for raw in jpegs:
            fn(raw)
        return (time.perf_counter() - t0) / len(jpegs) * 1000

    def pil(raw):
        return decode(io.BytesIO(raw), draft_to=256, name="x.jpg")

    def sj(raw):
        return simplejpeg.decode_jpeg(raw, colorspace="RGB", min_height=256, min_width=256)

    a, b = ms(pil), ms(sj)
    print(f"  JPEG decode to >= 256, {len(jpegs)} photos: Pillow {a:.2f} ms, simplejpeg {b:.2f} ms")


def phone_photos(src: str, out: Path, n: int = 200, heic: int = 50) -> str:
    """n photos upscaled to a phone's 4032x3024, JPEG q90 with an EXIF orientation (the
    camera turned: 6), and `heic` of them again as HEIC; made once (minutes) and kept in
    `out` for later runs."""
    import pillow_heif
    from PIL import Image

    done = out / "complete"
    if done.exists():
        return str(out)
    pillow_heif.register_heif_opener()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    names = sorted(f for f in os.listdir(src) if f.lower().endswith((".jpeg", ".jpg")))[:n]
    exif = Image.Exif()
    exif[0x0112] = 6
    for i, name in enumerate(names):
        img = Image.open(os.path.join(src, name)).convert("RGB").resize((4032, 3024))
        img.save(out / f"IMG_{i:04d}.JPG", quality=90, exif=exif.tobytes())
        if i < heic:
            # x265's ultrafast preset: 1.7 s a photo to encode here instead of 11
            opts = {"preset": "ultrafast"}
            img.save(out / f"IMG_{i:04d}_copy.HEIC", format="HEIF", quality=90, enc_params=opts)
    done.write_text(f"{n} JPEG, {heic} HEIC from {src}\n")
    return str(out)


def cpu_description() -> str:
    from alexsearch.net.precision import NATIVE_BF16_FLAGS, cpu_flags

    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu_flags()
    shown = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "sse4_2"))
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    return (
        f"{model}, {os.cpu_count()} cores; flags: {' '.join(shown)}; "
        f"native bf16: {' '.join(native) or 'no'}"
    )


def measure(label: str, photos: str, weights: str, tmp: Path, repeats: int) -> None:
    cores = os.cpu_count() or 1
    runs = {"auto": [], "fp32": [], "peer": []}
    for _ in range(repeats):  # interleaved, so machine noise hits all alike
        for p in ("auto", "fp32"):
            runs[p].append(run_ours(photos, weights, str(tmp / f"ix-{p}"), p))
        out, seconds = cold([sys.executable, __file__, "--as-peer", photos, str(cores), DEVICE])
        runs["peer"].append({**json.loads(out), "seconds": seconds})
    med = statistics.median
    n = runs["fp32"][0]["images"]
    peer_rate = n / med(r["seconds"] for r in runs["peer"])
    print(f"\n{label}: {n} photos indexed ({runs['fp32'][0]['failed']} failed), cold processes")
    cols = ("img/s", "vs peer", "steady", "forward", "steady/fwd")
    print(f"  {'':28s} " + " ".join(f"{c:>8s}" for c in cols))
    for p in ("auto", "fp32"):
        prec = runs[p][0]["precision"]
        rate = n / med(r["seconds"] for r in runs[p])
        steady = med(r["steady"] for r in runs[p])
        fwd = forward_only(prec)
        name = f"index --precision {p}" + (f" ({prec})" if p == "auto" else "")
        print(
            f"  {name:28s} {rate:8.1f} {rate / peer_rate:7.2f}x {steady:8.1f} {fwd:8.1f} "
            f"{steady / fwd:8.0%}"
        )
    print(f"  {'peer (torchvision, eager)':28s} {peer_rate:8.1f} {1:7.2f}x")
    again = med(r["again"] for r in runs["fp32"])
    print(f"  re-index, nothing changed: {again:.2f} s")
    if runs["auto"][0]["precision"] != "fp32":
        cos = cosines(tmp / "ix-auto", tmp / "ix-fp32")
        print(
            f"  fc7 at {runs['auto'][0]['precision']} vs fp32, per photo ({len(cos)}): cosine "
            f"min {cos.min():.6f}, median {np.median(cos):.6f}"
        )


def cosines(a: Path, b: Path):
    """Cosine between the fc7 of each photo in index a and in index b."""
    import sqlite3

    def vecs(ix):
        db = sqlite3.connect(ix / "catalogue.sqlite")
        rows = db.execute("SELECT path, vector FROM files WHERE status = 'ok'")
        return {p: np.frombuffer(v, np.float32) for p, v in rows}

    va, vb = vecs(a), vecs(b)
    common = sorted(set(va) & set(vb))
    x, y = np.stack([va[p] for p in common]), np.stack([vb[p] for p in common])
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", help="folder of photos [default: ../shared ImageNet sample]")
    ap.add_argument("--weights", help="checkpoint [default: a paper-initialised one]")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit", type=int, help="use only the first N photos")
    ap.add_argument("--skip-phone", action="store_true", help="only the first photo set")
    ap.add_argument("--only-phone", action="store_true", help="only the phone photo set")
    ap.add_argument("--skip-choices", action="store_true", help="no batch/allocator/pipeline")
    ap.add_argument("--device", default="cpu", help="index --device (cpu, cuda); the peer's too")
    return ap


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--as-peer":
        print(json.dumps(peer(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    if len(sys.argv) == 7 and sys.argv[1] == "--as-forward":
        prec, device, (batch, keep, batches) = sys.argv[2], sys.argv[3], map(int, sys.argv[4:])
        print(_forward_rate(prec, batch, bool(keep), batches, device))
        return
    args = parser().parse_args()
    global DEVICE
    DEVICE = args.device
    print(f"CPU: {cpu_description()}")

    tmp = Path(tempfile.mkdtemp(prefix="alexsearch-bench-"))
    try:
        photos = args.photos
        if photos is None:
            if not SHARED.exists():
                sys.exit(f"{SHARED} is absent: pass --photos DIR")
            with tarfile.open(SHARED) as tar:
                tar.extractall(tmp, filter="data")
            photos = str(tmp / "imagenet-sample")
        if args.limit:
            sub = tmp / "subset"
            sub.mkdir()
            names = sorted(n for n in os.listdir(photos) if not n.endswith(".md"))
            for n in names[: args.limit]:
                os.symlink(os.path.abspath(os.path.join(photos, n)), sub / n)
            photos = str(sub)
        weights = args.weights
        if weights is None:
            from alexsearch.weights import checkpoint

            weights = str(tmp / "init.ckpt")
            checkpoint.save(checkpoint.init_checkpoint(1000, seed=0), weights)
        if not args.only_phone:
            measure("(a) photos", photos, weights, tmp, args.repeats)
        if not (args.skip_choices or args.only_phone):
            choices(photos, weights)
        if not args.skip_phone:
            t0 = time.perf_counter()
            phone = phone_photos(photos, PHONE_CACHE)
            print(f"\n(phone set ready in {time.perf_counter() - t0:.0f} s: {PHONE_CACHE})")
            measure("(b) phone photos, 4032x3024 JPEG + HEIC", phone, weights, tmp, args.repeats)
            jpeg = tmp / "phone-jpeg"  # the same set without its HEIC files: what decodes
            jpeg.mkdir()  # at JPEG draft speed, beside what HEIC (no reduced decode) costs
            for n in sorted(os.listdir(phone)):
                if n.upper().endswith(".JPG"):
                    os.symlink(os.path.join(phone, n), jpeg / n)
            measure("(b') the phone set's JPEGs alone", str(jpeg), weights, tmp, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
