#!/usr/bin/env bash
# The GPU checks and figures of alexsearch, in one run on a CUDA machine (one H200: under
# 8 minutes). Each step is bounded with `timeout`, so a hang costs only its own step, and
# the steps stop being started once the budget is spent; every figure goes to stdout.
#
#   bench/gpu.sh             # on a machine with a CUDA GPU and ../shared/data
#   bench/gpu.sh --dry-run   # anywhere: print the steps, check that every command parses
#
# Steps: the `cuda`-marked tests; training img/s (synthetic and JPEG, beside the eager
# fp32 baseline); `index --device cuda` on the 1,000 ImageNet photos; the two-tower plan
# (cuda:0,cuda:0); CIFAR-10 at the paper's geometry until the plateau rule has lowered
# the rate twice (45,000 train / 5,000 val of the training set); then `eval` (centre and
# ten-crop) and `eval retrieval` (precision@k beside the pixel baseline) on the test set.
# PYTHON (default: python) runs everything; GPU_BENCH_DIR (default /tmp/alexsearch-gpu)
# holds the data and runs; BUDGET_S (default 470) is the time after which no step starts.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
WORK="${GPU_BENCH_DIR:-/tmp/alexsearch-gpu}"
BUDGET_S="${BUDGET_S:-470}"
SHARED="$ROOT/../shared/data"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  --cifar-chunks) shift; exec "$PY" - "$@" <<'PYEOF'
# Inner step: train in chunks of epochs (--resume) until the plateau rule has lowered the
# rate twice, or the outer timeout ends it (the last whole epoch is on disk).
import json, subprocess, sys
from pathlib import Path
py, split, run, device = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
chunk, most = 4, 60
base = [py, "-m", "alexsearch", "train"]
epochs = 0
while epochs < most:
    epochs += chunk
    if (run / "last.ckpt").exists():
        cmd = [*base, "--resume", str(run), "--epochs", str(epochs)]
    else:
        cmd = [*base, "--data", split, "--out", str(run), "--epochs", str(epochs),
               "--batch-size", "128", "--lr", "0.0001", "--patience", "1", "--device", device]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        sys.exit(1)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    drops = sum(1 for a, b in zip(rows, rows[1:]) if b["lr"] < a["lr"])
    print(f"after {len(rows)} epochs: lr lowered {drops} times", flush=True)
    if drops >= 2:
        break
PYEOF
  ;;
esac

START=$SECONDS
FAILED=()
step() {  # step NAME TIMEOUT_S CMD...: print it; dry run: check it parses; else run it bounded
  local name="$1" limit="$2"; shift 2
  echo
  echo "=== step $name (timeout ${limit}s): $*"
  if [ "$DRY" = 1 ]; then
    check "$@" || FAILED+=("$name")
    return 0
  fi
  local spent=$((SECONDS - START))
  if [ "$spent" -ge "$BUDGET_S" ]; then
    echo "--- skipped: ${spent}s spent of the ${BUDGET_S}s budget"; FAILED+=("$name (skipped)"); return 0
  fi
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "--- $name: exit $rc after $((SECONDS - t0))s (total $((SECONDS - START))s)"
  [ "$rc" = 0 ] || FAILED+=("$name (exit $rc)")
}

