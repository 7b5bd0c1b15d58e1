"""GhostGRU vs torch.nn.GRU speed on this CPU: training step and streaming step latency.

    python benchmarks/bench_layers.py [--out benchmarks/results/layers.json] [--repeats 10]

Training step: forward + backward of one layer, batch 256, 100 frames, 40 inputs, width 128
(GhostGRU s = 2). Step latency: one frame at batch 1 through one layer, in inference mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from kws_ghost.layers import GhostRNN


def time_call(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_seconds(module, x: torch.Tensor, repeats: int) -> float:
    def step() -> None:
        y, _ = module(x)
        y.sum().backward()

    return time_call(step, repeats)


def step_latency_us(layer, state, x: torch.Tensor, calls: int = 2000) -> float:
    with torch.inference_mode():

        def run() -> None:
            s = state
            for _ in range(calls):
                _, s = layer.step(x, s)

        return time_call(run, 5, warmup=1) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/layers.json")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    batch, frames, inputs, width = 256, 100, 40, 128
    x = torch.randn(batch, frames, inputs)
    variants = {
        "torch.nn.GRU": torch.nn.GRU(inputs, width, batch_first=True),
        "ghost-gru s2 linear+tanh (scan)": GhostRNN("gru", inputs, width, 1, 2, "linear", "tanh"),
        "ghost-gru s2 linear (fused, folded)": GhostRNN("gru", inputs, width, 1, 2, "linear"),
        "ghost-gru s1 (= GRU, fused)": GhostRNN("gru", inputs, width, 1, 1),
        "torch.nn.LSTM": torch.nn.LSTM(inputs, width, batch_first=True),
        "ghost-lstm s2 linear+tanh (scan)": GhostRNN("lstm", inputs, width, 1, 2, "linear", "tanh"),
    }
    training = {name: train_step_seconds(m, x, args.repeats) for name, m in variants.items()}
    reference = training["torch.nn.GRU"]
    training_threads = torch.get_num_threads()

    torch.set_num_threads(1)  # batch-1 streaming: one core, no threading overhead
    frame = torch.randn(1, inputs)
    latency = {}
    for name, rnn in variants.items():
        if isinstance(rnn, GhostRNN):
            latency[name] = step_latency_us(rnn, rnn.initial_state(1), frame)
    cell = torch.nn.GRUCell(inputs, width)
    with torch.inference_mode():
        h = torch.zeros(1, width)
        latency["torch.nn.GRUCell (reference)"] = (
            time_call(lambda: [cell(frame, h) for _ in range(2000)], 5, 1) / 2000 * 1e6
        )

    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads_training": training_threads,
        },
        "shape": {"batch": batch, "frames": frames, "inputs": inputs, "width": width},
        "train_step_ms": {k: round(v * 1e3, 2) for k, v in training.items()},
        "train_step_vs_torch_gru": {k: round(v / reference, 3) for k, v in training.items()},
        "step_latency_us_batch1": {k: round(v, 1) for k, v in latency.items()},
        "targets": {"train_step_vs_torch_gru_max": 2.0, "goal": 1.2, "step_latency_us_max": 100},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
