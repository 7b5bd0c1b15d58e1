#!/bin/sh
# The demo: what a first-time user runs. Each step is a kws-ghost command you can run yourself.
set -eu
OUT=${1:-demo}
mkdir -p "$OUT"
echo "== kws-ghost demo (files under $OUT/) =="
echo "-- 1. the model: GhostGRU vs GRU cost"
kws-ghost profile --model ghost-gru --hidden 128 --ratio 2 --compare
for step in synth train eval detect; do
  if ! kws-ghost "$step" --help >/dev/null 2>&1; then
    echo "-- kws-ghost $step: not built yet (see the open issues); the demo stops here"
    exit 0
  fi
done
