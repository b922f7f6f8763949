"""Shared tools of the fault and bad-input suite (tests/robustness).

- `cli()`: run `python -m alexsearch ...` in a real subprocess, with its peak RSS.
- `Forkserver`: a process that imported torch, faiss and alexsearch once and forks a
  child per CLI run (`alexsearch.cli.app.main(argv)`, the console script's own entry), so a
  kill trial costs a fork instead of a ~2 s interpreter start. The test process
  kill -9s the child by pid; the server reaps it and reports its exit status and RSS.
- `one_line_error()` / `no_traceback()`: what every failing command must look like.
- `kill_when()`: kill -9 a run at a seeded moment (a delay, or a count of committed rows).
- `bad_images()` / `bad_checkpoints()`: generated hostile corpora with expectations.
- `tmpfs()`: a small RAM disk (full-disk and read-only faults); skips where mounting is
  not permitted.
- `FIGURES`: what the suite tried (bad inputs, faults, data lost), printed at the end.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

FIGURES: Counter = Counter()  # bad_inputs, kill_trials, write_failures, ..., data_lost
SAFETY_TIMEOUT = 900  # a net against hangs, never an assertion on speed
MAX_RSS_BYTES = 3 * 1024**3


@dataclass
class Run:
    argv: list
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes, the child's peak resident set

    def json(self):
        return json.loads(self.stdout)


def _decode_rc(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def cli(*args, env=None, cwd=None, fsize_limit: int | None = None) -> Run:
    """Run the CLI in a fresh interpreter, as a user does; returns code, output, peak RSS."""
    argv = [sys.executable, "-m", "alexsearch", *map(str, args)]

    def limits():
        if fsize_limit is not None:
            _limit_file_size(fsize_limit)

    p = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=limits,
    )
    bufs = {}

    def pump(name, stream):
        bufs[name] = stream.read()

    threads = [
        threading.Thread(target=pump, args=("out", p.stdout)),
        threading.Thread(target=pump, args=("err", p.stderr)),
    ]
    for t in threads:
        t.start()
    timer = threading.Timer(SAFETY_TIMEOUT, lambda: os.kill(p.pid, signal.SIGKILL))
    timer.start()
    _, status, usage = os.wait4(p.pid, 0)
    timer.cancel()
    p.returncode = _decode_rc(status)
    for t in threads:
        t.join()
    p.stdout.close()
    p.stderr.close()
    return Run(
        argv,
        p.returncode,
        bufs["out"].decode(errors="replace"),
        bufs["err"].decode(errors="replace"),
        usage.ru_maxrss * 1024,
    )


def _limit_file_size(nbytes: int) -> None:
    """Writes past nbytes fail with EFBIG (SIGXFSZ ignored so the write returns the error)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


# --------------------------------------------------------------------------- forkserver

_SERVER = r"""
import json, os, signal, sys, traceback
import faiss, torch  # noqa: F401  the heavy stack, imported once
import alexsearch.cli.app, alexsearch.index.build, alexsearch.index.extract  # noqa: F401
import alexsearch.index.search, alexsearch.weights.checkpoint  # noqa: F401
import resource
reply = os.fdopen(int(sys.argv[1]), "w", buffering=1)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "wait":
        _, status, usage = os.wait4(req["pid"], 0)
        reply.write(json.dumps({"rc": os.waitstatus_to_exitcode(status),
                                "rss": usage.ru_maxrss * 1024}) + "\n")
        continue
    pid = os.fork()
    if pid:
        reply.write(json.dumps({"pid": pid}) + "\n")
        continue
    try:  # the child: become the CLI run that was asked for
        reply.close()
        fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0)
        for n, name in ((1, "stdout"), (2, "stderr")):
            fd = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, n)
            os.close(fd)
        os.environ.clear(); os.environ.update(req["env"]); os.chdir(req["cwd"])
        if req.get("fsize") is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
        sys.argv = ["alexsearch", *req["argv"]]
        code = 0
        try:
            alexsearch.cli.app.main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)
"""


class Child:
    def __init__(self, server: Forkserver, pid: int, argv, out: Path, err: Path):
        self.server, self.pid, self.argv, self.out, self.err = server, pid, argv, out, err
        self.result: Run | None = None

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def exited(self) -> bool:
        """Has the child finished (a zombie until the server reaps it)?"""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    def wait(self) -> Run:
        if self.result is None:
            timer = threading.Timer(SAFETY_TIMEOUT, self.kill)
            timer.start()
            rep = self.server._ask({"op": "wait", "pid": self.pid})
            timer.cancel()
            self.result = Run(
                self.argv,
                rep["rc"],
                self.out.read_text(errors="replace"),
                self.err.read_text(errors="replace"),
                rep["rss"],
            )
        return self.result


