"""The default recipe on a small custom corpus, with no flags, as a user would run it.

    python benchmarks/bench_small_corpus.py [--seeds 0 1 2] [--out PATH.json]

`kws-ghost synth --words yes,no,up,down --voices 30` (24 training, 3 validation and 3 test
voices), then `kws-ghost train --data CORPUS --keywords yes,no,up,down --seed S` and `kws-ghost
eval` on the test voices, for each seed. Reported: held-out accuracy per seed, mean and spread,
the epochs and steps the step budget chose, and wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kws_ghost.fileio import write_json


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"kws-ghost {args[0]} failed: {result.stderr[-800:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/small-corpus.json"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kws-small-") as tmp:
        corpus = Path(tmp) / "corpus"
        run("synth", "--words", "yes,no,up,down", "--voices", "30", "--out", str(corpus))
        for seed in args.seeds:
            out = Path(tmp) / f"run{seed}"
            started = time.perf_counter()
            report = json.loads(
                run(
                    "train",
                    "--data",
                    str(corpus),
                    "--keywords",
                    "yes,no,up,down",
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    "--quiet",
                    "--json",
                )
            )
            seconds = time.perf_counter() - started
            evaluated = json.loads(run("eval", str(out / "best.pt"), "--json", "--quiet"))
            config = json.loads((out / "config.json").read_text())
            runs.append(
                {
                    "seed": seed,
                    "test_accuracy": evaluated["accuracy"],
                    "test_clips": evaluated["count"],
                    "epochs": report["epochs"],
                    "train_clips": sum(config["train_counts"].values()),
                    "best_epoch": report["best_epoch"],
                    "train_seconds": round(seconds, 1),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    accuracies = [r["test_accuracy"] for r in runs]
    result = {
        "command": "kws-ghost train --data CORPUS --keywords yes,no,up,down (defaults)",
        "runs": runs,
        "test_accuracy": {
            "mean": round(statistics.mean(accuracies), 4),
            "sd": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0,
            "n": len(accuracies),
        },
    }
    write_json(args.out, result)
    print(json.dumps(result["test_accuracy"]))


if __name__ == "__main__":
    main()
