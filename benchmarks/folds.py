"""Speaker folds of a corpus, so a study scores its runs on more held-out speakers than one test
split holds.

``make_fold(root, out, fold, folds)`` writes ``out`` as a view of ``root``: a symbolic link for
every word folder (and the noise and silence folders), and its own ``validation_list.txt`` and
``testing_list.txt``. Speakers fall into ``folds`` groups by a hash of their id (as TF's
speech_commands splits); fold k tests on group k, validates on group k+1 and trains on the rest,
so with 7 folds each run trains on about 71% of the speakers, as the corpus's own lists do, and
seven runs test every speaker once.

    python benchmarks/folds.py data/real-dev data/real-dev-folds --folds 7
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import threading
from pathlib import Path

from kws_ghost.data import speaker_of

LISTS = ("validation_list.txt", "testing_list.txt")


def group_of(relpath: str, folds: int) -> int:
    return int(hashlib.sha1(speaker_of(relpath).encode()).hexdigest(), 16) % folds


def fold_of_seed(plan_runs: Path, seed: int, folds: int) -> tuple[int, Path]:
    """(fold, folder) of a study run of ``seed``: fold seed mod ``folds``, kept under its plan's
    runs folder, so the runs of one fold share it."""
    fold = seed % folds
    return fold, plan_runs / "folds" / f"fold-{fold}"


def make_fold(root: Path, out: Path, fold: int, folds: int) -> Path:
    """``out`` made (or refreshed) as fold ``fold`` of ``folds`` of the corpus at ``root``."""
    root = root.resolve()
    out.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {name: [] for name in LISTS}
    for entry in sorted(root.iterdir()):
        if entry.name in LISTS:
            continue
        link = out / entry.name
        with contextlib.suppress(FileExistsError):  # made before, or by a parallel run
            os.symlink(entry, link)
        if not entry.is_dir() or entry.name == "_background_noise_":
            continue
        for clip in sorted(entry.glob("*.wav")):
            relpath = f"{entry.name}/{clip.name}"
            group = group_of(relpath, folds)
            if group == fold:
                lists["testing_list.txt"].append(relpath)
            elif group == (fold + 1) % folds:
                lists["validation_list.txt"].append(relpath)
    for name, paths in lists.items():
        tmp = out / f".{name}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text("".join(f"{p}\n" for p in paths))
        os.replace(tmp, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--folds", type=int, default=7)
    args = parser.parse_args()
    for fold in range(args.folds):
        made = make_fold(args.root, args.out / f"fold-{fold}", fold, args.folds)
        counts = [len((made / name).read_text().split()) for name in LISTS]
        print(f"{made}: {counts[0]} validation, {counts[1]} test clips")


if __name__ == "__main__":
    main()
