"""Click options made from the configuration dataclasses, so a flag, its default and its help
live in one place (``kws_ghost.config``) and a new config field is a new flag.

``config_options(ModelConfig)`` adds one option per field that has help text (see
``config.setting``); every option's default is None, so ``config_from(ModelConfig, kwargs)`` can
tell what was given on the command line (``given``), which ``train --resume`` refuses to change.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

import click

from kws_ghost.config import DetectorConfig

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of text."
)
model_option = click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    help="Exported model (.onnx, run without torch) or checkpoint (.pt). Default: "
    "$KWS_GHOST_MODEL, else runs/latest/best.pt.",
)
threads_option = click.option(
    "--threads",
    type=click.IntRange(0),
    default=None,
    help="Intra-op threads (0 or default: this command's own choice, see README).",
)


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("help")]


def option_name(field: dataclasses.Field) -> str:
    return field.metadata.get("option") or "--" + field.name.replace("_", "-")


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _base(kind: Any) -> Any:
    """``Optional[X]`` -> X."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is typing.Union and args else kind


def _is_list(kind: Any) -> bool:
    return typing.get_origin(_base(kind)) is list


def _click_type(kind: Any, field: dataclasses.Field) -> Any:
    if field.metadata.get("choices"):
        return click.Choice(field.metadata["choices"])
    if _is_list(kind):
        return str  # comma-separated, or one item per option (``multiple``)
    return {int: int, float: float, str: str, bool: bool}.get(_base(kind), str)


def _given(value: Any) -> bool:
    """Whether an option's value was given: an option not given is None (``multiple``: ())."""
    return value is not None and value != ()


def config_options(cls: type, exclude: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A decorator adding an option for each documented field of dataclass ``cls``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for field, kind in reversed(_fields(cls)):
            if field.name in exclude:
                continue
            default = _default_of(field)
            shown = ",".join(default) if isinstance(default, list) else default
            suffix = f" [default: {shown}]" if shown not in (None, "", []) else ""
            func = click.option(
                option_name(field),
                f"{cls.__name__}__{field.name}",
                type=_click_type(kind, field),
                default=None,
                multiple=bool(field.metadata.get("multiple")),
                help=field.metadata["help"] + suffix,
            )(func)
        return func

    return decorate


def config_from(cls: type, options: dict[str, Any], **overrides: Any) -> Any:
    """Pop ``cls``'s options out of a command's keyword arguments into an instance of it (given
    values over the defaults, then ``overrides``), validated."""
    values: dict[str, Any] = {}
    for field, kind in _fields(cls):
        value = options.pop(f"{cls.__name__}__{field.name}", None)
        if not _given(value):
            continue
        if field.metadata.get("multiple"):
            value = list(value)
        elif _is_list(kind):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        values[field.name] = value
    values.update(overrides)
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def given(cls: type, options: dict[str, Any]) -> list[str]:
    """The option names of ``cls``'s fields given on the command line (still in ``options``)."""
    return [
        option_name(field)
        for field, _ in _fields(cls)
        if _given(options.get(f"{cls.__name__}__{field.name}"))
    ]


def detector_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The streaming decision settings (see kws_ghost.config.DetectorConfig)."""
    return config_options(DetectorConfig)(func)


def detector_config(options: dict[str, Any]) -> DetectorConfig:
    """``detector_options``' values as a DetectorConfig; a usage error when --threshold and
    --false-alarms-per-hour are both given (one would be silently ignored)."""
    if {"--threshold", "--false-alarms-per-hour"} <= set(given(DetectorConfig, options)):
        raise click.UsageError("give --threshold or --false-alarms-per-hour, not both")
    return config_from(DetectorConfig, options)
