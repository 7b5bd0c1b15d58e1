"""Tables and the accuracy-compute front from ``benchmarks/results/study.jsonl``.

    python benchmarks/study_report.py [--plan front-2] [--png benchmarks/results/pareto.png]
                                      [--front "plan: config" ...] [--readme README.md]

Every figure is a mean over a config's runs (seeds, or speaker folds) with two standard errors of
that mean: 2 * sample standard deviation / sqrt(runs). A difference between two configs is
called real only where it exceeds two standard errors of the difference,
2 * sqrt(se_a^2 + se_b^2). ``--readme`` rewrites the part of the README between
``<!-- study:begin -->`` and ``<!-- study:end -->`` with the table of the plans named and every
comparison the section already holds, recomputed, then the new ``--compare`` ones: so
``study_report.py --readme README.md`` alone refreshes the whole section from the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
from pathlib import Path

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
FIGURES = (
    ("accuracy", "test accuracy"),
    ("validation", "validation accuracy"),
    ("pooled", "val+test accuracy"),
    ("keyword_accuracy", "keyword accuracy"),
    ("test_hit_rate", "test hit rate"),
)
# "A minus B: <first figure> ..." as written below (a side may hold ": " and " + ")
COMPARISON = re.compile(
    r"^(.+?) minus (.+?): (?:" + "|".join(re.escape(what) for _, what in FIGURES) + ") "
)


def load(results: Path, plans: list[str] | None = None) -> dict[str, list[dict]]:
    """Records grouped as ``"plan: config"``, in the order they were first written."""
    groups: dict[str, list[dict]] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            record = json.loads(line) if line.strip() else None
            if record and (not plans or record["plan"] in plans):
                groups.setdefault(f"{record['plan']}: {record['config']}", []).append(record)
    return groups


def mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean); the error is nan with one value."""
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], math.nan
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def pooled_accuracy(record: dict) -> float:
    """Clip accuracy over the validation and the test split together."""
    test, val = record["test"], record.get("validation")
    if val is None:  # the reference script scores the test split only
        return math.nan
    right = test["accuracy"] * test["count"] + val["accuracy"] * val["count"]
    return right / (test["count"] + val["count"])


def summarise(records: list[dict]) -> dict:
    hits = [r["val_hit_rate"] for r in records if r.get("val_hit_rate") is not None]
    per_class: dict[str, float] = {}
    for label in records[0]["test"].get("recall", {}):
        per_class[label] = statistics.mean(r["test"]["recall"][label] for r in records)
    keyword = [r["test"]["keyword_accuracy"] for r in records if "keyword_accuracy" in r["test"]]
    pooled = [pooled_accuracy(r) for r in records]
    return {
        "runs": len(records),
        "test": mean_se([r["test"]["accuracy"] for r in records]),
        "keyword": mean_se(keyword),
        "pooled": mean_se([p for p in pooled if not math.isnan(p)]),
        "hit_rate": mean_se(hits),
        "test_hit_rate": mean_se(
            [r["test_hit_rate"] for r in records if r.get("test_hit_rate") is not None]
        ),
        "macs": records[0].get("macs_per_frame"),
        "state_bytes": records[0].get("state_bytes"),
        "params": records[0]["params"],
        # training and validation time where recorded (a resumed run's wall time is only its
        # last part), else the wall time with scoring
        "minutes": statistics.mean(r.get("train_seconds", r["wall_seconds"]) for r in records) / 60,
        "recall": per_class,
    }


def measured(record: dict, key: str) -> float:
    """A run's figure by name: ``pooled`` (validation plus test), ``validation`` (the validation
    clips' accuracy: what a default may be tuned on), ``test_hit_rate`` or a key of its test
    scores."""
    if key == "pooled":
        return pooled_accuracy(record)
    if key == "validation":
        return record.get("validation", {}).get("accuracy", math.nan)
    if key == "test_hit_rate":
        value = record.get(key)
        return math.nan if value is None else value
    return record["test"].get(key, math.nan)


