"""``kws-ghost train``: train a keyword model on a Speech Commands-layout folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import click

from kws_ghost.cli.options import config_from, config_options, given, json_option, threads_option
from kws_ghost.config import (
    FEATURE_KINDS,
    AugmentConfig,
    ModelConfig,
    SequenceConfig,
    TrainConfig,
)

# What a resumed run may change: where the corpus is, how long to train, and how to run.
RESUMABLE = ("--data", "--epochs", "--device", "--workers")


@click.command()
@config_options(TrainConfig)
@config_options(ModelConfig)
@click.option(
    "--features",
    "feature_kind",
    type=click.Choice(FEATURE_KINDS),
    default=None,
    help="Front-end features [default: mfcc].",
)
@config_options(AugmentConfig)
@config_options(SequenceConfig)
@click.option("--no-augment", is_flag=True, help="Turn off every augmentation.")
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False),
    help="Run folder (default runs/DATE-TIME-MODEL; runs/latest points at runs there).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out (default runs/latest) from its last finished epoch.",
)
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
def train(
    feature_kind: Optional[str],
    no_augment: bool,
    run_dir: Optional[str],
    resume: bool,
    threads: Optional[int],
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train GhostGRU (or a GRU/LSTM baseline) and write a run folder.

    By default the clip objective trains first (into RUN/clip), then the streaming model
    starts from its weights (--warm-start none: the stream alone).

    \b
    Examples:
      kws-ghost train --data data/speech_commands_v0.02
      kws-ghost train --data DIR --keywords marvin,sheila --model gru --hidden 96
      kws-ghost train --data DIR --warm-start none   # the stream stage alone, 0.7x the time
      kws-ghost train --resume --out runs/20261128-101500-ghost-gru
      torchrun --nproc_per_node 2 -m kws_ghost train --data DIR
    """
    from kws_ghost.config import FrontendConfig
    from kws_ghost.errors import KwsError
    from kws_ghost.progress import progress_enabled
    from kws_ghost.threads import configure_threads
    from kws_ghost.train import resume_run, train_run

    configure_threads(threads, "batch")
    progress = progress_enabled(False if quiet else None, as_json)
    if resume:
        recipe = [
            name
            for cls in (TrainConfig, ModelConfig, AugmentConfig, SequenceConfig)
            for name in given(cls, options)
            if name not in RESUMABLE
        ]
        recipe += ["--features"] * (feature_kind is not None) + ["--no-augment"] * no_augment
        if recipe:
            raise KwsError(
                f"--resume continues a run with its own recipe: {', '.join(recipe)} cannot "
                f"change (only {', '.join(RESUMABLE)} can); start a new run instead"
            )
        run_time = {
            name: options[f"TrainConfig__{name}"]
            for name in ("device", "workers")
            if options.get(f"TrainConfig__{name}") is not None
        }
        trainer = resume_run(
            Path(run_dir) if run_dir else Path("runs") / "latest",
            epochs=options.get("TrainConfig__epochs"),
            data=options.get("TrainConfig__data"),
            progress=progress,
            **run_time,
        )
    else:
        task_given = "--task" in given(TrainConfig, options)  # before config_from pops them
        model = config_from(ModelConfig, options)
        augment = config_from(AugmentConfig, options)
        sequence = config_from(SequenceConfig, options)
        if no_augment:  # every augmentation off; distractor words are data, and stay
            augment = AugmentConfig(0, 0, 0, 0, 0, 0, 0, 0, 0)
            sequence = dataclasses.replace(
                sequence, trim_prob=0.0, gain_db=0.0, noise_prob=0.0, reverb_prob=0.0
            )
        config = config_from(TrainConfig, options, augment=augment, sequence=sequence)
        if not config.data:
            raise KwsError("--data is required (a Speech Commands-layout folder)")
        if config.keywords and not task_given:
            config.task = "custom"
        elif not config.keywords and not task_given:
            from kws_ghost.synth import corpus_keywords

            keywords = corpus_keywords(config.data)  # a synth corpus says what its keywords are
            if keywords:
                config.task, config.keywords = "custom", keywords
                click.echo(
                    f"note: training the synth corpus's keywords {', '.join(keywords)} "
                    "(--keywords or --task to choose others)",
                    err=True,
                )
        trainer = train_run(
            config,
            model,
            FrontendConfig(kind=feature_kind or "mfcc"),
            run_dir=Path(run_dir) if run_dir else None,
            progress=progress,
        )
    history = trainer.history
    if as_json and trainer.dist.is_main:
        from kws_ghost.cli import echo_json
        from kws_ghost.runs import best_epoch

        best = best_epoch(history) or {}
        echo_json(
            {
                "run_dir": str(trainer.run_dir),
                "best_checkpoint": str(trainer.run_dir / "best.pt"),
                "labels": trainer.labels,
                "init": trainer.config.init or None,
                "epochs": len(history),
                "best_epoch": best.get("epoch"),
                "best_val_accuracy": best.get("val_accuracy"),
                "best_val_hit_rate": best.get("val_hit_rate"),
                "history": history,
            }
        )
