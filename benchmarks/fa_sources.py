"""Where a study run's false alarms come from: for each run, the clips under the false alarms at
10 per hour on its test speakers' recordings (as ``study.py`` scores them), and the hit rate
with the single worst clip left out of the negatives.

    python benchmarks/fa_sources.py /tmp/study/front-12 "ghost-gru-H112-s1.5,-clip-stage-first" \\
        7,8,9,10,11,12,13

One JSON line per run. The study's negatives repeat each of a fold's 105-139 other-word clips
about six times in 30 minutes, so a single confusable clip can set the operating point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from folds import fold_of_seed  # benchmarks/ is this script's folder


def operating_point(
    hit_rates: list[float], fired: list[list[dict]], allowed: float, left_out: set
) -> tuple[float, int]:
    """(hit rate, threshold index) at the most hits with at most ``allowed`` false alarms, the
    false alarms on clips ``left_out`` not counted (ties: the higher threshold)."""
    quiet_enough = [
        (hit_rates[k], k)
        for k, words in enumerate(fired)
        if sum(w["count"] for w in words if w["source"] not in left_out) <= allowed
    ]
    return max(quiet_enough, default=(0.0, len(fired) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan_runs", type=Path, help="A plan's runs folder (with folds/).")
    parser.add_argument("config", help="The run folders' name before -s<seed>.")
    parser.add_argument("seeds", help="Comma-separated seeds.")
    parser.add_argument("--folds", type=int, default=7)
    parser.add_argument("--target", type=float, default=10.0, help="False alarms per hour.")
    args = parser.parse_args()

    import torch

    from kws_ghost.config import DetectorConfig
    from kws_ghost.data import scan_corpus
    from kws_ghost.det import (
        DET_THRESHOLDS,
        counted_words,
        false_alarm_words,
        match_events,
    )
    from kws_ghost.runtime import load_model
    from kws_ghost.stream import decode
    from kws_ghost.validation import ValidationRecordings

    torch.set_num_threads(1)
    config, thresholds = DetectorConfig(), list(DET_THRESHOLDS)
    for seed in (int(s) for s in args.seeds.split(",")):
        run = args.plan_runs / f"{args.config}-s{seed}"
        runtime = load_model(run / "best.pt")
        corpus = scan_corpus(fold_of_seed(args.plan_runs, seed, args.folds)[1])
        recordings = ValidationRecordings(
            corpus, runtime.labels, runtime.frontend_config, seed=seed, split="testing"
        )
        keywords, negatives = recordings.score(runtime)
        fe, labels = runtime.frontend_config, runtime.labels
        quiet = decode(negatives.posteriors, negatives.levels, labels, config, fe, thresholds)
        found = decode(keywords.posteriors, keywords.levels, labels, config, fe, thresholds)
        words = counted_words(keywords.truth, config)
        allowed = args.target * negatives.hours
        fired = [false_alarm_words(events, negatives.truth, config) for events in quiet]

        hit_rates = [match_events(events, words)[0] / len(words) for events in found]
        hit_rate, k = operating_point(hit_rates, fired, allowed, set())
        behind = fired[k]
        worst = {behind[0]["source"]} if behind else set()
        record = {
            "run": run.name,
            "threshold": thresholds[k],
            "hit_rate": round(hit_rate, 4),
            "hit_rate_without_worst_clip": round(
                operating_point(hit_rates, fired, allowed, worst)[0], 4
            ),
            "negative_words": len(negatives.truth["distractors"]),
            "distinct_negative_clips": len({w["source"] for w in negatives.truth["distractors"]}),
            "clips_behind": behind,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
