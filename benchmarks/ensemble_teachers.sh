#!/bin/sh
# Test accuracy of the study's two GRU H128 teachers of each speaker fold, alone and as the
# ensemble that screen-13 and screen-14 distil from (`kws-ghost eval A B`: the mean of their frame
# logits). Needs the runs folder study.py made (teacher-1, teacher-2).
# Usage: sh benchmarks/ensemble_teachers.sh [RUNS] > benchmarks/results/ensemble_teachers.txt
set -e
runs=${1:-/tmp/study}
kws=${KWS_GHOST:-.venv/bin/kws-ghost}
echo "# seed, models (1: one GRU H128, teacher-1's then teacher-2's; 2: both as one), test accuracy, test clips"
for s in 7 8 9 10 11 12 13; do
  a=$runs/teacher-1/gru-H128,-clip-stage-first-s$s/best.pt
  b=$runs/teacher-2/gru-H128,-clip-stage-first-s$((s - 7))/best.pt
  for models in "$a" "$b" "$a $b"; do
    # shellcheck disable=SC2086 # the models are separate arguments
    $kws eval $models --json --quiet --threads 1 | python3 -c \
      "import json, sys; r = json.load(sys.stdin); print($s, len(r['models']), round(r['accuracy'], 4), r['count'])"
  done
done
