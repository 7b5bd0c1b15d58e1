"""Run folders: where a training run lives, what it writes, and how it is found again.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` (with
the optimiser, scheduler and RNG state) and ``best.pt``, each written atomically at the end of
every epoch, so a killed run loses at most the epoch in progress. The folder is made at the
first checkpoint (a failed run leaves none) and holds ``RUN_MARKER`` from then on.
``runs/latest`` points at the newest run under ``runs/`` once it has written its first
checkpoint. ``best.pt`` is the epoch ``selection_key`` ranks first. ``load_resumable`` recovers a
run's configuration for ``train --resume``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from kws_ghost.config import ModelConfig, TrainConfig, stored_train_config, to_dict
from kws_ghost.errors import KwsError, print_stderr
from kws_ghost.fileio import atomic_open, owned_by, write_json, write_marker

RUNS = Path("runs")
RUN_MARKER = ".kws-ghost-run"  # a folder holding it was made by `kws-ghost train`
CLIP_STAGE = "clip"  # a warm-started run's first stage, a run folder inside the run's


def default_run_dir(model_config: ModelConfig) -> Path:
    return RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{model_config.arch}"


def point_latest(run_dir: Path) -> None:
    """Make ``runs/latest`` a symlink to ``run_dir`` (replaced atomically) when the run lives in
    ``runs/``, where the default model lookup reads it; a run elsewhere leaves it alone, and so
    does a ``runs/latest`` that is not our link to a run folder."""
    if run_dir.resolve().parent != RUNS.resolve():
        return
    latest = RUNS / "latest"
    if latest.is_symlink() and latest.exists() and not owned_by(latest, RUN_MARKER):
        return  # a link of the user's, to a folder that is not a run: never replace it
    if latest.exists() and not latest.is_symlink():
        return  # not ours: never replace it
    tmp = RUNS / f".latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, latest)


def check_new_run_dir(run_dir: Path, after_clip_stage: bool = False) -> None:
    """A new run goes into a fresh folder, or an empty one, never over another run or files;
    ``after_clip_stage``: the stream stage of a run whose clip stage holds RUN/clip."""
    stage_started = (run_dir / CLIP_STAGE / "last.pt").exists() and not after_clip_stage
    if (run_dir / "last.pt").exists() or stage_started:
        raise KwsError(
            f"{run_dir} already holds a run: add --resume to continue it, or choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise KwsError(f"--out {run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / RUN_MARKER).exists():
        raise KwsError(f"--out {run_dir} exists and holds other files: choose another folder")


def selection_key(record: dict[str, Any]) -> tuple[float, ...]:
    """How epochs rank for ``best.pt`` (higher is better): validation clip accuracy plus the hit
    rate on the validation recordings at the target false-alarm rate (where measured), then the
    lower validation loss. The hit rate alone is noisy (30 minutes of negatives allow five false
    alarms at 10 an hour): it jumped by 0.1-0.2 between epochs and chose epoch 8 of 20 of a real-
    speech run at 0.69 clip accuracy over the last at 0.81. A small validation set often ties
    epochs, and the lower-loss one of them generalised better to held-out speakers."""
    hit_rate = record.get("val_hit_rate") or 0.0
    return (record.get("val_accuracy", -1.0) + hit_rate, -record.get("val_loss", math.inf))


def best_epoch(history: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The record ``best.pt`` holds: the first validated epoch with the highest
    ``selection_key``; with no validation at all, the last epoch."""
    validated = [record for record in history if "val_accuracy" in record]
    if not validated:
        return history[-1] if history else None
    best: Optional[dict[str, Any]] = None
    for record in validated:
        if best is None or selection_key(record) > selection_key(best):
            best = record
    return best