class Forkserver:
    """CLI runs forked from one process that already imported the heavy stack."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(w)],
            stdin=subprocess.PIPE,
            pass_fds=(w,),
            text=True,
        )
        os.close(w)
        self.replies = os.fdopen(r, "r")
        self.n = 0
        self.lock = threading.Lock()

    def _ask(self, req: dict) -> dict:
        with self.lock:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.replies.readline()
        if not line:
            raise RuntimeError("forkserver died")
        return json.loads(line)

    def start(self, *args, env=None, cwd=None, fsize_limit=None) -> Child:
        self.n += 1
        out, err = self.workdir / f"{self.n}.out", self.workdir / f"{self.n}.err"
        argv = [str(a) for a in args]
        rep = self._ask(
            {
                "op": "start",
                "argv": argv,
                "env": dict(env if env is not None else os.environ),
                "cwd": str(cwd or os.getcwd()),
                "stdout": str(out),
                "stderr": str(err),
                "fsize": fsize_limit,
            }
        )
        return Child(self, rep["pid"], argv, out, err)

    def run(self, *args, **kw) -> Run:
        return self.start(*args, **kw).wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.replies.close()


# --------------------------------------------------------------------------- assertions


def no_traceback(r: Run) -> None:
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.max_rss < MAX_RSS_BYTES, f"peak RSS {r.max_rss / 2**30:.1f} GiB: {r.argv}"


def one_line_error(r: Run, *needles: str) -> str:
    """A failure: non-zero exit, exactly one line on stderr holding every needle."""
    no_traceback(r)
    assert r.returncode not in (0, -9), (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def ok(r: Run) -> Run:
    no_traceback(r)
    assert r.returncode == 0, (r.argv, r.returncode, r.stdout, r.stderr)
    return r


# --------------------------------------------------------------------------- kill trials


def committed_rows(catalogue: Path) -> dict[str, tuple[str, bytes | None]]:
    """{path: (status, vector blob)} of what the catalogue has committed."""
    if not catalogue.exists():
        return {}
    db = sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, timeout=30)
    try:
        return {p: (s, v) for p, s, v in db.execute("SELECT path, status, vector FROM files")}
    except sqlite3.OperationalError:  # the schema is not there yet
        return {}
    finally:
        db.close()


def count_rows(catalogue: Path) -> int:
    if not catalogue.exists():
        return 0
    db = sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def rows_since(catalogue: Path, since: float) -> int:
    """Rows committed (inserted or rewritten) at or after `since` (time.time())."""
    if not catalogue.exists():
        return 0
    db = sqlite3.connect(f"file:{catalogue}?mode=ro", uri=True, timeout=30)
    try:
        q = "SELECT COUNT(*) FROM files WHERE indexed_at >= ?"
        return db.execute(q, (since,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def kill_when(
    child: Child,
    rng: random.Random,
    max_delay: float,
    todo: int,
    progress: Callable[[], int],
    what: str,
) -> str:
    """kill -9 the child at a seeded moment: after a random delay (up to max_delay s), or
    once progress() (rows committed, files written...) reaches a random 1..todo. Returns
    the moment chosen, described with `what`."""
    if rng.random() < 0.5:
        delay = rng.uniform(0.0, max_delay)
        end = time.monotonic() + delay
        while time.monotonic() < end and not child.exited():
            time.sleep(0.01)
        moment = f"after {delay:.2f} s"
    else:
        target = rng.randint(1, max(1, todo))
        while not child.exited() and progress() < target:
            time.sleep(0.002)
        moment = f"at {what} {target}"
    child.kill()
    FIGURES["kill_trials"] += 1
    return moment


# --------------------------------------------------------------------------- hostile images


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(w: int, h: int) -> bytes:
    """A valid-looking PNG header that claims w x h, with almost no pixel data."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def gif_claiming(w: int, h: int) -> bytes:
    """A GIF whose screen and first frame claim w x h, with a few bytes of LZW data."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", w, h, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, w, h, 0)
        + b"\x02\x02\x44\x01\x00\x3b"
    )


def tiff_claiming(w: int, h: int) -> bytes:
    """A little-endian baseline TIFF claiming w x h 8-bit grey, with 8 bytes of strip."""
    entries = [
        (256, 4, 1, w),  # ImageWidth (LONG)
        (257, 4, 1, h),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: BlackIsZero
        (273, 4, 1, 8),  # StripOffsets: right after the header
        (278, 4, 1, h),  # RowsPerStrip
        (279, 4, 1, 8),  # StripByteCounts
    ]
    ifd_at = 16
    head = b"II*\x00" + struct.pack("<I", ifd_at) + b"\x00" * 8
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HI", value, 0)[:4] if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    return head + ifd + b"\x00\x00\x00\x00"


def webp_claiming(w: int, h: int) -> bytes:
    """An extended WebP (VP8X) whose canvas claims w x h (max 16384), without image data."""
    vp8x = bytes([0, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def photo_bytes(fmt: str, seed: int = 0, size=(96, 72), **save) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[:, : size[0] // 2] //= 3  # some structure, so the JPEG is not all noise
    img = Image.fromarray(arr)
    if fmt == "GIF":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


# What each generated file must become: "ok" (indexed), "failed" (a catalogue row with
# a reason), or "not indexed" (not a regular image file: skipped or reported, never a row).
def bad_images(root: Path, seed: int = 0) -> dict[str, str]:
    """Write a hostile image corpus under root; returns {relative path: expectation}."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    exp: dict[str, str] = {}

    def put(rel: str, data: bytes, expect: str):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        exp[rel] = expect

    jpg = photo_bytes("JPEG", seed)
    png = photo_bytes("PNG", seed)
    gif = photo_bytes("GIF", seed)
    put("good.jpg", jpg, "ok")
    put("zero.jpg", b"", "failed")
    put("zero.png", b"", "failed")
    for name, data in (("jpg", jpg), ("png", png), ("gif", gif)):
        for frac in (0.02, 0.3, 0.7):
            put(
                f"truncated_{int(frac * 100)}.{name}",
                data[: max(1, int(len(data) * frac))],
                "failed",
            )
    put("text.jpg", b"this is not a picture\n" * 20, "failed")
    put("html.png", b"<html><body>404</body></html>", "failed")
    put("png_named.jpg", png, "ok")  # wrong extension, good content
    put("jpeg_named.gif", jpg, "ok")
    put("random_bytes.webp", rng.randbytes(5000), "failed")
    put("bomb_header.png", png_claiming(100_000, 100_000), "failed")
    put("bomb_wide.png", png_claiming(2**31 - 1, 1), "failed")
    put("bomb.gif", gif_claiming(65535, 65535), "failed")
    put("bomb.tif", tiff_claiming(200_000, 200_000), "failed")
    put("bomb.webp", webp_claiming(16384, 16384), "failed")
    # a real compression bomb under the megapixel cap: 64 MP of zeros in ~70 kB
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG", optimize=False)
    put("inflates_to_64mp.png", buf.getvalue(), "ok")
    put("thin_1x20000.png", _png(Image.new("RGB", (1, 20000), (200, 10, 10))), "ok")
    put("one_pixel.png", _png(Image.new("RGB", (1, 1), (1, 2, 3))), "ok")
    flipped = bytearray(jpg)
    for _ in range(8):
        flipped[rng.randrange(200, len(flipped))] ^= 0xFF
    put("bitflipped.jpg", bytes(flipped), "either")
    put("unicode ünï cødé 写真 🐱.jpg", jpg, "ok")
    put("  leading and trailing spaces  .jpg", jpg, "ok")
    put("new\nline.jpg", jpg, "ok")
    put("semi;colon 'quote\" $dollar.jpg", jpg, "ok")
    deep = "/".join(["d"] * 200)
    put(f"{deep}/deep.jpg", jpg, "ok")
    # not regular image files: never a row, never a hang
    os.symlink("self.jpg", root / "self.jpg")  # ELOOP
    exp["self.jpg"] = "not indexed"
    os.symlink("nowhere.jpg", root / "dangling.jpg")
    exp["dangling.jpg"] = "not indexed"
    os.symlink(".", root / "d" / "loop")  # a folder loop
    os.symlink(root, root / "d" / "d" / "back_to_root")
    os.mkfifo(root / "fifo.jpg")  # opening it would block forever
    exp["fifo.jpg"] = "not indexed"
    (root / "folder.jpg").mkdir()
    exp["folder.jpg"] = "not indexed"
    unreadable = root / "unreadable.jpg"
    unreadable.write_bytes(jpg)
    unreadable.chmod(0)
    # root reads anything: the file is then simply ok
    exp["unreadable.jpg"] = "ok" if os.geteuid() == 0 else "failed"
    return exp


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- hostile weights


