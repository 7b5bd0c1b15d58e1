"""``kws-ghost detect``: keyword events in audio files or a live PCM stream on stdin."""

from __future__ import annotations

import sys
from typing import Any, Optional

import click

from kws_ghost.cli.options import detector_options


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    help="Checkpoint (.pt) or exported model (.onnx). Default: $KWS_GHOST_MODEL, "
    "else runs/latest/best.pt.",
)
@detector_options
@click.option("--keywords", help="Only these keywords (comma-separated); default: all.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "csv"]),
    default="text",
    show_default=True,
    help="json: one object per event per line (file, keyword, start, end, score).",
)
@click.option(
    "--block-seconds",
    type=click.FloatRange(0.01),
    default=10.0,
    show_default=True,
    help="Audio read per step from a file (memory stays bounded).",
)
def detect(
    files: tuple[str, ...],
    model_path: Optional[str],
    keywords: Optional[str],
    output_format: str,
    block_seconds: float,
    **decision: Any,
) -> None:
    """Detect keywords in FILES (any format soundfile reads; any rate or channel count).

    FILE "-" reads raw 16-bit little-endian 16 kHz mono PCM from stdin and prints each event
    as it is decided:

    \b
      arecord -f S16_LE -r 16000 -c 1 | kws-ghost detect -

    An event is reported when its keyword's smoothed score falls back below the threshold, with
    the time span (seconds from the start of the input) that holds the word.
    """
    from kws_ghost.audio import iter_audio_blocks, iter_pcm16
    from kws_ghost.checkpoint import find_default_model
    from kws_ghost.errors import KwsError
    from kws_ghost.stream import DetectorConfig, detect_blocks, load_scorer

    scorer = load_scorer(find_default_model(model_path))
    config = DetectorConfig(
        keywords=[k.strip() for k in keywords.split(",") if k.strip()] if keywords else None,
        **decision,
    )
    config.validate()
    rate = scorer.frontend_config.sample_rate
    write = _writer(output_format)
    failures = 0
    for name in files:
        if name == "-":
            blocks = iter_pcm16(sys.stdin.buffer, block_samples=int(rate * 0.05))
        else:
            blocks = iter_audio_blocks(name, rate, block_seconds)
        try:
            for event in detect_blocks(blocks, scorer, config):
                write(name, event)
        except KwsError as exc:
            if len(files) == 1:
                raise
            click.echo(f"error: {exc}", err=True)  # go on with the other files
            failures += 1
    if failures:
        sys.exit(1)


def _writer(output_format: str) -> Any:
    import json

    if output_format == "csv":
        click.echo("file,keyword,start,end,score")

    def write(name: str, event: Any) -> None:
        record = {"file": name, **event.as_dict()}
        if output_format == "json":
            line = json.dumps(record)
        elif output_format == "csv":
            line = ",".join(str(record[k]) for k in ("file", "keyword", "start", "end", "score"))
        else:
            line = (
                f"{name}\t{record['start']:8.2f} - {record['end']:8.2f} s\t"
                f"{record['keyword']:<10}\t{record['score']:.3f}"
            )
        click.echo(line)
        sys.stdout.flush()

    return write
