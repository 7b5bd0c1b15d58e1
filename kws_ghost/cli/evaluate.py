"""``kws-ghost eval``: score a checkpoint on a corpus split."""

from __future__ import annotations

from typing import Optional

import click

from kws_ghost.cli.options import json_option


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--data", type=click.Path(), help="Corpus folder (default: the one the model was trained on)."
)
@click.option(
    "--split",
    type=click.Choice(["test", "testing", "validation", "train", "training"]),
    default="test",
    show_default=True,
)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--plot", type=click.Path(dir_okay=False), help="Save the confusion matrix as a PNG here."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def evaluate(
    checkpoint: str,
    data: Optional[str],
    split: str,
    batch_size: int,
    device: str,
    plot: Optional[str],
    quiet: bool,
    as_json: bool,
) -> None:
    """Accuracy, per-class precision/recall/F1 and confusion matrix of CHECKPOINT."""
    from kws_ghost.checkpoint import load_checkpoint
    from kws_ghost.errors import KwsError
    from kws_ghost.evaluate import evaluate_checkpoint, format_report, plot_confusion

    if data is None:
        data = load_checkpoint(checkpoint).extra.get("train_config", {}).get("data")
        if not data:
            raise KwsError("--data is required: the checkpoint does not record its corpus")
    report = evaluate_checkpoint(checkpoint, data, split, batch_size, device, progress=not quiet)
    if plot:
        plot_confusion(report, plot)
        report["plot"] = plot
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(report)
    else:
        click.echo(format_report(report))
        if plot:
            click.echo(f"confusion matrix: {plot}")
