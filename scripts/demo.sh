#!/usr/bin/env bash
# `make demo`: the main job end to end, offline, CPU-only, in ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
AS=".venv/bin/alexsearch"
mkdir -p demo
echo "== a small labelled photo set, generated (no download): demo/shapes/<class>/*.jpg"
$PY scripts/make_shapes.py demo/shapes --per-class 12
echo "== an untrained, paper-initialised two-tower AlexNet"
[ -f demo/init.ckpt ] || $AS weights init --out demo/init.ckpt --classes 6
$AS info --weights demo/init.ckpt
export ALEXSEARCH_WEIGHTS=demo/init.ckpt
echo "== index the photos (incremental: a second run touches nothing)"
$AS index demo/shapes --index demo/index
$AS index demo/shapes --index demo/index
echo "== which photos look like this one?"
$AS query demo/shapes/red_circles/000.jpg demo/shapes/blue_squares/000.jpg \
    --index demo/index --k 6 --grid demo/neighbours.png
$AS info --index demo/index

# ---- viz (issue 7): the paper's Fig. 3 and a t-SNE map of a small index
echo "== pictures: conv1 kernels (Fig. 3) and a t-SNE map, in demo/"
$AS viz kernels --weights demo/init.ckpt --out demo/kernels.png
$AS viz tsne --index demo/index --out demo/tsne.png
$AS viz tsne --index demo/index --out demo/tsne-thumbnails.png --thumbnails
