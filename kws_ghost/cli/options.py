"""Click options shared by several commands, defined once."""

from __future__ import annotations

from typing import Any, Callable

import click

from kws_ghost.config import (
    ACTIVATIONS,
    ARCHITECTURES,
    CHEAP_OPERATIONS,
    POOLINGS,
    DetectorConfig,
    ModelConfig,
)

_DEFAULT = ModelConfig()
_DETECTOR = DetectorConfig()


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--model/--hidden/--layers/--ratio/--cheap-op/... as one decorator."""
    options = [
        click.option(
            "--model",
            "arch",
            type=click.Choice(ARCHITECTURES),
            default=_DEFAULT.arch,
            show_default=True,
            help="Recurrent architecture.",
        ),
        click.option(
            "--hidden",
            type=click.IntRange(1),
            default=_DEFAULT.hidden,
            show_default=True,
            help="Width H of each recurrent layer.",
        ),
        click.option(
            "--layers",
            type=click.IntRange(1),
            default=_DEFAULT.layers,
            show_default=True,
            help="Recurrent layers.",
        ),
        click.option(
            "--ratio",
            type=click.FloatRange(1.0),
            default=_DEFAULT.ratio,
            show_default=True,
            help="Ghost ratio s: intrinsic size m = ceil(H / s).",
        ),
        click.option(
            "--cheap-op",
            type=click.Choice(CHEAP_OPERATIONS),
            default=_DEFAULT.cheap_op,
            show_default=True,
            help="Cheap operation that makes the ghost states.",
        ),
        click.option(
            "--cheap-activation",
            type=click.Choice(ACTIVATIONS),
            default=_DEFAULT.cheap_activation,
            show_default=True,
            help="Activation after the cheap operation ('none' allows folding).",
        ),
        click.option(
            "--pooling",
            type=click.Choice(POOLINGS),
            default=_DEFAULT.pooling,
            show_default=True,
            help="How the clip's frames are pooled before the head.",
        ),
        click.option(
            "--dropout",
            type=click.FloatRange(0.0, 0.95),
            default=_DEFAULT.dropout,
            show_default=True,
            help="Dropout between layers and before the head.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def model_config_from(options: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Pop the model options out of a command's keyword arguments into a ModelConfig."""
    names = (
        "arch",
        "hidden",
        "layers",
        "ratio",
        "cheap_op",
        "cheap_activation",
        "pooling",
        "dropout",
    )
    values = {name: options.pop(name) for name in names if name in options}
    values.update(overrides)
    config = ModelConfig(**values)
    config.validate()
    return config


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of text."
)


def detector_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The streaming decision settings (see kws_ghost.stream.DetectorConfig)."""
    options = [
        click.option(
            "--threshold",
            type=click.FloatRange(0, 1, min_open=True),
            default=_DETECTOR.threshold,
            show_default=True,
            help="Smoothed posterior needed to fire.",
        ),
        click.option(
            "--hop-ms",
            type=click.FloatRange(1),
            default=_DETECTOR.hop_ms,
            show_default=True,
            help="Scoring hop: the 1 s window is scored this often.",
        ),
        click.option(
            "--smoothing",
            type=click.IntRange(1),
            default=_DETECTOR.smoothing,
            show_default=True,
            help="Hops averaged before the threshold.",
        ),
        click.option(
            "--patience",
            type=click.IntRange(1),
            default=_DETECTOR.patience,
            show_default=True,
            help="Consecutive hops above the threshold an event needs.",
        ),
        click.option(
            "--refractory",
            type=click.FloatRange(0),
            default=_DETECTOR.refractory,
            show_default=True,
            help="Seconds after an event before another can fire.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
