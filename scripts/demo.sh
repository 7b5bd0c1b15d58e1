#!/bin/sh
# The demo: what a first-time user runs, end to end, offline, in a few minutes on a laptop CPU.
# Every step is a plain kws-ghost command you can run (and change) yourself.
set -eu
OUT=${1:-demo}
mkdir -p "$OUT"
step() { printf '\n== %s\n$ %s\n' "$1" "$2"; }

echo "kws-ghost demo: all files go under $OUT/"

step "1. What GhostGRU saves against a GRU of the same width" \
     "kws-ghost profile --model ghost-gru --hidden 128 --ratio 2 --compare"
kws-ghost profile --model ghost-gru --hidden 128 --ratio 2 --compare

step "2. Synthesise a keyword corpus (espeak-ng voices; yes/no/up/down + other words)" \
     "kws-ghost synth --words yes,no,up,down,cat,house --voices 90 --clips-per-voice 2 ..."
kws-ghost synth --words yes,no,up,down,cat,house --voices 90 --clips-per-voice 2 \
  --test-fraction 0.2 --out "$OUT/corpus" --force --json > "$OUT/synth.json"
kws-ghost data-stats "$OUT/corpus" --keywords yes,no,up,down

step "3. Train a small GhostGRU (held-out synthetic speakers for validation and test)" \
     "kws-ghost train --data $OUT/corpus --keywords yes,no,up,down --hidden 96 --layers 1 ..."
rm -rf "$OUT/run"
kws-ghost train --data "$OUT/corpus" --keywords yes,no,up,down --hidden 96 --layers 1 \
  --dropout 0.1 --epochs 30 --batch-size 16 --lr 0.003 --fragment-negatives 0.05 --out "$OUT/run" \
  --quiet

step "4. Evaluate on the test speakers" \
     "kws-ghost eval $OUT/run/best.pt --plot $OUT/confusion.png"
kws-ghost eval "$OUT/run/best.pt" --plot "$OUT/confusion.png" --quiet

step "5. Build a 30 s recording with keywords at known times, and detect them" \
     "kws-ghost make-stream --data $OUT/corpus --out $OUT/stream.wav --model $OUT/run/best.pt"
kws-ghost make-stream --data "$OUT/corpus" --out "$OUT/stream.wav" --model "$OUT/run/best.pt" \
  --duration 30 --seed 3
echo "\$ kws-ghost detect $OUT/stream.wav --model $OUT/run/best.pt"
kws-ghost detect "$OUT/stream.wav" --model "$OUT/run/best.pt"
echo "(truth: $OUT/stream.json)"
kws-ghost eval-stream "$OUT/stream.wav" --model "$OUT/run/best.pt" --plot "$OUT/det.png" \
  | head -n 1

step "6. Export for a device (ONNX step + clip models, int8) and detect with onnxruntime" \
     "kws-ghost export $OUT/run/best.pt --int8 --out $OUT/kws.onnx"
kws-ghost export "$OUT/run/best.pt" --int8 --out "$OUT/kws.onnx"
kws-ghost detect "$OUT/stream.wav" --model "$OUT/kws.onnx" --format csv

printf '\nDone. Files: %s/run (checkpoints, metrics.jsonl), %s/confusion.png, %s/stream.wav,\n' \
  "$OUT" "$OUT" "$OUT"
printf '%s/det.png (DET curve), %s/kws.onnx + kws.clip.onnx. Next: kws-ghost download, then\n' \
  "$OUT" "$OUT"
printf 'kws-ghost train --data data/speech_commands_v0.02 for the real 12-class task.\n'
