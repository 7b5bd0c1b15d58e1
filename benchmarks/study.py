"""A recipe study that spans sessions: a plan of configurations x seeds, trained and scored one
after another (or ``jobs`` one-thread runs side by side), each finished run appended at once to
``benchmarks/results/study.jsonl``; started again, it skips what is finished (and resumes a run
that was interrupted from its last epoch), then prints the table so far.

    python benchmarks/study.py PLAN.json [PLAN.json ...] [--data data/real-dev]
        [--runs data/study] [--out benchmarks/results/study.jsonl] [--jobs N] [--table]

PLAN.json: ``{"name": "front-1", "seeds": [0, 1, 2], "jobs": 1,
"configs": {"ghost-gru": [], "gru H93": ["--model", "gru", "--hidden", "93"]},
"seeds_of": {"gru H93": [0]}, "folds": 7}``: flags of `kws-ghost train`; ``seeds_of``
(optional) gives some configs other seeds; a flag may name ``{seed}`` (or ``{seed-7}``) and
``{runs}`` (the ``--runs`` folder), so a config can start or learn from another plan's run
(``--init``, ``--teacher``); with ``folds``
(optional) seed s trains and is scored on speaker fold s mod ``folds`` of ``--data``
(``benchmarks/folds.py``), so a config's seeds test different speakers and their mean stands for
more of them than one test split does.

Each run is scored by `kws-ghost eval` on the test and the validation split (screening uses
validation plus test, confirmation the test split); a line holds the config, its flags, the seed,
the fold, wall and training time, clip accuracy and per-class recall on both splits, the
validation hit rate at 10 false alarms per hour, parameters, MACs per frame and state bytes.
``--table``: only print the table of what is in the results file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import filelock
from bench_accuracy import run_name, train_and_eval  # benchmarks/ is this script's folder
from folds import fold_of_seed, make_fold
from study_report import load, markdown


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


def locked(results: Path) -> filelock.FileLock:
    """The lock every writer of ``results`` holds: two studies may append to it at once."""
    return filelock.FileLock(str(results) + ".lock")


def append(results: Path, record: dict) -> None:
    """One line, flushed and synced: a killed study keeps every run that finished."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with locked(results), open(results, "a") as handle:
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
    classes = report["per_class"]
    keywords = [label for label in classes if not label.startswith("_")]
    right = sum(classes[k]["recall"] * classes[k]["support"] for k in keywords)
    return {
        "accuracy": report["accuracy"],
        "count": report["count"],
        "recall": {label: c["recall"] for label, c in classes.items()},
        "support": {label: c["support"] for label, c in classes.items()},
        # the clips ref_gru_baseline.py's keyword_only_acc counts: the ten keywords' own
        "keyword_accuracy": right / max(1, sum(classes[k]["support"] for k in keywords)),
    }


REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "tools" / "ref_gru_baseline.py"


