#!/usr/bin/env bash
# `make demo`: the main job end to end on the CPU, in ./demo/: Caffe's trained
# bvlc_alexnet when the network is reachable (the real thing), else offline on an
# untrained, paper-initialised network. DEMO_DIR, DEMO_PER_CLASS and PYTHON override.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
AS="$PY -m alexsearch"
D="${DEMO_DIR:-demo}"
mkdir -p "$D"
echo "== a small labelled photo set, generated (no download): $D/shapes/<class>/*.jpg"
$PY scripts/make_shapes.py "$D/shapes" --per-class "${DEMO_PER_CLASS:-12}"
echo "== weights: Caffe's published bvlc_alexnet (alexsearch weights fetch bvlc)"
if $AS weights fetch bvlc --json >"$D/fetch.json" 2>"$D/fetch.err"; then
    WEIGHTS="$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["weights"])' "$D/fetch.json")"
    NAME=bvlc
else
    echo "offline: $(head -c 160 "$D/fetch.err" | head -1 | sed 's/^error: //'); continuing on an untrained, paper-initialised network"
    [ -f "$D/init.ckpt" ] || $AS weights init --out "$D/init.ckpt" --classes 6
    WEIGHTS="$D/init.ckpt"
    NAME=init
fi
$AS info --weights "$WEIGHTS"
export ALEXSEARCH_WEIGHTS="$WEIGHTS"
IX="$D/index-$NAME"  # one index per network: an index refuses another's weights
echo "== index the photos (incremental: a second run touches nothing)"
$AS index "$D/shapes" --index "$IX"
$AS index "$D/shapes" --index "$IX"
echo "== which photos look like this one?"
$AS query "$D/shapes/red_circles/000.jpg" "$D/shapes/blue_squares/000.jpg" \
    --index "$IX" --k 6 --grid "$D/neighbours.png"
$AS info --index "$IX"

echo "== pictures: conv1 kernels (Fig. 3) and a t-SNE map, in $D/"
$AS viz kernels --out "$D/kernels.png"
$AS viz tsne --index "$IX" --out "$D/tsne.png"
$AS viz tsne --index "$IX" --out "$D/tsne-thumbnails.png" --thumbnails

echo "== browse the index in a page (Ctrl-C stops):"
echo "   $AS serve --index $IX"
