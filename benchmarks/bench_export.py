"""onnxruntime step latency at batch 1 (fp32 and int8), this export beside the previous one, and
whole-clip scoring: the step in a loop against an unrolled clip graph.

    python benchmarks/bench_export.py [--out benchmarks/results/export.json] [--calls 1000]
        [--legacy-tree /tmp/kws-legacy]

Models have random weights (latency does not depend on the values) and a non-trivial feature
normalisation. Each latency is per ``session.run`` of one frame at batch 1, one thread, state
carried: the mean over ``--calls`` calls, best and median of ``--repeats`` runs. All runs are
interleaved (one run of each timer, then the next round), so that a busy shared machine slows
them alike: compare the figures of one run, not absolute times across runs.

``--legacy-tree``: a checkout of the previous exporter (``git worktree add /tmp/kws-legacy
55da921``, whose graphs were written node by node with onnx.helper). Its ``export_model`` runs in
a subprocess with that tree first on the path, on a legacy model holding the same state_dict; its
step and clip files are timed here beside the new ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kws_ghost.config import FrontendConfig, ModelConfig, to_dict  # noqa: E402
from kws_ghost.export import export_model, step_module  # noqa: E402
from kws_ghost.fileio import write_json  # noqa: E402
from kws_ghost.models import build_model  # noqa: E402
from kws_ghost.profile import describe  # noqa: E402
from kws_ghost.runtime import OnnxRuntime, open_session  # noqa: E402

LABELS = [f"class{i}" for i in range(12)]
CONFIGS = {
    # name: (config, fold). The earlier default (H128 s2): tanh after the cheap operation, not
    # foldable. The results file holds these names.
    "ghost-gru default": (ModelConfig(hidden=128, ratio=2), None),
    # Linear cheap operation without activation: exported folded (a GRU of width m).
    "ghost-gru linear folded": (ModelConfig(hidden=128, ratio=2, cheap_activation="none"), True),
    "gru H128": (ModelConfig(arch="gru", hidden=128), None),
}
CLIP_MODEL = "ghost-gru default"

LEGACY_EXPORT = r"""
import json, sys, torch
from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.export import export_model
from kws_ghost.models import build_model
for job in json.load(open(sys.argv[1])):
    config = ModelConfig(**job["config"])
    model = build_model(config).eval()
    model.load_state_dict(torch.load(job["weights"], weights_only=True))
    labels = [f"class{i}" for i in range(config.num_classes)]
    export_model(model, FrontendConfig(), labels, job["out"], fold=job["fold"], int8=job["int8"])
"""


def interleaved(timers: dict[str, Callable[[], Any]], calls: int, repeats: int) -> dict[str, Any]:
    """Per-call microseconds of every timer: best and median of ``repeats`` runs of ``calls``
    calls, the runs taken in rounds of one run per timer."""
    for call in timers.values():
        for _ in range(max(3, calls // 10)):
            call()
    wall: dict[str, list[float]] = {key: [] for key in timers}
    for _ in range(repeats):
        for key, call in timers.items():
            start = time.perf_counter()
            for _ in range(calls):
                call()
            wall[key].append((time.perf_counter() - start) / calls * 1e6)
    return {
        key: {"us_best": round(min(v), 2), "us_median": round(statistics.median(v), 2)}
        for key, v in wall.items()
    }


def session_step(session: Any, state_shape: tuple[int, ...], frame: np.ndarray) -> Callable:
    """The bare ``session.run`` of one frame, state carried: what a device's loop does."""
    state = [np.zeros(state_shape, np.float32)]

    def call() -> None:
        _, state[0] = session.run(None, {"frames": frame, "state": state[0]})

    return call


def torch_step(model: Any, frame: torch.Tensor) -> Callable:
    state = [model.initial_state(1)]

    def call() -> None:
        with torch.inference_mode():
            _, state[0] = model.step(frame, state[0])

    return call


def legacy_torch_step(tree: Path, model: Any, frame: torch.Tensor) -> Callable:
    """The previous PyTorch step (its TorchScript kernel), same weights: normalise, the legacy
    layers' step, the head."""
    spec = importlib.util.spec_from_file_location("kws_legacy_layers", tree / "kws_ghost/layers.py")
    legacy = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(legacy)  # type: ignore[union-attr]
    c = model.config
    rnn = legacy.GhostRNN(
        c.cell, c.input_dim, c.hidden, c.layers, c.effective_ratio, c.cheap_op, c.cheap_activation
    )
    rnn.load_state_dict(model.rnn.state_dict())
    state = [rnn.initial_state(1)]

    def call() -> None:
        with torch.inference_mode():
            y, state[0] = rnn.step(model.normalize(frame), state[0])
            model.head(y)

    return call


