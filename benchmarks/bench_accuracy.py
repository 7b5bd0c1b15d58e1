"""GhostGRU vs GRU baselines, same recipe and seed, on synthetic and real speech.

    python benchmarks/bench_accuracy.py [--real-dev ../shared/data/speech-commands-real-dev.tar.xz]
        [--epochs 60] [--synth-epochs 20] [--out benchmarks/results/accuracy]

Models: GhostGRU (H 128, s 2), the GRU of the same width, and the GRU with about the same number
of parameters, each 2 layers, trained with `kws-ghost train`'s default recipe (gsc12 task).
Corpora: (a) a synthesised 12-class corpus (10 keywords + 6 other words, 60 espeak-ng speakers),
(b) the real-speech development subset: trained on its training split, scored on its testing
split (speaker-disjoint). Writes accuracy.json and accuracy.md (the table in the README).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tarfile
import time
from pathlib import Path

from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig
from kws_ghost.evaluate import evaluate_checkpoint
from kws_ghost.profile import describe, profile_config, same_params_width
from kws_ghost.train import Trainer

GSC12 = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
OTHERS = ["bed", "cat", "happy", "house", "bird", "dog"]


def real_corpus(archive: Path, cache: Path) -> Path:
    """Unpack the real-speech subset once (into the git-ignored data/ folder)."""
    target = cache / "real-dev"
    if not (target / "testing_list.txt").exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
    return target


def synth_corpus(cache: Path) -> Path:
    from kws_ghost.synth import synthesize_corpus

    target = cache / "synth-gsc12"
    if not (target / "testing_list.txt").exists():
        synthesize_corpus(
            GSC12 + OTHERS, target, voices=60, clips_per_voice=3, seed=0, force=True, workers=2
        )
    return target


def models() -> list[tuple[str, ModelConfig]]:
    ghost = ModelConfig(arch="ghost-gru", hidden=128, layers=2, ratio=2)
    same_width = dataclasses.replace(ghost, arch="gru")
    same_params = dataclasses.replace(same_width, hidden=same_params_width(ghost))
    return [("ghost-gru", ghost), ("gru same width", same_width), ("gru same params", same_params)]


def run(corpus: Path, epochs: int, seed: int, out: Path, label: str) -> list[dict]:
    rows = []
    for name, config in models():
        slug = f"{label}-{name}-s{seed}".replace(" ", "-")
        run_dir = out / "runs" / slug
        train = TrainConfig(data=str(corpus), task="gsc12", epochs=epochs, seed=seed)
        started = time.perf_counter()
        history = Trainer(train, config, FrontendConfig(), run_dir=run_dir, progress=False).run()
        minutes = (time.perf_counter() - started) / 60
        report = evaluate_checkpoint(run_dir / "best.pt", corpus, "testing", progress=False)
        cost = profile_config(dataclasses.replace(config, num_classes=len(report["labels"])))
        rows.append(
            {
                "corpus": label,
                "model": name,
                "config": describe(config),
                "seed": seed,
                "test_accuracy": report["accuracy"],
                "test_count": report["count"],
                "best_val_accuracy": max(h.get("val_accuracy", 0) for h in history),
                "final_train_accuracy": history[-1]["train_accuracy"],
                "params": cost["params"],
                "macs_per_second": cost["macs_per_second"],
                "seconds_per_epoch": statistics.median(h["seconds"] for h in history),
                "epochs": epochs,
                "train_minutes": round(minutes, 2),
                "run_dir": str(run_dir),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| corpus | model | test accuracy | params | MACs / s of audio | s / epoch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['corpus']} | {r['model']} ({r['config']}) | {r['test_accuracy']:.3f} "
            f"(n={r['test_count']}) | {r['params']:,} | {r['macs_per_second'] / 1e6:.1f} M | "
            f"{r['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--real-dev", type=Path, default=Path("../shared/data/speech-commands-real-dev.tar.xz")
    )
    parser.add_argument("--cache", type=Path, default=Path("data"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--synth-epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["synth", "real"], help="Run one corpus only.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.only != "real":
        rows += run(synth_corpus(args.cache), args.synth_epochs, args.seed, args.out, "synthetic")
    if args.only != "synth":
        if not args.real_dev.exists():
            raise SystemExit(f"{args.real_dev}: not found (pass --real-dev or --only synth)")
        rows += run(
            real_corpus(args.real_dev, args.cache), args.epochs, args.seed, args.out, "real speech"
        )
    previous = args.out / "accuracy.json"
    if args.only and previous.exists():  # keep the other corpus's rows from an earlier run
        done = {row["corpus"] for row in rows}
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["corpus"] not in done]
        rows = kept + rows
    result = {"frontend": dataclasses.asdict(FrontendConfig()), "rows": rows}
    (args.out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "accuracy.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
