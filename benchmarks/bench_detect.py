"""Real-time factor and peak memory of `kws-ghost detect` on 1-minute and 30-minute recordings.

    python benchmarks/bench_detect.py [--out benchmarks/results/detect.json] [--model CKPT]

Recordings are built from a synthetic corpus (keywords and other words over noise). The model
is the default GhostGRU (H 128, s 2, 2 layers, tanh cheap operation; random weights unless
--model is given: speed does not depend on the weights). Each `detect` runs as its own process;
its peak resident memory is polled from /proc (VmHWM). The real-time factor is reported twice:
for the whole command (Python, torch and librosa start-up included) and for the detection alone
(measured in-process over the same file, blocks read from disk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kws_ghost.audio import iter_audio_blocks
from kws_ghost.checkpoint import save_checkpoint
from kws_ghost.config import DetectorConfig, FrontendConfig, ModelConfig
from kws_ghost.models import build_model
from kws_ghost.stream import detect_blocks, load_scorer
from kws_ghost.stream_eval import build_recording
from kws_ghost.synth import synthesize_corpus

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "cat", "house"]


def run_detect(wav: Path, model: Path) -> dict:
    """One `kws-ghost detect` process: wall seconds, peak RSS, events printed.

    The peak is the child's VmHWM polled from /proc: wait4()'s ru_maxrss would include the
    memory of this (large) benchmark process, which the child holds between fork and exec.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kws_ghost",
                "detect",
                str(wav),
                "--model",
                str(model),
                "--format",
                "json",
            ],
            stdout=out,
            stderr=err,
        )
        peak_kb = 0
        status_file = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status_file.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.01)
        process.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"detect failed: {err.read().decode()[-500:]}")
        events = len(out.read().splitlines())
    return {
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "events": events,
    }


def in_process_seconds(wav: Path, model: Path, repeats: int = 2) -> float:
    scorer = load_scorer(model)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in detect_blocks(iter_audio_blocks(wav, 16000), scorer, DetectorConfig()):
            pass
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/detect.json")
    parser.add_argument("--model", type=Path, help="Checkpoint (default: random default model).")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 30.0])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            torch.manual_seed(0)
            model = tmp / "default.pt"
            labels = ["_silence_", "_unknown_", *WORDS[:10]]
            save_checkpoint(
                model, build_model(ModelConfig(num_classes=12)), FrontendConfig(), labels
            )
        corpus = tmp / "corpus"
        synthesize_corpus(WORDS, corpus, voices=12, clips_per_voice=2, seed=0, progress=False)
        rows = []
        for minutes in args.minutes:
            wav = tmp / f"rec-{minutes:g}min.wav"
            build_recording(
                corpus, wav, WORDS[:10], duration=minutes * 60, split="training", seed=1
            )
            seconds = minutes * 60
            command = run_detect(wav, model)
            processing = in_process_seconds(wav, model)
            rows.append(
                {
                    "minutes": minutes,
                    **command,
                    "rtf_command": round(command["wall_seconds"] / seconds, 5),
                    "detection_seconds": round(processing, 3),
                    "rtf_detection": round(processing / seconds, 5),
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    first, last = rows[0], rows[-1]
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "model": "default ghost-gru H128 s2 x2 (linear+tanh cheap op)",
        "detector": DetectorConfig().__dict__,
        "runs": rows,
        "memory_ratio_longest_vs_shortest": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3),
        "targets": {"rtf_max": 0.01, "rtf_goal": 0.002, "memory_ratio_max": 1.2},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
