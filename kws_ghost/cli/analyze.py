"""``kws-ghost analyze``: how redundant a trained model's recurrent states are."""

from __future__ import annotations

from typing import Optional

import click

from kws_ghost.cli.options import json_option, threads_option


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--data", type=click.Path(), help="Corpus folder (default: the one the model was trained on)."
)
@click.option("--split", default="validation", show_default=True)
@click.option(
    "--max-clips",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="Clips whose every frame's states are collected.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="PNG: cumulative energy per layer and unit similarity matrices.",
)
@threads_option
@json_option
def analyze(
    checkpoint: str,
    data: Optional[str],
    split: str,
    max_clips: int,
    plot: Optional[str],
    threads: Optional[int],
    as_json: bool,
) -> None:
    """Singular-value spectrum of each layer's states: components for 90/95/99% of the energy,
    mean |cosine| between units, and the ghost ratio s = H / k99 the spectrum suggests."""
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "batch")
    from kws_ghost.analyze import analyze_checkpoint, format_report, plot_report, public_report
    from kws_ghost.checkpoint import load_checkpoint, stored_data_path
    from kws_ghost.errors import KwsError
    from kws_ghost.fileio import check_png_output, refuse_overwriting_inputs

    if plot:
        check_png_output(plot, "--plot")
        refuse_overwriting_inputs([plot], [checkpoint])
    if data is None:
        loaded = load_checkpoint(checkpoint)
        found = stored_data_path(loaded.extra.get("train_config") or {}, loaded.path)
        if found is None:
            raise KwsError(
                f"--data is required: {checkpoint} does not record a corpus that exists here"
            )
        data = str(found)
    report = analyze_checkpoint(checkpoint, data, split, max_clips)
    if plot:
        plot_report(report, plot)
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json({**public_report(report), "plot": plot})
        return
    click.echo(format_report(report))
    if plot:
        click.echo(f"plot: {plot}")