class RunFolder:
    """One run's folder. ``path`` may change once, at ``reserve``, when a default name was
    taken by a parallel run meanwhile. ``outer``: the run whose clip stage this folder holds
    (``outer.path / CLIP_STAGE``); the outer folder is made first and is what ``runs/latest``
    points at."""

    def __init__(
        self,
        path: Path,
        default_name: bool,
        log: Callable[[str], None],
        outer: Optional[RunFolder] = None,
        after_clip_stage: bool = False,
    ) -> None:
        self.path = path
        self.default_name = default_name  # a default name may be taken by a parallel run
        self.log = log
        self.outer = outer
        self.after_clip_stage = after_clip_stage  # the stream stage of a run: see check_new_run_dir

    @property
    def started(self) -> bool:
        return (self.path / "last.pt").exists()

    def reserve(self) -> None:
        """Make the folder at the first checkpoint, checked again: another run may have taken a
        default name (it holds the time to the second) meanwhile; then take the next free one."""
        if self.outer is not None:  # made once, with its clip stage's first checkpoint
            self.outer.reserve()
            self.path = self.outer.path / self.path.name
        run_dir, suffix = self.path, 1
        while True:
            try:
                run_dir.mkdir(parents=True, exist_ok=not self.default_name)
                break
            except FileExistsError:
                suffix += 1
                run_dir = self.path.with_name(f"{self.path.name}-{suffix}")
        check_new_run_dir(run_dir, self.after_clip_stage)
        if run_dir != self.path:
            self.log(f"note: {self.path} was taken meanwhile; this run is {run_dir}")
            self.path = run_dir
        write_marker(run_dir, RUN_MARKER)

    def save(
        self,
        model: Any,
        frontend: Any,
        labels: list[str],
        history: list[dict[str, Any]],
        common: dict[str, Any],
        train_state: dict[str, Any],
        counts: dict[str, Any],
    ) -> None:
        """Write the epoch that ends ``history``: ``best.pt`` when it ranks first, ``last.pt``
        with ``train_state``, ``metrics.jsonl``; at the first epoch also the folder,
        ``config.json`` (the recipe, with ``counts``) and ``runs/latest``."""
        from kws_ghost import __version__
        from kws_ghost.checkpoint import save_checkpoint

        first = not self.started
        if first:
            self.reserve()
            record = {"package_version": __version__, "labels": labels}
            record.update(model=to_dict(model.config), frontend=to_dict(frontend))
            write_json(
                self.path / "config.json", {**record, "train": common["train_config"], **counts}
            )
        if best_epoch(history) is history[-1]:
            save_checkpoint(self.path / "best.pt", model, frontend, labels, **common)
        save_checkpoint(
            self.path / "last.pt", model, frontend, labels, train_state=train_state, **common
        )
        # metrics.jsonl mirrors the checkpoint's history, rewritten whole (a few KB): a resumed
        # run never keeps a line written after the checkpoint it resumed from
        with atomic_open(self.path / "metrics.jsonl") as handle:
            for line in history:
                handle.write(json.dumps(line) + "\n")
        if first:
            point_latest(self.outer.path if self.outer is not None else self.path)


def load_resumable(
    run_dir: Path,
    epochs: Optional[int] = None,
    data: Optional[str] = None,
    log: Optional[Callable[[str], None]] = None,
) -> tuple[TrainConfig, Any]:
    """(the training config, the checkpoint) to continue the run in ``run_dir`` from its
    ``last.pt``, to more ``epochs`` or on ``data`` (the corpus moved)."""
    from kws_ghost.checkpoint import load_checkpoint, stored_data_path

    last = run_dir / "last.pt"
    if not last.exists():
        raise KwsError(f"{run_dir}: nothing to resume (no last.pt)")
    checkpoint = load_checkpoint(last)
    stored = checkpoint.extra.get("train_config")
    if not isinstance(stored, dict) or not isinstance(checkpoint.extra.get("train_state"), dict):
        raise KwsError(f"{last}: holds no training state to resume from")
    config = stored_train_config(stored, f"{last}: train config")
    if data is not None:
        if Path(data).resolve() != Path(config.data).resolve():
            (log or print_stderr)(f"note: resuming on {data} (the run started on {config.data})")
        config.data = str(Path(data).resolve())
    else:
        found = stored_data_path(stored, checkpoint.path)
        config.data = str(found) if found is not None else config.data
    if epochs is not None:
        config.epochs = epochs
    return config, checkpoint


def brief(record: dict[str, Any]) -> str:
    """What an epoch scored on validation, in a few words."""
    parts = []
    if "val_hit_rate" in record:
        parts.append(f"validation hit rate {record['val_hit_rate']:.3f}")
    if "val_accuracy" in record:
        parts.append(f"clip accuracy {record['val_accuracy']:.4f}")
    return ", ".join(parts) or "no validation"


def epoch_line(record: dict[str, Any], epochs: int, unit: str = "frame") -> str:
    """One line per epoch that names what each figure measures: training figures are over
    training ``unit``s (frames for the stream objective, clips for the clip one), validation
    ones over whole validation clips and recordings."""
    text = (
        f"epoch {record['epoch']}/{epochs}: train {unit} loss {record['train_loss']:.4f} "
        f"{unit} acc {record['train_accuracy']:.4f}"
    )
    if "val_accuracy" in record:
        text += f" | val clip loss {record['val_loss']:.4f} clip acc {record['val_accuracy']:.4f}"
    if "val_hit_rate" in record:
        fa = record["val_fa_per_hour"]
        text += f" hit rate {record['val_hit_rate']:.3f}" + (
            f" @ {fa:.1f} FA/h" if fa is not None else ""
        )
    return text + f" | {record['seconds']:.1f} s"
