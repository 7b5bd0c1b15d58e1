"""Start-up of the command line: `kws-ghost detect clip.wav --model m.onnx` (no torch), the same
with the checkpoint, and `kws-ghost --help`, median wall time of several runs each.

    python benchmarks/bench_startup.py [--runs 9] [--out benchmarks/results/startup.json]

The model is the default GhostGRU (random weights: start-up does not depend on them), exported to
ONNX; the clip is one second of noise. Each run is a fresh process (interpreter start-up
included), run one after another, nothing else running.
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

import numpy as np
import soundfile

from kws_ghost.fileio import write_json


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    import torch

    from kws_ghost.checkpoint import save_checkpoint
    from kws_ghost.config import FrontendConfig, ModelConfig
    from kws_ghost.export import export_checkpoint
    from kws_ghost.models import build_model

    labels = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off"]
    labels += ["stop", "go"]
    with tempfile.TemporaryDirectory(prefix="kws-startup-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_model(ModelConfig(num_classes=len(labels)))
        save_checkpoint(root / "m.pt", model, FrontendConfig(), labels)
        export_checkpoint(root / "m.pt", root / "m.onnx")
        clip = root / "clip.wav"
        noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
        soundfile.write(clip, 0.05 * noise, 16000)
        base = [sys.executable, "-m", "kws_ghost"]
        commands = {
            "detect_onnx": [*base, "detect", str(clip), "--model", str(root / "m.onnx"), "--quiet"],
            "detect_pt": [*base, "detect", str(clip), "--model", str(root / "m.pt"), "--quiet"],
            "help": [*base, "--help"],
        }
        for command in commands.values():
            wall(command)  # warm the file cache
        times = {name: [wall(c) for _ in range(args.runs)] for name, c in commands.items()}
    result = {
        name: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3), "runs": t}
        for name, t in times.items()
    }
    result["target_detect_onnx_s"] = 0.7
    write_json(args.out, result)
    print(json.dumps({name: result[name]["median_s"] for name in times}))


if __name__ == "__main__":
    main()
