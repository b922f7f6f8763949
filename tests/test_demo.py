"""`make demo` (scripts/demo.sh) offline: it says so in one line and runs the main job on
an untrained network to the end."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.sh"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.slow
def test_demo_offline_says_so_once_and_finishes(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k != "ALEXSEARCH_WEIGHTS"},
        "PYTHON": sys.executable,
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_PER_CLASS": "2",
        "ALEXSEARCH_HOME": str(tmp_path / "home"),
        "ALEXSEARCH_FETCH_URL_BVLC": f"http://127.0.0.1:{closed_port()}/bvlc_alexnet.caffemodel",
    }
    r = subprocess.run(["bash", str(DEMO)], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    offline = [line for line in r.stdout.splitlines() if line.startswith("offline:")]
    assert len(offline) == 1 and "cannot download" in offline[0], r.stdout
    assert offline[0].endswith("continuing on an untrained, paper-initialised network")
    demo = tmp_path / "demo"
    for picture in ("neighbours.png", "kernels.png", "tsne.png", "tsne-thumbnails.png"):
        assert (demo / picture).stat().st_size > 1000, picture
    assert (demo / "index-init" / "manifest.json").exists()
    last = r.stdout.strip().splitlines()[-1].strip()  # it ends by saying how to browse it
    assert last.endswith(f"-m alexsearch serve --index {demo / 'index-init'}"), last
