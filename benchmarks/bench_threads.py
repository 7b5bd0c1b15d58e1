"""How much a busy machine slows `train` and `detect`, with torch's default threads and with
the tool's own choice, side by side in one run.

    python benchmarks/bench_threads.py [--out benchmarks/results/threads.json] [--epochs 3]

Each command runs alone and beside a competing CPU-bound process (a Python busy loop holding
one core), (a) with one intra-op thread per core, torch's default ("before": ``--threads`` set
to the core count) and (b) with the tool's default ("after": ``train`` takes the cores that
are free when it starts, ``detect`` one thread). Reported: wall seconds and the slowdown ratio
(beside the competitor / alone) of each. The corpus is a small synthetic one; the recording
10 minutes of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from kws_ghost.fileio import write_json
from kws_ghost.recordings import build_recording
from kws_ghost.synth import synthesize_corpus
from kws_ghost.threads import available_cores

BUSY = [sys.executable, "-c", "while True: pass"]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:5])} failed: {result.stderr[-800:]}")
    return time.perf_counter() - started


def alone_and_busy(command: list[str], out: Optional[Path] = None) -> dict:
    """``command`` alone, then beside the competitor; with ``out``, each run writes its own
    ``--out`` folder below it."""

    def line(tag: str) -> list[str]:
        return command if out is None else [*command, "--out", str(out / tag)]

    alone = timed(line("alone"))
    competitor = subprocess.Popen(BUSY)
    try:
        time.sleep(0.5)  # let it take its core
        busy = timed(line("busy"))
    finally:
        competitor.kill()
        competitor.wait()
    return {
        "alone_s": round(alone, 2),
        "busy_s": round(busy, 2),
        "slowdown": round(busy / alone, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/threads.json"))
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    cores = available_cores()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    os.environ.clear()
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="kws-threads-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        synthesize_corpus(["yes", "no", "up", "down", "cat"], corpus, voices=24, progress=False)
        wav = root / "ten-minutes.wav"
        build_recording(corpus, wav, ["yes", "no", "up", "down"], duration=600, split="training")
        train = [sys.executable, "-m", "kws_ghost", "train", "--data", str(corpus), "--quiet"]
        train += ["--epochs", str(args.epochs), "--workers", "0", "--val-recording-minutes", "1"]
        model = root / "model"
        subprocess.run([*train, "--out", str(model)], check=True, capture_output=True)
        detect = [sys.executable, "-m", "kws_ghost", "detect", str(wav)]
        detect += ["--model", str(model / "best.pt"), "--format", "json"]
        result: dict = {"cores": cores, "epochs": args.epochs, "recording_seconds": 600}
        for name, command in (("train", train), ("detect", detect)):
            runs = {}
            for setting, extra in (("before", ["--threads", str(cores)]), ("after", [])):
                out = None if name == "detect" else root / setting
                runs[setting] = alone_and_busy([*command, *extra], out)
            result[name] = runs
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
