"""``kws-ghost profile``: parameters, MACs, state and size of a model config or checkpoint."""

from __future__ import annotations

from typing import Any, Optional

import click

from kws_ghost.cli.options import config_from, config_options, json_option, threads_option
from kws_ghost.config import ModelConfig


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@config_options(ModelConfig)
@click.option(
    "--input-dim", type=click.IntRange(1), default=40, show_default=True, help="Features per frame."
)
@click.option(
    "--classes", type=click.IntRange(1), default=12, show_default=True, help="Output classes."
)
@click.option(
    "--compare",
    is_flag=True,
    help="Add the plain GRU/LSTM of the same width and of about the same parameters.",
)
@click.option(
    "--fold",
    is_flag=True,
    help="Profile the folded equivalent: linear ghost operations absorbed into the weights, a "
    "plain GRU/LSTM of width m (needs --cheap-activation none), beside the unfolded model.",
)
@threads_option
@json_option
def profile(
    checkpoint: Optional[str],
    input_dim: int,
    classes: int,
    compare: bool,
    fold: bool,
    threads: Optional[int],
    as_json: bool,
    **options: Any,
) -> None:
    """Cost of a model: parameters, MACs per frame and per second, state bytes, size.

    Give a CHECKPOINT, or describe a model with the options (defaults: the default GhostGRU).
    """
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "stream")
    from kws_ghost import profile as profiling

    if checkpoint:
        from kws_ghost.checkpoint import load_checkpoint

        loaded = load_checkpoint(checkpoint)
        config, frontend = loaded.model_config, loaded.frontend_config
    else:
        config = config_from(ModelConfig, options, input_dim=input_dim, num_classes=classes)
        frontend = None
    if fold:
        result = folded_profile(config, frontend, compare)
    elif compare:
        result = profiling.compare(config, frontend)
    else:
        result = profiling.profile_config(config, frontend)
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(result)
        return
    rows = ([result["unfolded"]] if fold else []) + [result] + result.get("baselines", [])
    click.echo(format_table(rows))
    if fold:
        click.echo(
            "folded vs unfolded: "
            + ", ".join(f"{k} {v:.1%}" for k, v in result["vs_unfolded"].items())
        )
    if compare:
        ratios = result["vs_same_width"]
        click.echo(
            "vs same-width baseline: " + ", ".join(f"{k} {v:.1%}" for k, v in ratios.items())
        )


def folded_profile(config: Any, frontend: Any, compare: bool) -> dict[str, Any]:
    """Profile of the folded equivalent of ``config``, with the unfolded one under "unfolded",
    ratios under "vs_unfolded" and, with ``compare``, the unfolded config's plain baselines."""
    from kws_ghost import profile as profiling
    from kws_ghost.export import folded_config

    folded = folded_config(config)  # KwsError when the cheap operation has an activation
    name = f"{profiling.describe(folded)} (folded {profiling.describe(config)})"
    result = profiling.profile_config(folded, frontend, name)
    unfolded = profiling.profile_config(config, frontend)
    keys = ("params", "macs_per_frame", "state_bytes")
    result["unfolded"] = unfolded
    result["vs_unfolded"] = {key: result[key] / unfolded[key] for key in keys}
    if compare:
        result["baselines"] = profiling.compare(config, frontend)["baselines"]
        reference = result["baselines"][0]
        result["vs_same_width"] = {key: result[key] / reference[key] for key in keys}
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("model", "name", "{}"),
        ("params", "params", "{:,}"),
        ("MACs/frame", "macs_per_frame", "{:,}"),
        ("MACs/s", "macs_per_second", "{:,}"),
        ("state B", "state_bytes", "{:,}"),
        ("fp32 KB", "size_fp32_bytes", "{:.1f}"),
        ("int8 KB", "size_int8_bytes", "{:.1f}"),
    ]
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row[key] / 1024 if key.startswith("size") else row[key]
            line.append(fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    )
