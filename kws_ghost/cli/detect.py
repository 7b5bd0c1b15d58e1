"""``kws-ghost detect``: keyword events in audio files or a live PCM stream on stdin."""

from __future__ import annotations

import sys
from typing import Any, Optional

import click

from kws_ghost.cli.options import (
    detector_config,
    detector_options,
    model_option,
    threads_option,
)


@click.command()
@click.argument("files", nargs=-1, required=True)
@model_option
@detector_options
@click.option(
    "--scorer",
    type=click.Choice(["auto", "stream", "segments", "window"]),
    default="auto",
    show_default=True,
    help="stream: the model stepped frame by frame with its state carried (stdin always); "
    "segments: the same posteriors for a file, computed as a batch (auto for files); "
    "window: rescore the trailing 1 s from a zero state (auto for clip-trained models).",
)
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
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bar and no note on the threshold.")
def detect(
    files: tuple[str, ...],
    model_path: Optional[str],
    scorer: str,
    output_format: str,
    block_seconds: float,
    threads: Optional[int],
    quiet: bool,
    **options: Any,
) -> None:
    """Detect keywords in FILES (any format soundfile reads; any rate or channel count).

    FILE "-" reads stdin and prints each event as it is decided: a WAV stream (any rate and
    channels, from its header) or FLAC, else raw 16-bit little-endian 16 kHz mono PCM:

    \b
      arecord -f S16_LE -r 16000 -c 1 | kws-ghost detect -
      arecord -f S16_LE -r 48000 -c 2 -t wav | kws-ghost detect -

    The model runs as a stream: one step per 10 ms frame, its state carried. An event is
    reported when its keyword's smoothed score falls back below the threshold (about 0.1-0.3 s
    after the word), with the span of the word's speech. The threshold comes from the model's
    validation DET curve unless given: --false-alarms-per-hour picks it by false-alarm rate.
    """
    from kws_ghost.audio import iter_audio_blocks
    from kws_ghost.checkpoint import find_default_model
    from kws_ghost.errors import KwsError
    from kws_ghost.pipe_audio import iter_stdin_audio
    from kws_ghost.progress import progress_enabled
    from kws_ghost.runtime import load_model
    from kws_ghost.scorers import choose_scorer
    from kws_ghost.stream import KeywordDetector
    from kws_ghost.threads import configure_threads

    config = detector_config(options)
    runtime = load_model(find_default_model(model_path), configure_threads(threads, "stream"))
    rate = runtime.frontend_config.sample_rate
    write = _writer(output_format)
    show_progress = progress_enabled(False if quiet else None, output_format != "text")
    failures = 0
    noted = quiet
    for name in files:
        live = name == "-"
        detector = KeywordDetector(runtime, config, choose_scorer(runtime, scorer, live))
        count = 0
        try:
            if live:
                blocks: Any = iter_stdin_audio(sys.stdin.buffer, rate, int(rate * 0.05))
            else:
                blocks = _with_progress(
                    iter_audio_blocks(name, rate, block_seconds), name, rate, show_progress
                )
            for block in blocks:
                if not noted:  # once audio has come: an unreadable input is its error alone
                    click.echo(_threshold_note(detector), err=True)
                    noted = True
                for event in detector.push(block):
                    write(name, event)
                    count += 1
            for event in detector.flush():
                write(name, event)
                count += 1
        except KwsError as exc:
            if len(files) == 1:
                raise
            click.echo(f"error: {exc}", err=True)  # go on with the other files
            failures += 1
            continue
        if output_format == "text":
            seconds = detector.frames_seen * runtime.frontend_config.hop_ms / 1000
            top = detector.decoder.top_score
            click.echo(
                f"{name}: {count} keyword event{'s' * (count != 1)} in {seconds:.1f} s "
                f"(highest keyword score {top:.3f}, threshold {detector.config.threshold:.3g})"
            )
    if failures:
        sys.exit(1)


def _threshold_note(detector: Any) -> str:
    threshold, point = detector.config.threshold, detector.operating_point
    if point is None:
        if (detector.runtime.detection or {}).get("det"):
            return f"note: threshold {threshold:.3g}, below every threshold of the model's DET"
        return f"note: threshold {threshold:.3g} (the model carries no validation DET curve)"
    fa = point["false_alarms_per_hour"]
    note = (
        f"note: threshold {threshold:.3g}: on its validation recordings the model found "
        f"{point['hit_rate']:.0%} of keywords at {fa:.1f} false alarms per hour"
    )
    measured = (detector.runtime.detection or {}).get("decoder") or {}
    changed = [k for k, v in measured.items() if getattr(detector.config, k, v) != v]
    if changed:
        settings = ", ".join(f"{k} {measured[k]:g} s" for k in changed)
        note += f" (with {settings}; other settings shift these figures)"
    return note


def _with_progress(blocks: Any, name: str, rate: int, enabled: bool) -> Any:
    """Audio blocks, counted on a progress bar (seconds of audio) when ``enabled``."""
    if not enabled:
        yield from blocks
        return
    from tqdm import tqdm

    from kws_ghost.audio import audio_info

    total = audio_info(name)["duration"]
    with tqdm(total=round(total, 1), desc=name, unit="s", leave=False, file=sys.stderr) as bar:
        for block in blocks:
            bar.update(round(len(block) / rate, 2))
            yield block


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
