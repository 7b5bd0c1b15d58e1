"""``kws-ghost features``: MFCC / log-mel features of files or a Speech Commands folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import click

from kws_ghost.cli.options import json_option, threads_option
from kws_ghost.config import FEATURE_KINDS
from kws_ghost.errors import KwsError


@click.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the .npy / .npz (and .png) files.",
)
@click.option(
    "--kind",
    type=click.Choice(FEATURE_KINDS),
    default=None,
    help="Features to compute [default: the front-end's own kind, mfcc unless --model says].",
)
@click.option(
    "--model",
    "checkpoint",
    default=None,
    type=click.Path(dir_okay=False),
    help="Use the front-end stored in this checkpoint, so the features match what it sees.",
)
@click.option(
    "--plot",
    is_flag=True,
    help="Also save a PNG per file: waveform, spectrogram and features on one time axis.",
)
@click.option(
    "--max-plots",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="With --plot: PNGs for at most this many clips of each folder input.",
)
@threads_option
@json_option
def features(
    inputs: tuple[str, ...],
    out_dir: str,
    kind: Optional[str],
    checkpoint: Optional[str],
    plot: bool,
    max_plots: int,
    threads: Optional[int],
    as_json: bool,
) -> None:
    """Extract MFCC (or log-mel) features from audio files or a Speech Commands folder.

    \b
    A file gives OUT/NAME.npy, [frames, features] float32.
    A folder gives OUT/FOLDER.npz holding every .wav under it (recursively), keyed by the
    path relative to the folder, e.g. "yes/0a7c2a8d_nohash_0.wav".
    Prints the shape and frame rate of each; --json prints one JSON object instead.
    """
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "stream")
    from kws_ghost.config import FrontendConfig

    if checkpoint:
        from kws_ghost.checkpoint import load_checkpoint

        config = load_checkpoint(checkpoint).frontend_config
        source = str(checkpoint)
    else:
        config = FrontendConfig()
        source = "default"
    if kind and kind != config.kind:
        if checkpoint:
            click.echo(
                f"note: --kind {kind} differs from the checkpoint's {config.kind}: "
                "these are not the features its model sees",
                err=True,
            )
        config = dataclasses.replace(config, kind=kind)
    config.validate()

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KwsError(f"--out {out}: exists and is not a folder")
    from kws_ghost.feature_files import extract_file, extract_folder, plan_outputs

    jobs = plan_outputs(inputs, out, plot)

    from kws_ghost.frontend import StreamingFrontend
    from kws_ghost.progress import progress_enabled

    stream = StreamingFrontend(config)
    results = []
    for job in jobs:
        if job["kind"] == "file":
            results.append(extract_file(job, stream, config, plot))
        else:
            progress = progress_enabled(None, as_json)
            results.append(extract_folder(job, stream, config, plot, max_plots, progress))

    if as_json:
        from kws_ghost.cli import echo_json

        echo_json({"frontend": dataclasses.asdict(config), "source": source, "outputs": results})
        return
    label = "MFCCs" if config.kind == "mfcc" else "log-mel bands"
    for result in results:
        if result["type"] == "file":
            frames, width = result["shape"]
            click.echo(
                f"{result['input']} -> {result['output']}: {frames} frames x {width} {label}, "
                f"{result['frames_per_second']:g} frames/s"
            )
        else:
            click.echo(
                f"{result['input']} -> {result['output']}: {result['clips']} clips, "
                f"{result['frames_min']}-{result['frames_max']} frames x "
                f"{result['num_features']} {label}, {result['frames_per_second']:g} frames/s"
            )
        for png in result.get("plots", []):
            click.echo(f"  plot: {png}")
