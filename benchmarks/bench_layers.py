"""GhostGRU vs torch.nn.GRU speed on this CPU: training step and streaming step latency.

    python benchmarks/bench_layers.py [--out benchmarks/results/layers.json] [--repeats 10]
        [--legacy-tree /tmp/kws-legacy]

Training step: forward + backward of one layer, batch 256, 100 frames, 40 inputs, width 128
(GhostGRU s = 2). Step latency: one frame at batch 1 through one layer, in inference mode, by
``step`` (the reference, what export traces) and by ``forward`` of a one-frame chunk (how a
checkpoint streams live audio: the scan or the fused kernel).
All variants are timed in interleaved rounds (one call of each, then the next round), so that a
busy machine slows them alike and the ratios hold when absolute times drift.

``--legacy-tree``: a checkout of an older kws-ghost (``git worktree add /tmp/kws-legacy 55da921``)
whose ``kws_ghost/layers.py`` is imported by path and timed beside this one, with the same weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kws_ghost.fileio import write_json  # noqa: E402
from kws_ghost.layers import GhostRNN  # noqa: E402

BATCH, FRAMES, INPUTS, WIDTH = 256, 100, 40, 128
STEP_CALLS = 2000
VARIANTS: dict[str, tuple[str, float, str, str]] = {
    # name: (cell, ratio, cheap_op, activation)
    "ghost-gru s2 linear+tanh (scan)": ("gru", 2, "linear", "tanh"),
    "ghost-gru s2 elementwise+tanh (scan)": ("gru", 2, "elementwise", "tanh"),
    "ghost-gru s2 linear (fused, folded)": ("gru", 2, "linear", "none"),
    "ghost-gru s1 (= GRU, fused)": ("gru", 1, "linear", "none"),
    "ghost-lstm s2 linear+tanh (scan)": ("lstm", 2, "linear", "tanh"),
}


def load_legacy_layers(tree: Path) -> Any:
    """The legacy tree's ``kws_ghost/layers.py`` as a module of its own."""
    spec = importlib.util.spec_from_file_location("kws_legacy_layers", tree / "kws_ghost/layers.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{tree}: no kws_ghost/layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every call over ``repeats`` rounds (after one warm-up round)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return times


def train_call(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        y, _ = module(x)
        y.sum().backward()

    return call


def step_call(layer: Any, x: torch.Tensor) -> Callable[[], None]:
    state = layer.initial_state(1)

    def call() -> None:
        with torch.inference_mode():
            s = state
            for _ in range(STEP_CALLS):
                _, s = layer.step(x, s)

    return call


def chunk_call(rnn: Any, x: torch.Tensor) -> Callable[[], None]:
    """``forward`` of a one-frame chunk, state carried: how a checkpoint streams live audio."""
    state = rnn.initial_state(1)

    def call() -> None:
        with torch.inference_mode():
            s = state
            for _ in range(STEP_CALLS):
                _, s = rnn(x, s)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "layers.json"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--legacy-tree", type=Path, help="older checkout to time side by side")
    args = parser.parse_args()
    legacy = load_legacy_layers(args.legacy_tree) if args.legacy_tree else None

    torch.manual_seed(0)
    x = torch.randn(BATCH, FRAMES, INPUTS)
    modules: dict[str, torch.nn.Module] = {
        "torch.nn.GRU": torch.nn.GRU(INPUTS, WIDTH, batch_first=True),
        "torch.nn.LSTM": torch.nn.LSTM(INPUTS, WIDTH, batch_first=True),
    }
    for name, (cell, ratio, cheap_op, activation) in VARIANTS.items():
        rnn = GhostRNN(cell, INPUTS, WIDTH, 1, ratio, cheap_op, activation)
        modules[name] = rnn
        if legacy is not None:
            old = legacy.GhostRNN(cell, INPUTS, WIDTH, 1, ratio, cheap_op, activation)
            old.load_state_dict(rnn.state_dict())
            modules[f"legacy {name}"] = old
    training_threads = torch.get_num_threads()
    train_times = interleaved({k: train_call(m, x) for k, m in modules.items()}, args.repeats)
    training = {k: statistics.median(v) for k, v in train_times.items()}
    reference = training["torch.nn.GRU"]

    torch.set_num_threads(1)  # batch-1 streaming: one core, no threading overhead
    frame = torch.randn(1, INPUTS)
    steps: dict[str, Callable[[], None]] = {}
    for name, module in modules.items():
        if not name.startswith("torch."):
            steps[name] = step_call(module.layers[0], frame)
    cell = torch.nn.GRUCell(INPUTS, WIDTH)
    h = torch.zeros(1, WIDTH)

    def gru_cell() -> None:
        with torch.inference_mode():
            for _ in range(STEP_CALLS):
                cell(frame, h)

    steps["torch.nn.GRUCell (reference)"] = gru_cell
    chunks = {
        f"{name} forward(1 frame)": chunk_call(module, frame[:, None])
        for name, module in modules.items()
        if not name.startswith("torch.")
    }
    step_times = interleaved({**steps, **chunks}, 5)
    latency = {k: min(v) / STEP_CALLS * 1e6 for k, v in step_times.items()}

    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads_training": training_threads,
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "shape": {"batch": BATCH, "frames": FRAMES, "inputs": INPUTS, "width": WIDTH},
        "train_step_ms": {k: round(v * 1e3, 2) for k, v in training.items()},
        "train_step_vs_torch_gru": {k: round(v / reference, 3) for k, v in training.items()},
        "step_latency_us_batch1": {k: round(v, 1) for k, v in latency.items()},
        "targets": {"train_step_vs_torch_gru_max": 2.0, "goal": 1.2, "step_latency_us_max": 100},
    }
    if legacy is not None:
        result["legacy_tree"] = str(args.legacy_tree)
        result["vs_legacy"] = {
            "train_step": {n: round(training[n] / training[f"legacy {n}"], 3) for n in VARIANTS},
            "step_latency": {n: round(latency[n] / latency[f"legacy {n}"], 3) for n in VARIANTS},
            "forward_1_frame_latency": {
                n: round(
                    latency[f"{n} forward(1 frame)"] / latency[f"legacy {n} forward(1 frame)"], 3
                )
                for n in VARIANTS
            },
        }
    out = Path(args.out)
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
