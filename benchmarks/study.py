"""A recipe study that spans sessions: a plan of configurations x seeds, trained and scored one
after another (or ``jobs`` one-thread runs side by side), each finished run appended at once to
``benchmarks/results/study.jsonl``; started again, it skips what is finished (and resumes a run
that was interrupted from its last epoch), then prints the table so far.

    python benchmarks/study.py PLAN.json [--data data/real-dev] [--runs data/study]
                                         [--out benchmarks/results/study.jsonl] [--table]

PLAN.json: ``{"name": "front-1", "seeds": [0, 1, 2], "jobs": 1,
"configs": {"ghost-gru": [], "gru H93": ["--model", "gru", "--hidden", "93"]}}`` (flags of
`kws-ghost train`). Each run is scored by `kws-ghost eval` on the test and the validation split
(screening uses validation plus test, confirmation the test split); a line holds the config, its
flags, the seed, wall time, clip accuracy and per-class recall on both splits, the validation hit
rate at 10 false alarms per hour, parameters, MACs per frame and state bytes. ``--table``: only
print the table of what is in the results file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_accuracy import run_name, train_and_eval  # benchmarks/ is this script's folder


def finished(results: Path, plan: str) -> set[tuple[str, int]]:
    if not results.exists():
        return set()
    done = set()
    for line in results.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record.get("plan") == plan:
                done.add((record["config"], int(record["seed"])))
    return done


def append(results: Path, record: dict) -> None:
    """One line, flushed and synced: a killed study keeps every run that finished."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def score(run: Path, data: Path, split: str) -> dict:
    evaluated = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "eval", str(run / "best.pt"), "--data", str(data)]
        + ["--split", split, "--json", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(evaluated.stdout)
    recall = {label: c["recall"] for label, c in report["per_class"].items()}
    return {"accuracy": report["accuracy"], "count": report["count"], "recall": recall}


def cost(run: Path) -> dict:
    from kws_ghost.checkpoint import load_checkpoint

    model = load_checkpoint(run / "best.pt").build_model()
    return {"macs_per_frame": model.macs_per_frame(), "state_bytes": model.rnn.state_bytes()}


def run_one(plan: dict, config: str, seed: int, data: Path, runs: Path, results: Path) -> dict:
    started = time.perf_counter()
    base = train_and_eval(config, plan["configs"][config], seed, data, runs)
    out = runs / run_name(config, seed)
    record = {
        "plan": plan["name"],
        "config": config,
        "flags": plan["configs"][config],
        "seed": seed,
        "wall_seconds": round(time.perf_counter() - started, 1),
        **{k: base[k] for k in ("test_accuracy", "params", "best_epoch", "epochs")},
        **{k: base[k] for k in ("val_hit_rate", "val_fa_per_hour", "seconds_per_epoch")},
        "test": score(out, data, "testing"),
        "validation": score(out, data, "validation"),
        **cost(out),
    }
    append(results, record)
    return record


def table(results: Path, plan: str = "") -> str:
    rows: dict[str, list[dict]] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            if record and (not plan or record["plan"] == plan):
                rows.setdefault(f"{record['plan']}: {record['config']}", []).append(record)
    lines = ["config | n | test acc | 2 SE | val+test acc | val hit@10 | MACs | wall min"]
    for name, records in rows.items():
        test = [r["test"]["accuracy"] for r in records]
        both = [
            (r["test"]["accuracy"] * r["test"]["count"] + r["validation"]["accuracy"]
             * r["validation"]["count"]) / (r["test"]["count"] + r["validation"]["count"])
            for r in records
        ]  # fmt: skip
        # two standard errors of the mean over seeds (0 with one seed)
        two_se = 2 * statistics.stdev(test) / math.sqrt(len(test)) if len(test) > 1 else 0.0
        hits = [r["val_hit_rate"] for r in records if r.get("val_hit_rate") is not None]
        lines.append(
            f"{name} | {len(records)} | {statistics.mean(test):.4f} | {two_se:.4f} | "
            f"{statistics.mean(both):.4f} | "
            f"{statistics.mean(hits) if hits else float('nan'):.3f} | "
            f"{records[0]['macs_per_frame']:,} | "
            f"{statistics.mean(r['wall_seconds'] for r in records) / 60:.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/real-dev"))
    parser.add_argument("--runs", type=Path, default=Path("data/study"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study.jsonl"))
    parser.add_argument("--table", action="store_true", help="Only print the table so far.")
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    if not args.table:
        done = finished(args.out, plan["name"])
        todo = [(c, s) for s in plan["seeds"] for c in plan["configs"] if (c, s) not in done]
        print(f"{len(done)} runs finished, {len(todo)} to go", flush=True)
        runs = (args.runs / plan["name"]).resolve()
        with concurrent.futures.ThreadPoolExecutor(plan.get("jobs", 1)) as pool:
            jobs = [
                pool.submit(run_one, plan, c, s, args.data.resolve(), runs, args.out)
                for c, s in todo
            ]
            for job in concurrent.futures.as_completed(jobs):
                record = job.result()
                print(f"done: {record['config']} seed {record['seed']}: test accuracy "
                      f"{record['test_accuracy']:.4f}, {record['wall_seconds'] / 60:.1f} min",
                      flush=True)  # fmt: skip
    print(table(args.out, plan["name"]))


if __name__ == "__main__":
    main()
