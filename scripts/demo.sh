#!/bin/sh
# The demo: what a first-time user runs, end to end, offline, on a laptop CPU (about 13 minutes on 2 cores,
# most of it training). Every step is a plain kws-ghost command with its defaults.
set -eu
OUT=${1:-demo}
mkdir -p "$OUT"
step() { printf '\n== %s\n$ %s\n' "$1" "$2"; }

echo "kws-ghost demo: all files go under $OUT/"

step "1. What GhostGRU saves against a GRU of the same width" \
     "kws-ghost profile --compare"
kws-ghost profile --compare

step "2. Synthesise a keyword corpus (espeak-ng voices; yes/no/up/down, cat, house, and 24 built-in other words a voice)" \
     "kws-ghost synth --words yes,no,up,down,cat,house --voices 30 --out $OUT/corpus"
if [ ! -f "$OUT/corpus/.kws-ghost-synth" ]; then
  kws-ghost synth --words yes,no,up,down,cat,house --voices 30 --out "$OUT/corpus" --json \
    > "$OUT/synth.json"
fi
kws-ghost data-stats "$OUT/corpus" --keywords yes,no,up,down

step "3. Train the default streaming GhostGRU: clip weights first, then the stream (held-out synthetic speakers validate and test)" \
     "kws-ghost train --data $OUT/corpus --keywords yes,no,up,down --out $OUT/run"
if [ -f "$OUT/run/last.pt" ] || [ -f "$OUT/run/clip/last.pt" ]; then
  kws-ghost train --resume --out "$OUT/run" --quiet  # a rerun finishes (or keeps) that run
else
  kws-ghost train --data "$OUT/corpus" --keywords yes,no,up,down --out "$OUT/run" --quiet
fi

step "4. Evaluate on the test speakers' clips" \
     "kws-ghost eval $OUT/run/best.pt --plot $OUT/confusion.png"
kws-ghost eval "$OUT/run/best.pt" --plot "$OUT/confusion.png" --quiet

step "5. A 30 s recording with keywords at known times: detect them with the streaming model" \
     "kws-ghost make-stream --data $OUT/corpus --out $OUT/stream.wav --model $OUT/run/best.pt"
kws-ghost make-stream --data "$OUT/corpus" --out "$OUT/stream.wav" --model "$OUT/run/best.pt" \
  --duration 30 --seed 3
echo "\$ kws-ghost detect $OUT/stream.wav --model $OUT/run/best.pt"
kws-ghost detect "$OUT/stream.wav" --model "$OUT/run/best.pt"
echo "(truth: $OUT/stream.json)"
kws-ghost eval-stream "$OUT/stream.wav" --model "$OUT/run/best.pt" --plot "$OUT/det.png" \
  | head -n 2

step "6. Export the step model for a device (int8) and detect with onnxruntime, without torch" \
     "kws-ghost export $OUT/run/best.pt --int8 --out $OUT/kws.onnx"
kws-ghost export "$OUT/run/best.pt" --int8 --out "$OUT/kws.onnx"
kws-ghost detect "$OUT/stream.wav" --model "$OUT/kws.onnx" --format csv

printf '\nDone. Files: %s/run (checkpoints, metrics.jsonl), %s/confusion.png, %s/stream.wav,\n' \
  "$OUT" "$OUT" "$OUT"
printf '%s/det.png (DET curve), %s/kws.onnx. Next: kws-ghost download, then\n' "$OUT" "$OUT"
printf 'kws-ghost train --data data/speech_commands_v0.02 for the real 12-class task.\n'
