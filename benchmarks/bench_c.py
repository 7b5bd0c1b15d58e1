"""The C runtime (`kws-ghost export --format c`) against onnxruntime: step time per frame, the
example program's whole pipeline, and code and data sizes (x86 and, where the Debian package
gcc-arm-none-eabi is installed, a Cortex-M4F build).

    python benchmarks/bench_c.py [--minutes 30] [--out benchmarks/results/c_runtime.json]

Models (random weights: time and size do not depend on them; 12 classes): the default GhostGRU
(H128 s2 x2, tanh cheap operation), the GRU of the same width (H128) and the GRU of about the
same parameters (H93). Step: each model's `kws_step` in a loop at batch 1 on one thread, built
-O2 (portable) and -O3 -march=native, and the onnxruntime step of the same model's ONNX export,
all timed in one run, rounds interleaved, median of rounds. Pipeline: the example `kws-detect`
built by its own Makefile on a recording of noise and tones, against `kws-ghost detect --model
m.onnx` on the same recording, one after the other. The arithmetic limit is the step's
multiply-adds at one 16-wide FMA per cycle (AVX-512) at the CPU's clock. Nothing else should run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from kws_ghost.fileio import write_json

LABELS = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off"]
LABELS += ["stop", "go"]
MODELS = {
    "ghost-gru H128 s2": {"arch": "ghost-gru", "hidden": 128, "ratio": 2.0},
    "gru H128 (same width)": {"arch": "gru", "hidden": 128},
    "gru H93 (same params)": {"arch": "gru", "hidden": 93},
}
STEP_BENCH = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "kws.h"
static float state[KWS_STATE_FLOATS], scratch[KWS_SCRATCH_FLOATS];
int main(int argc, char **argv) {
    long n = atol(argv[1]), i;
    int k;
    float frame[KWS_N_FEATURES], logits[KWS_N_CLASSES], sink = 0.0f;
    struct timespec a, b;
    for (k = 0; k < KWS_N_FEATURES; k++) frame[k] = (float)(k % 7) - 20.0f;
    kws_reset(state);
    for (i = 0; i < 2000; i++) kws_step(frame, state, logits, scratch);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (i = 0; i < n; i++) {
        frame[i % KWS_N_FEATURES] += 1e-3f;
        kws_step(frame, state, logits, scratch);
        sink += logits[0];
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f %g\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n, sink);
    return 0;
}
"""
ARM = ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-mthumb", "-Os", "-std=c99"]


def kws(*args: object) -> str:
    result = subprocess.run([sys.executable, "-m", "kws_ghost", *map(str, args)], text=True,
                            capture_output=True)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"kws-ghost {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def make_models(root: Path) -> dict[str, dict]:
    import torch

    from kws_ghost.checkpoint import save_checkpoint
    from kws_ghost.config import FrontendConfig, ModelConfig
    from kws_ghost.models import build_model

    made = {}
    for name, options in MODELS.items():
        torch.manual_seed(0)
        model = build_model(ModelConfig(num_classes=len(LABELS), **options))
        model.set_normalization(torch.randn(40) * 5 - 20, torch.rand(40) * 5 + 5)
        folder = root / name.split(" (")[0].replace(" ", "-")
        folder.mkdir()
        save_checkpoint(folder / "m.pt", model.eval(), FrontendConfig(), LABELS)
        kws("export", folder / "m.pt", "-o", folder / "m.onnx")
        c = json.loads(
            kws("export", folder / "m.pt", "--format", "c", "-o", folder / "c", "--json")
        )
        made[name] = {"dir": folder, "macs": c["macs_per_frame"], "params": model.num_params()}
    return made


def step_binaries(folder: Path) -> dict[str, Path]:
    (folder / "c" / "bench_step.c").write_text(STEP_BENCH)
    sources = [str(folder / "c" / f) for f in ("bench_step.c", "kws_step.c", "kws_model.c")]
    out = {}
    for label, flags in (("O2", ["-O2"]), ("O3 native", ["-O3", "-march=native"])):
        binary = folder / f"step-{label.replace(' ', '-')}"
        subprocess.run(["cc", "-std=c99", *flags, "-o", str(binary), *sources, "-lm"], check=True)
        out[label] = binary
    return out


def c_step_ns(binary: Path, frames: int) -> float:
    return float(subprocess.run([str(binary), str(frames)], capture_output=True, text=True,
                                check=True).stdout.split()[0])  # fmt: skip


def ort_step_ns(path: Path, frames: int) -> float:
    from kws_ghost.runtime import load_model

    runtime = load_model(path)
    run = runtime.session.run
    frame = np.random.default_rng(0).normal(-20, 8, (1, 40)).astype(np.float32)
    state = runtime.initial_state(1)
    for _ in range(500):
        _, state = run(None, {"frames": frame, "state": state})
    started = time.perf_counter()
    for _ in range(frames):
        _, state = run(None, {"frames": frame, "state": state})
    return (time.perf_counter() - started) / frames * 1e9


def sizes(folder: Path, compiler: str, flags: list[str]) -> dict:
    """text/data/bss of each object file, and the largest stack frames (-fstack-usage)."""
    build = folder / f"objects-{Path(compiler).name}"
    build.mkdir(exist_ok=True)
    names = ["kws_step.c", "kws_frontend.c", "kws_decoder.c", "kws_model.c", "main.c"]
    for name in names:
        subprocess.run([compiler, *flags, "-fstack-usage", "-c", str(folder / "c" / name), "-o",
                        str(build / name.replace(".c", ".o"))], check=True, cwd=build)  # fmt: skip
    tool = "arm-none-eabi-size" if Path(compiler).name.startswith("arm") else "size"
    out = subprocess.run([tool, *sorted(str(p) for p in build.glob("*.o"))], capture_output=True,
                         text=True, check=True).stdout.splitlines()[1:]  # fmt: skip
    objects = {}
    for line in out:
        text, data, bss, *_, path = line.split()
        objects[Path(path).name] = {"text": int(text), "data": int(data), "bss": int(bss)}
    stack = {}
    for su in build.glob("*.su"):
        for line in su.read_text().splitlines():
            where, used, _ = line.split("\t")
            stack[where.split(":")[-1]] = int(used)
    return {"objects": objects, "stack": stack}


