"""``kws-ghost eval``: clip accuracy of a model (``.pt`` or ``.onnx``) on a corpus split."""

from __future__ import annotations

from typing import Optional

import click

from kws_ghost.cli.options import json_option, threads_option


@click.command()
@click.argument(
    "model_paths", metavar="MODEL...", nargs=-1, required=True, type=click.Path(dir_okay=False)
)
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
    "--plot", type=click.Path(dir_okay=False), help="Save the confusion matrix as a PNG here."
)
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def evaluate(
    model_paths: tuple[str, ...],
    data: Optional[str],
    split: str,
    batch_size: int,
    plot: Optional[str],
    threads: Optional[int],
    quiet: bool,
    as_json: bool,
) -> None:
    """Accuracy, per-class precision/recall/F1 and confusion matrix of MODEL on clips.

    MODEL is a checkpoint or an exported .onnx model (run by onnxruntime, without torch).
    Several MODELs score as one ensemble, the mean of their frame logits (what
    `train --teacher A --teacher B` distils from); they share labels, front-end and pooling.
    """
    from kws_ghost.evaluate import evaluate_model, format_report, plot_confusion
    from kws_ghost.fileio import check_png_output
    from kws_ghost.progress import progress_enabled
    from kws_ghost.threads import configure_threads

    if plot:
        check_png_output(plot)
    configure_threads(threads, "batch")
    report = evaluate_model(
        model_paths,
        data,
        split,
        batch_size,
        progress=progress_enabled(False if quiet else None, as_json),
    )
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