check() {  # does this command line parse? (without running it)
  if [ "$1" = "$PY" ] && [ "${2:-}" = "-m" ] && [ "${3:-}" = "alexsearch" ]; then
    "$PY" bench/parse_check.py "${@:2}"
  elif [ "$1" = "$PY" ] && [ "${2:-}" = "-m" ] && [ "${3:-}" = "pytest" ]; then
    "$PY" -m pytest --collect-only -q "${@:4}" >/dev/null
  elif [ "$1" = "$PY" ] && [[ "${2:-}" == bench/*.py ]]; then
    "$PY" bench/parse_check.py "${@:2}"
  elif [ "$1" = "bash" ] && [ "${2:-}" = "$0" ]; then
    bash -n "$0"
  else
    echo "no parse check for: $*"; return 1
  fi
}

prepare() {  # the CIFAR-10 JPEGs and a 45,000 / 5,000 split of the training set
  mkdir -p "$WORK"
  if [ ! -d "$WORK/cifar10/test" ]; then
    tar -xzf "$SHARED/cifar10-jpeg.tar.gz" -C "$WORK" || return 1
  fi
  "$PY" - "$WORK" <<'PYEOF'
import os, sys
from pathlib import Path
work = Path(sys.argv[1])
src, dst = work / "cifar10" / "train", work / "split"
if not (dst / "val").is_dir():
    for cls in sorted(os.listdir(src)):
        names = sorted(os.listdir(src / cls))
        for part, chosen in (("train", names[:4500]), ("val", names[4500:])):
            (dst / part / cls).mkdir(parents=True, exist_ok=True)
            for n in chosen:
                os.symlink(src / cls / n, dst / part / cls / n)
print(f"CIFAR-10 in {work}: 45,000 train / 5,000 val (of the training set), 10,000 test")
PYEOF
}

figures() {  # the CIFAR run's record: epochs, minutes, rate drops, best validation error
  "$PY" - "$WORK/cifar" <<'PYEOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
if not (run / "metrics.jsonl").exists():
    sys.exit("no CIFAR-10 run on disk")
rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
drops = sum(1 for a, b in zip(rows, rows[1:]) if b["lr"] < a["lr"])
best = min(rows, key=lambda r: r["val_top1_err"])
print(f"CIFAR-10 run: {len(rows)} epochs, {sum(r['seconds'] for r in rows) / 60:.1f} minutes, "
      f"lr lowered {drops} times (final {rows[-1]['lr']:g}), "
      f"best val top-1 error {best['val_top1_err']:.4f} (epoch {best['epoch']}), "
      f"{sum(r['img_per_s'] for r in rows) / len(rows):.0f} img/s a training pass")
PYEOF
}

if [ "$DRY" = 0 ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU here'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
  [ -f "$SHARED/cifar10-jpeg.tar.gz" ] || { echo "$SHARED/cifar10-jpeg.tar.gz is absent"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  prepare || exit 1
fi

RUN="$WORK/cifar"
step "cuda tests" 60 "$PY" -m pytest tests/test_cuda.py -m cuda -q -p no:cacheprovider
step "train throughput" 75 "$PY" bench/train_throughput.py --device cuda --batch-size 256 \
  --steps 20 --workers 8 --jpeg-dir "$WORK/cifar10/train"
step "index throughput" 70 "$PY" bench/index_throughput.py --device cuda --repeats 1 --skip-phone --skip-choices
step "two towers" 30 "$PY" -m alexsearch train --data "$WORK/split" --out "$WORK/two" \
  --epochs 1 --limit 5000 --lr 0.0001 --device cuda:0,cuda:0
[ "$DRY" = 1 ] || rm -rf "$RUN" "$WORK/two" "$WORK/ix"
step "cifar10 train" 140 bash "$0" --cifar-chunks "$PY" "$WORK/split" "$RUN" cuda
[ "$DRY" = 1 ] || figures
step "eval" 25 "$PY" -m alexsearch eval --data "$WORK/cifar10/test" --weights "$RUN/best.ckpt" \
  --device cuda --batch-size 256
step "index cifar10 test" 30 "$PY" -m alexsearch index "$WORK/cifar10/test" --index "$WORK/ix" \
  --weights "$RUN/best.ckpt" --device cuda --batch-size 256
step "eval retrieval" 25 "$PY" -m alexsearch eval retrieval --index "$WORK/ix"

echo
if [ "$DRY" = 1 ]; then
  if [ ${#FAILED[@]} -eq 0 ]; then echo "dry run: every command parses"; exit 0; fi
  echo "dry run: these do not parse: ${FAILED[*]}"; exit 1
fi
echo "gpu.sh: $((SECONDS - START))s in all; ${#FAILED[@]} step(s) failed${FAILED:+: ${FAILED[*]}}"
[ ${#FAILED[@]} -eq 0 ]
