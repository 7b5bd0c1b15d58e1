"""``kws-ghost train``: train a keyword model on a Speech Commands-layout folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from kws_ghost.cli.options import json_option, model_config_from, model_options
from kws_ghost.config import FEATURE_KINDS, TASKS, TrainConfig

_DEFAULT = TrainConfig()


@click.command()
@click.option("--data", type=click.Path(), help="Corpus folder (Speech Commands layout).")
@click.option(
    "--task",
    type=click.Choice(TASKS),
    help="gsc12 (default), gsc35 (every word) or custom (with --keywords).",
)
@click.option("--keywords", help="Comma-separated keywords; other words become _unknown_.")
@model_options
@click.option(
    "--features",
    "feature_kind",
    type=click.Choice(FEATURE_KINDS),
    default="mfcc",
    show_default=True,
    help="Front-end features.",
)
@click.option("--epochs", type=click.IntRange(1), default=_DEFAULT.epochs, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=_DEFAULT.batch_size,
    show_default=True,
    help="Global batch size (split across processes under torchrun).",
)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=_DEFAULT.lr,
    show_default=True,
    help="Peak learning rate (AdamW, warm-up then cosine decay).",
)
@click.option("--seed", type=int, default=_DEFAULT.seed, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--workers",
    type=int,
    default=-1,
    show_default=True,
    help="Data-loading processes (-1: one per spare core, at most 4).",
)
@click.option("--no-augment", is_flag=True, help="Turn off shift, noise and SpecAugment.")
@click.option(
    "--fragment-negatives",
    "fragment_prob",
    type=click.FloatRange(0, 1),
    default=_DEFAULT.augment.fragment_prob,
    show_default=True,
    help="Probability that a word clip is cut to a fragment and taught as _unknown_; "
    "0.05 cuts stream false alarms on short synthetic words (README).",
)
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False),
    help="Run folder (default runs/DATE-TIME-MODEL; runs/latest points at it).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out (default runs/latest) from its last epoch.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
@click.pass_context
def train(
    ctx: click.Context,
    data: Optional[str],
    task: Optional[str],
    keywords: Optional[str],
    feature_kind: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    workers: int,
    no_augment: bool,
    fragment_prob: float,
    run_dir: Optional[str],
    resume: bool,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train GhostGRU (or a GRU/LSTM baseline) and write a run folder.

    \b
    Examples:
      kws-ghost train --data data/speech_commands_v0.02
      kws-ghost train --data DIR --keywords marvin,sheila --model gru --hidden 96
      kws-ghost train --resume --out runs/20261128-101500-ghost-gru
      torchrun --nproc_per_node 2 -m kws_ghost train --data DIR
    """
    from kws_ghost.config import AugmentConfig, FrontendConfig
    from kws_ghost.errors import KwsError
    from kws_ghost.train import Trainer, train_config_from_dict

    model_config = model_config_from(options)
    keyword_list = [k.strip() for k in keywords.split(",") if k.strip()] if keywords else []
    if resume:
        folder = Path(run_dir) if run_dir else Path("runs") / "latest"
        if not (folder / "last.pt").exists():
            raise KwsError(f"{folder}: nothing to resume (no last.pt)")
        folder = folder.resolve()
        from kws_ghost.checkpoint import load_checkpoint

        stored = load_checkpoint(folder / "last.pt").extra.get("train_config")
        if not isinstance(stored, dict):
            raise KwsError(f"{folder / 'last.pt'}: no training config to resume with")
        train_config = train_config_from_dict(stored)
        if ctx.get_parameter_source("epochs") == click.core.ParameterSource.COMMANDLINE:
            train_config.epochs = epochs
        if data:
            train_config.data = data
        run_path: Optional[Path] = folder
    else:
        if not data:
            raise KwsError("--data is required (a Speech Commands-layout folder)")
        train_config = TrainConfig(
            data=data,
            task=task or ("custom" if keyword_list else "gsc12"),
            keywords=keyword_list,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            workers=workers,
            augment=AugmentConfig(0, 0, 0, 0, 0, 0, 0, 0)
            if no_augment
            else AugmentConfig(fragment_prob=fragment_prob),
        )
        run_path = Path(run_dir) if run_dir else None
    trainer = Trainer(
        train_config,
        model_config,
        FrontendConfig(kind=feature_kind),
        run_dir=run_path,
        resume=resume,
        progress=not quiet,
    )
    history = trainer.run()
    if as_json and trainer.dist.is_main:
        from kws_ghost.cli import echo_json

        best = max(history, key=lambda r: r.get("val_accuracy", -1.0)) if history else {}
        echo_json(
            {
                "run_dir": str(trainer.run_dir),
                "best_checkpoint": str(trainer.run_dir / "best.pt"),
                "labels": trainer.labels,
                "epochs": len(history),
                "best_epoch": best.get("epoch"),
                "best_val_accuracy": best.get("val_accuracy"),
                "history": history,
            }
        )