def unrolled_clip(model: Any, frames: int, path: Path) -> None:
    """An ONNX clip graph: ``frames`` copies of the step module, features [B, T, F] -> per-frame
    logits [B, T, C] from the zero state (what the runtime's loop computes)."""

    class Unrolled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = step_module(model)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            state = features.new_zeros(model.config.layers, features.shape[0], model.rnn.state_size)
            logits = []
            for t in range(frames):
                out, state = self.step(features[:, t], state)
                logits.append(out)
            return torch.stack(logits, 1)

    with torch.no_grad():
        torch.onnx.export(
            Unrolled().eval(),
            (torch.zeros(3, frames, model.config.input_dim),),
            str(path),
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def optimized_nodes(path: Path) -> int:
    """Nodes of the graph onnxruntime runs (after its fusions): what the per-node cost counts."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath).graph.node)


def make_model(config: ModelConfig) -> Any:
    torch.manual_seed(0)
    model = build_model(config).eval()
    mean = torch.linspace(-300, 20, config.input_dim)  # raw MFCC-like: c0 in the hundreds
    model.set_normalization(mean, torch.linspace(40, 2, config.input_dim))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export.json"))
    parser.add_argument("--calls", type=int, default=1000, help="calls per timing run")
    parser.add_argument("--repeats", type=int, default=9, help="timing runs (best and median)")
    parser.add_argument("--clips", type=int, default=512, help="clips for the clip scoring test")
    parser.add_argument("--legacy-tree", type=Path, help="older checkout to time side by side")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import onnx
    import onnxruntime

    load_before = os.getloadavg()
    frontend = FrontendConfig()
    window = frontend.num_frames(frontend.clip_samples)
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], Any]] = {}
    clips: dict[str, Callable[[], Any]] = {}
    clip_features = np.random.default_rng(0).normal(size=(args.clips, window, 40)) * 10
    clip_features = clip_features.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="kws-bench-export-") as tmp:
        folder = Path(tmp)
        legacy_jobs = []
        models = {}
        for name, (config, fold) in CONFIGS.items():
            model = models[name] = make_model(config)
            key = name.replace(" ", "_")
            frame = torch.from_numpy(clip_features[:1, 0].copy())
            row: dict[str, Any] = {"config": describe(config), "fold": fold}
            steps[f"{name}/torch"] = torch_step(model, frame)
            if args.legacy_tree:
                steps[f"{name}/legacy torch"] = legacy_torch_step(args.legacy_tree, model, frame)
            for kind in ("fp32", "int8"):
                path = folder / f"{key}_{kind}.onnx"
                started = time.perf_counter()
                result = export_model(model, frontend, LABELS, path, fold=fold, int8=kind == "int8")
                row[f"export_{kind}_s"] = round(time.perf_counter() - started, 3)
                row.update(exported=result["model"], params=result["params"])
                row[f"{kind}_bytes"] = result["file_bytes"]
                row[f"{kind}_nodes"] = len(onnx.load(str(path)).graph.node)
                row[f"{kind}_nodes_run"] = optimized_nodes(path)
                state_shape = (config.layers, 1, result["state_shape"][2])
                session = open_session(path, 1)
                steps[f"{name}/ort {kind}"] = session_step(session, state_shape, frame.numpy())
                if args.legacy_tree:
                    legacy_path = folder / f"{key}_{kind}_legacy.onnx"
                    weights = folder / f"{key}.pt"
                    torch.save(model.state_dict(), weights)
                    legacy_config = {**to_dict(config), "pooling": "mean"}
                    legacy_jobs.append(
                        {
                            "config": legacy_config,
                            "weights": str(weights),
                            "out": str(legacy_path),
                            "fold": fold,
                            "int8": kind == "int8",
                            "timer": f"{name}/legacy ort {kind}",
                            "state_shape": state_shape,
                        }
                    )
            rows[name] = row
        if legacy_jobs:
            jobs_file = folder / "jobs.json"
            jobs_file.write_text(json.dumps(legacy_jobs))
            env = {**os.environ, "PYTHONPATH": str(args.legacy_tree.resolve())}
            subprocess.run(
                [sys.executable, "-c", LEGACY_EXPORT, str(jobs_file)],
                check=True,
                env=env,
                cwd=folder,
            )
            for job in legacy_jobs:
                session = open_session(Path(job["out"]), 1)
                frame = clip_features[:1, 0].copy()
                steps[job["timer"]] = session_step(session, tuple(job["state_shape"]), frame)
                name, kind = job["timer"].split("/")[0], job["int8"] and "int8" or "fp32"
                rows[name][f"legacy_{kind}_bytes"] = Path(job["out"]).stat().st_size
                proto = onnx.load(job["out"])
                rows[name][f"legacy_{kind}_nodes"] = len(proto.graph.node)
                rows[name][f"legacy_{kind}_nodes_run"] = optimized_nodes(Path(job["out"]))
        # Whole-clip scoring of the default model: the runtime's loop vs an unrolled graph.
        clip_model = models[CLIP_MODEL]
        runtime = OnnxRuntime(folder / f"{CLIP_MODEL.replace(' ', '_')}_fp32.onnx", threads=1)
        clips["runtime loop (step x 97 calls)"] = lambda: runtime.run(
            clip_features, runtime.initial_state(len(clip_features))
        )
        unrolled = folder / "unrolled.onnx"
        started = time.perf_counter()
        unrolled_clip(clip_model, window, unrolled)
        unrolled_export_s = time.perf_counter() - started
        unrolled_bytes = unrolled.stat().st_size
        unrolled_session = open_session(unrolled, 1)
        clips["unrolled clip graph"] = lambda: unrolled_session.run(
            None, {"features": clip_features}
        )
        expected, _ = runtime.run(clip_features[:8], runtime.initial_state(8))
        (got,) = unrolled_session.run(None, {"features": clip_features[:8]})
        unrolled_difference = float(np.abs(got - expected).max())
        if args.legacy_tree:
            legacy_clip = folder / f"{CLIP_MODEL.replace(' ', '_')}_fp32_legacy.clip.onnx"
            legacy_clip_session = open_session(legacy_clip, 1)
            clips["legacy clip graph (Scan, pooled)"] = lambda: legacy_clip_session.run(
                None, {"features": clip_features}
            )
        print("timing steps ...", file=sys.stderr, flush=True)
        step_times = interleaved(steps, args.calls, args.repeats)
        print("timing clips ...", file=sys.stderr, flush=True)
        clip_times = interleaved(clips, 1, max(3, args.repeats // 3))
    for key, timing in step_times.items():
        name, timer = key.split("/")
        rows[name][f"{timer} us"] = timing["us_best"]
        rows[name][f"{timer} us median"] = timing["us_median"]
    gru = rows["gru H128"]
    summary: dict[str, Any] = {}
    for name, row in rows.items():
        entry = {k: row[k] for k in row if k.endswith(" us")}
        for kind in ("fp32", "int8"):
            entry[f"vs gru H128 ({kind}, same exporter)"] = round(
                row[f"ort {kind} us"] / gru[f"ort {kind} us"], 3
            )
            if f"legacy ort {kind} us" in row:
                entry[f"vs legacy ({kind})"] = round(
                    row[f"ort {kind} us"] / row[f"legacy ort {kind} us"], 3
                )
                entry[f"vs legacy gru H128 ({kind})"] = round(
                    row[f"ort {kind} us"] / gru[f"legacy ort {kind} us"], 3
                )
        summary[name] = entry
    report = {
        "benchmark": "export",
        "summary": summary,
        "results": rows,
        "clip_scoring": {
            "model": CLIP_MODEL,
            "clips": args.clips,
            "frames": window,
            "ms_best": {k: round(v["us_best"] / 1000, 1) for k, v in clip_times.items()},
            "ms_median": {k: round(v["us_median"] / 1000, 1) for k, v in clip_times.items()},
            "unrolled_export_s": round(unrolled_export_s, 2),
            "unrolled_bytes": unrolled_bytes,
            "unrolled_max_difference": unrolled_difference,
        },
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
            "legacy_tree": str(args.legacy_tree) if args.legacy_tree else None,
        },
    }
    write_json(args.out, report)
    print(json.dumps({"summary": summary, "clip_scoring": report["clip_scoring"]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
