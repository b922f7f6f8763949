"""Running the CLI as the fault suite needs it: real processes, their peak RSS, kill -9.

- `cli()`: run `python -m alexsearch ...` in a real subprocess, with its peak RSS.
- `Forkserver`: a process that imported torch, faiss and alexsearch once and forks a
  child per CLI run (`alexsearch.cli.app.main(argv)`, the console script's own entry), so a
  kill trial costs a fork instead of a ~2 s interpreter start. The test process
  kill -9s the child by pid; the server reaps it and reports its exit status and RSS.
- `ok()`: what a run that succeeded must look like (a failure: helpers.one_line_error).
- `kill_when()`: kill -9 a run at a seeded moment (a delay, or a count of committed rows,
  read by `rows_since()` / `count_rows()`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from disks import limit_file_size
from figures import FIGURES
from helpers import SAFETY_TIMEOUT, no_traceback


@dataclass
class Run:
    args: list
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
            limit_file_size(fsize_limit)

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
        self.server, self.pid, self.args, self.out, self.err = server, pid, argv, out, err
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
                self.args,
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


def ok(r: Run) -> Run:
    no_traceback(r)
    assert r.returncode == 0, (r.args, r.returncode, r.stdout, r.stderr)
    return r


# --------------------------------------------------------------------------- kill trials


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