def tiny_checkpoint(path: Path) -> Path:
    """A valid checkpoint of a narrow network (a few hundred kB), for corrupting."""
    import torch

    from alexsearch.net.alexnet import AlexNet
    from alexsearch.net.arch import ArchConfig
    from alexsearch.weights import checkpoint

    torch.manual_seed(0)
    arch = ArchConfig(num_classes=3, conv_channels=(8, 16, 16, 16, 16), fc_units=(32, 32))
    ckpt = checkpoint.Checkpoint(
        arch=arch,
        preprocess=checkpoint.paper_preprocess(),
        state_dict=AlexNet(arch).state_dict(),
        classes=["a", "b", "c"],
    )
    checkpoint.save(ckpt, path)
    return path


class _Evil:
    """Unpickling this calls open(marker, 'w'): a file that must never appear."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_payload(good: Path, out: Path, change) -> None:
    import torch

    payload = torch.load(good, weights_only=True)
    change(payload)
    with open(out, "wb") as f:
        torch.save(payload, f)


def bad_checkpoints(root: Path, marker: Path, seed: int = 0, flips: int = 12) -> dict[str, str]:
    """Write damaged and hostile checkpoints under root; {name: what the error must say}."""
    import pickle

    import torch

    root.mkdir(parents=True, exist_ok=True)
    good = tiny_checkpoint(root / "good.ckpt")
    raw = good.read_bytes()
    rng = random.Random(seed)
    exp: dict[str, str] = {}

    def put(name, data, says):
        (root / name).write_bytes(data)
        exp[name] = says

    put("empty.ckpt", b"", "not a checkpoint")
    put("truncated_10b.ckpt", raw[:10], "not a checkpoint")
    put("truncated_half.ckpt", raw[: len(raw) // 2], "checkpoint")
    put("truncated_last_byte.ckpt", raw[:-1], "checkpoint")
    put("text.ckpt", b"hello\n", "not a checkpoint")
    for i in range(flips):
        b = bytearray(raw)
        # flip in the first 90% (tensor data and pickle), not the zip's trailing directory
        b[rng.randrange(0, int(len(b) * 0.9))] ^= 1 << rng.randrange(8)
        put(f"bitflip_{i}.ckpt", bytes(b), "")
    # pickled code, as a legacy pickle and inside a torch zip
    put("legacy_pickle_code.ckpt", pickle.dumps(_Evil(str(marker))), "not a checkpoint")
    with open(root / "zip_pickle_code.ckpt", "wb") as f:
        torch.save({"format": "alexsearch-checkpoint", "evil": _Evil(str(marker))}, f)
    exp["zip_pickle_code.ckpt"] = "pickled"

    def shape_mismatch(p):
        p["state_dict"]["fc8.weight"] = torch.zeros(7, 32)

    def wrong_config(p):
        p["arch"]["fc_units"] = [64, 64]

    def nan_weights(p):
        p["state_dict"]["fc7.weight"][0, 0] = float("nan")

    def int_weights(p):
        k = next(iter(p["state_dict"]))
        p["state_dict"][k] = p["state_dict"][k].to(torch.int32)

    def negative_config(p):
        p["arch"]["conv_channels"] = [-8, 16, 16, 16, 16]

    def unknown_arch_key(p):
        p["arch"]["wings"] = 2

    def not_tensors(p):
        p["state_dict"] = {"a": 1}

    def newer_version(p):
        p["version"] = 99

    def torchvision_dict(p):
        p.clear()
        p["features.0.weight"] = torch.zeros(1)

    def missing_preprocess(p):
        del p["preprocess"]

    for fn, says in (
        (shape_mismatch, "shape"),
        (wrong_config, "shape"),
        (nan_weights, "nan"),
        (int_weights, "not floating point"),
        (negative_config, ""),
        (unknown_arch_key, "unknown"),
        (not_tensors, "tensors"),
        (newer_version, "newer"),
        (torchvision_dict, "weights import"),
        (missing_preprocess, "malformed"),
    ):
        name = f"{fn.__name__}.ckpt"
        _rewrite_payload(good, root / name, fn)
        exp[name] = says
    # a zip that is no checkpoint, and one whose member is compressed
    with zipfile.ZipFile(root / "plain.zip.ckpt", "w") as z:
        z.writestr("hello.txt", "hi")
    exp["plain.zip.ckpt"] = "checkpoint"
    with zipfile.ZipFile(root / "deflate_bomb.ckpt", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 * 1024 * 1024))
    exp["deflate_bomb.ckpt"] = "compressed"
    os.mkdir(root / "folder.ckpt")
    exp["folder.ckpt"] = "folder"
    exp["missing.ckpt"] = "no such"
    return exp


# --------------------------------------------------------------------------- disks


@contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """Mount a small RAM disk at path (root only); skips the test where that is refused."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}"
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, readonly: bool) -> None:
    mode = "ro" if readonly else "rw"
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem at path until `leave` bytes are free; returns the filler file."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / ".filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def has_module(module: str) -> bool:
    """Has the feature landed yet? (train, codes, caffemodel import are built elsewhere.)"""
    import importlib.util

    return importlib.util.find_spec(module) is not None