def paired_difference(a: list[dict], b: list[dict], key: str = "accuracy") -> dict:
    """``key`` (``measured``) of config a minus config b over the (seed, fold) pairs both ran: the
    same speakers on both sides, so the folds' own difficulty cancels. Mean, two standard errors
    of the mean difference, and the pairs."""
    by_run = {(r["seed"], r.get("fold")): measured(r, key) for r in b}
    diffs = [
        measured(r, key) - by_run[(r["seed"], r.get("fold"))]
        for r in a
        if (r["seed"], r.get("fold")) in by_run
    ]
    diffs = [d for d in diffs if not math.isnan(d)]
    mean, se = mean_se(diffs)
    return {"mean": mean, "two_se": 2 * se, "pairs": len(diffs)}


def joined(groups: dict[str, list[dict]], side: str) -> list[dict]:
    """The runs of one side of a comparison: a row, or rows joined with " + "."""
    return [record for row in side.split(" + ") for record in groups[row]]


def _cell(value: tuple[float, float], digits: int = 3) -> str:
    mean, se = value
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {2 * se:.{digits}f}")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def markdown(groups: dict[str, list[dict]]) -> str:
    lines = [
        "| plan: config | runs | MACs/frame | state bytes | test acc (± 2 SE) | val+test acc "
        "| keyword acc | val hit rate @10 FA/h | test hit rate @10 FA/h | unknown recall "
        "| silence recall | train min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, records in groups.items():
        row = summarise(records)
        recall = row["recall"]
        lines.append(
            f"| {name} | {row['runs']} | {_count(row['macs'])} | {_count(row['state_bytes'])} "
            f"| {_cell(row['test'])} | {_cell(row['pooled'])} | {_cell(row['keyword'])} "
            f"| {_cell(row['hit_rate'], 2)} | {_cell(row['test_hit_rate'], 2)} "
            f"| {_share(recall.get('_unknown_'))} | {_share(recall.get('_silence_'))} "
            f"| {row['minutes']:.1f} |"
        )
    return "\n".join(lines)


def model_of(record: dict) -> tuple[str, str]:
    """(arch, "arch H s") of a run, from its flags and the defaults it ran with: H128 s2 until
    front-12 (the default is H112 s1.5 since; plans from front-12 on name their width in the
    flags or in the config's name)."""
    flags = record.get("flags", [])
    value = dict(zip(flags, flags[1:]))
    named = record.get("config", "").split(",")[0]  # "ghost-gru H112 s1.5, distilled ..."
    if "--hidden" not in value and named.startswith(("gru H", "ghost-gru H")):
        return named.split(" ")[0], named  # a screen of the default, its width in its name
    arch, hidden = value.get("--model", "ghost-gru"), value.get("--hidden", "128")
    if not arch.startswith("ghost"):
        return arch, f"{arch} H{hidden}"
    return arch, f"{arch} H{hidden} s{float(value.get('--ratio', '2')):g}"


def pareto(groups: dict[str, list[dict]], png: Path) -> None:
    """Test accuracy and hit rate against MACs per frame, GRU and GhostGRU apart, distilled runs
    apart from the rest. The hit rate is the test speakers' where every point has it, else the
    validation speakers'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    on_test = all(r.get("test_hit_rate") is not None for rs in groups.values() for r in rs)
    hit_key, hit_label = ("test_hit_rate", "test") if on_test else ("hit_rate", "validation")
    series = [(family, distilled) for family in ("gru", "ghost") for distilled in (False, True)]
    for family, distilled in series:
        points = []
        for records in groups.values():
            arch, label = model_of(records[0])
            taught = "--teacher" in records[0].get("flags", [])
            if arch.startswith(family) and taught == distilled and records[0].get("macs_per_frame"):
                points.append((summarise(records), label + (", distilled" if taught else "")))
        if not points:
            continue
        # distilled rows are their own series: a second point at the same MACs joined to the
        # undistilled ones would draw a vertical zig-zag
        legend = {"gru": "GRU", "ghost": "GhostGRU"}[family] + (", distilled" if distilled else "")
        style = {"marker": "o" if family == "gru" else "s", "linestyle": "--" if distilled else "-"}
        if distilled:
            style["markerfacecolor"] = "none"
        points.sort(key=lambda p: p[0]["macs"])
        panels = ((axes[0], "test", "test clip accuracy"),
                  (axes[1], hit_key, f"{hit_label} hit rate @ 10 FA/h"))  # fmt: skip
        for axis, key, label in panels:
            x = [p[0]["macs"] / 1000 for p in points]
            y = [p[0][key][0] for p in points]
            err = [0 if math.isnan(p[0][key][1]) else 2 * p[0][key][1] for p in points]
            axis.errorbar(x, y, yerr=err, capsize=3, label=legend, **style)
            for (_, name), xi, yi in zip(points, x, y):
                axis.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
            axis.set_xlabel("thousand multiply-adds per frame")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("accuracy against compute (mean of seeds, bars: 2 standard errors)")
    figure.tight_layout()
    tmp = png.with_name(f".{png.name}.{os.getpid()}")
    figure.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, png)


def readme_comparisons(readme: Path) -> list[tuple[str, str]]:
    """The (A, B) comparisons the README's study section holds, in its order."""
    text = readme.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0] if BEGIN in text else ""
    found = (COMPARISON.match(line) for line in section.splitlines())
    return [(match[1], match[2]) for match in found if match]


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} section to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = readme.with_name(f".{readme.name}.{os.getpid()}")
    tmp.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    os.replace(tmp, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/study.jsonl"))
    parser.add_argument("--plan", action="append", help="Only these plans (repeatable).")
    parser.add_argument("--png", type=Path, help="Write the front of these plans as a PNG.")
    parser.add_argument(
        "--front",
        action="append",
        metavar="ROW",
        help='Plot these "plan: config" rows in --png (repeatable; a row may join rows with " + ", '
        "as --compare) instead of the plans' rows.",
    )
    parser.add_argument("--readme", type=Path, help="Fill the README's study section.")
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help='Paired differences of two "plan: config" rows (repeatable); a side may join rows '
        'with " + " (the same config on other folds: "front-2: gru H93 + front-4: gru H93").',
    )
    args = parser.parse_args()
    comparisons = [tuple(pair) for pair in args.compare or []]
    if args.readme:  # keep (and recompute) what the section compares already
        kept = readme_comparisons(args.readme)
        comparisons = kept + [pair for pair in comparisons if pair not in kept]
    groups = load(args.results, args.plan)
    table = markdown(groups)
    every = load(args.results, None)  # a comparison may name rows of any plan
    named = {"--compare": [side for pair in comparisons for side in pair]}
    named["--front"] = args.front or []
    for option, sides in named.items():
        unknown = [row for side in sides for row in side.split(" + ") if row not in every]
        if unknown:
            parser.error(f"{option}: no runs of {', '.join(unknown)} in {args.results}")
    for a, b in comparisons:
        runs_a, runs_b = (joined(every, side) for side in (a, b))
        lines = []
        for key, what in FIGURES:
            d = paired_difference(runs_a, runs_b, key)
            if not d["pairs"]:
                continue
            verdict = "beyond" if abs(d["mean"]) > d["two_se"] else "within"
            lines.append(
                f"{what} {d['mean']:+.3f} ± {d['two_se']:.3f} ({d['pairs']} pairs, {verdict} "
                "two standard errors)"
            )
        table += f"\n\n{a} minus {b}: " + "; ".join(lines) + "."
    print(table)
    if args.png:
        front = {side.split(" + ")[0]: joined(every, side) for side in args.front or []}
        pareto(front or groups, args.png)
    if args.readme:
        update_readme(args.readme, table)


if __name__ == "__main__":
    main()
