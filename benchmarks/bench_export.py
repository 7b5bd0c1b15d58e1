"""Streaming step latency at batch 1, PyTorch vs onnxruntime (fp32 and int8), and model file sizes.

    python benchmarks/bench_export.py [--out benchmarks/results/export.json] [--calls 1000]

Models have random weights (latency and size do not depend on the values). Each latency is per
call of one frame at batch 1, single-threaded: the mean over ``--calls`` calls, best and median
of ``--repeats`` runs, as wall-clock and as process CPU time. The runs of all models and runtimes
are interleaved (one run of each, then the next round), so that a busy shared machine slows them
alike and the comparison holds even when the absolute figures drift. Target: onnxruntime fp32
step <= 50 us.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kws_ghost.config import FrontendConfig, ModelConfig  # noqa: E402
from kws_ghost.export import OnnxKeywordModel, export_model  # noqa: E402
from kws_ghost.fileio import write_json  # noqa: E402
from kws_ghost.models import build_model  # noqa: E402
from kws_ghost.profile import describe  # noqa: E402

TARGET_US = 50.0
LABELS = [f"class{i}" for i in range(12)]
CONFIGS = {
    # The training default: tanh after the cheap operation, so not foldable.
    "ghost-gru default": (ModelConfig(), None),
    # Linear cheap operation without activation: exported folded (a GRU of width m)...
    "ghost-gru linear folded": (ModelConfig(cheap_activation="none"), True),
    # ... and the same network unfolded, for comparison.
    "ghost-gru linear unfolded": (ModelConfig(cheap_activation="none"), False),
    "gru H128 baseline": (ModelConfig(arch="gru"), None),
}


def interleaved(timers: dict[str, Callable[[], Any]], calls: int, repeats: int) -> dict[str, Any]:
    """Per-call microseconds of every timer: best and median of ``repeats`` runs of ``calls``
    calls, the runs taken in rounds of one run per timer."""
    for call in timers.values():
        for _ in range(max(20, calls // 10)):
            call()
    wall: dict[str, list[float]] = {key: [] for key in timers}
    cpu: dict[str, list[float]] = {key: [] for key in timers}
    for _ in range(repeats):
        for key, call in timers.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                call()
            wall[key].append((time.perf_counter() - start_wall) / calls * 1e6)
            cpu[key].append((time.process_time() - start_cpu) / calls * 1e6)
    return {
        key: {
            "wall_us_best": round(min(wall[key]), 2),
            "wall_us_median": round(statistics.median(wall[key]), 2),
            "cpu_us_best": round(min(cpu[key]), 2),
            "cpu_us_median": round(statistics.median(cpu[key]), 2),
        }
        for key in timers
    }


def torch_step(model: Any, frame: torch.Tensor) -> Callable[[], Any]:
    state = [model.initial_state(1)]

    def call() -> None:
        with torch.inference_mode():
            _, state[0] = model.step(frame, state[0])

    return call


def ort_step(runtime: OnnxKeywordModel, frame: np.ndarray, raw: bool) -> Callable[[], Any]:
    """``raw``: the bare session.run a C/C++ runtime's loop corresponds to; otherwise the checked
    ``OnnxKeywordModel.step``."""
    session = runtime._session("step")
    state = [runtime.initial_state(1)]
    names = ["logits", "new_state"]

    def call_raw() -> None:
        _, state[0] = session.run(names, {"frames": frame, "state": state[0]})

    def call_checked() -> None:
        _, state[0] = runtime.step(frame, state[0])

    return call_raw if raw else call_checked


def call_overhead() -> Callable[[], Any]:
    """session.run of a graph with the step model's signature and nothing but Identity nodes: what
    the Python binding and the runtime cost per call, whatever the model."""
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["frames"], ["logits"]),
            helper.make_node("Identity", ["state"], ["new_state"]),
        ],
        "overhead",
        [
            helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", 40]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 64]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 40]),
            helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, "batch", 64]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options)
    feed = {"frames": np.zeros((1, 40), np.float32), "state": np.zeros((2, 1, 64), np.float32)}
    return lambda: session.run(["logits", "new_state"], feed)


def prepare(
    name: str, config: ModelConfig, fold: Any, folder: Path
) -> tuple[dict[str, Any], dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    """Export ``config`` (fp32 and int8): (result with sizes, step timers, clip timers)."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    frontend = FrontendConfig()
    frame = torch.randn(1, config.input_dim) * 10
    result: dict[str, Any] = {"name": name, "config": describe(config), "fold": fold}
    steps = {"torch_step": torch_step(model, frame)}
    clips: dict[str, Callable[[], Any]] = {}
    for kind in ("fp32", "int8"):
        path = folder / f"{name.replace(' ', '_')}_{kind}.onnx"
        exported = export_model(model, frontend, LABELS, path, fold=fold, int8=(kind == "int8"))
        result["exported_model"] = exported["model"]
        result["folded"] = exported["folded"]
        result["params"] = exported["params"]
        result["macs_per_frame"] = exported["macs_per_frame"]
        result[f"step_{kind}_bytes"] = exported["file_bytes"]["step"]
        result[f"clip_{kind}_bytes"] = exported["file_bytes"]["clip"]
        runtime = OnnxKeywordModel(path, threads=1)
        steps[f"ort_{kind}_step"] = ort_step(runtime, frame.numpy(), raw=True)
        steps[f"ort_{kind}_step_checked"] = ort_step(runtime, frame.numpy(), raw=False)
        windows = np.random.default_rng(0).normal(size=(64, runtime.window_frames, 40))
        windows = windows.astype(np.float32)
        for batch in (1, 64):
            chunk = windows[:batch]
            clips[f"ort_{kind}_clip_b{batch}"] = lambda r=runtime, c=chunk: r.clip_logits(c)
    return result, steps, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export.json"))
    parser.add_argument("--calls", type=int, default=1000, help="calls per timing run")
    parser.add_argument("--repeats", type=int, default=9, help="timing runs (best and median)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # batch 1: threads only add synchronisation
    import onnxruntime

    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    step_timers: dict[str, Callable[[], Any]] = {"overhead": call_overhead()}
    clip_timers: dict[str, Callable[[], Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kws-bench-export-") as tmp:
        for name, (config, fold) in CONFIGS.items():
            result, steps, clips = prepare(name, config, fold, Path(tmp))
            results.append(result)
            step_timers.update({f"{name}/{key}": call for key, call in steps.items()})
            clip_timers.update({f"{name}/{key}": call for key, call in clips.items()})
        print("timing steps ...", file=sys.stderr, flush=True)
        step_times = interleaved(step_timers, args.calls, args.repeats)
        print("timing clips ...", file=sys.stderr, flush=True)
        clip_times = interleaved(clip_timers, 3, args.repeats)
    overhead = step_times["overhead"]
    for result in results:
        for key, timing in step_times.items():
            if key.startswith(result["name"] + "/"):
                result[key.split("/", 1)[1]] = timing
        for key, timing in clip_times.items():
            if key.startswith(result["name"] + "/"):
                result[key.split("/", 1)[1] + "_ms"] = round(timing["cpu_us_best"] / 1000, 3)
    summary = {
        row["name"]: {
            "torch_step_us": row["torch_step"]["wall_us_best"],
            "ort_fp32_step_us": row["ort_fp32_step"]["wall_us_best"],
            "ort_int8_step_us": row["ort_int8_step"]["wall_us_best"],
            "ort_fp32_step_cpu_us": row["ort_fp32_step"]["cpu_us_best"],
            "step_fp32_kb": round(row["step_fp32_bytes"] / 1024, 1),
            "step_int8_kb": round(row["step_int8_bytes"] / 1024, 1),
            "meets_target": row["ort_fp32_step"]["wall_us_best"] <= TARGET_US,
        }
        for row in results
    }
    report = {
        "benchmark": "export",
        "target_ort_step_us": TARGET_US,
        "summary": summary,
        "ort_call_overhead": overhead,
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "threads": 1,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "calls": args.calls,
            "repeats": args.repeats,
        },
    }
    write_json(args.out, report)
    for name, row in summary.items():
        print(
            f"{name:28s} torch {row['torch_step_us']:8.1f} us  "
            f"ort fp32 {row['ort_fp32_step_us']:6.1f} us (cpu {row['ort_fp32_step_cpu_us']:5.1f})"
            f"  int8 {row['ort_int8_step_us']:6.1f} us"
            f"  step {row['step_fp32_kb']:.1f} KB fp32 / {row['step_int8_kb']:.1f} KB int8"
        )
    print(
        f"onnxruntime call overhead (Identity graph, same signature): "
        f"{overhead['wall_us_best']:.1f} us (cpu {overhead['cpu_us_best']:.1f})"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