def ram_and_flash(layout: dict) -> dict:
    objects, stack = layout["objects"], layout["stack"]
    flash = sum(o["text"] + o["data"] for o in objects.values())
    static = sum(o["data"] + o["bss"] for o in objects.values())
    # the deepest call chain of the example: main -> the front-end, the step or the decoder
    chain = stack.get("main", 0) + max(
        stack.get("kws_frontend_push", 0) + stack.get("features", 0),
        stack.get("kws_step", 0) + stack.get("affine", 0) + stack.get("ghost", 0),
        stack.get("kws_decoder_push", 0) + stack.get("close_run", 0) + stack.get("speech", 0),
    )
    return {"flash_bytes": flash, "static_ram_bytes": static, "stack_bytes": chain,
            "ram_bytes": static + chain}  # fmt: skip


def cpu_ghz() -> float:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
    return float(found[1]) / 1000 if found else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=20000, help="Step calls per round.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/c_runtime.json"))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="kws-c-") as tmp:
        root = Path(tmp)
        models = make_models(root)
        binaries = {name: step_binaries(m["dir"]) for name, m in models.items()}
        times: dict[str, dict[str, list[float]]] = {n: {} for n in models}
        for _ in range(args.rounds):  # interleaved: every model and runtime in each round
            for name, model in models.items():
                for label, binary in binaries[name].items():
                    times[name].setdefault(f"c {label}", []).append(c_step_ns(binary, args.frames))
                onnx_ns = ort_step_ns(model["dir"] / "m.onnx", args.frames // 4)
                times[name].setdefault("onnxruntime", []).append(onnx_ns)
        step = {
            n: {k: round(statistics.median(v), 1) for k, v in t.items()} for n, t in times.items()
        }
        ghost, gru = step["ghost-gru H128 s2"], step["gru H128 (same width)"]
        ghz = cpu_ghz()
        macs = models["ghost-gru H128 s2"]["macs"]
        limit_ns = macs / (16 * ghz) if ghz else None
        # the pipeline on a long recording
        default = models["ghost-gru H128 s2"]["dir"]
        subprocess.run(["make", "-s", "-C", str(default / "c")], check=True)
        seconds = int(args.minutes * 60)
        rng = np.random.default_rng(0)
        t = np.arange(seconds * 16000) / 16000
        audio = 0.05 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * 440 * t) * (
            np.sin(0.7 * t) > 0.8
        )
        pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")
        (root / "rec.pcm").write_bytes(pcm.tobytes())
        soundfile.write(root / "rec.wav", pcm, 16000, subtype="PCM_16")
        del audio, t
        with open(root / "rec.pcm", "rb") as stdin:
            started = time.perf_counter()
            subprocess.run([str(default / "c" / "kws-detect")], stdin=stdin, check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            c_seconds = time.perf_counter() - started
        started = time.perf_counter()
        kws("detect", root / "rec.wav", "--model", default / "m.onnx", "--quiet")
        onnx_seconds = time.perf_counter() - started
        layout = {"x86 -O2": ram_and_flash(sizes(default, "cc", ["-O2", "-std=c99"]))}
        arm = shutil.which("arm-none-eabi-gcc")
        if arm:
            int8 = root / "int8"
            int8.mkdir()
            kws("export", default / "m.pt", "--format", "c", "-o", int8 / "c", "--int8")
            layout["cortex-m4f fp32"] = ram_and_flash(sizes(default, arm, ARM))
            layout["cortex-m4f int8"] = ram_and_flash(sizes(int8, arm, ARM))
    record = {
        "benchmark": "c_runtime",
        "what": "C step (-O2, -O3 -march=native) and onnxruntime step per frame at batch 1, one "
        "thread, ns, median of interleaved rounds; the example kws-detect (its Makefile, -O3) "
        "and `kws-ghost detect --model m.onnx` on the same recording; sizes",
        "models": {
            n: {"macs_per_frame": m["macs"], "params": m["params"]} for n, m in models.items()
        },
        "step_ns": step,
        "ghost_vs_same_width_gru": {k: round(ghost[k] / gru[k], 3) for k in ghost},
        "c_speedup_over_onnxruntime": {
            k: round(ghost["onnxruntime"] / ghost[k], 1) for k in ghost if k.startswith("c")
        },
        "arithmetic_limit_ns": round(limit_ns, 2) if limit_ns else None,
        "arithmetic_limit_rule": f"{macs} MACs at one 16-wide FMA per cycle at {ghz:.2f} GHz",
        "times_the_limit": {k: round(ghost[k] / limit_ns, 1) for k in ghost} if limit_ns else None,
        "pipeline": {
            "recording_seconds": seconds,
            "c_example_seconds": round(c_seconds, 3),
            "c_example_rtf": round(c_seconds / seconds, 6),
            "detect_onnx_seconds": round(onnx_seconds, 3),
            "detect_onnx_rtf": round(onnx_seconds / seconds, 6),
        },
        "sizes": layout,
        "machine": {"cpu": platform.processor() or platform.machine(), "ghz": ghz},
    }
    write_json(args.out, record)
    print(json.dumps({k: record[k] for k in ("step_ns", "ghost_vs_same_width_gru", "pipeline")}))


if __name__ == "__main__":
    main()
