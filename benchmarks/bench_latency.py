"""Decision latency on real speech: how long after a keyword ends its event comes out.

    python benchmarks/bench_latency.py RUN/best.pt [RUN2/best.pt ...] --data FOLD --seed S

For each model: recordings of the test speakers of ``--data`` built as the study builds them
(``benchmarks/study.py``: every test keyword clip once among other words, and 30 minutes of other
words and noise, from ``--seed``), the threshold of 10 false alarms per hour on them, then the
keyword recording replayed through the event decoder 100 ms at a time, as ``detect`` hears a
stream. For every hit: the time its event came out minus the end of the word's speech. Figures go
to stdout and ``benchmarks/results/latency.json``. It times nothing (latency here is audio time,
not compute): building and scoring the recordings takes a core for about a minute per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kws_ghost.fileio import write_json

RESULTS = Path(__file__).parent / "results" / "latency.json"
TARGET_FA_PER_HOUR = 10.0
PUSH_SECONDS = 0.1  # detect's hop: a stream arrives 100 ms at a time


def emission_times(
    runtime: Any, posteriors: np.ndarray, levels: np.ndarray, threshold: float
) -> list[tuple[object, float]]:
    """(event, when it came out) for the events of stored posteriors at ``threshold``."""
    from kws_ghost.config import DetectorConfig
    from kws_ghost.stream import EventDecoder

    decoder = EventDecoder(runtime.labels, DetectorConfig().at(threshold), runtime.frontend_config)
    step = max(1, int(round(PUSH_SECONDS / decoder.frame_seconds)))
    out = []
    for i in range(0, len(posteriors), step):
        now = decoder.time_of(min(i + step, len(posteriors)) - 1)
        out += [
            (event, now) for event in decoder.push(posteriors[i : i + step], levels[i : i + step])
        ]
    end = decoder.time_of(len(posteriors) - 1)
    return out + [(event, end) for event in decoder.flush()]


def measure(model: Path, data: Path, seed: int) -> dict:
    import torch

    from kws_ghost.data import scan_corpus
    from kws_ghost.det import pair_events
    from kws_ghost.runtime import load_model
    from kws_ghost.validation import ValidationRecordings

    torch.set_num_threads(1)
    runtime = load_model(model)
    recordings = ValidationRecordings(
        scan_corpus(data), runtime.labels, runtime.frontend_config, seed=seed, split="testing"
    )
    scored = recordings.score(runtime)  # once: for the threshold and for the replay
    summary = recordings.evaluate(runtime, TARGET_FA_PER_HOUR, scored)
    keywords = scored[0]
    emitted = emission_times(runtime, keywords.posteriors, keywords.levels, summary["threshold"])
    when = {id(event): time for event, time in emitted}
    latencies = [
        when[id(event)] - word["end"]
        for event, word, _ in pair_events([event for event, _ in emitted], keywords.truth["events"])
        if word is not None
    ]
    names = ("latency_p10", "latency_median", "latency_p90")
    quantiles = np.percentile(latencies, [10, 50, 90]) if latencies else [None] * 3
    return {
        "model": str(model),
        "threshold": summary["threshold"],
        "hit_rate": summary["hit_rate"],
        "hits": len(latencies),
        **{name: None if q is None else round(float(q), 3) for name, q in zip(names, quantiles)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="corpus (a study fold's folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the recordings")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        row = measure(model, args.data, args.seed)
        rows.append(row)
        print(
            f"{model}: hit rate {row['hit_rate']:.2f} at {TARGET_FA_PER_HOUR:g} FA/h, event after "
            f"the word's end: median {row['latency_median']} s "
            f"(10-90%: {row['latency_p10']}-{row['latency_p90']} s, {row['hits']} hits)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"seed": args.seed, "data": str(args.data), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
