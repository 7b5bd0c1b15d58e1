"""A custom-keyword model from `synth` defaults: false alarms on other speech in new voices, and
the keywords it still finds, with and without synth's other words (--other-words 0 is how every
corpus was made before they existed).

    python benchmarks/bench_custom_keywords.py [--work DIR] [--voices 30]
                                               [--out benchmarks/results/custom_keywords.json]

For each variant: `kws-ghost synth --words yes,no,up,down --voices 30` (the defaults; without
other words; with six repetitions of each keyword per voice), `kws-ghost train --data CORPUS`
with the defaults. Held out, one corpus of 20 new voices
(another seed) saying the keywords and 30 words that are in neither corpus (nor in synth's built-in
list), from which `make-stream` builds a 10-minute recording of other words only, and a recording
of every keyword once among other words. `detect` (defaults: the model's own threshold) on the
negatives counts false alarms; `eval-stream` gives the hit rate on the keyword recording.
Takes about 25 minutes on 2 cores; nothing else should run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kws_ghost.fileio import write_json

KEYWORDS = "yes,no,up,down"
# in neither the training corpus nor synth.OTHER_WORDS: speech the model never heard at all
NEW_WORDS = (
    "airport,blanket,candle,dolphin,engine,feather,guitar,helmet,island,jacket,ladder,magnet,"
    "needle,ocean,pillow,rabbit,saddle,tunnel,violin,wagon,yogurt,zipper,butter,camera,dancer,"
    "elbow,forest,hammer,kettle,lemon"
)
NEGATIVE_SECONDS = 600.0


def kws(*args: Any) -> str:
    command = [sys.executable, "-m", "kws_ghost", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[2:])} failed: {result.stderr.strip()}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="Keep the corpora and runs here.")
    parser.add_argument("--voices", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/custom_keywords.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kws-custom-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        held = work / "heldout"
        kws("synth", "--words", f"{KEYWORDS},{NEW_WORDS}", "--voices", 20, "--seed", 101,
            "--other-words", 0, "--val-fraction", 0.05, "--test-fraction", 0.9, "--out", held,
            "--force")  # fmt: skip
        negatives, keywords = work / "negatives.wav", work / "keywords.wav"
        kws("make-stream", "--data", held, "--keywords", KEYWORDS, "--out", negatives,
            "--distractors", 1, "--duration", NEGATIVE_SECONDS)  # fmt: skip
        variants = {
            "other_words_default": [],
            "other_words_0": ["--other-words", 0],
            "clips_per_voice_6": ["--clips-per-voice", 6],
        }
        results = {}
        for name, options in variants.items():
            corpus, run = work / f"corpus-{name}", work / f"run-{name}"
            started = time.perf_counter()
            kws("synth", "--words", KEYWORDS, "--voices", args.voices, "--out", corpus,
                "--force", *options)  # fmt: skip
            kws("train", "--data", corpus, "--out", run, "--quiet", "--json")
            model = run / "best.pt"
            if not keywords.exists():
                kws("make-stream", "--data", held, "--keywords", KEYWORDS, "--out", keywords,
                    "--every-keyword", "--distractors", 0.5)  # fmt: skip
            events = kws("detect", negatives, "--model", model, "--format", "json", "--quiet")
            report = json.loads(
                kws("eval-stream", keywords, "--negatives", negatives, "--model", model, "--json")
            )
            results[name] = {
                "synth_options": [str(o) for o in options],
                "false_alarms_in_negatives": len(events.splitlines()),
                "negatives_minutes": NEGATIVE_SECONDS / 60,
                "keyword_hit_rate": report["hit_rate"],
                "keywords_in_recording": report["keywords_in_recording"],
                "eval_stream_false_alarms_per_hour": report["false_alarms_per_hour"],
                "threshold": report["threshold"],
                "minutes": round((time.perf_counter() - started) / 60, 1),
            }
            print(json.dumps({name: results[name]}), flush=True)
    write_json(
        args.out,
        {
            "benchmark": "custom_keywords",
            "what": "model trained on `synth --words yes,no,up,down --voices N` defaults: false "
            "alarms over 10 minutes of never-heard words in 20 new voices, hit rate on every "
            "keyword of those voices once; detect's default threshold",
            "voices": args.voices,
            "new_words": NEW_WORDS.split(","),
            "results": results,
            "targets": {"false_alarms_in_negatives": "<= 5", "keyword_hit_rate": ">= 0.85"},
        },
    )


if __name__ == "__main__":
    main()