def run_reference(plan: dict, config: str, seed: int, data: Path, fold: int | None) -> dict:
    """The yardstick ``ref_gru_baseline.py`` (config flags ``["@ref", ...its flags]``) on the
    same split and seed; pinned to one core (it asks torch for two threads)."""
    flags = plan["configs"][config][1:]
    started = time.perf_counter()
    done = subprocess.run(
        ["taskset", "-c", str(seed % 2), sys.executable, str(REFERENCE.resolve())]
        + ["--train", str(data), "--test", str(data), "--seed", str(seed), *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    summary = json.loads(lines[-1])
    keyword = next(line for line in lines if line.startswith("keyword_only_acc")).split()
    return {
        **header(plan, config, seed, fold, started),
        "test_accuracy": summary["test_acc"],
        "params": summary["params"],
        "test": {
            "accuracy": summary["test_acc"],
            "count": summary["n_test"],
            "keyword_accuracy": float(keyword[1]),
        },
    }


def header(plan: dict, config: str, seed: int, fold: int | None, started: float) -> dict:
    """What every line of the results file starts with."""
    return {
        "plan": plan["name"],
        "config": config,
        "flags": plan["configs"][config],
        "seed": seed,
        "fold": fold,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def cost(run: Path) -> dict:
    from kws_ghost.checkpoint import load_checkpoint

    model = load_checkpoint(run / "best.pt").build_model()
    return {
        "params": model.num_params(),
        "macs_per_frame": model.macs_per_frame(),
        "state_bytes": model.rnn.state_bytes(),
    }


def is_reference(plan: dict, config: str) -> bool:
    """A config that runs ``ref_gru_baseline.py`` (``["@ref", ...its flags]``)."""
    return plan["configs"][config][:1] == ["@ref"]


def fold_data(plan: dict, seed: int, data: Path, plan_runs: Path) -> tuple[int | None, Path]:
    """(fold, corpus folder) a run of ``seed`` trains and is scored on: with ``folds``, seed s
    uses speaker fold s mod folds, made (once) under the plan's runs folder."""
    if not plan.get("folds"):
        return None, data
    fold, folder = fold_of_seed(plan_runs, seed, plan["folds"])
    return fold, make_fold(data, folder, fold, plan["folds"])


def test_detection(run: Path, data: Path, seed: int) -> dict:
    """Hit rate at 10 false alarms per hour on recordings of the *test* speakers, built as the
    validation ones are (every test keyword clip once among other words; 30 minutes of other
    words and noise): the validation hit rate helped choose best.pt, this one did not. A
    clip-objective model is scored as ``detect`` scores it: its 1 s window every 100 ms."""
    import torch

    from kws_ghost.data import scan_corpus
    from kws_ghost.runtime import load_model
    from kws_ghost.validation import ValidationRecordings

    torch.set_num_threads(1)  # beside the training runs
    runtime = load_model(run / "best.pt")
    recordings = ValidationRecordings(
        scan_corpus(data), runtime.labels, runtime.frontend_config, seed=seed, split="testing"
    )
    summary = recordings.evaluate(runtime, 10.0)
    return {
        "test_hit_rate": summary["hit_rate"],
        "test_fa_per_hour": summary["false_alarms_per_hour"],
    }


def expand(flag: str, seed: int, runs: Path) -> str:
    """``flag`` with ``{runs}`` (the study's runs folder) and ``{seed}`` (or ``{seed-7}``, an
    offset seed: another plan's run of the same fold) filled in, so a config can start from, or
    learn from, another plan's run."""
    flag = flag.replace("{runs}", str(runs))
    return re.sub(r"\{seed([+-]\d+)?\}", lambda m: str(seed + int(m.group(1) or 0)), flag)


def run_one(plan: dict, config: str, seed: int, data: Path, runs: Path, results: Path) -> dict:
    fold, data = fold_data(plan, seed, data, runs)
    if is_reference(plan, config):
        record = run_reference(plan, config, seed, data, fold)
        append(results, record)
        return record
    started = time.perf_counter()
    flags = [expand(flag, seed, runs.parent) for flag in plan["configs"][config]]
    base = train_and_eval(config, flags, seed, data, runs, evaluate=False)
    out = runs / run_name(config, seed)
    test = score(out, data, "testing")
    record = {
        **header(plan, config, seed, fold, started),
        "train_seconds": train_seconds(out),
        "test_accuracy": test["accuracy"],
        **{k: base[k] for k in ("best_epoch", "epochs")},
        **{k: base[k] for k in ("val_hit_rate", "val_fa_per_hour", "seconds_per_epoch")},
        "test": test,
        "validation": score(out, data, "validation"),
        **cost(out),
        **test_detection(out, data, seed),
    }
    append(results, record)
    return record


def train_seconds(run: Path) -> float:
    """Training and validation time of a run, its clip stage's included, from its epochs'
    records (not its scoring)."""
    from kws_ghost.runs import CLIP_STAGE

    files = [run / "metrics.jsonl", run / CLIP_STAGE / "metrics.jsonl"]
    records = [
        json.loads(line)
        for path in files
        if path.exists()
        for line in path.read_text().splitlines()
    ]
    return round(sum(r["seconds"] + r.get("val_seconds", 0.0) for r in records), 1)


def pending(plan: dict, results: Path) -> list[tuple[str, int]]:
    """(config, seed) runs of ``plan`` not yet in ``results``, seed by seed."""
    done = finished(results, plan["name"])
    seeds = {c: plan.get("seeds_of", {}).get(c, plan["seeds"]) for c in plan["configs"]}
    order = sorted({s for c in seeds for s in seeds[c]})
    todo = [(c, s) for s in order for c in plan["configs"] if s in seeds[c]]
    return [(c, s) for c, s in todo if (c, s) not in done]


def add_test_detection(plans: list[dict], data: Path, runs: Path, results: Path) -> int:
    """Add ``test_detection`` to the lines of ``plans`` that lack it and whose run folders are
    still under ``runs``; the file is rewritten whole under its lock (temporary file, then
    rename), so lines another study appended meanwhile stay."""
    names = {plan["name"]: plan for plan in plans}
    found: dict[tuple[str, str, int], dict] = {}
    for line in results.read_text().splitlines():
        record = json.loads(line) if line.strip() else None
        if not record or record["plan"] not in names or "test_hit_rate" in record:
            continue
        plan = names[record["plan"]]
        out = runs / plan["name"] / run_name(record["config"], record["seed"])
        if not (out / "best.pt").exists() or is_reference(plan, record["config"]):
            continue
        _, folded = fold_data(plan, record["seed"], data, runs / plan["name"])
        detection = test_detection(out, folded, record["seed"])
        if detection:
            found[(record["plan"], record["config"], record["seed"])] = detection
            print(f"{record['plan']}: {record['config']} seed {record['seed']}: {detection}")
    with locked(results):
        lines = []
        for line in results.read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            key = record and (record["plan"], record["config"], record["seed"])
            if key in found and "test_hit_rate" not in record:
                line = json.dumps({**record, **found[key]})
            lines.append(line)
        temporary = results.with_suffix(".jsonl.tmp")
        temporary.write_text("\n".join(lines) + "\n")
        os.replace(temporary, results)
    return len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", type=Path, nargs="+", help="One or more plans, run in turn.")
    parser.add_argument("--data", type=Path, default=Path("data/real-dev"))
    parser.add_argument("--runs", type=Path, default=Path("data/study"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study.jsonl"))
    parser.add_argument("--jobs", type=int, help="Runs side by side [default: the first plan's].")
    parser.add_argument("--table", action="store_true", help="Only print the table so far.")
    parser.add_argument(
        "--add-test-detection",
        action="store_true",
        help="Only add the test speakers' hit rate to finished runs still under --runs.",
    )
    args = parser.parse_args()
    plans = [json.loads(path.read_text()) for path in args.plans]
    if args.add_test_detection:
        added = add_test_detection(plans, args.data.resolve(), args.runs.resolve(), args.out)
        print(f"{added} runs scored on test recordings")
    elif not args.table:
        todo = [(plan, c, s) for plan in plans for c, s in pending(plan, args.out)]
        print(f"{len(todo)} runs to go", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs or plans[0].get("jobs", 1)) as pool:
            jobs = [
                pool.submit(
                    run_one, plan, c, s, args.data.resolve(),
                    (args.runs / plan["name"]).resolve(), args.out,
                )
                for plan, c, s in todo
            ]  # fmt: skip
            for job in concurrent.futures.as_completed(jobs):
                try:
                    record = job.result()
                except (subprocess.CalledProcessError, SystemExit, OSError, ValueError) as error:
                    detail = getattr(error, "stderr", "") or ""
                    print(f"failed: {error} {detail[-400:]}", flush=True)  # the others go on
                    continue
                print(f"done: {record['plan']}: {record['config']} seed {record['seed']}: test "
                      f"accuracy {record['test_accuracy']:.4f}, "
                      f"{record['wall_seconds'] / 60:.1f} min", flush=True)  # fmt: skip
    print(markdown(load(args.out, [plan["name"] for plan in plans])))


if __name__ == "__main__":
    main()
