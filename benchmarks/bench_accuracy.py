"""Clip accuracy of GhostGRU and its GRU baselines over several seeds, and of the earlier clip
recipe, on the real-speech development subset, side by side in one run.

    python benchmarks/bench_accuracy.py [--data data/real-dev] [--seeds 0 1 2] [--jobs 2]
        [--runs data/bench-accuracy] [--out benchmarks/results/accuracy.json] [--only NAME ...]

Every model is trained by `kws-ghost train` (its defaults unless the model says otherwise) on
the subset's training split, best.pt chosen on its validation split, and scored by `kws-ghost
eval` on its test split (speaker-disjoint). ``--jobs`` trainings run at once, one thread each
(two single-thread processes on two cores do not slow each other much; see README). Models:

* ghost-gru: the default recipe (GhostGRU H128 s2 x2, stream objective);
* gru same width: GRU H128 x2, same recipe;
* gru same params: the GRU whose parameter count is closest to the GhostGRU's, same recipe;
* ghost-gru clip recipe: the earlier default (clip objective, mean pooling, batch 32, 40 epochs).

Reported per model: test accuracy per seed, mean and sample standard deviation, validation hit
rate at 10 false alarms per hour (stream models), parameters, and seconds per epoch. A
difference is called out only where it exceeds the spread (``differences``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
from pathlib import Path

from kws_ghost.config import ModelConfig
from kws_ghost.fileio import write_json
from kws_ghost.profile import same_params_width
from kws_ghost.runs import CLIP_STAGE

CLIP_RECIPE = ["--objective", "clip", "--pooling", "mean", "--batch-size", "32", "--epochs", "40"]


def model_flags() -> dict[str, list[str]]:
    width = same_params_width(ModelConfig(arch="ghost-gru", hidden=128, layers=2, ratio=2))
    return {
        "ghost-gru": [],
        "gru same width": ["--model", "gru"],
        "gru same params": ["--model", "gru", "--hidden", str(width)],
        "ghost-gru clip recipe": CLIP_RECIPE,
    }


def run_name(name: str, seed: int) -> str:
    return f"{name.replace(' ', '-')}-s{seed}"


def train_and_eval(
    name: str,
    flags: list[str],
    seed: int,
    data: Path,
    runs: Path,
    train: bool = True,
    evaluate: bool = True,
) -> dict:
    """Train (or resume) one run and read its records; ``evaluate``: also score best.pt on the
    test split (the study scores it itself, with per-class figures)."""
    out = runs / run_name(name, seed)
    base = [sys.executable, "-m", "kws_ghost"]
    if train:
        # A run with a checkpoint (or its clip stage's) is resumed: an interrupted one continues,
        # a finished one returns.
        if (out / "last.pt").exists() or (out / CLIP_STAGE / "last.pt").exists():
            command = [*base, "train", "--resume", "--out", str(out)]
        else:
            command = [*base, "train", "--data", str(data), *flags, "--seed", str(seed)]
            command += ["--out", str(out)]
        command += ["--threads", "1", "--workers", "1", "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} seed {seed}: {done.stderr[-800:]}")
    report: dict = {}
    if evaluate:
        evaluated = subprocess.run(
            [*base, "eval", str(out / "best.pt"), "--data", str(data), "--json", "--quiet"],
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(evaluated.stdout)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((out / "config.json").read_text())
    chosen = next(m for m in metrics if m["epoch"] == _best_epoch(out))
    return {
        "model": name,
        "seed": seed,
        "run": str(out),
        "test_accuracy": report.get("accuracy"),
        "test_clips": report.get("count"),
        "params": report.get("params"),
        "best_epoch": chosen["epoch"],
        "epochs": len(metrics),
        "val_accuracy": chosen.get("val_accuracy"),
        "val_hit_rate": chosen.get("val_hit_rate"),
        "val_fa_per_hour": chosen.get("val_fa_per_hour"),
        "seconds_per_epoch": statistics.mean(m["seconds"] for m in metrics),
        "objective": best["train"]["objective"],
    }


def _best_epoch(run: Path) -> int:
    from kws_ghost.checkpoint import load_checkpoint

    return int(load_checkpoint(run / "best.pt").extra["epoch"])


def spread(values: list[float]) -> dict:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.mean(values), 4), "sd": round(sd, 4), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/real-dev"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path("data/bench-accuracy"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    parser.add_argument("--only", nargs="*", help="Model names to run (default: all).")
    parser.add_argument(
        "--existing",
        action="store_true",
        help="Report only the runs already under --runs (evaluated again; nothing trained).",
    )
    args = parser.parse_args()
    flags = model_flags()
    names = args.only or list(flags)
    jobs = [(n, s) for s in args.seeds for n in names]
    if args.existing:
        jobs = [(n, s) for n, s in jobs if (args.runs / run_name(n, s) / "best.pt").exists()]
        names = [n for n in names if any(n == name for name, _ in jobs)]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(
                train_and_eval,
                n,
                flags[n],
                s,
                args.data.resolve(),
                args.runs.resolve(),
                train=not args.existing,
            )
            for n, s in jobs
        ]
        runs = [f.result() for f in futures]
    summary = {}
    for name in names:
        mine = [r for r in runs if r["model"] == name]
        summary[name] = {
            "test_accuracy": spread([r["test_accuracy"] for r in mine]),
            "seconds_per_epoch": spread([r["seconds_per_epoch"] for r in mine]),
            "params": mine[0]["params"],
            "flags": flags[name],
        }
        hits = [r["val_hit_rate"] for r in mine if r["val_hit_rate"] is not None]
        if hits:
            summary[name]["val_hit_rate_at_10_fa_per_hour"] = spread(hits)
    differences = {}
    ghost = summary.get("ghost-gru")
    for name, other in summary.items():
        if ghost is None or name == "ghost-gru":
            continue
        gap = ghost["test_accuracy"]["mean"] - other["test_accuracy"]["mean"]
        noise = max(ghost["test_accuracy"]["sd"], other["test_accuracy"]["sd"])
        differences[f"ghost-gru minus {name}"] = {
            "points": round(100 * gap, 2),
            "exceeds_spread": abs(gap) > noise,
        }
    result = {
        "data": str(args.data),
        "seeds": args.seeds,
        "runs": runs,
        "summary": summary,
        "differences": differences,
    }
    write_json(args.out, result)
    print(json.dumps({"summary": summary, "differences": differences}, indent=1))


if __name__ == "__main__":
    main()
